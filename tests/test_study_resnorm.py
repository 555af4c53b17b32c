"""``bitsound study resnorm`` (seed 003 Table 3) on a TAU 2020 Mobile tree with devices.

The tree is built from the real clip of the TAU 2020 Mobile layout fixture in
``../shared/data/layouts`` (its ``meta.csv`` / ``evaluation_setup`` format, the clip copied
with a gain and a little noise per file), with seen devices A, B, C, S1 in training and an
unseen S4 in the evaluation fold, so every row's held-out accuracy is given per device as in
the seed's table. One epoch on 1-s clips: the test checks the rows and tables, not accuracy.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from bitsound.cli import main
from bitsound.recipes import study_path
from bitsound.study import load_study

LAYOUT = (Path(__file__).resolve().parents[1].parent / "shared" / "data" / "layouts" / "tau2020uas_mobile"
          / "TAU-urban-acoustic-scenes-2020-mobile-development")


def _tau_tree(root: Path) -> Path:
    sf = pytest.importorskip("soundfile")
    clip = LAYOUT / "audio" / "airport-barcelona-0-0-a.wav"
    if not clip.is_file():
        pytest.skip(f"no TAU layout fixture at {LAYOUT}")
    wave, rate = sf.read(clip, dtype="float32")
    header = (LAYOUT / "meta.csv").read_text().splitlines()[0]
    dev = root / "TAU-urban-acoustic-scenes-2020-mobile-development"
    (dev / "audio").mkdir(parents=True)
    (dev / "evaluation_setup").mkdir()
    rng = np.random.default_rng(0)
    rows, train, evaluate = [header], [], []
    for scene, gain in (("airport", 1.0), ("park", 0.25)):
        for city in ("barcelona", "lyon", "prague"):
            for device in ("a", "b", "c", "s1", "s4"):
                name = f"audio/{scene}-{city}-1-{len(rows)}-{device}.wav"
                noisy = gain * wave + 0.01 * rng.standard_normal(wave.shape).astype(np.float32)
                sf.write(dev / name, noisy, rate, subtype="FLOAT")
                rows.append(f"{name}\t{scene}\t{city}-1\t{device}")
                held = city == "prague" or device == "s4"
                (evaluate if held else train).append(f"{name}\t{scene}")
    (dev / "meta.csv").write_text("\n".join(rows) + "\n")
    for fold, names in (("train", train), ("evaluate", evaluate)):
        (dev / "evaluation_setup" / f"fold1_{fold}.csv").write_text(
            "filename\tscene_label\n" + "\n".join(names) + "\n")
    return root


def test_resnorm_study_has_table_3_rows():
    study = load_study(study_path("resnorm"))
    assert len(study.rows) == 9
    norms = [(row.set.get("model.name", "bcresnet-asc-1"), row.set["model.params"]["norm"])
             for row in study.rows]
    small = ("none", "global_freq", "pcen", "resnorm", "resnorm_input", "freq_in")
    assert norms == [("bcresnet-asc-1", n) for n in small] + \
        [("bcresnet-asc-8", n) for n in ("resnorm", "resnorm_input", "freq_in")]


@pytest.mark.slow
def test_resnorm_study_on_tau_with_devices(tmp_path, capsys):
    root = _tau_tree(tmp_path / "tau")
    out = tmp_path / "study"
    code = main(["study", "resnorm", "--data", f"tau2020-mobile:{root}", "--out", str(out),
                 "--cache", str(tmp_path / "cache"),
                 "-q", "--set", "train.epochs=1", "--set", "audio.clip_seconds=1.0",
                 "--set", "augment.time_crop=null", "--set", "data.split.kind=folds",
                 "--set", "data.split.val_folds=[evaluate]"])
    assert code == 0
    result = json.loads((out / "study.json").read_text())
    assert len(result["rows"]) == 9
    for row in result["rows"]:
        devices = {d["device"]: d for d in row["per_device"]}
        assert list(devices) == ["A", "B", "C", "S1", "S4"]
        assert devices["S4"]["seen"] is False and devices["A"]["seen"] is True
        assert sum(d["n"] for d in devices.values()) == 14  # prague's 10 clips + the other cities' S4
    table = list(csv.DictReader((out / "study.csv").open()))
    assert {"acc_A", "acc_S4"} <= set(table[0])
    markdown = (out / "study.md").read_text()
    assert "Held-out accuracy per device" in markdown and "S4 (unseen)" in markdown
    assert "held-out accuracy per device" in capsys.readouterr().out
