"""The engine's 1-bit-weight float-activation conv against PyTorch fp32 on mcdonnell-asc's layers.

Usage::

    python benchmarks/bench_onebit_conv.py [--frames 469] [--budget 1.0] [--json]

Seed 002's convolutions keep float activations and store one bit per weight; the engine runs
them as sign-select and add (``conv_sign`` in ``src/bitsound/engine/model.c``: no
multiplication per tap). Each row is one 3x3 layer shape of ``mcdonnell-asc`` at the seed's
input (256 bands split in two paths of 128, 469 frames at 48 kHz, halved in time by each
stack): the engine's time for the op (``Engine.time_op``, weight signs packed in the model file)
against ``torch.nn.functional.conv2d`` of the same shape with float32 weights ``+-c`` (oneDNN),
one thread each, minimum over repeats, measured back to back. The ``reference`` column is the
engine's plain double-accumulating convolution (the ``reference`` instruction set), the form
1-bit weights ran in before.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from bitsound import engine
from bitsound.engine.bench import _cpu_name, _min_time
from bitsound.graph.builder import GraphBuilder


def layers(frames: int) -> list[tuple[str, int, int, int, int, tuple[int, int]]]:
    """(name, cin, cout, freq, time_in, stride) of mcdonnell-asc's distinct conv shapes (one path)."""
    t = [frames]
    for _ in range(4):
        t.append((t[-1] + 1) // 2)
    return [
        ("entry 2->26, stride (1,2)", 2, 26, 128, t[0], (1, 2)),
        ("stack 1: 26->26", 26, 26, 128, t[1], (1, 1)),
        ("stack 2: 52->52", 52, 52, 128, t[2], (1, 1)),
        ("stack 3: 104->104", 104, 104, 128, t[3], (1, 1)),
        ("stack 4: 208->208", 208, 208, 128, t[4], (1, 1)),
        ("head 208->192", 208, 192, 128, t[4], (1, 1)),
    ]


def bench(cin: int, cout: int, h: int, w: int, stride, *, budget: float, isa: str) -> dict:
    rng = np.random.default_rng(0)
    signs = np.where(rng.standard_normal((cout, cin, 3, 3)) < 0, -1.0, 1.0)
    scale = np.full(cout, np.sqrt(2.0 / (9 * cin)))
    g = GraphBuilder()
    x = g.add_input((cin, h, w))
    g.add_conv(x, signs, None, stride=stride, padding=(1, 1, 1, 1), wdtype="sign", weight_scale=scale,
               name="conv")
    g.add_output(x)
    data = g.to_bytes()
    feats = rng.standard_normal((cin, h, w)).astype(np.float32)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        xt = torch.from_numpy(feats)[None]
        wt = torch.from_numpy(signs * scale[:, None, None, None]).float()
        with torch.no_grad():
            t_torch = _min_time(lambda: F.conv2d(xt, wt, None, stride, 1), budget=budget)
    finally:
        torch.set_num_threads(old)
    fast = engine.loads(data, isa=isa)
    reps = max(3, min(200, int(budget / max(t_torch, 1e-4))))
    t_fast = min(fast.time_op(feats, 1, repeats=reps))
    t_ref = min(engine.loads(data, isa="reference").time_op(feats, 1, repeats=max(2, reps // 10)))
    oh, ow = h, (w + stride[1] - 1) // stride[1]
    macs = cin * cout * 9 * oh * ow
    return {"cin": cin, "cout": cout, "size": [h, w], "stride": list(stride), "macs": macs, "isa": fast.isa,
            "torch_ms": t_torch * 1e3, "engine_ms": t_fast * 1e3, "reference_ms": t_ref * 1e3,
            "engine_gmacs": macs / t_fast / 1e9, "torch_gmacs": macs / t_torch / 1e9,
            "torch_over_engine": t_torch / t_fast}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=469, help="input frames (469: 10 s at 48 kHz)")
    parser.add_argument("--budget", type=float, default=1.0, help="seconds timing each side")
    parser.add_argument("--isa", default="auto")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = [{"layer": name, **bench(cin, cout, h, w, stride, budget=args.budget, isa=args.isa)}
            for name, cin, cout, h, w, stride in layers(args.frames)]
    if args.json:
        print(json.dumps({"cpu": _cpu_name(), "rows": rows}, indent=2))
        return
    table = Table(title=f"1-bit weights on float inputs, one thread each ({_cpu_name()})")
    for col in ("layer", "output", "engine ms", "GMAC/s", "torch fp32 ms", "GMAC/s ", "torch / engine",
                "reference ms"):
        table.add_column(col, justify="left" if col == "layer" else "right")
    for r in rows:
        table.add_row(r["layer"], f"{r['size'][0]}x{(r['size'][1] + r['stride'][1] - 1) // r['stride'][1]}",
                      f"{r['engine_ms']:.2f}", f"{r['engine_gmacs']:.1f}", f"{r['torch_ms']:.2f}",
                      f"{r['torch_gmacs']:.1f}", f"{r['torch_over_engine']:.2f}", f"{r['reference_ms']:.1f}")
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
