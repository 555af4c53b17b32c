"""Readers of distributed data-set layouts: UrbanSound8K, ESC-50 class subsets, TUT 2017 scenes,
TAU 2019 / 2020 Mobile / 2022 Mobile, spec options and the split rules they carry.

The real layout fixtures in ../shared/data/layouts hold each set's exact metadata files and one
real clip (so the readers run with ?missing=skip there); the logic around them (folds, fold
lists that disagree, devices, subsets) is tested on small trees in tmp_path that reuse the real
metadata rows.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from bitsound.audio.io import load_audio
from bitsound.config import parse_recipe
from bitsound.data import given_folds, open_dataset
from bitsound.data.combine import select_classes
from bitsound.data.esc import SUBSET_TARGETS
from bitsound.errors import ConfigError, DataError, RegistryError
from bitsound.experiment import cv_splits, holdout_split, open_recipe_data

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _shared(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data {path} is absent (CI provides ../shared/data)")
    return path


def _touch(path: Path, text: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _recipe(spec: str, **data) -> object:
    return parse_recipe({"name": "t", "model": {"name": "cnn2d"}, "data": {"spec": spec, **data}})


# ==================================================================== spec options
def test_unknown_or_malformed_options_list_the_valid_ones(tmp_path):
    with pytest.raises(RegistryError, match=r"unknown option 'mising'.*missing: 'error'"):
        open_dataset(f"esc50:{tmp_path}?mising=skip")
    with pytest.raises(RegistryError, match=r"option 'skip' is not key=value"):
        open_dataset(f"esc50:{tmp_path}?skip")
    with pytest.raises(RegistryError, match=r"missing='maybe' is not one of error, skip"):
        open_dataset(f"esc50:{tmp_path}?missing=maybe")


def test_a_kind_without_options_keeps_a_question_mark_in_its_path(tmp_path):
    with pytest.raises(DataError, match=r"what\?x=1' does not exist"):
        open_dataset(f"fsdd:{tmp_path / 'what?x=1'}")


# ==================================================================== UrbanSound8K
def _us8k_tree(tmp_path: Path, n_rows: int = 40) -> Path:
    """A tmp UrbanSound8K tree with the first rows of the real CSV and a stand-in file each."""
    lines = _shared("layouts", "urbansound8k", "metadata", "UrbanSound8K.csv").read_text()
    lines = lines.splitlines()
    rows = [lines[0]] + [line for line in lines[1:] if line.split(",")[5] in ("1", "2", "3")][
        :n_rows]
    _touch(tmp_path / "metadata" / "UrbanSound8K.csv", "\n".join(rows) + "\n")
    for line in rows[1:]:
        name, fold = line.split(",")[0], line.split(",")[5]
        _touch(tmp_path / "audio" / f"fold{fold}" / name)
    return tmp_path


def test_urbansound8k_real_layout_reads_its_clip_and_refuses_missing_files():
    root = _shared("layouts", "urbansound8k")
    with pytest.raises(DataError, match=r"(?s)8731 of the 8732 audio files listed .*\?missing=skip"):
        open_dataset(f"urbansound8k:{root}")
    ds = open_dataset(f"urbansound8k:{root}?missing=skip")
    (clip,) = ds.clips
    assert (clip.label, clip.fold, clip.group) == ("children_playing", "1", "135776")
    assert clip.meta["salience"] == 2 and clip.meta["classID"] == 2
    audio = load_audio(clip.path, channels="stereo")
    assert audio.shape[0] == 2  # a stereo file stays stereo
    assert ds.required_split[0] == "folds"


def test_urbansound8k_refuses_every_split_but_its_official_folds(tmp_path):
    root = _us8k_tree(tmp_path)
    spec = f"urbansound8k:{root}"
    for kind in ("stratified", "group"):
        recipe = _recipe(spec, split={"kind": kind})
        with pytest.raises(ConfigError, match=r"'(stratified|group)' is refused .*leak|official"):
            holdout_split(recipe, open_recipe_data(recipe))
    recipe = _recipe(spec, split={"kind": "leave_one_group_out", "holdout_group": "100263"})
    with pytest.raises(ConfigError, match="10 official folds"):
        holdout_split(recipe, open_recipe_data(recipe))
    recipe = _recipe(spec, cv="leave_one_group_out")
    with pytest.raises(ConfigError, match=r"data.cv 'leave_one_group_out' is refused"):
        cv_splits(recipe, open_recipe_data(recipe))
    # the official folds are accepted, and every source recording stays in one fold
    recipe = _recipe(spec, split={"kind": "folds", "val_folds": ["3"]}, cv="folds")
    dataset = open_recipe_data(recipe)
    split = holdout_split(recipe, dataset)
    assert {dataset.clips[i].fold for i in split.val} == {"3"}
    assert [s.name for s in cv_splits(recipe, dataset)] == ["1", "2", "3"]
    folds_of = {}
    for clip in dataset:
        folds_of.setdefault(clip.group, set()).add(clip.fold)
    assert all(len(f) == 1 for f in folds_of.values())


def test_urbansound8k_rule_survives_combination_with_other_sources(tmp_path):
    root = _us8k_tree(tmp_path)
    recipe = parse_recipe({"name": "t", "model": {"name": "cnn2d"}, "data": {
        "spec": None, "split": {"kind": "group"},
        "sources": [{"spec": f"urbansound8k:{root}", "label": "no_bird"},
                    {"spec": "synthetic:n_per_class=2", "label": "bird"}]}})
    with pytest.raises(ConfigError, match=r"source 'urbansound8k:.*official folds"):
        holdout_split(recipe, open_recipe_data(recipe))


# ==================================================================== ESC-50 subsets
def _esc50_tree(tmp_path: Path) -> Path:
    """The real esc50.csv with a stand-in file for the first clip of each target only."""
    csv_text = _shared("layouts", "esc50", "meta", "esc50.csv").read_text()
    _touch(tmp_path / "meta" / "esc50.csv", csv_text)
    first_of: dict[str, str] = {}
    for line in csv_text.splitlines()[1:]:
        name, _, target = line.split(",")[:3]
        first_of.setdefault(target, name)
    for name in first_of.values():
        _touch(tmp_path / "audio" / name)
    return tmp_path


def test_esc50_class_order_is_seed_001s_subset_order(tmp_path):
    ds = open_dataset(f"esc50:{_esc50_tree(tmp_path)}?missing=skip")
    assert len(ds) == 50 and len(ds.class_order) == 50
    names = {c.meta["target"]: c.label for c in ds.clips}
    assert ds.class_order == tuple(names[t] for t in SUBSET_TARGETS)
    # S10 is ESC-10 (the esc10 column), and S20 adds the paper's ten targets
    esc10 = {c.label for c in ds.clips if c.meta["esc10"] == "True"}
    assert set(ds.class_order[:10]) == esc10
    assert set(ds.class_order[10:20]) == {names[t] for t in (5, 31, 18, 27, 48, 8, 15, 45, 25, 34)}
    assert set(ds.class_order[30:40]) == {names[t] for t in (6, 9, 16, 17, 24, 29, 32, 35, 37, 44)}
    assert sorted(SUBSET_TARGETS) == list(range(50))


@pytest.mark.parametrize("n", [10, 20, 30, 40, 50])
def test_data_classes_n_selects_s_n(tmp_path, n):
    recipe = _recipe(f"esc50:{_esc50_tree(tmp_path)}?missing=skip", classes=n)
    dataset = open_recipe_data(recipe)
    assert len(dataset.labels) == n
    assert set(dataset.labels) == set(open_dataset(recipe.data.spec).class_order[:n])


def test_data_classes_by_name_and_its_errors(tmp_path):
    spec = f"esc50:{_esc50_tree(tmp_path)}?missing=skip"
    dataset = open_recipe_data(_recipe(spec, classes=["dog", "rain"]))
    assert dataset.labels == ["dog", "rain"] and len(dataset) == 2
    with pytest.raises(ConfigError, match=r"\['barking'\] are not classes of esc50"):
        open_recipe_data(_recipe(spec, classes=["dog", "barking"]))
    with pytest.raises(ConfigError, match="more than the 50 classes"):
        open_recipe_data(_recipe(spec, classes=60))
    with pytest.raises(ConfigError, match="does not define"):
        select_classes(open_dataset("synthetic:n_per_class=2"), 3)
    with pytest.raises(ConfigError, match="data.classes"):
        _recipe(spec, classes=0)


def test_esc50_real_layout_with_missing_skip():
    root = _shared("layouts", "esc50")
    ds = open_dataset(f"esc50:{root}?missing=skip")
    (clip,) = ds.clips
    assert (clip.label, clip.fold, clip.meta["target"]) == ("clapping", "1", 22)
    assert "clapping" in ds.class_order[20:30]  # target 22 joins in S30
    with pytest.raises(DataError, match="listed in esc50.csv but not in audio/"):
        open_dataset(f"esc50:{root}")


# ==================================================================== TUT Acoustic Scenes 2017
def test_tut2017_real_scenes_and_three_classes():
    root = _shared("tut2017-scenes")
    ds = open_dataset(f"tut2017:{root}")
    assert len(ds) == 382 and len(ds.labels) == 15 and len({c.group for c in ds}) == 148
    assert all(c.fold is None for c in ds)
    clip = next(c for c in ds if Path(c.path).name == "a001_50_60.flac")
    assert (clip.label, clip.group, clip.meta["start"], clip.meta["end"]) == (
        "residential_area", "a001", 50.0, 60.0)
    three = open_dataset(f"tut2017-3class:{root}")
    assert three.labels == ["indoor", "outdoor", "transportation"]
    by_scene = {}
    for original, mapped in zip(ds.clips, three.clips, strict=True):
        assert (original.path, original.group) == (mapped.path, mapped.group)
        assert mapped.meta["source_label"] == original.label
        by_scene.setdefault(original.label, set()).add(mapped.label)
    assert by_scene["metro_station"] == {"indoor"} and by_scene["tram"] == {"transportation"}
    assert by_scene["beach"] == {"outdoor"} and by_scene["cafe/restaurant"] == {"indoor"}
    assert sum(c.label == "indoor" for c in three) == 32 + 27 + 25 + 29 + 28 + 32
    assert three.identity(three.clips[0]) == ds.identity(ds.clips[0])  # same cached features


def _tut_tree(tmp_path: Path, *, setup: dict[str, list[str]]) -> Path:
    meta = ["audio/a001_0_10.wav\tbeach\ta001", "audio/a001_10_20.wav\tbeach\ta001",
            "audio/b002_0_10.wav\tbus\tb002", "audio/c003_30_40.wav\thome\tc003"]
    _touch(tmp_path / "meta.txt", "\n".join(meta) + "\n")
    for line in meta:
        _touch(tmp_path / line.split("\t")[0])
    for name, lines in setup.items():
        _touch(tmp_path / "evaluation_setup" / name, "\n".join(lines) + "\n")
    return tmp_path


def test_tut2017_folds_come_from_the_evaluate_lists(tmp_path):
    root = _tut_tree(tmp_path, setup={
        "fold1_evaluate.txt": ["audio/a001_0_10.wav\tbeach", "audio/a001_10_20.wav\tbeach"],
        "fold2_evaluate.txt": ["audio/b002_0_10.wav\tbus", "audio/c003_30_40.wav\thome"],
        "fold1_train.txt": ["audio/b002_0_10.wav\tbus"]})
    ds = open_dataset(f"tut2017:{root}")
    assert {Path(c.path).name: c.fold for c in ds} == {
        "a001_0_10.wav": "1", "a001_10_20.wav": "1", "b002_0_10.wav": "2",
        "c003_30_40.wav": "2"}
    assert [s.name for s in given_folds(ds)] == ["1", "2"]


def test_tut2017_fold_lists_that_disagree_with_meta_are_listed(tmp_path):
    root = _tut_tree(tmp_path, setup={
        "fold1_evaluate.txt": ["audio/a001_0_10.wav\tbus", "audio/zzz.wav\thome",
                               "audio/b002_0_10.wav\tbus"],
        "fold2_evaluate.txt": ["audio/b002_0_10.wav\tbus"]})
    with pytest.raises(DataError) as info:
        open_dataset(f"tut2017:{root}")
    text = str(info.value)
    assert "a001_0_10.wav is 'bus' here but 'beach' in meta.txt" in text
    assert "zzz.wav is not in meta.txt" in text
    assert "b002_0_10.wav is also evaluated in fold 1" in text


def test_tut2017_missing_audio_and_bad_rows(tmp_path):
    root = _tut_tree(tmp_path, setup={})
    (root / "audio" / "c003_30_40.wav").unlink()
    with pytest.raises(DataError, match=r"(?s)1 of the 4 audio files listed .*c003_30_40.wav"):
        open_dataset(f"tut2017:{root}")
    assert len(open_dataset(f"tut2017:{root}?missing=skip")) == 3
    _touch(root / "meta.txt", "audio/a001_0_10.wav\tbeach\n")
    with pytest.raises(DataError, match="fewer fields than"):
        open_dataset(f"tut2017:{root}")


# ==================================================================== TAU 2019 / 2020 / 2022
@pytest.mark.parametrize("kind, folder, name, channels", [
    ("tau2019", "tau2019uas", "airport-barcelona-0-0-a.wav", 2),
    ("tau2020-mobile", "tau2020uas_mobile", "airport-barcelona-0-0-a.wav", 1),
    ("tau2022-mobile", "tau2022uas_mobile", "airport-lisbon-1000-40000-0-a.wav", 1),
])
def test_tau_real_layouts(kind, folder, name, channels, caplog):
    root = _shared("layouts", folder)
    with caplog.at_level(logging.INFO, logger="bitsound.data"):
        ds = open_dataset(f"{kind}:{root}?missing=skip")
    (clip,) = ds.clips
    assert Path(clip.path).name == name
    assert (clip.label, clip.device, clip.fold) == ("airport", "A", "train")
    assert clip.group == clip.meta["city"] == name.split("-")[1]
    assert sf.info(clip.path).channels == channels
    stereo = load_audio(clip.path, channels="stereo")
    assert stereo.shape[0] == 2
    if channels == 2:  # binaural audio stays two different channels
        assert not np.array_equal(stereo[0], stereo[1])
    else:  # mono is duplicated
        assert np.array_equal(stereo[0], stereo[1])
    with pytest.raises(DataError, match="missing"):
        open_dataset(f"{kind}:{root}")


def test_tau2020_3class_maps_scenes_and_keeps_three_class_labels(tmp_path):
    real = _shared("layouts", "tau2020uas_mobile")
    ds = open_dataset(f"tau2020-3class:{real}?missing=skip")
    assert ds.labels == ["indoor"] and ds.clips[0].meta["source_label"] == "airport"
    # a 3Class development set: scene_label already holds the three classes
    dev = tmp_path / "TAU-urban-acoustic-scenes-2020-3class-development"
    rows = ["filename\tscene_label\tidentifier\tsource_label",
            "audio/park-lyon-1-2-a.wav\toutdoor\tlyon-1\ta",
            "audio/bus-milan-3-4-a.wav\ttransportation\tmilan-3\ta"]
    _touch(dev / "meta.csv", "\n".join(rows) + "\n")
    for row in rows[1:]:
        _touch(dev / row.split("\t")[0])
    three = open_dataset(f"tau2020-3class:{tmp_path}")
    assert [c.label for c in three] == ["transportation", "outdoor"]


def _tau_tree(tmp_path: Path, files: list[tuple[str, str]], *, train: list[str] | None = None,
              evaluate: list[str] | None = None, source_label=None) -> Path:
    dev = tmp_path / "TAU-urban-acoustic-scenes-2020-mobile-development"
    rows = ["filename\tscene_label\tidentifier\tsource_label"]
    for name, scene in files:
        parts = name[:-4].split("-")
        rows.append(f"audio/{name}\t{scene}\t{parts[1]}-{parts[2]}\t"
                    f"{source_label or parts[-1]}")
        _touch(dev / "audio" / name)
    _touch(dev / "meta.csv", "\n".join(rows) + "\n")
    scene_of = dict(files)
    for fold, names in (("train", train), ("evaluate", evaluate)):
        if names is not None:
            _touch(dev / "evaluation_setup" / f"fold1_{fold}.csv", "filename\tscene_label\n" +
                   "".join(f"audio/{n}\t{scene_of[n]}\n" for n in names))
    return tmp_path


_TAU_FILES = [("park-lyon-1-2-a.wav", "park"), ("park-lyon-1-2-s4.wav", "park"),
              ("bus-milan-3-4-b.wav", "bus"), ("bus-prague-5-6-c.wav", "bus"),
              ("bus-prague-5-7-s1.wav", "bus")]


def test_tau_official_setup_folds_devices_and_left_out_clips(tmp_path, caplog):
    root = _tau_tree(tmp_path, _TAU_FILES, train=["bus-milan-3-4-b.wav", "park-lyon-1-2-a.wav"],
                     evaluate=["bus-prague-5-6-c.wav", "park-lyon-1-2-s4.wav"])
    with caplog.at_level(logging.INFO, logger="bitsound.data"):
        ds = open_dataset(f"tau2020-mobile:{root}")
    assert "uses 4 of the 5 clips" in caplog.text
    assert {Path(c.path).name: (c.fold, c.device, c.group) for c in ds} == {
        "park-lyon-1-2-a.wav": ("train", "A", "lyon"),
        "bus-milan-3-4-b.wav": ("train", "B", "milan"),
        "bus-prague-5-6-c.wav": ("evaluate", "C", "prague"),
        "park-lyon-1-2-s4.wav": ("evaluate", "S4", "lyon")}
    recipe = _recipe(f"tau2020-mobile:{root}", split={"kind": "folds", "val_folds": ["evaluate"]})
    split = holdout_split(recipe, open_recipe_data(recipe))
    assert len(split.train) == 2 and len(split.val) == 2
    everything = open_dataset(f"tau2020-mobile:{root}?setup=none")
    assert len(everything) == 5 and all(c.fold is None for c in everything)


def test_tau_rejects_device_mismatch_and_disagreeing_setup(tmp_path):
    root = _tau_tree(tmp_path / "a", _TAU_FILES[:2], source_label="b")
    with pytest.raises(DataError, match="names device 'a' but source_label is 'b'"):
        open_dataset(f"tau2020-mobile:{root}")
    root = _tau_tree(tmp_path / "b", _TAU_FILES, train=["bus-milan-3-4-b.wav"],
                     evaluate=["bus-milan-3-4-b.wav"])
    with pytest.raises(DataError, match="also in fold1_train.csv"):
        open_dataset(f"tau2020-mobile:{root}")
    with pytest.raises(DataError, match="no meta.csv"):
        open_dataset(f"tau2019:{tmp_path}")


def test_a_model_of_a_class_subset_is_evaluated_on_that_subset(tmp_path):
    from bitsound.experiment import evaluate_model
    from bitsound.modelfile import SoundClassifier, build_net

    recipe = parse_recipe({"name": "t", "model": {"name": "cnn2d"},
                           "data": {"spec": "synthetic:n_per_class=3", "classes": ["bark", "siren"]},
                           "audio": {"clip_seconds": 0.5}})
    dataset = open_recipe_data(recipe)
    assert dataset.labels == ["bark", "siren"]
    model = SoundClassifier(recipe, dataset.labels, build_net(recipe, 2)).eval()
    report = evaluate_model(model, "synthetic:n_per_class=3", cache=None, show_progress=False)
    assert report.n == 6 and report.labels == ["bark", "siren"]
