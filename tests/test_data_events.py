"""Event annotations: the four readers (on the real distributed layouts where we have them), the
DCASE writer, strong window labels, the ``sed:`` data set and strong labels in training features."""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from bitsound.config import parse_recipe
from bitsound.data import open_dataset
from bitsound.data.events import format_dcase, read_annotations, window_labels, write_dcase
from bitsound.data.records import Clip, Dataset, Event
from bitsound.errors import ConfigError, DataError
from bitsound.pipeline import build_features

LAYOUTS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "layouts"
needs_layouts = pytest.mark.skipif(not LAYOUTS.is_dir(), reason=f"{LAYOUTS} not present")


@needs_layouts
def test_tut2017se_ann_verified_layout():
    path = LAYOUTS / "tut2017se/TUT-sound-events-2017-development/meta/street/a001.ann"
    table = read_annotations(path)
    assert list(table) == ["audio/street/a001.wav"]
    events = table["audio/street/a001.wav"]
    assert events[0] == Event(1.589213, 2.38382, "people walking")
    assert [e.label for e in events] == ["people walking", "people walking", "car"]
    assert events[-1].offset == pytest.approx(14.00307)


@needs_layouts
def test_tut2017se_non_verified_three_columns_keyed_by_stem():
    path = LAYOUTS / "tut2017se/TUT-sound-events-2017-development/non_verified/meta/street/a001.ann"
    table = read_annotations(path)
    assert list(table) == ["a001.wav"]
    assert table["a001.wav"] == read_annotations(
        LAYOUTS / "tut2017se/TUT-sound-events-2017-development/meta/street/a001.ann")["audio/street/a001.wav"]


@needs_layouts
def test_urbansed_txt_reads_as_audacity_labels():
    path = LAYOUTS / "urbansed/annotations/train/soundscape_train_uniform1736.txt"
    table = read_annotations(path, filename="soundscape_train_uniform1736.wav")
    events = table["soundscape_train_uniform1736.wav"]
    assert len(events) == 6
    assert events[0].label == "gun_shot" and events[0].onset == pytest.approx(1.265813)
    assert events[-1] == Event(9.164048, 10.000000000000002, "dog_bark")
    # overlapping events of different classes stay as annotated (polyphony)
    assert events[1].onset < events[0].offset


def test_dcase_round_trip_and_empty_files(tmp_path):
    table = {"b.wav": [Event(2.0, 3.5, "speech"), Event(0.25, 1.0, "cough")], "a.wav": []}
    path = write_dcase(tmp_path / "events.tsv", table)
    text = path.read_text()
    assert text.splitlines()[0] == "filename\tonset\toffset\tevent_label"
    assert "a.wav\t\t\t" in text
    back = read_annotations(path)
    assert back == {"a.wav": [], "b.wav": sorted(table["b.wav"])}
    assert format_dcase(back) == text


