"""BS_ROW_UNIT 4 against 8 (the bit-serial plan's row offsets, bsnn.h), measured in one process.

Usage::

    python benchmarks/bench_row_unit.py [--rounds 12]

Builds the engine extension twice with the host compiler (``-DBS_ROW_UNIT=4`` and ``=8``, the
flags of setup.py) into a temporary folder, loads both into this process and times the binary conv
of each layer of ``bench_engine.py`` (and a 1024-channel one, whose 9216-bit kernel only unit 4
can plan) in the slice and bit-serial forms on AVX-512 and AVX2, alternating the two builds round
by round so that a shared machine's drift hits both alike. Prints the minimum per build and the
ratio. About a minute on 2 cores (most of it the two builds).
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import subprocess
import sysconfig
import tempfile
from pathlib import Path

import numpy as np

from bitsound.graph.builder import GraphBuilder

ENGINE = Path(__file__).resolve().parents[1] / "src" / "bitsound" / "engine"
SOURCES = ["_engine.c", "format.c", "model.c", "dispatch.c", "kernels_ref.c", "kernels_scalar.c",
           "kernels_avx2.c", "kernels_avx512.c", "kernels_avx512_emu.c", "frontend.c", "_frontend.c",
           "slice.c", "pool.c"]
FLAGS = ["-std=c99", "-D_POSIX_C_SOURCE=200809L", "-O3", "-ffp-contract=off", "-pthread", "-fPIC", "-shared"]
LAYERS = [(256, 256, 32, 32), (64, 64, 40, 100), (128, 128, 16, 16), (32, 64, 64, 44), (512, 512, 8, 8),
          (1024, 1024, 16, 16)]


def build(unit: int, out: Path):
    so = out / f"u{unit}" / "_engine.so"
    so.parent.mkdir(parents=True)
    subprocess.run(["cc", *FLAGS, f"-DBS_ROW_UNIT={unit}", f"-I{sysconfig.get_paths()['include']}",
                    *[str(ENGINE / s) for s in SOURCES], "-lm", "-o", str(so)], check=True)
    loader = importlib.machinery.ExtensionFileLoader("_engine", str(so))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader("_engine", loader))
    loader.exec_module(module)
    return module


def conv(cin: int, cout: int, h: int, w: int) -> bytes:
    rng = np.random.default_rng(0)
    wr = GraphBuilder()
    x = wr.add_input((cin, h, w))
    b = wr.add_pack(x, name="pack")
    signs = np.where(rng.standard_normal((cout, cin, 3, 3)) < 0, -1, 1)
    wr.add_bconv2d(b, signs, padding=(1, 1, 1, 1), out_mode="bits", thr=rng.integers(-3, 4, cout),
                   flip=rng.integers(0, 2, cout), name="bconv")
    wr.add_output(x)
    return wr.to_bytes()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=12)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        libs = {unit: build(unit, Path(tmp)) for unit in (8, 4)}
        print(f"{'layer':22s} {'isa form':14s} {'x8 ms':>9s} {'x4 ms':>9s} {'x4/x8':>6s}")
        for cin, cout, h, w in LAYERS:
            data = conv(cin, cout, h, w)
            x = np.random.default_rng(1).standard_normal(cin * h * w).astype(np.float32)
            for isa in ("avx512", "avx2"):
                if not libs[8].isa_available(isa):
                    continue
                for form in ("slice", "serial", "word"):
                    models = {u: lib.Model(data, isa, 1, form) for u, lib in libs.items()}
                    ran = {u: m.forms()[2] for u, m in models.items()}
                    best = dict.fromkeys(models, float("inf"))
                    for _ in range(args.rounds):
                        for u, m in models.items():
                            best[u] = min(best[u], min(m.time_op(x, 2, 10)))
                    label = f"{isa} {form}" + ("" if ran[8] == ran[4] == form else f" ({ran[8]}/{ran[4]})")
                    print(f"{cin}->{cout} {h}x{w:<10d} {label:14s} {best[8] * 1e3:9.4f} {best[4] * 1e3:9.4f} "
                          f"{best[4] / best[8]:6.3f}", flush=True)


if __name__ == "__main__":
    main()
