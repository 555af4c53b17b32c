"""Does a 2-process gloo run score like a 1-process run with the same global batch?

Trains a recipe with several training seeds in 1 process and in ``--nproc`` processes (same
``train.batch_size``, the global batch; same data split) and prints the held-out scores of each
run, their mean and standard deviation per setting, and the difference of the means beside the
run-to-run noise (the standard deviation over seeds).

    .venv/bin/python benchmarks/distributed_parity.py --recipe quickstart --seeds 0 1 2
    .venv/bin/python benchmarks/distributed_parity.py --recipe quickstart --seeds 0 1 --set train.epochs=8

Each run is a ``python -m bitsound train`` process; features are cached once (``--cache``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "log_loss")


def train(recipe: str, *, seed: int, nproc: int, out: Path, cache: Path, extra: list[str]) -> dict:
    args = [sys.executable, "-m", "bitsound", "train", "--recipe", recipe, "--out", str(out),
            "--cache", str(cache), "-q", "--set", f"train.seed={seed}", *extra]
    if nproc > 1:
        args += ["--nproc", str(nproc)]
    started = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stderr[-3000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    row = {k: metrics["held_out"][k] for k in METRICS}
    row.update(seed=seed, nproc=nproc, best_epoch=metrics["best_epoch"],
               seconds=round(time.perf_counter() - started, 1))
    return row


def summary(rows: list[dict], key: str) -> tuple[float, float]:
    values = [r[key] for r in rows]
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="quickstart")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--nproc", type=int, default=2, help="processes of the run compared with 1 (>= 2)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", type=Path, help="run folders (default: a temporary folder)")
    parser.add_argument("--json", metavar="FILE", help="also write every run's scores as JSON")
    args = parser.parse_args(argv)
    if args.nproc < 2:  # 1 would train the one-process setting twice, into the same folders
        parser.error(f"--nproc {args.nproc}: the benchmark compares 1 process with N; give N >= 2")
    root = args.out or Path(tempfile.mkdtemp(prefix="bitsound-parity-"))
    extra = [x for item in args.set for x in ("--set", item)]
    rows = []
    for nproc in (1, args.nproc):
        for seed in args.seeds:
            row = train(args.recipe, seed=seed, nproc=nproc, out=root / f"n{nproc}-s{seed}",
                        cache=root / "cache", extra=extra)
            rows.append(row)
            print(f"nproc {nproc} seed {seed}: " + "  ".join(f"{k} {row[k]:.4f}" for k in METRICS)
                  + f"  best epoch {row['best_epoch']}  {row['seconds']} s", flush=True)
    single = [r for r in rows if r["nproc"] == 1]
    multi = [r for r in rows if r["nproc"] == args.nproc]
    print(f"\n{args.recipe}, seeds {args.seeds}, same global batch; mean ± std over seeds")
    print(f"{'metric':20s} {'1 process':>18s} {f'{args.nproc} processes':>18s} {'difference':>11s}")
    for key in METRICS:
        (m1, s1), (m2, s2) = summary(single, key), summary(multi, key)
        print(f"{key:20s} {m1:>9.4f} ± {s1:<6.4f} {m2:>9.4f} ± {s2:<6.4f} {m2 - m1:>+11.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
