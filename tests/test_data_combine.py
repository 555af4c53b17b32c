import numpy as np
import pytest

from bitsound.data.combine import Source, open_combined
from bitsound.data.splits import group_split
from bitsound.errors import DataError

A = "synthetic:n_per_class=3,seed=1"
B = "synthetic:n_per_class=2,seed=2"


def test_labels_are_mapped_and_groups_kept_apart():
    ds = open_combined([
        Source(spec=A, label="animal", exclude_labels=["engine", "knock", "rain", "siren", "wind"]),
        Source(spec=B, relabel={"engine": "machine", "siren": "machine"},
               exclude_labels=["bark", "bird_chirp", "bird_trill"]),
    ])
    assert ds.labels == ["animal", "knock", "machine", "rain", "wind"]
    counts = {label: sum(c.label == label for c in ds.clips) for label in ds.labels}
    assert counts == {"animal": 9, "knock": 2, "machine": 4, "rain": 2, "wind": 2}
    # Groups carry the source position, so a location of A never merges with one of B.
    assert {c.group.split(":")[0] for c in ds.clips} == {"0", "1"}
    split = group_split(ds.clips, val_fraction=0.3, seed=0)
    train_groups = {ds.clips[i].group for i in split.train}
    assert not train_groups & {ds.clips[i].group for i in split.val}


def test_audio_comes_from_the_member_data_set():
    from bitsound.data import open_dataset

    member = open_dataset(A)
    ds = open_combined([Source(spec=A, label="x")])
    for mine, theirs in zip(ds.clips[:3], member.clips[:3], strict=True):
        np.testing.assert_array_equal(ds.load(mine, sample_rate=16000, channels="mono"),
                                      member.load(theirs, sample_rate=16000, channels="mono"))
        assert ds.identity(mine) == member.identity(theirs)
    sub = ds.subset([2, 0])  # subsets keep the loader
    np.testing.assert_array_equal(sub.load(sub.clips[1], sample_rate=16000, channels="mono"),
                                  member.load(member.clips[0], sample_rate=16000, channels="mono"))


def test_unknown_label_in_a_source_is_an_error():
    with pytest.raises(DataError, match="Rooster"):
        open_combined([Source(spec=A, exclude_labels=["Rooster"])])


def test_same_source_twice_is_an_error():
    with pytest.raises(DataError, match="twice"):
        open_combined([Source(spec=A), Source(spec=A)])
