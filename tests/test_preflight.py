"""Every bad file found before training starts (issue 17, item 3): data check --decode, and the
check train / cv / evaluate run on the clips they are about to use, with and without --skip-bad.
"""

from __future__ import annotations

import json
import logging
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from bitsound.cli import main
from bitsound.data import FeatureCache, open_dataset
from bitsound.data.combine import Source, open_combined
from bitsound.preflight import check_clips
from bitsound.recipes import load_recipe

RATE = 16000
TRAIN = ["--recipe", "quickstart", "--set", "train.epochs=1", "--set", "data.split.kind=stratified",
         "--set", "data.split.val_fraction=0.5", "-q"]


def _tone(path: Path, freq: float, seconds: float = 1.0) -> Path:
    t = np.arange(int(seconds * RATE)) / RATE
    sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), RATE)
    return path


def _wav_header(channels: int, n_frames: int) -> bytes:
    block = 2 * max(channels, 1)
    data = bytes(block * n_frames)
    fmt = struct.pack("<HHIIHH", 1, channels, RATE, RATE * block, block, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack(
        "<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _make_bad_files(folder: Path) -> dict[str, str]:
    """Every kind of bad file in ``folder``; file name -> a word its problem must contain."""
    (folder / "empty.wav").write_bytes(b"")
    (folder / "notes.wav").write_text("field notes, not a recording\n" * 20)
    whole = _tone(folder.parent / "whole.wav", 300).read_bytes()
    (folder / "cut.wav").write_bytes(whole[: len(whole) // 2])
    sf.write(folder.parent / "whole.mp3", np.tile(np.linspace(-0.3, 0.3, 400), 80), RATE,
             format="MP3")
    mp3 = (folder.parent / "whole.mp3").read_bytes()
    (folder / "cut.mp3").write_bytes(mp3[: len(mp3) // 2])
    nan = np.full(RATE, np.nan, dtype=np.float32)
    sf.write(folder / "nan.wav", nan, RATE, subtype="FLOAT")
    (folder / "no_channels.wav").write_bytes(_wav_header(0, 100))
    (folder / "no_frames.wav").write_bytes(_wav_header(1, 0))
    return {"empty.wav": "empty", "notes.wav": "not an audio file", "cut.wav": "truncated",
            "cut.mp3": "truncated", "nan.wav": "NaN", "no_channels.wav": "zero channels",
            "no_frames.wav": "zero length"}


@pytest.fixture
def folder(tmp_path) -> tuple[Path, dict[str, str]]:
    """A class-per-folder set: 6 good tones per class, every kind of bad file in class 'high'."""
    root = tmp_path / "set"
    for label, freq in (("low", 220), ("high", 1760)):
        (root / label).mkdir(parents=True)
        for i in range(6):
            _tone(root / label / f"{label}{i}.wav", freq * (1 + 0.02 * i))
    return root, _make_bad_files(root / "high")


def _named(text: str, bad: dict[str, str]) -> None:
    for name, word in bad.items():
        line = next((ln for ln in text.splitlines() if f"/{name}" in ln), None)
        assert line is not None, f"{name} is not named in:\n{text}"
        assert word.lower() in line.lower(), line


def test_data_check_decode_names_every_bad_file_in_one_run(folder, capsys):
    root, bad = folder
    assert main(["data", "check", f"folder:{root}", "--decode", "--json"]) == 1
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    problems = {Path(p["path"]).name: p["problem"] for p in report["problems"]}
    assert set(problems) == set(bad)
    for name, word in bad.items():
        assert word.lower() in problems[name].lower(), problems[name]
    assert report["n_clips"] == 12 + len(bad) and "Traceback" not in captured.err
    # Without --decode the NaN file passes (its structure is fine); nothing else does.
    assert main(["data", "check", f"folder:{root}", "--json"]) == 1
    headers = {Path(p["path"]).name for p in json.loads(capsys.readouterr().out)["problems"]}
    assert headers == set(bad) - {"nan.wav"}


def test_data_check_decode_renders_the_table(folder, capsys):
    root, bad = folder
    assert main(["data", "check", f"folder:{root}", "--decode"]) == 1
    out = capsys.readouterr().out
    assert f"{len(bad)} problem(s)" in out and "contains NaN or infinite samples" in out


def test_train_stops_before_training_with_the_whole_list(folder, tmp_path, capsys):
    root, bad = folder
    out = tmp_path / "run"
    assert main(["train", *TRAIN, "--data", f"folder:{root}", "--out", str(out),
                 "--no-cache"]) == 2
    err = capsys.readouterr().err
    assert f"{len(bad)} of the {12 + len(bad)} clips" in err and "nothing was trained" in err
    _named(err, bad)
    assert "--skip-bad" in err and "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())  # no log, checkpoint or model


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_train_with_skip_bad_leaves_them_out_and_says_which(folder, tmp_path):
    root, bad = folder
    out = tmp_path / "run"
    records = _Records()
    logger = logging.getLogger("bitsound.preflight")
    logger.addHandler(records)
    try:
        assert main(["train", *TRAIN, "--data", f"folder:{root}", "--out", str(out),
                     "--no-cache", "--skip-bad"]) == 0
    finally:
        logger.removeHandler(records)
    (warning,) = records.messages
    assert warning.startswith(f"--skip-bad: leaving out {len(bad)} of the {12 + len(bad)} clips")
    _named(warning, bad)
    metrics = json.loads((out / "metrics.json").read_text())
    check = metrics["clip_check"]
    assert check["n_bad"] == len(bad) and check["n_decoded"] == 12 + len(bad)
    assert {Path(b["path"]).name for b in check["bad"]} == set(bad)
    assert metrics["n_train_clips"] + metrics["held_out"]["n"] == 12


def test_cached_clips_count_as_checked(folder, tmp_path):
    root, _ = folder
    recipe = load_recipe("quickstart", overrides=["train.epochs=1"])
    dataset = open_dataset(f"folder:{root}")
    good = [i for i, c in enumerate(dataset.clips) if Path(c.path).stem[:-1] in ("low", "high")]
    cache = FeatureCache(tmp_path / "cache")
    first = check_clips(dataset, good, recipe=recipe, cache=cache, show_progress=False)
    assert (first.n_decoded, first.n_cached, first.problems) == (12, 0, [])
    from bitsound.pipeline import build_features

    build_features(dataset, good, recipe=recipe, label_index={"high": 0, "low": 1},
                   cache=cache, show_progress=False)
    again = check_clips(dataset, range(len(dataset.clips)), recipe=recipe, cache=cache,
                        show_progress=False)
    assert again.n_cached == 12 and again.n_decoded == len(dataset.clips) - 12
    assert len(again.problems) == again.n_decoded


def test_generated_clips_of_a_combined_set_are_not_files(folder):
    root, bad = folder
    dataset = open_combined([Source(spec=f"folder:{root}"),
                             Source(spec="synthetic:n_per_class=1,n_classes=2", label="low")])
    report = check_clips(dataset, range(len(dataset.clips)), recipe=load_recipe("quickstart"),
                         cache=None, show_progress=False)
    assert report.n_generated == 2 and report.n_decoded == 12 + len(bad)
    assert {Path(p.path).name for p in report.problems} == set(bad)


def _manifest_with_folds(root: Path, bad: dict[str, str]) -> Path:
    rows = ["path,label,fold"]
    for label in ("low", "high"):
        rows += [f"{label}/{label}{i}.wav,{label},{1 + i % 2}" for i in range(6)]
    rows += [f"high/{name},high,{1 + i % 2}" for i, name in enumerate(bad)]
    manifest = root / "set.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def test_cv_stops_before_the_first_fold_and_skip_bad_runs_every_fold(folder, tmp_path, capsys):
    root, bad = folder
    manifest = _manifest_with_folds(root, bad)
    out = tmp_path / "cv"
    args = ["cv", "--recipe", "quickstart", "--data", f"manifest:{manifest}", "--out", str(out),
            "--set", "data.cv=folds", "--set", "train.epochs=1", "--no-cache", "-q"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "no fold was trained" in err and f"delete their rows from '{manifest}'" in err
    _named(err, bad)
    assert not out.exists()
    assert main([*args, "--skip-bad"]) == 0
    summary = json.loads((out / "cv.json").read_text())
    assert [row["held_out"] for row in summary["folds"]] == ["1", "2"]
    assert summary["clip_check"]["n_bad"] == len(bad)
    assert sum(row["n"] for row in summary["folds"]) == 12  # each good clip held out once
    fold = json.loads((out / "cv-1" / "metrics.json").read_text())
    assert fold["clip_check"]["n_bad"] == len(bad)


def test_evaluate_and_predict_name_the_bad_files_and_the_way_on(folder, tmp_path, capsys):
    root, bad = folder
    good = tmp_path / "good"
    for label in ("low", "high"):
        (good / label).mkdir(parents=True)
        for path in (root / label).glob(f"{label}*.wav"):
            (good / label / path.name).write_bytes(path.read_bytes())
    out = tmp_path / "run"
    assert main(["train", *TRAIN, "--data", f"folder:{good}", "--out", str(out),
                 "--no-cache"]) == 0
    capsys.readouterr()
    evaluate = ["evaluate", "--model", str(out / "model.pt"), "--data", f"folder:{root}",
                "--no-cache"]
    assert main(evaluate) == 2
    err = capsys.readouterr().err
    assert "nothing was evaluated" in err and "--skip-bad" in err and "Traceback" not in err
    _named(err, bad)
    assert main([*evaluate, "--skip-bad", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == 12 and report["clip_check"]["n_bad"] == len(bad)
    files = [str(root / "low" / "low0.wav"), str(root / "high" / "cut.wav")]
    assert main(["predict", "--model", str(out / "model.pt"), *files]) == 2
    err = capsys.readouterr().err
    assert "cut.wav" in err and "(file 2 of 2)" in err and "leave it out" in err

