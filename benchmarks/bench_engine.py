"""Speed of the bit-packed engine against PyTorch fp32, measured in the same run, one thread each.

Usage::

    python benchmarks/bench_engine.py [--isa auto] [--budget 1.0] [--json] [--no-models]

Prints three tables:

1. the machine's XOR+popcount peak (L1-resident microbenchmark, every method the instruction set
   has; the engine's kernels can reach at most the best of them);
2. binary conv layers against ``torch.nn.functional.conv2d`` of the same shape: the 256->256
   3x3 conv on 32x32 (the issue's target: >= 15x, ceiling near 18x with AVX-512 VPOPCNTDQ) and
   an audio-shaped 64->64 3x3 conv on 40x100, with binary MACs/s and the fraction of the peak;
3. whole models per 1-second clip (random weights; speed hardly depends on them): the
   thesis-xnor recipe (seed 000's XNOR-Net on 32x32 binary images) and a binary digits model
   (the digits-xnor recipe if shipped, else digits-cnn's front end with a bcnn2d XNOR net), with
   and without the front end.

Times are minima over repeats (the least disturbed run); on a shared machine the ratios, taken
back to back, are the numbers to read.
"""

from __future__ import annotations

import argparse
import json

import torch
from rich.console import Console
from rich.table import Table

from bitsound import engine
from bitsound.engine.bench import bench_layer, bench_model, peak_xor_popcount

LAYERS = [(256, 256, (32, 32), 3), (64, 64, (40, 100), 3), (128, 128, (16, 16), 3), (32, 64, (64, 44), 3)]


def _model(recipe_name: str, model: dict | None, n_classes: int):
    from bitsound.config import parse_recipe, read_yaml
    from bitsound.modelfile import SoundClassifier, build_net
    from bitsound.recipes import _shipped

    data = read_yaml(_shipped()[recipe_name])
    if model is not None:
        data["model"] = model
    recipe = parse_recipe(data, source=recipe_name)
    torch.manual_seed(0)
    net = build_net(recipe, n_classes).eval()
    return SoundClassifier(recipe, [str(i) for i in range(n_classes)], net).eval()


def models():
    from bitsound.recipes import _shipped

    yield "thesis-xnor", _model("thesis-xnor", None, 2)
    if "digits-xnor" in _shipped():
        yield "digits-xnor", _model("digits-xnor", None, 10)
    else:
        params = {"channels": [24, 48, 96, 192], "convs_per_stage": 1, "dropout": 0.3, "norm": "example",
                  "floor_db": 40, "mode": "xnor", "shortcut": True}
        yield "digits (bcnn2d xnor)", _model("digits-cnn", {"name": "bcnn2d", "params": params}, 10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--isa", default="auto", choices=["auto", *engine.available_isas()])
    ap.add_argument("--budget", type=float, default=1.0, help="seconds of timing per side")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--no-models", action="store_true")
    args = ap.parse_args()
    console = Console(width=160)
    isa = engine.auto_isa() if args.isa == "auto" else args.isa

    peak = peak_xor_popcount(isa)
    layers = [bench_layer(ci, co, s, k, isa=isa, budget=args.budget, peak=peak) for ci, co, s, k in LAYERS]
    whole = [] if args.no_models else [dict(bench_model(m, isa=isa, budget=args.budget), name=n)
                                       for n, m in models()]
    if args.json:
        print(json.dumps({"peak": peak, "layers": layers, "models": whole}, indent=2))
        return

    t = Table(title=f"XOR+popcount peak ({layers[0]['cpu']}, isa {isa}, L1-resident, 1 thread)")
    t.add_column("method")
    t.add_column("Gbit-ops/s", justify="right")
    for m, r in peak["methods"].items():
        t.add_row(m + (" (peak)" if m == peak["best_method"] else ""), f"{r / 1e9:.0f}")
    console.print(t)

    t = Table(title="binary conv vs torch fp32 conv2d, 1 thread each, same run")
    for col in ("layer", "torch fp32 ms", "engine ms", "speedup", "float-out ms", "pack ms",
                "binary GMAC/s", "torch GMAC/s", "% of peak"):
        t.add_column(col, justify="right")
    for r in layers:
        h, w = r["size"]
        t.add_row(f"{r['cin']}->{r['cout']} {r['kernel']}x{r['kernel']} {h}x{w}", f"{r['torch_ms']:.3f}",
                  f"{r['engine_ms']:.3f}", f"{r['speedup']:.1f}x", f"{r['engine_float_out_ms']:.3f}",
                  f"{r['pack_ms']:.3f}", f"{r['engine_macs_per_s'] / 1e9:.0f}",
                  f"{r['torch_macs_per_s'] / 1e9:.1f}", f"{100 * r['fraction_of_peak']:.0f}%")
    console.print(t)

    if whole:
        t = Table(title="whole model per 1-second clip (ms), 1 thread")
        for col in ("model", "features", "front end", "torch", "engine", "speedup", "torch+fe", "engine+fe",
                    "speedup+fe"):
            t.add_column(col, justify="right")
        for r in whole:
            t.add_row(r["name"], "x".join(map(str, r["feature_shape"])), f"{r['frontend_ms']:.3f}",
                      f"{r['torch_ms']:.3f}", f"{r['engine_ms']:.3f}", f"{r['speedup']:.1f}x",
                      f"{r['torch_with_frontend_ms']:.3f}", f"{r['engine_with_frontend_ms']:.3f}",
                      f"{r['speedup_with_frontend']:.1f}x")
        console.print(t)


if __name__ == "__main__":
    main()
