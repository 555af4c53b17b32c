"""Studies: one base recipe trained under several variations, summarised in one table.

A study file names a base recipe and a list of rows, each a set of ``key.path: value``
overrides (the same keys as ``--set``). ``bitsound study FILE`` trains every row on the same
split and writes ``study.csv`` and ``study.md`` with training and validation accuracy,
parameters and model size per row, plus each row's own run folder.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError

from bitsound.config import Section, format_validation_error, read_yaml
from bitsound.errors import ConfigError
from bitsound.report.results import StudyResult, StudyRowResult

log = logging.getLogger("bitsound.study")


class StudyRow(Section):
    name: str
    set: dict[str, Any] = {}


class Study(Section):
    """A base recipe and its variations (rows)."""

    study: str
    description: str = ""
    base: str  # a shipped recipe name or a YAML file
    set: dict[str, Any] = {}  # overrides shared by every row
    rows: list[StudyRow] = Field(min_length=1)


def is_study_file(data: dict) -> bool:
    return "study" in data


def load_study(path: Path) -> Study:
    data = read_yaml(path)
    try:
        return Study.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source=f"study '{path}'")) from None


def _as_overrides(values: dict[str, Any]) -> list[str]:
    # Values are dumped as flow-style YAML so lists and nulls survive the --set parser.
    return [f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"
            for key, value in values.items()]


COLUMNS = ["row", "train_accuracy", "val_accuracy", "val_balanced_accuracy", "params",
           "storage_kb", "macs", "bops", "best_epoch", "train_seconds"]


def run_study(study: Study, *, out_dir: Path, cache, extra_overrides: list[str] | None = None,
              data: str | None = None, show_progress: bool = True,
              skip_bad: bool = False) -> StudyResult:
    """Train every row and write ``study.json``, ``study.csv`` and ``study.md`` into ``out_dir``.

    ``skip_bad`` leaves unreadable clips out of every row (see :mod:`bitsound.preflight`)."""
    from bitsound.complexity import complexity_report
    from bitsound.experiment import holdout_split, open_recipe_data, train_on_split
    from bitsound.modelfile import feature_shape, load_model
    from bitsound.recipes import load_recipe
    from bitsound.train.checkpoint import save_text

    out_dir = Path(out_dir)
    rows = []
    for index, row in enumerate(study.rows):
        overrides = _as_overrides(study.set) + _as_overrides(row.set) + list(extra_overrides or [])
        recipe = load_recipe(study.base, overrides=overrides)
        if data:
            recipe.data.sources = []
            recipe.data.spec = data
        log.info("study %s: row %d/%d '%s'", study.study, index + 1, len(study.rows), row.name)
        dataset = open_recipe_data(recipe)
        run_dir = out_dir / f"row{index + 1:02d}"
        outcome = train_on_split(recipe, dataset, holdout_split(recipe, dataset), out_dir=run_dir,
                                 cache=cache, show_progress=show_progress, skip_bad=skip_bad)
        model = load_model(run_dir / "model.pt")
        report = complexity_report(model.net, feature_shape(model.recipe))
        trained, held = outcome.result, outcome.result.held_out
        rows.append(StudyRowResult(
            row=row.name, train_accuracy=trained.train_accuracy,
            val_accuracy=held.accuracy if held else None,
            val_balanced_accuracy=held.balanced_accuracy if held else None,
            params=report["params"], storage_kb=report["kb"]["storage"], macs=report["macs"],
            bops=report["bops"], best_epoch=trained.best_epoch, train_seconds=trained.train_seconds,
            per_device=held.per_device if held and held.per_device else []))
        result = StudyResult(study=study.study, description=study.description, base=study.base,
                             rows=rows)
        # after each row: a crash keeps the rows done so far
        result.save(out_dir / "study.json")
        save_text(to_csv(result), out_dir / "study.csv")
        save_text(to_markdown(result), out_dir / "study.md")
    return result


def device_names(result: StudyResult) -> list[str]:
    """Every device any row was scored on, in the order of the scores (A, B, C, S1 ...)."""
    names: list[str] = []
    for row in result.rows:
        names += [d.device for d in row.per_device if d.device not in names]
    return names


def _device_cells(row, devices: list[str]) -> dict[str, float | None]:
    by_name = {d.device: d.accuracy for d in row.per_device}
    return {f"acc_{name}": by_name.get(name) for name in devices}


def to_csv(result: StudyResult) -> str:
    devices = device_names(result)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS + [f"acc_{d}" for d in devices])
    writer.writeheader()
    writer.writerows({**row.model_dump(include=set(COLUMNS)), **_device_cells(row, devices)}
                     for row in result.rows)
    return buffer.getvalue()


def cell(key: str, value) -> str:
    if value is None:
        return "-"
    if key.endswith("accuracy"):
        return f"{100 * value:.2f} %"
    if key == "storage_kb":
        return f"{value:.2f}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def to_markdown(result: StudyResult) -> str:
    lines = [f"# Study: {result.study}", "", result.description.strip(), "",
             "| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(k, getattr(row, k)) for k in COLUMNS) + " |"
              for row in result.rows]
    devices = device_names(result)
    if devices:  # seed 003 Table 3: held-out accuracy per device, seen ones marked
        seen = {d.device: d.seen for row in result.rows for d in row.per_device}
        heads = [f"{d}{' (unseen)' if seen.get(d) is False else ''}" for d in devices]
        lines += ["", "Held-out accuracy per device:", "",
                  "| row | " + " | ".join(heads) + " | overall |", "|" + " --- |" * (len(devices) + 2)]
        lines += ["| " + " | ".join([row.row, *(cell("accuracy", v) for v in
                                                _device_cells(row, devices).values()),
                                      cell("accuracy", row.val_accuracy)]) + " |" for row in result.rows]
    return "\n".join(lines) + "\n"