def test_audacity_spectral_lines_are_skipped(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("0.5\t1.25\tknock\n\\\t200.0\t4000.0\n2\t3\tdoor slam\n")
    assert read_annotations(path) == {"labels.wav": [Event(0.5, 1.25, "knock"),
                                                     Event(2.0, 3.0, "door slam")]}


def test_raven_selection_table_counts_each_selection_once(tmp_path):
    path = tmp_path / "night.Table.1.selections.txt"
    header = "Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tLow Freq (Hz)\tHigh Freq (Hz)\tSpecies"
    rows = ["1\tWaveform 1\t1\t1.5\t2.0\t0\t0\tACSC",
            "1\tSpectrogram 1\t1\t1.5\t2.0\t2000\t8000\tACSC",
            "2\tSpectrogram 1\t1\t4.0\t4.75\t2000\t8000\tACRI"]
    path.write_text("\n".join([header, *rows]) + "\n")
    table = read_annotations(path, filename="night.wav")
    assert table == {"night.wav": [Event(1.5, 2.0, "ACSC"), Event(4.0, 4.75, "ACRI")]}
    with pytest.raises(DataError, match="label column"):
        read_annotations(path, label_column="Call type")


@pytest.mark.parametrize("text, match", [
    ("filename\tonset\toffset\tevent_label\na.wav\tone\t2\tx\n", "not a number"),
    ("filename\tonset\toffset\tevent_label\na.wav\t3\t2\tx\n", "onset < offset"),
    ("filename\tonset\toffset\tevent_label\na.wav\t1\t2\t\n", "no label"),
    ("0.5\t1.0\n", "expected 'onset<TAB>offset<TAB>label'"),
])
def test_bad_annotations_name_file_and_line(tmp_path, text, match):
    path = tmp_path / "bad.tsv"
    path.write_text(text)
    with pytest.raises(DataError, match=match) as err:
        read_annotations(path)
    assert "bad.tsv" in str(err.value) and "line" in str(err.value)


def test_window_labels_strong_and_weak():
    events = [Event(1.0, 3.0, "speech"), Event(5.0, 5.1, "knock")]
    starts = np.arange(0, 6, 0.5)
    labels = window_labels(events, starts, length=1.0, clip_label="background")
    # whole window: at least half the window (or the 0.1-s knock) must be covered
    assert labels[:6] == ["background", "speech", "speech", "speech", "speech", "speech"]
    assert labels[6] == "background"  # [3.0, 4.0): no overlap
    assert labels[9:11] == ["knock", "knock"]  # windows [4.5, 5.5) and [5.0, 6.0) hold the knock
    # a 0.2-s centre region: named by what happens at the centre
    centred = window_labels(events, starts, length=1.0, clip_label="background", region=0.2)
    centres = starts + 0.5
    for c, label in zip(centres, centred, strict=True):
        expect = "speech" if 1.0 <= c <= 3.0 else ("knock" if 4.95 <= c <= 5.15 else "background")
        assert label == expect, c
    assert window_labels(None, starts, length=1.0, clip_label="dog") == ["dog"] * len(starts)
    with pytest.raises(DataError, match="region"):
        window_labels(events, starts, length=1.0, clip_label="x", region=2.0)


def test_clip_without_events_is_unchanged_and_dataset_labels_include_events():
    weak = Clip(path="/a.wav", label="bird")
    assert weak.events is None and weak.all_labels == {"bird"}
    strong = Clip(path="/b.wav", label="background", events=(Event(0.0, 1.0, "cough"),))
    ds = Dataset(kind="test", root="/", clips=[weak, strong])
    assert ds.labels == ["background", "bird", "cough"]
    assert ds.subset([1]).labels == ["background", "cough"]
    with pytest.raises(DataError, match="onset < offset"):
        Event(2.0, 1.0, "x")


def _tiny_sed(root: Path, *, meta: bool = True) -> Path:
    (root / "audio").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("m0.wav", "m1.wav"):
        sf.write(root / "audio" / name, 0.01 * rng.standard_normal(16000 * 3).astype(np.float32), 16000)
    write_dcase(root / "events.tsv", {"m0.wav": [Event(1.0, 2.0, "cough")]})
    if meta:
        (root / "meta.csv").write_text("filename,label,fold,group\nm0.wav,silence,train,r1\n"
                                       "m1.wav,silence,val,r2\n")
    return root


def test_sed_dataset_and_strong_window_targets(tmp_path):
    ds = open_dataset(f"sed:{_tiny_sed(tmp_path / 'set')}")
    assert [c.label for c in ds] == ["silence", "silence"]
    assert ds.clips[0].events == (Event(1.0, 2.0, "cough"),) and ds.clips[1].events == ()
    assert [c.fold for c in ds] == ["train", "val"] and ds.labels == ["cough", "silence"]
    recipe = parse_recipe({"name": "t", "model": {"name": "cnn2d"},
                           "audio": {"sample_rate": 16000, "segment": {"length": 1.0, "hop": 0.5}},
                           "data": {"window_labels": {"region": 0.2}}})
    feats = build_features(ds, [0, 1], recipe=recipe, label_index={"cough": 0, "silence": 1},
                           cache=None, show_progress=False)
    # m0 (3 s): windows start 0, 0.5, ..., 2.5 (the last half padded), centres 0.5 .. 3.0; the
    # cough [1, 2] covers half of the central 0.2 s of the centres 1.0, 1.5 and 2.0
    assert feats.y[feats.clip_of_window == 0].tolist() == [1, 0, 0, 0, 1, 1]
    assert set(feats.y[feats.clip_of_window == 1].tolist()) == {1}
    # centred windows: centres 0, 0.5, ..., 2.5, labelled by the same rule
    centred = recipe.model_copy(deep=True)
    centred.audio.segment.centred = True
    feats = build_features(ds, [0], recipe=centred, label_index={"cough": 0, "silence": 1},
                           cache=None, show_progress=False)
    assert feats.y.tolist() == [1, 1, 0, 0, 0, 1]
    gated = recipe.model_copy(deep=True)
    gated.audio.segment.energy_gate_db = -30
    with pytest.raises(ConfigError, match="energy_gate_db"):
        build_features(ds, [0], recipe=gated, label_index={"cough": 0, "silence": 1}, cache=None,
                       show_progress=False)


def test_sed_dataset_refuses_unannotated_files(tmp_path):
    root = _tiny_sed(tmp_path / "set", meta=False)
    with pytest.raises(DataError, match="m1.wav"):
        open_dataset(f"sed:{root}")
