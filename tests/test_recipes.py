"""Tiny-data debug run of every shipped recipe: it trains one epoch and writes its files.

The full runs are measured with ``bitsound cv`` / ``bitsound train`` (see the README); here each
recipe's pipeline (its audio, segmentation, front end, model and training settings) runs end to
end on a few synthetic clips, so a broken recipe fails the tests, not a user's first run.
"""

import json

import pytest
import torch

from bitsound.cli import main
from bitsound.recipes import list_recipes, load_recipe

RECIPES = [name for name, description in list_recipes() if not description.startswith("study:")]


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_debug_run(name, tmp_path):
    out = tmp_path / name
    debug = ["--data", "synthetic:n_per_class=3,n_locations=3", "--no-cache", "-q",
             "--set", "train.epochs=1", "--set", "data.split.kind=group",
             "--set", "data.split.val_fraction=0.34"]
    if load_recipe(name).train.task == "distillation":
        # its teacher: the same recipe trained as a plain classifier (same features and labels)
        teacher = tmp_path / "teacher"
        assert main(["train", "--recipe", name, "--out", str(teacher), *debug,
                     "--set", "train.task=classification", "--set", "train.distill=null"]) == 0
        debug += ["--set", f"train.distill.teacher={teacher / 'model.pt'}"]
    code = main(["train", "--recipe", name, "--out", str(out), *debug])
    assert code == 0
    for produced in ("model.pt", "metrics.json", "log.jsonl", "checkpoints/best.pt",
                     "checkpoints/last.pt"):
        assert (out / produced).is_file(), produced
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["recipe"] == name and metrics["held_out"]["n"] > 0
    stored = torch.load(out / "model.pt", weights_only=True)
    assert stored["recipe"]["name"] == name
