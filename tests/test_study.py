import csv

import pytest

from bitsound.cli import main
from bitsound.errors import ConfigError
from bitsound.recipes import list_recipes, study_path
from bitsound.study import load_study


def test_study_writes_one_row_per_variation(tmp_path, capsys):
    study = tmp_path / "tiny.yaml"
    study.write_text(
        "study: tiny\nbase: quickstart\n"
        "set: {train.epochs: 1, data.spec: 'synthetic:n_per_class=4,seed=2'}\n"
        "rows:\n"
        "  - {name: narrow, set: {model.params.channels: [4, 8]}}\n"
        "  - {name: wide, set: {model.params.channels: [8, 16]}}\n")
    out = tmp_path / "out"
    assert main(["study", str(study), "--out", str(out), "--no-cache", "-q"]) == 0
    rows = list(csv.DictReader((out / "study.csv").open()))
    assert [r["row"] for r in rows] == ["narrow", "wide"]
    assert int(rows[0]["params"]) < int(rows[1]["params"])
    for row in rows:
        assert 0 <= float(row["train_accuracy"]) <= 1 and 0 <= float(row["val_accuracy"]) <= 1
        assert float(row["storage_kb"]) > 0
    markdown = (out / "study.md").read_text()
    assert "| narrow |" in markdown and "# Study: tiny" in markdown
    assert (out / "row02" / "model.pt").is_file()


def test_shipped_studies_resolve_to_valid_recipes():
    from bitsound.recipes import load_recipe
    from bitsound.study import _as_overrides

    names = [name for name, description in list_recipes() if description.startswith("study:")]
    assert {"thesis-net-type", "thesis-binary-layers", "thesis-activations",
            "thesis-hyperparameters"} <= set(names)
    for name in names:
        study = load_study(study_path(name))
        for row in study.rows:
            load_recipe(study.base, overrides=_as_overrides(study.set) + _as_overrides(row.set))


def test_study_with_unknown_key_is_a_config_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("study: x\nbase: quickstart\nrows: [{name: a, sett: {}}]\n")
    with pytest.raises(ConfigError, match=r"rows\.0\.sett: unknown key"):
        load_study(path)
