"""Tests of bitsound.data.records and bitsound.data.registry: clips, datasets, spec strings."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import bitsound.data as data
from bitsound.data import Clip, Dataset, list_datasets, open_dataset, register_dataset
from bitsound.data.registry import parse_spec
from bitsound.errors import DataError, RegistryError

BUILT_INS = {"folder", "manifest", "fsdd", "esc10-2015", "esc50", "esc10", "xeno-canto",
             "synthetic"}


def _wav(path: Path, seconds: float = 0.5, sr: int = 8000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, 0.3 * np.sin(2 * np.pi * 440 * t), sr)
    return path


# ------------------------------------------------------------------ Clip
def test_clip_meta_is_excluded_from_equality_and_hash():
    a = Clip(path="/a.wav", label="dog", meta={"x": 1})
    b = Clip(path="/a.wav", label="dog", meta={"x": 2})
    assert a == b
    assert hash(a) == hash(b)
    assert a != Clip(path="/a.wav", label="dog", start=0.0, end=1.0)


def test_clip_is_frozen():
    clip = Clip(path="/a.wav", label="dog")
    with pytest.raises(AttributeError):
        clip.label = "cat"  # type: ignore[misc]


# ------------------------------------------------------------------ Dataset
def _dataset(tmp_path: Path) -> Dataset:
    clips = [
        Clip(path=str(_wav(tmp_path / "b1.wav")), label="b"),
        Clip(path=str(_wav(tmp_path / "a1.wav")), label="a"),
        Clip(path=str(_wav(tmp_path / "c1.wav", seconds=1.0)), label="c", start=0.25, end=0.75),
    ]
    return Dataset(kind="test", root=str(tmp_path), clips=clips)


def test_dataset_labels_sorted_unique_and_targets(tmp_path):
    ds = _dataset(tmp_path)
    assert ds.labels == ["a", "b", "c"]
    assert ds.targets().tolist() == [1, 0, 2]
    assert len(ds) == 3 and ds[1].label == "a" and [c.label for c in ds] == ["b", "a", "c"]


def test_dataset_rejects_labels_outside_the_class_list(tmp_path):
    with pytest.raises(DataError, match=r"not in the class list"):
        Dataset(kind="t", root="r", clips=[Clip(path="x", label="z")], labels=["a"])


def test_load_uses_the_clip_segment(tmp_path):
    ds = _dataset(tmp_path)
    whole = ds.load(ds[0])
    part = ds.load(ds[2])
    assert whole.shape == (1, 4000)
    assert part.shape == (1, 4000)  # 0.25 .. 0.75 s of a 1 s file at 8 kHz
    assert ds.load(ds[2], sample_rate=16000, channels="stereo").shape == (2, 8000)


def test_identity_changes_with_file_content_and_segment(tmp_path):
    ds = _dataset(tmp_path)
    first = ds.identity(ds[0])
    assert first == ds.identity(ds[0])
    assert os.path.abspath(ds[0].path) in first
    assert ds.identity(ds[2]) != ds.identity(Clip(path=ds[2].path, label="c"))
    _wav(Path(ds[0].path), seconds=0.7)  # rewrite: new size and mtime
    assert ds.identity(ds[0]) != first


def test_identity_of_a_deleted_file_is_a_data_error(tmp_path):
    ds = _dataset(tmp_path)
    Path(ds[0].path).unlink()
    with pytest.raises(DataError, match="open it again"):
        ds.identity(ds[0])


def test_subset_selects_in_order_and_recomputes_or_keeps_labels(tmp_path):
    ds = _dataset(tmp_path)
    sub = ds.subset([2, 0])
    assert [c.label for c in sub] == ["c", "b"]
    assert sub.labels == ["b", "c"]
    kept = ds.subset(np.array([2, 0]), keep_labels=True)
    assert kept.labels == ["a", "b", "c"] and kept.targets().tolist() == [2, 1]
    assert len(ds) == 3  # the parent is untouched
    with pytest.raises(DataError, match="out of range"):
        ds.subset([3])


# ------------------------------------------------------------------ registry
def test_importing_bitsound_data_registers_all_built_ins():
    names = {name for name, _ in list_datasets()}
    assert names >= BUILT_INS
    assert all(description for _, description in list_datasets())
    assert data.open_dataset is open_dataset


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("fsdd:/data/fsdd", ("fsdd", "/data/fsdd")),
        ("manifest:C:/data/list.csv", ("manifest", "C:/data/list.csv")),  # first colon only
        ("synthetic", ("synthetic", "")),
        ("synthetic:seed=3", ("synthetic", "seed=3")),
    ],
)
def test_parse_spec_splits_on_the_first_colon(spec, expected):
    assert parse_spec(spec) == expected


def test_unknown_kind_lists_the_valid_kinds():
    with pytest.raises(RegistryError, match=r"unknown dataset kind 'nope'.*fsdd.*synthetic"):
        open_dataset("nope:/x")


def test_spec_must_be_a_string(tmp_path):
    with pytest.raises(RegistryError, match="a dataset spec is a string KIND:PATH"):
        open_dataset(tmp_path)  # type: ignore[arg-type]


def test_kind_without_path_is_an_error_naming_the_form():
    with pytest.raises(RegistryError, match=r"write it as fsdd:PATH"):
        open_dataset("fsdd")


def test_missing_folder_names_path_and_expectation(tmp_path):
    missing = tmp_path / "absent"
    with pytest.raises(DataError, match=r"absent' does not exist; expected"):
        open_dataset(f"folder:{missing}")


def test_a_file_where_a_folder_is_expected(tmp_path):
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(DataError, match="is not a folder"):
        open_dataset(f"fsdd:{tmp_path / 'f.txt'}")


def test_registering_a_name_twice_is_an_error():
    with pytest.raises(RegistryError, match=r"'folder' is registered twice"):
        register_dataset("folder", description="again")(lambda path: None)


def test_registering_a_new_kind_and_opening_it(tmp_path):
    name = "test-only-kind"

    @register_dataset(name, description="made in a test")
    def factory(path: str) -> Dataset:
        return Dataset(kind=name, root=path, clips=[Clip(path="x", label="a")])

    try:
        assert open_dataset(f"{name}:{tmp_path}").root == str(tmp_path)
        assert (name, "made in a test") in list_datasets()
    finally:
        from bitsound.data.registry import DATASETS

        DATASETS.remove(name)


def test_bad_kind_names_are_rejected():
    with pytest.raises(RegistryError, match="without ':'"):
        register_dataset("a:b", description="x")
