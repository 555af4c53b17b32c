"""Tests of bitsound.data.check: every problem collected, counts, JSON and rich output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from rich.console import Console

from bitsound.data import CheckReport, Clip, Dataset, check_dataset, open_dataset

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _wav(path: Path, seconds: float, sr: int = 8000, channels: int = 1) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.full((int(seconds * sr), channels), 0.1), sr)
    return str(path)


def _broken_dataset(tmp_path: Path) -> Dataset:
    good = _wav(tmp_path / "good.wav", 1.0)
    stereo = _wav(tmp_path / "stereo.wav", 0.5, sr=16000, channels=2)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"this is not audio" * 50)
    clips = [
        Clip(path=good, label="a", fold="1", group="g1", device="d1"),
        Clip(path=good, label="a", fold="2", group="g1", start=0.25, end=0.75),
        Clip(path=good, label="b", fold="2", group="g2", start=0.5, end=3.0),  # past the end
        Clip(path=stereo, label="b", fold="1", group="g2"),
        Clip(path=str(empty), label="b", fold="1", group="g3"),
        Clip(path=str(garbage), label="c", fold="2", group="g3"),
        Clip(path=str(tmp_path / "gone.wav"), label="c", fold="2", group="g3"),
    ]
    return Dataset(kind="manifest", root=str(tmp_path), clips=clips)


def test_all_problems_are_collected_with_their_paths(tmp_path):
    report = check_dataset(_broken_dataset(tmp_path))
    assert not report.ok
    problems = {Path(p.path).name: p.problem for p in report.problems}
    assert set(problems) == {"good.wav", "empty.wav", "garbage.wav", "gone.wav"}
    assert "segment 0.5-3 s is not inside the file (1.000 s long)" in problems["good.wav"]
    assert "empty" in problems["empty.wav"]
    assert "does not exist" in problems["gone.wav"]


def test_counts_and_durations(tmp_path):
    report = check_dataset(_broken_dataset(tmp_path))
    assert report.n_clips == 7
    assert report.per_class == {"a": 2, "b": 3, "c": 2}
    assert report.per_fold == {"1": 3, "2": 4}
    assert report.per_group == {"g1": 2, "g2": 2, "g3": 3}
    assert report.per_device == {"(none)": 6, "d1": 1}
    assert report.total_duration == pytest.approx(1.0 + 0.5 + 0.5)
    assert report.sample_rates == {8000: 2, 16000: 1}
    assert report.channels == {1: 2, 2: 1}


def test_attributes_nobody_has_are_left_out(tmp_path):
    clips = [Clip(path=_wav(tmp_path / "a.wav", 0.1), label="x")]
    report = check_dataset(Dataset(kind="folder", root=str(tmp_path), clips=clips))
    assert report.ok
    assert report.per_fold == {} and report.per_group == {} and report.per_device == {}


def test_decode_finds_what_the_header_hides(tmp_path):
    path = tmp_path / "nan.wav"
    data = np.zeros(800, dtype=np.float32)
    data[10] = np.nan
    sf.write(path, data, 8000, subtype="FLOAT")
    ds = Dataset(kind="t", root=str(tmp_path), clips=[Clip(path=str(path), label="x")])
    assert check_dataset(ds).ok
    report = check_dataset(ds, decode=True)
    assert len(report.problems) == 1 and "NaN" in report.problems[0].problem


def test_to_dict_is_json(tmp_path):
    report = check_dataset(_broken_dataset(tmp_path))
    as_dict = json.loads(json.dumps(report.to_dict()))
    assert as_dict["ok"] is False and as_dict["n_clips"] == 7
    assert as_dict["sample_rates"] == {"8000": 2, "16000": 1}
    assert len(as_dict["problems"]) == 4 and {"path", "problem"} <= set(as_dict["problems"][0])


def test_render_prints_tables(tmp_path):
    console = Console(record=True, width=200)
    check_dataset(_broken_dataset(tmp_path)).render(console)
    text = console.export_text()
    for title in ("manifest dataset", "clips per class", "clips per fold", "clips per group",
                  "clips per device", "4 problem(s)", "garbage.wav"):
        assert title in text


def test_progress_callback_and_bar(tmp_path):
    ds = _broken_dataset(tmp_path)
    seen: list[tuple[int, int]] = []
    check_dataset(ds, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(i, 7) for i in range(1, 8)]
    assert isinstance(check_dataset(ds, show_progress=True), CheckReport)


def test_synthetic_clips_are_generated_and_checked():
    report = check_dataset(open_dataset("synthetic:n_per_class=2,n_classes=3,n_locations=2"))
    assert report.ok and report.n_clips == 6
    assert report.total_duration == pytest.approx(6.0)
    assert report.sample_rates == {16000: 6}
    assert sum(report.per_group.values()) == 6 and report.per_device


def test_real_esc10_is_clean():
    root = SHARED_DATA / "esc10"
    if not root.is_dir():
        pytest.skip(f"real data set {root} is absent (CI provides ../shared/data)")
    report = check_dataset(open_dataset(f"esc10-2015:{root}"))
    assert report.ok, report.problems[:3]
    assert report.per_fold == {"1": 80, "2": 80, "3": 80, "4": 80}
    assert report.total_duration == pytest.approx(320 * 5.0, rel=0.02)
