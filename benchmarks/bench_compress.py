"""A pruned network is really smaller and faster: parameters, .bsnn bytes and engine time, one run.

Usage::

    python benchmarks/bench_compress.py --model runs/digits-cnn/model.pt [--ratios 0.3 0.5 0.7]
        [--importance l1|taylor|hybrid] [--taylor-examples 256] [--repeats 20] [--json]

For each ratio the model's prunable channels are removed (structured, ranked by ``--importance``
as ``bitsound compress`` ranks them: ``taylor`` and ``hybrid`` measure seed 001's criterion on
the model's own training clips, read through its recipe, and ``hybrid`` first zeroes 95 % of
the weights; no fine-tuning: size and speed only) and the result is checked and timed beside
the unpruned model, back to back in the same process: parameters of ``state_dict``, torchinfo's
count, MACs, the ``.bsnn`` size, the reloaded model file (``bitsound.load_model``) giving the
same logits, and the engine's time per example (minimum over ``--repeats`` runs of a batch, one
thread). An fp16 and an int8 copy of each pruned network are timed too (int8 calibrated on the
random timing features: its accuracy is measured by ``bitsound compress``, this is for time and
size only).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

import bitsound
from bitsound import engine
from bitsound.complexity import complexity_report
from bitsound.compress import prune as P
from bitsound.compress import quantize as Q
from bitsound.export import export_packed
from bitsound.modelfile import feature_shape, save_model


def _time(path: Path, x: np.ndarray, repeats: int) -> float:
    eng = engine.load(path)
    eng.predict(x[:1])
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        eng.predict(x)
        best = min(best, time.perf_counter() - started)
    return 1000 * best / len(x)


def measure(model, net, name: str, folder: Path, x: torch.Tensor, repeats: int) -> dict:
    torchinfo = __import__("torchinfo")
    shape = feature_shape(model.recipe)
    path = folder / f"{name}.pt"
    save_model(path, recipe=model.recipe, labels=model.labels, net=net)
    reloaded = bitsound.load_model(path)
    with torch.no_grad():
        same = bool(torch.allclose(reloaded.net(x), net.eval()(x), rtol=1e-5, atol=1e-6))
    export_packed(path, folder / f"{name}.bsnn")
    state = torch.load(path, weights_only=True)["state_dict"]
    report = complexity_report(net, shape)
    return {"model": name, "params": report["params"],
            "torchinfo": torchinfo.summary(net, input_size=(1, *shape), verbose=0).total_params,
            "state_dict_values": int(sum(t.numel() for t in state.values())),
            "macs": report["macs"], "kb_storage": round(report["kb"]["storage"], 2),
            "bsnn_bytes": (folder / f"{name}.bsnn").stat().st_size, "reloads_same": same,
            "engine_ms": round(_time(folder / f"{name}.bsnn", x.numpy(), repeats), 4)}


def training_batches(model, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Up to ``n`` of the model's training examples (its recipe's data, its split's training part)."""
    from bitsound.compress.config import ValidationSettings
    from bitsound.compress.data import open_compress_data
    from bitsound.data import FeatureCache, default_cache_root

    data = open_compress_data(model, validation=ValidationSettings(use="held_out"),
                              cache=FeatureCache(default_cache_root()), show_progress=True)
    return list(data.batches(n, batch_size=data.recipe.train.batch_size))


def importance_of(name: str, net, batches):
    """The ranking ``bitsound compress`` uses: L1, or Taylor measured on ``batches``."""
    if name == "l1":
        return P.L1Importance()
    importance = P.TaylorImportance()
    importance.measure(net, batches, torch.nn.functional.cross_entropy)
    return importance


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    parser.add_argument("--importance", default="l1", choices=list(P.IMPORTANCES))
    parser.add_argument("--taylor-examples", type=int, default=256,
                        help="training examples the Taylor criterion is measured on")
    parser.add_argument("--examples", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = bitsound.load_model(args.model)
    shape = feature_shape(model.recipe)
    x = torch.randn(args.examples, *shape)
    ex = torch.zeros(1, *shape)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rows.append(measure(model, model.net, "unpruned", folder, x, args.repeats))
        total = P.prunable_channels(model.net, ex)
        batches = training_batches(model, args.taylor_examples) if args.importance != "l1" else None
        for ratio in args.ratios:
            net = P.copy_network(model.net)
            if args.importance == "hybrid":
                P.sparsify(net, 0.95)
            bad = P.unprunable_groups(net, ex)
            importance = importance_of(args.importance, net, batches)
            P.prune_channels(net, ex, round(ratio * total), importance=importance, exclude=list(bad))
            rows.append(measure(model, net, f"pruned {ratio:.0%}", folder, x, args.repeats))
            half = P.copy_network(net)
            Q.to_fp16(half)
            rows.append(measure(model, half, f"pruned {ratio:.0%} fp16", folder, x, args.repeats))
            q = P.copy_network(net)
            Q.fold_batchnorm(q)
            Q.quantize_int8(q)
            Q.calibrate(q, [x[i:i + 8] for i in range(0, len(x), 8)])
            rows.append(measure(model, q, f"pruned {ratio:.0%} int8", folder, x, args.repeats))
        # the unpruned model once more at the end: the machine's drift over the run
        rows.append(measure(model, model.net, "unpruned (again)", folder, x, args.repeats))
    base = rows[0]["engine_ms"]
    for row in rows:
        row["speedup"] = round(base / row["engine_ms"], 2)
    if args.json:
        print(json.dumps(rows))
        return
    table = Table(title=f"pruning {args.model}: size and engine time per example, same run, 1 thread")
    for key in rows[0]:
        table.add_column(key)
    for row in rows:
        table.add_row(*(f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v)
                        for v in row.values()))
    Console().print(table)


if __name__ == "__main__":
    main()
