"""``bitsound study acdnet-classes`` (seed 001 Tables 2 and 5) on the ESC-50 layout fixture.

The fixture holds ESC-50's real ``meta/esc50.csv`` and one real clip; the tree built here gives
one clip of each class of S20 in folds 1 and 2 (copies of that clip, under the names the csv
lists), read with ``?missing=skip``. The S10 and S20 rows of the shipped study train for one epoch
with tiny channel widths of each row's own shape (11 widths, conv12 one map per class, for ACDNet
and Mini-ACDNet; 12 for Micro-ACDNet, whose conv12 has its own width): the test checks the study's
mechanics (the seed's class subsets, float and XNOR rows, one run folder per row), not accuracy;
every row of it is checked as a recipe.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import yaml

from bitsound.cli import main
from bitsound.data.esc import SUBSET_TARGETS
from bitsound.models import build_model
from bitsound.recipes import load_recipe, study_path
from bitsound.study import _as_overrides, load_study

MODELS_PER_SUBSET = ("acdnet", "xacdnet", "mini-acdnet", "xmini-acdnet", "micro-acdnet")
LAYOUT = Path(__file__).resolve().parents[2] / "shared" / "data" / "layouts" / "esc50"


def _tree(tmp_path: Path) -> Path:
    if not (LAYOUT / "meta" / "esc50.csv").is_file():
        pytest.skip(f"the ESC-50 layout fixture is not at {LAYOUT}")
    root = tmp_path / "ESC-50"
    (root / "meta").mkdir(parents=True)
    (root / "audio").mkdir()
    shutil.copy(LAYOUT / "meta" / "esc50.csv", root / "meta" / "esc50.csv")
    clip = next((LAYOUT / "audio").glob("*.wav"))
    chosen: set[tuple[str, str]] = set()
    with (root / "meta" / "esc50.csv").open() as handle:
        for row in csv.DictReader(handle):
            key = (row["fold"], row["target"])
            if row["fold"] in ("1", "2") and int(row["target"]) in SUBSET_TARGETS[:20] \
                    and key not in chosen:
                chosen.add(key)
                shutil.copy(clip, root / "audio" / row["filename"])
    assert len(chosen) == 40
    return root


def test_shipped_study_lists_seed_001s_rows():
    study = load_study(study_path("acdnet-classes"))
    assert [row.name for row in study.rows[:5]] == ["S10 ACDNet", "S10 XACDNet", "S10 Mini-ACDNet",
                                                    "S10 XMini-ACDNet", "S10 Micro-ACDNet"]
    assert len(study.rows) == 25
    for index, row in enumerate(study.rows):
        recipe = load_recipe(study.base, overrides=_as_overrides(study.set) + _as_overrides(row.set))
        assert recipe.data.classes == 10 * (index // 5 + 1)
        assert recipe.model.name == MODELS_PER_SUBSET[index % 5]
        # seed 001 Table 8: SGD for the float networks, Adam + cosine for the XNOR ones
        assert recipe.train.optimizer.name == ("adam" if index % 5 in (1, 3) else "sgd")
        assert recipe.train.loss == "kl_divergence" and recipe.augment.between_class is not None
        assert recipe.data.split.val_folds == ["1"]


@pytest.mark.slow
def test_acdnet_classes_study_trains_s10_and_s20_float_and_xnor(tmp_path):
    root = _tree(tmp_path)
    shipped = yaml.safe_load(study_path("acdnet-classes").read_text())
    shipped["rows"] = [row for row in shipped["rows"] if row["name"].startswith(("S10 ", "S20 "))]
    tiny, tiny_micro = [2, 4] + [2] * 9, [2, 4] + [2] * 9 + [6]  # conv12 of Micro: 6 maps
    for row in shipped["rows"]:  # each row keeps its own shape, only narrower
        row["set"]["model.params.channels"] = tiny_micro if "Micro" in row["name"] else tiny
    study = tmp_path / "acdnet-classes-s10-s20.yaml"
    study.write_text(yaml.safe_dump(shipped))
    out = tmp_path / "study"
    assert main(["study", str(study), "--data", f"esc50:{root}?missing=skip", "--out", str(out),
                 "--cache", str(tmp_path / "cache"), "-q", "--set", "train.epochs=1",
                 "--set", "audio.crop.test_crops=2", "--set", "train.batch_size=32"]) == 0
    rows = list(csv.DictReader((out / "study.csv").open()))
    assert [r["row"] for r in rows] == [r["name"] for r in shipped["rows"]] and len(rows) == 10
    for index, row in enumerate(rows):
        n_classes = 10 * (index // 5 + 1)
        metrics = json.loads((out / f"row{index + 1:02d}" / "metrics.json").read_text())
        # the seed's subset S_N: its first N targets, one fold-1 clip of each held out
        assert len(metrics["labels"]) == n_classes
        assert metrics["held_out"]["n"] == n_classes
        assert metrics["split"]["kind"] == "folds" and metrics["split"]["name"] == "1"
        binary = "XACDNet" in row["row"] or "XMini" in row["row"]
        assert (int(row["bops"]) > 0) == binary, row["row"]
    # ACDNet's conv12 has one map per class, and so does the classifier
    by_name = {r["row"]: int(r["params"]) for r in rows}
    assert by_name["S10 ACDNet"] < by_name["S20 ACDNet"]
    # Micro-ACDNet's conv12 keeps its 6 maps whatever the classes: only the classifier grows
    assert by_name["S20 Micro-ACDNet"] - by_name["S10 Micro-ACDNet"] == 10 * (6 + 1)
    for n in (10, 20):
        micro = build_model("micro-acdnet", input_shape=(1, 30225), n_classes=n,
                            params={"channels": tiny_micro})
        assert by_name[f"S{n} Micro-ACDNet"] == sum(p.numel() for p in micro.parameters())
    names_of = {int(r["target"]): r["category"]
                for r in csv.DictReader((root / "meta" / "esc50.csv").open())}
    for index, n in ((0, 10), (5, 20)):
        labels = json.loads((out / f"row{index + 1:02d}" / "metrics.json").read_text())["labels"]
        assert sorted(labels) == sorted(names_of[t] for t in SUBSET_TARGETS[:n])
