"""Speed of the bit-packed engine against PyTorch fp32, measured in the same run.

Usage::

    python benchmarks/bench_engine.py [--isa auto|avx512|avx2|scalar ...] [--forms word serial slice]
                                      [--threads 2] [--budget 1.0] [--json] [--no-models]

Prints four tables:

1. the machine's XOR+popcount peak per instruction set (L1-resident microbenchmark, every method
   the instruction set has; the ceiling of the word-parallel kernels, which the bit-serial and
   slice forms can pass because they skip half of the weight bits);
2. binary conv layers (thresholded bit output, one thread each) against
   ``torch.nn.functional.conv2d`` of the same shape with ``torch.set_num_threads(1)``, for every
   instruction set and binary conv form asked for: the 256->256 3x3 conv on 32x32 (issue target
   >= 20x) and the audio-shaped 64->64 on 40x100 and 32->64 on 64x44 (>= 10x), 128->128 on 16x16;
   binary MACs/s and the percent of that instruction set's peak;
3. whole models per 1-second clip (random weights; speed hardly depends on them): the
   thesis-xnor recipe (seed 000's XNOR-Net on 32x32 binary images) and a binary digits model, with
   and without the PyTorch front end, and audio to label in C (the engine's C front end, as
   ``predict --engine`` runs it; issue target for thesis-xnor: <= 0.3 ms a clip) with its
   real-time factor (seconds of compute per second of audio);
4. throughput of a batch of clips of those models on 1 .. --threads threads (target: 2 threads
   >= 1.8x one), and whether the logits are bit-identical.

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
from bitsound.engine.bench import bench_layer, bench_model, bench_threads, peak_xor_popcount

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


def _export(model) -> bytes:
    import tempfile
    from pathlib import Path

    from bitsound.export.packed import export_packed

    with tempfile.TemporaryDirectory() as tmp:
        return Path(export_packed(model, Path(tmp) / "model.bsnn")).read_bytes()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    isas = [i for i in ("avx512", "avx2") if i in engine.available_isas()] or ["scalar"]
    ap.add_argument("--isa", nargs="+", default=isas, choices=["auto", *engine.available_isas()],
                    help="instruction sets of the layer table (default: the vector ones this CPU has)")
    ap.add_argument("--forms", nargs="+", default=["word", "serial", "slice"],
                    choices=["auto", "word", "serial", "slice"], help="binary conv forms of the layer table")
    ap.add_argument("--threads", type=int, default=2, help="largest thread count of the scaling table")
    ap.add_argument("--batch", type=int, default=64, help="clips per batch in the scaling table")
    ap.add_argument("--budget", type=float, default=1.0, help="seconds of timing per side")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--no-models", action="store_true")
    args = ap.parse_args()
    console = Console(width=160)
    isas = [engine.auto_isa() if i == "auto" else i for i in args.isa]

    peaks = {isa: peak_xor_popcount(isa) for isa in isas}
    layers = [bench_layer(ci, co, s, k, isa=isa, bconv=form, budget=args.budget, peak=peaks[isa])
              for ci, co, s, k in LAYERS for isa in isas for form in args.forms]
    whole, scaling = [], []
    if not args.no_models:
        for name, m in models():
            whole.append(dict(bench_model(m, budget=args.budget), name=name))
            counts = sorted({1, *range(2, args.threads + 1)})
            rows = bench_threads(_export(m), threads=counts, batch=args.batch, budget=args.budget)
            scaling += [dict(r, name=name) for r in rows]
    if args.json:
        print(json.dumps({"peaks": peaks, "layers": layers, "models": whole, "threads": scaling}, indent=2))
        return

    t = Table(title=f"XOR+popcount peak ({layers[0]['cpu']}, L1-resident, 1 thread)")
    for col in ("isa", "method", "Gbit-ops/s"):
        t.add_column(col)
    for isa, peak in peaks.items():
        for m, r in peak["methods"].items():
            t.add_row(isa, m + (" (peak)" if m == peak["best_method"] else ""), f"{r / 1e9:.0f}")
    console.print(t)

    t = Table(title=f"binary conv (bit output) vs torch fp32 conv2d, 1 thread each (torch "
                    f"{torch.__version__}), same run")
    for col in ("layer", "isa", "form", "torch fp32 ms", "engine ms", "speedup", "float-out ms", "pack ms",
                "binary GMAC/s", "torch GMAC/s", "% of peak"):
        t.add_column(col, justify="right")
    for r in layers:
        h, w = r["size"]
        t.add_row(f"{r['cin']}->{r['cout']} {r['kernel']}x{r['kernel']} {h}x{w}", r["isa"], r["form"],
                  f"{r['torch_ms']:.3f}", f"{r['engine_ms']:.3f}", f"{r['speedup']:.1f}x",
                  f"{r['engine_float_out_ms']:.3f} ({r['float_out_form']})", f"{r['pack_ms']:.3f}",
                  f"{r['engine_macs_per_s'] / 1e9:.0f}", f"{r['torch_macs_per_s'] / 1e9:.1f}",
                  f"{100 * r['fraction_of_peak']:.0f}%")
    console.print(t)

    if whole:
        t = Table(title="whole model per 1-second clip (ms), 1 thread")
        for col in ("model", "features", "front end", "torch", "engine", "speedup", "torch+fe", "engine+fe",
                    "speedup+fe", "C front end", "engine+C fe", "RTF engine+C fe"):
            t.add_column(col, justify="right")
        for r in whole:
            t.add_row(r["name"], "x".join(map(str, r["feature_shape"])), f"{r['frontend_ms']:.3f}",
                      f"{r['torch_ms']:.3f}", f"{r['engine_ms']:.3f}", f"{r['speedup']:.1f}x",
                      f"{r['torch_with_frontend_ms']:.3f}", f"{r['engine_with_frontend_ms']:.3f}",
                      f"{r['speedup_with_frontend']:.1f}x",
                      *(("-",) * 3 if r["c_frontend_ms"] is None else
                        (f"{r['c_frontend_ms']:.3f}", f"{r['engine_with_c_frontend_ms']:.3f}",
                         f"{r['rtf_engine_with_c_frontend']:.1e}")))
        console.print(t)
        t = Table(title=f"engine throughput on a batch of {args.batch} clips (split by clip over threads)")
        for col in ("model", "isa", "threads", "batch ms", "clips/s", "vs 1 thread", "identical logits"):
            t.add_column(col, justify="right")
        for r in scaling:
            t.add_row(r["name"], r["isa"], str(r["threads"]), f"{r['batch_ms']:.2f}",
                      f"{r['examples_per_s']:.0f}", f"{r['scaling']:.2f}x", "yes" if r["identical"] else "NO")
        console.print(t)


if __name__ == "__main__":
    main()
