"""Accuracy against kilobytes over every compressed and binary model of some runs, one table.

Usage::

    python benchmarks/compress_table.py RUN_DIR... [--rule storage] [--published seed001-acdnet]
        [--markdown FILE.md]

A RUN_DIR is what ``bitsound train`` (``model.pt`` + ``metrics.json``), ``bitsound cv``
(``cv.json`` + ``cv-FOLD/model.pt``: the mean held-out accuracy over the folds, the size of the
first fold's model) or ``bitsound compress`` (``compress.json``: one row per stage) wrote. Each
row: held-out accuracy, parameters, KB under the chosen size rule, MACs, binary operations and
seed 001's XNOR FLOPs (``a + (x - (a + b)) / 64 + b``), and the precision of its weights, read
from the layers (``w32`` float, ``w16`` fp16, ``w8`` int8, ``w1`` binary). ``--published`` adds
the seed systems' own points (``bitsound.published``) beside ours. Sorted by size.

Seed 001's comparison (pruning + 8-bit quantization against XNOR at equal memory, ESC-10) is
this table over the ``acdnet-to-micro`` result and the ``esc10-xmicro-acdnet`` /
``esc10-xacdnet`` runs (README, "Compression").
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.table import Table

import bitsound
from bitsound.complexity import complexity_report
from bitsound.modelfile import feature_shape
from bitsound.published import get_published
from bitsound.report.results import CompressResult, CvResult, TrainResult, load_result


def precision(report: dict) -> str:
    """Weight precisions by share of parameters, e.g. ``w1 96% + w32``."""
    bits = Counter()
    for layer in report["layers"]:
        if layer["params"]:
            bits[layer["bits_per_weight"]] += layer["params"]
    total = sum(bits.values()) or 1
    return " + ".join(f"w{b} {100 * n / total:.0f}%" for b, n in bits.most_common())


def model_row(name: str, path: Path, accuracy: float | None, rule: str) -> dict:
    model = bitsound.load_model(path)
    report = complexity_report(model.net, feature_shape(model.recipe))
    # seed 001's tables: its full-precision count for float and int8 models (Table 1), the XNOR
    # formula only for networks with binary layers (Table 4)
    seed = report["flops_seed001"]
    flops = seed["flops"] if report["bops"] else seed["x"]
    return {"model": name, "accuracy": accuracy, "params": report["params"],
            "kb": report["kb"][rule], "macs": report["macs"], "bops": report["bops"],
            "flops_seed001": flops, "precision": precision(report)}


def rows_of(run: Path, rule: str) -> list[dict]:
    if (run / "compress.json").is_file():
        result = load_result(run / "compress.json", CompressResult)
        rows = []
        for r in result.rows:
            # the stage's folder beside compress.json: r.model is the path as the run wrote it,
            # relative to its working directory, and the run folder may have moved since
            row = model_row(f"{run.name}/{r.stage}", run / r.stage / "model.pt", r.held_out_accuracy, rule)
            rows.append(row)
        return rows
    if (run / "cv.json").is_file():
        cv = load_result(run / "cv.json", CvResult)
        first = run / f"cv-{cv.folds[0].held_out}" / "model.pt"
        return [model_row(f"{run.name} (cv mean)", first, cv.mean_accuracy, rule)]
    if (run / "metrics.json").is_file():
        train = load_result(run / "metrics.json", TrainResult)
        acc = train.held_out.accuracy if train.held_out is not None else None
        return [model_row(run.name, run / "model.pt", acc, rule)]
    raise SystemExit(f"'{run}' has no compress.json, cv.json or metrics.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--rule", default="storage", choices=["storage", "dcase2020", "dcase2022"])
    parser.add_argument("--published", action="append", default=[], metavar="SYSTEM")
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = [row for run in args.runs for row in rows_of(run, args.rule)]
    for name in args.published:
        for p in get_published(name).points:
            rows.append({"model": f"published: {p.name}", "accuracy": p.accuracy, "params": p.params,
                         "kb": p.kb, "macs": p.macs, "bops": None, "flops_seed001": None,
                         "precision": p.note or ""})
    rows.sort(key=lambda r: (r["kb"] is None, r["kb"] or 0))
    if args.json:
        print(json.dumps(rows))
        return
    columns = ["model", "accuracy", "KB (" + args.rule + ")", "params", "MACs", "BOPs", "seed-001 FLOPs",
               "precision"]

    def cells(r):
        def num(v, fmt="{:,.0f}"):
            return "-" if v is None else fmt.format(v)
        return [r["model"], "-" if r["accuracy"] is None else f"{100 * r['accuracy']:.2f} %",
                num(r["kb"], "{:,.1f}"), num(r["params"]), num(r["macs"]), num(r["bops"]),
                num(r["flops_seed001"]), r["precision"]]

    table = Table(title="accuracy against size")
    for c in columns:
        table.add_column(c)
    for r in rows:
        table.add_row(*cells(r))
    Console().print(table)
    if args.markdown:
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(cells(r)) + " |" for r in rows]
        args.markdown.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
