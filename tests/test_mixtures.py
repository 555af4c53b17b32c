"""Mixture synthesis on the real event and background material: disjoint parts, determinism,
annotations that say where the event energy is."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from bitsound.audio.io import load_audio
from bitsound.data import open_dataset
from bitsound.data.events import read_annotations
from bitsound.data.mixtures import MixConfig, make_mixtures, split_sources
from bitsound.errors import ConfigError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
EVENTS = DATA / "dcase2016-task2-events"
BACKGROUNDS = DATA / "tut2017-scenes"
pytestmark = pytest.mark.skipif(not (EVENTS.is_dir() and BACKGROUNDS.is_dir()),
                                reason=f"{EVENTS} or {BACKGROUNDS} not present")


def _cfg(**kw):
    base = {"events_dir": str(EVENTS), "backgrounds_dir": str(BACKGROUNDS),
            "scenes": ["office", "library"], "n_mixtures": {"train": 3, "val": 1, "test": 2}}
    return MixConfig(**{**base, **kw})


def test_parts_are_disjoint_by_event_file_and_recording():
    split = split_sources(_cfg())
    parts = list(split.events)
    assert parts == ["train", "val", "test"]
    for a in parts:
        for b in parts:
            if a >= b:
                continue
            files_a = {p for files in split.events[a].values() for p in files}
            files_b = {p for files in split.events[b].values() for p in files}
            assert not files_a & files_b
            rec_a = {x.recording for x in split.backgrounds[a]}
            rec_b = {x.recording for x in split.backgrounds[b]}
            assert not rec_a & rec_b
    # every class in every part; 14 files per class dealt 8 / 2 / 4 (60 / 15 / 25 %)
    for part, n in (("train", 8), ("val", 2), ("test", 4)):
        assert len(split.events[part]) == 11
        assert all(len(files) == n for files in split.events[part].values())
    # each scene's recordings are dealt separately, so each part holds both scenes
    assert all({x.scene for x in split.backgrounds[p]} == {"office", "library"} for p in parts)


def test_mixtures_are_deterministic_annotated_and_loadable(tmp_path):
    summary = make_mixtures(_cfg(seed=5), tmp_path / "a", show_progress=False)
    make_mixtures(_cfg(seed=5), tmp_path / "b", show_progress=False)
    make_mixtures(_cfg(seed=6), tmp_path / "c", show_progress=False)
    a = (tmp_path / "a/dev/audio/train_0001.wav").read_bytes()
    assert a == (tmp_path / "b/dev/audio/train_0001.wav").read_bytes()
    assert a != (tmp_path / "c/dev/audio/train_0001.wav").read_bytes()
    assert summary["parts"]["test"]["mixtures"] == 2 and summary["sample_rate"] == 22050

    dev = open_dataset(f"sed:{tmp_path / 'a/dev'}")
    assert sorted({c.fold for c in dev}) == ["train", "val"] and len(dev) == 4
    test_table = read_annotations(tmp_path / "a/test/events.tsv")
    assert sorted(test_table) == ["test_0000.wav", "test_0001.wav"]
    record = json.loads((tmp_path / "a/split.json").read_text())
    test_files = {f for files in record["split"]["test"]["event_files"].values() for f in files}
    with open(tmp_path / "a/test/sources.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and all(str(Path(r["event_file"]).relative_to(EVENTS)) in test_files for r in rows)

    for row in rows:  # each annotation spans exactly its event file, and the file's energy is there
        mix, rate = sf.read(tmp_path / "a/test/audio" / row["filename"])
        event = load_audio(row["event_file"], sample_rate=rate, channels="mono")[0]
        onset, offset = float(row["onset"]), float(row["offset"])
        assert offset - onset == pytest.approx(len(event) / rate, abs=1e-4)
        background = load_audio(row["background"], sample_rate=rate, channels="mono")[0]
        start, stop = round(onset * rate), round(offset * rate)
        added = np.abs(mix[start:stop]).mean() / max(np.abs(background[start:stop]).mean(), 1e-9)
        before = np.abs(mix[:start]).mean() / max(np.abs(background[:start]).mean(), 1e-9) if start else 1
        ebr = float(row["ebr_db"])
        if ebr > 0:  # a loud event raises the level where it is annotated
            assert added > before


def test_speed_perturbation_changes_training_events_only(tmp_path):
    make_mixtures(_cfg(seed=5), tmp_path / "plain", show_progress=False)
    make_mixtures(_cfg(seed=5, speed_perturb=0.2), tmp_path / "fast", show_progress=False)
    for folder, name in (("test", "test_0000.wav"), ("dev", "val_0000.wav")):  # as recorded
        assert (tmp_path / "plain" / folder / "audio" / name).read_bytes() == \
            (tmp_path / "fast" / folder / "audio" / name).read_bytes()
    with open(tmp_path / "plain/dev/sources.csv") as fh:
        plain = [r for r in csv.DictReader(fh) if r["filename"].startswith("train_")]
    with open(tmp_path / "fast/dev/sources.csv") as fh:
        fast = [r for r in csv.DictReader(fh) if r["filename"].startswith("train_")]
    # the same events are drawn (longer ones may leave no room for the last); each annotation spans
    # its resampled event: duration / speed, speed in [0.8, 1.2]
    ratios = []
    for name in sorted({r["filename"] for r in plain}):
        p_rows = [r for r in plain if r["filename"] == name]
        f_rows = [r for r in fast if r["filename"] == name]
        assert [r["event_file"] for r in f_rows] == [r["event_file"] for r in p_rows][: len(f_rows)]
        ratios += [(float(f["offset"]) - float(f["onset"])) / (float(q["offset"]) - float(q["onset"]))
                   for f, q in zip(f_rows, p_rows[: len(f_rows)], strict=True)]
    assert all(1 / 1.2 - 1e-3 <= r <= 1 / 0.8 + 1e-3 for r in ratios)
    assert any(abs(r - 1) > 0.01 for r in ratios)
    with pytest.raises(ValueError):
        _cfg(speed_perturb=0.7)


def test_bad_mix_settings_are_config_errors():
    with pytest.raises(ValueError, match="sum to at most 1"):
        _cfg(fractions={"train": 0.8, "val": 0.3})
    with pytest.raises(ConfigError, match="not in"):
        split_sources(_cfg(scenes=["moon"]))


def test_val_into_train_keeps_the_test_part_and_trains_on_the_val_sources(tmp_path):
    plain = split_sources(_cfg())
    final_cfg = _cfg(val_into_train=True, n_mixtures={"train": 3, "val": 0, "test": 2})
    final = split_sources(final_cfg)
    assert list(final.events) == ["train", "test"]
    assert final.events["test"] == plain.events["test"]
    assert final.backgrounds["test"] == plain.backgrounds["test"]
    for name, files in final.events["train"].items():  # 8 + 2 files per class
        assert set(files) == set(plain.events["train"][name]) | set(plain.events["val"][name])
    assert {b.recording for b in final.backgrounds["train"]} == \
        {b.recording for part in ("train", "val") for b in plain.backgrounds[part]}

    make_mixtures(_cfg(), tmp_path / "plain", show_progress=False)
    summary = make_mixtures(final_cfg, tmp_path / "final", show_progress=False)
    assert list(summary["parts"]) == ["train", "test"]
    assert summary["parts"]["train"]["event_files"] == 110
    for name in ("test_0000.wav", "test_0001.wav"):  # the same held-out mixtures, byte for byte
        assert (tmp_path / "plain/test/audio" / name).read_bytes() == \
            (tmp_path / "final/test/audio" / name).read_bytes()
    dev = open_dataset(f"sed:{tmp_path / 'final/dev'}")
    assert {c.fold for c in dev} == {"train"} and len(dev) == 3
    with pytest.raises(ValueError, match="val mixtures would share"):
        _cfg(val_into_train=True)  # the base config asks for one val mixture
    with pytest.raises(ValueError, match="needs a train and a val share"):
        _cfg(val_into_train=True, fractions={"train": 0.75, "test": 0.25},
             n_mixtures={"train": 3, "test": 2})


def test_cli_final_mixtures_train_without_a_held_out_split(tmp_path, capsys):
    from bitsound.cli import main

    out = tmp_path / "mix"
    assert main(["mix", "--events", str(EVENTS), "--backgrounds", str(BACKGROUNDS), "--scenes",
                 "office,library", "--out", str(out), "--n-train", "3", "--n-test", "1",
                 "--val-into-train", "-q"]) == 0  # no --n-val: none are made
    assert "fold train)" in capsys.readouterr().out.replace("\n", " ")
    assert not list((out / "dev/audio").glob("val_*"))
    assert main(["mix", "--events", str(EVENTS), "--backgrounds", str(BACKGROUNDS), "--out",
                 str(tmp_path / "bad"), "--n-val", "2", "--val-into-train", "-q"]) != 0
    assert "2 val mixtures would share" in capsys.readouterr().err.replace("\n", " ")
    run = tmp_path / "model"
    assert main(["train", "--recipe", "office-events", "--data", f"sed:{out / 'dev'}", "--out",
                 str(run), "--no-cache", "-q", "--set", "data.split.kind=none", "--set",
                 "train.epochs=1", "--set", "model.params.channels=[8,16]"]) == 0
    assert json.loads((run / "metrics.json").read_text())["n_train_clips"] == 3
