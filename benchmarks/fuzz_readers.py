"""A long fuzzing campaign over the readers of untrusted input (``tests/fuzzing.py``).

The tests run each target for a few hundred derandomized examples; this runs each for a time
budget with fresh random seeds and prints, per target, how many inputs it ran, how fast, and
every distinct failure (a traceback instead of one BitsoundError naming the file), each with
the smallest input hypothesis shrank it to.

    .venv/bin/python benchmarks/fuzz_readers.py --seconds 60            # every target, 60 s each
    .venv/bin/python benchmarks/fuzz_readers.py --seconds 600 --target manifest --json out.json

Exit status 1 when any target failed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import traceback
import warnings
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Flaky

# the targets live with the tests: they need hypothesis, which the package does not
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import fuzzing as fuzz  # noqa: E402

#: Examples per hypothesis run; runs repeat with new seeds until the time budget is spent.
BATCH = 500


def campaign(name: str, seconds: float) -> dict:
    target = fuzz.TARGETS[name]
    strategy = target.inputs()
    count = {"n": 0}
    failures: dict[str, str] = {}

    def run(value):
        count["n"] += 1
        fuzz.run_target(target, value)

    started = time.perf_counter()
    batches = 0
    while time.perf_counter() - started < seconds:
        batches += 1
        # small batches near the end, so a slow target does not overrun its budget much
        left = seconds - (time.perf_counter() - started)
        rate = count["n"] / max(time.perf_counter() - started, 1e-9)
        batch = max(10, min(BATCH, int(rate * left))) if count["n"] else 50
        test = settings(max_examples=batch, deadline=None, database=None, derandomize=False,
                        suppress_health_check=list(HealthCheck),
                        phases=[Phase.generate, Phase.shrink])(given(strategy)(run))
        try:
            test()
        except (Exception, Flaky) as err:  # each distinct failure is reported, then we go on
            errors = list(getattr(err, "exceptions", [err]))
            for e in errors:
                kind = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]
                if kind not in failures:
                    notes = "\n".join(getattr(e, "__notes__", []))
                    failures[kind] = notes + "\n" + "".join(traceback.format_exception(e)[-3:])
    elapsed = time.perf_counter() - started
    return {"target": name, "executions": count["n"], "seconds": round(elapsed, 1),
            "per_second": round(count["n"] / elapsed, 1), "batches": batches,
            "failures": [{"error": k, "detail": v} for k, v in failures.items()]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="time per target (default 60)")
    parser.add_argument("--target", action="append", choices=sorted(fuzz.TARGETS),
                        help="fuzz only this target (repeatable; default: all)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)
    logging.getLogger("bitsound").setLevel(logging.ERROR)  # the cache's "removing it" warnings
    warnings.simplefilter("ignore")  # torch's warnings about odd shapes in damaged files
    rows = []
    for name in args.target or sorted(fuzz.TARGETS):
        row = campaign(name, args.seconds)
        rows.append(row)
        print(f"{name:20s} {row['executions']:>8d} inputs  {row['per_second']:>8.1f}/s  "
              f"{len(row['failures'])} failure(s)", flush=True)
        for failure in row["failures"]:
            print(f"    {failure['error']}\n{failure['detail']}", flush=True)
    total = sum(r["executions"] for r in rows)
    print(f"total: {total} inputs in {sum(r['seconds'] for r in rows):.0f} s, "
          f"{sum(len(r['failures']) for r in rows)} distinct failure(s)")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)
    return 1 if any(r["failures"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
