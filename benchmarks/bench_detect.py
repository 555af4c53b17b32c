"""Sound event detection: accuracy of office-events (float and XNOR through the engine) on the
held-out synthesized test set, and memory / speed of ``bitsound detect`` on 10-min and 60-min files.

Before it, from the repository root::

    bitsound mix --events ../shared/data/dcase2016-task2-events \\
        --backgrounds ../shared/data/tut2017-scenes --scenes office,library,home \\
        --out runs/office-mixtures --n-train 1000 --n-val 60 --n-test 100 --speed-perturb 0.15
    bitsound train --recipe office-events --out runs/office-events
    bitsound train --recipe office-events-xnor --out runs/office-events-xnor

Then ``python benchmarks/bench_detect.py`` (``--skip-accuracy`` / ``--skip-memory`` run half).

Accuracy: post-processing is tuned (as ``detect --tune``) on the validation mixtures (fold
``val``: event files and background recordings never used in training nor in the test set),
then the test mixtures (``runs/office-mixtures/test``: other event files and recordings again)
are detected once and scored as ``evaluate-events`` does, with the recipe's post-processing
and with the tuned one. The engine scores the exported XNOR
model; PyTorch scores the float model (and, with ``--xnor-pytorch``, the XNOR model before export).
Models trained on the validation sources too (``mix --val-into-train``, the final models) cannot
be tuned on them: ``--postprocess-from DIR`` takes each system's settings from an earlier run's
``DIR/{system}.tuned-postprocess.json`` (tuned on val for the same recipe and ensemble size
trained without the val sources) instead.

Memory and speed: the test mixtures and their annotations are concatenated into one 10-min
and one 60-min WAV file (22.05 kHz, as mixed); ``bitsound detect`` runs on each under
``/usr/bin/time -v`` (peak resident memory of the whole process; the XNOR model through
PyTorch on the first length only) with one thread
(``OMP_NUM_THREADS=1``; the engine is single-threaded), and its JSON gives the wall time of
the detection loop (decoding, resampling, front end, network) and the real-time factor.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent / "bitsound"


def run(cmd: list[str], *, env: dict | None = None, timed: bool = False) -> tuple[str, int | None]:
    """Run a bitsound command; with ``timed`` return its peak RSS in KiB from /usr/bin/time -v."""
    full = (["/usr/bin/time", "-v"] if timed else []) + cmd
    proc = subprocess.run(full, cwd=ROOT, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}")
    rss = None
    if timed:
        match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
        rss = int(match.group(1)) if match else None
    return proc.stdout, rss


def accuracy(args) -> list[dict]:
    """Tune on the validation mixtures, then score the test mixtures once per system (in process:
    the same functions bitsound detect / evaluate-events call)."""
    from bitsound.data.events import read_annotations
    from bitsound.detect.metrics import evaluate_events, score_frames, write_frame_scores
    from bitsound.detect.run import (
        as_table,
        detections,
        load_classifier,
        load_postprocess,
        score_files,
        tune,
        write_events,
    )

    mix = Path(args.mixtures)
    val = sorted((mix / "dev/audio").glob("val_*.wav"))
    test = sorted((mix / "test/audio").glob("*.wav"))
    dev_ref = read_annotations(mix / "dev/events.tsv")
    test_ref = read_annotations(mix / "test/events.tsv")
    if not val and not args.postprocess_from:
        sys.exit(f"no validation mixtures (dev/audio/val_*.wav) in {mix} to tune on: mixtures made "
                 "with --val-into-train need --postprocess-from")
    out = Path(args.out)
    bsnn = out / "office-events-xnor.bsnn"
    run([str(BIN), "export", "--model", args.xnor_model, "--out", str(bsnn)])
    singles = [("office-events", "pytorch", {"model": args.float_model}),
               ("office-events-xnor", "engine", {"engine": str(bsnn)})]
    if args.xnor_pytorch:
        singles.insert(1, ("office-events-xnor", "pytorch", {"model": args.xnor_model}))
    # ensembles: the recipe's model and the others given, probabilities averaged
    ensembles = []
    if args.float_ensemble:
        ensembles.append((f"office-events x{1 + len(args.float_ensemble)}", "pytorch",
                          {"model": [args.float_model, *args.float_ensemble]}))
    if args.xnor_ensemble:
        engines = [str(bsnn)]
        for i, model in enumerate(args.xnor_ensemble, start=2):
            engines.append(str(out / f"office-events-xnor-{i}.bsnn"))
            run([str(BIN), "export", "--model", model, "--out", engines[-1]])
        ensembles.append((f"office-events-xnor x{len(engines)}", "engine", {"engine": engines}))
    systems = ensembles if args.only_ensembles else singles + ensembles
    rows = []
    for recipe, backend, source in systems:
        tag = f"{recipe.replace(' ', '-')}-{backend}"
        clf = load_classifier(**source)
        settings = clf.recipe.detect
        if args.postprocess_from:
            tuned_name = "tuned on val (carried)"
            tuned = load_postprocess(Path(args.postprocess_from) / f"{tag}.tuned-postprocess.json")
        else:
            tuned_name = "tuned on val"
            tuned, report = tune(score_files(clf, val, detect=settings, show_progress=False), dev_ref,
                                 base=settings.postprocess, show_progress=False)
            settings_file = out / f"{tag}.tuned-postprocess.json"
            settings_file.write_text(json.dumps({"postprocess": tuned.model_dump(mode="json"),
                                                 "tuning": report}, indent=1))
        scored = score_files(clf, test, detect=settings, show_progress=False)
        post = settings.postprocess
        frames = [f.select([c for c in f.labels if c not in post.ignore]) for f in scored.frames]
        write_frame_scores(frames, out / f"{tag}.frames")
        durations = {f.audio_id: f.duration for f in frames}
        for cfg, name in ((post, "recipe"), (tuned, tuned_name)):
            found = detections(scored, cfg)
            write_events(found, tsv=out / f"{tag}.{name.split()[0]}.tsv", cfg=cfg, run=scored,
                         json_path=out / f"{tag}.{name.split()[0]}.json")
            scores = evaluate_events(test_ref, as_table(found), labels=frames[0].labels,
                                     durations=durations, scores=score_frames(frames))
            (out / f"{tag}.{name.split()[0]}.scores.json").write_text(json.dumps(scores, indent=1))
            rows.append({"recipe": recipe, "backend": backend, "postprocess": name,
                         "event_f1": scores["event_based"]["f1"],
                         "event_er": scores["event_based"]["error_rate"],
                         "event_macro_f1": scores["event_based"]["macro_f1"],
                         "segment_f1": scores["segment_based"]["f1"],
                         "segment_er": scores["segment_based"]["error_rate"],
                         "psds1": scores["psds1"]["psds"], "psds2": scores["psds2"]["psds"],
                         "test_rtf": scored.real_time_factor,
                         "per_class_event_f1": {k: v["f1"] for k, v in
                                                scores["event_based"]["per_class"].items()}})
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "per_class_event_f1"}), flush=True)
    return rows


def long_file(mixtures: Path, minutes: float, target: Path) -> float:
    """Concatenate test mixtures (cycling) into ``minutes`` of audio, written block by block."""
    files = sorted((mixtures / "test/audio").glob("*.wav"))
    rate = sf.info(files[0]).samplerate
    need = round(minutes * 60 * rate)
    done = 0
    with sf.SoundFile(target, "w", samplerate=rate, channels=1, subtype="PCM_16") as out:
        while done < need:
            for f in files:
                x, _ = sf.read(f, dtype="float32")
                x = x[:need - done]
                out.write(x)
                done += len(x)
                if done >= need:
                    break
    return done / rate


def memory(args) -> list[dict]:
    out = Path(args.out)
    rows = []
    bsnn = out / "office-events-xnor.bsnn"
    if not bsnn.exists():
        run([str(BIN), "export", "--model", args.xnor_model, "--out", str(bsnn)])
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        lengths = {}
        for minutes in args.minutes:
            path = Path(tmp) / f"office-{minutes:g}min.wav"
            lengths[minutes] = (path, long_file(Path(args.mixtures), minutes, path))
        systems = [("office-events", "pytorch", ["--model", args.float_model], args.minutes),
                   ("office-events-xnor", "pytorch", ["--model", args.xnor_model], args.minutes[:1]),
                   ("office-events-xnor", "engine", ["--engine", str(bsnn)], args.minutes)]
        for recipe, backend, flag, which in systems:
            for minutes in which:
                path, seconds = lengths[minutes]
                est = Path(tmp) / "events.tsv"
                _, rss = run([str(BIN), "detect", *flag, str(path), "--out", str(est), "-q"],
                             env={"OMP_NUM_THREADS": "1"}, timed=True)
                info = json.loads(est.with_suffix(".json").read_text())
                rows.append({"recipe": recipe, "backend": backend, "minutes": minutes,
                             "audio_seconds": round(seconds, 1), "peak_rss_mib": round(rss / 1024, 1),
                             "wall_seconds": info["wall_seconds"],
                             "real_time_factor": info["real_time_factor"],
                             "x_real_time": 1 / info["real_time_factor"],
                             "hop": info["settings"]["hop"],
                             "events": sum(len(v) for v in info["files"].values())})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def birds(args) -> dict:
    """birds-detect over whole xeno-canto recordings the model never trained on (the recipe's
    group split), through the engine; and over the 10-min office file, which holds no bird.

    These recordings have no time-stamped annotation, so this reports what the detector says:
    how much of each bird recording it marks as bird activity, and how much of bird-free audio.
    """
    from bitsound.detect.run import detections, load_classifier, score_files, write_events
    from bitsound.experiment import holdout_split, open_recipe_data

    model = load_classifier(model=args.birds_model)
    dataset = open_recipe_data(model.recipe)
    split = holdout_split(model.recipe, dataset)
    held = sorted({dataset.clips[i].path for i in split.val
                   if str(dataset.clips[i].meta.get("source", "")).startswith("xeno-canto")})
    trained = {dataset.clips[i].path for i in split.train}
    assert not set(held) & trained, "a held-out recording was trained on"
    out = Path(args.out)
    bsnn = out / "birds-detect.bsnn"
    run([str(BIN), "export", "--model", args.birds_model, "--out", str(bsnn)])
    engine = load_classifier(engine=str(bsnn))
    settings = engine.recipe.detect
    scored = score_files(engine, held, detect=settings, show_progress=False)
    found = detections(scored, settings.postprocess)
    write_events(found, tsv=out / "birds-detect.tsv", json_path=out / "birds-detect.json", run=scored,
                 cfg=settings.postprocess)
    rows = []
    for frames in scored.frames:
        events = found[frames.filename]
        active = sum(d.event.duration for d in events)
        rows.append({"file": frames.filename, "seconds": round(frames.duration, 1),
                     "segments": len(events), "bird_fraction": active / frames.duration})
    result = {"held_out_recordings": rows, "engine_rtf": scored.real_time_factor,
              "audio_seconds": scored.audio_seconds}
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        quiet = Path(tmp) / "office-10min.wav"
        long_file(Path(args.mixtures), 10, quiet)
        none = score_files(engine, [quiet], detect=settings, show_progress=False)
        events = detections(none, settings.postprocess)[quiet.name]
        active = sum(d.event.duration for d in events)
        result["bird_free_10min"] = {"segments": len(events), "bird_fraction": active / none.audio_seconds}
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mixtures", default="runs/office-mixtures")
    parser.add_argument("--float-model", default="runs/office-events/model.pt")
    parser.add_argument("--xnor-model", default="runs/office-events-xnor/model.pt")
    parser.add_argument("--birds-model", default="runs/birds-detect/model.pt",
                        help="birds-detect model (skipped when the file is absent)")
    parser.add_argument("--out", default="runs/bench-detect")
    parser.add_argument("--minutes", type=float, nargs="+", default=[10, 60])
    parser.add_argument("--tmp", default=None, help="folder for the long files (default: system tmp)")
    parser.add_argument("--xnor-pytorch", action="store_true",
                        help="also score the XNOR model through PyTorch (the engine runs it anyway)")
    parser.add_argument("--float-ensemble", nargs="+", metavar="MODEL.pt", default=[],
                        help="also score --float-model averaged with these (bitsound detect --model "
                        "A --model B ...)")
    parser.add_argument("--xnor-ensemble", nargs="+", metavar="MODEL.pt", default=[],
                        help="also score --xnor-model averaged with these, through the engine")
    parser.add_argument("--only-ensembles", action="store_true",
                        help="score only the ensembles (the single models were scored before)")
    parser.add_argument("--postprocess-from", metavar="DIR",
                        help="do not tune: take each system's post-processing from "
                        "DIR/{system}.tuned-postprocess.json of an earlier run (for models trained "
                        "on the val sources too: bitsound mix --val-into-train)")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    results = {}
    if not args.skip_accuracy:
        results["accuracy"] = accuracy(args)
        print("\nheld-out synthesized test set (event files and background recordings never trained "
              "or tuned on)")
        print(f"{'system':34} {'post':22} {'ev F1':>6} {'ev ER':>6} {'seg F1':>6} {'seg ER':>6} "
              f"{'PSDS1':>6} {'PSDS2':>6}")
        def num(value):
            return f"{value:6.3f}" if value is not None else f"{'-':>6}"

        for r in results["accuracy"]:
            print(f"{r['recipe'] + ' / ' + r['backend']:34} {r['postprocess']:22} "
                  + " ".join(num(r[k]) for k in ("event_f1", "event_er", "segment_f1", "segment_er",
                                                 "psds1", "psds2")))
    if not args.skip_memory:
        results["memory"] = memory(args)
        print("\nbitsound detect on long files, 1 thread")
        print(f"{'system':34} {'audio':>8} {'peak RSS':>10} {'wall':>8} {'RTF':>8} {'x real time':>12}")
        for r in results["memory"]:
            print(f"{r['recipe'] + ' / ' + r['backend']:34} {r['minutes']:6g} m {r['peak_rss_mib']:8.1f} MiB "
                  f"{r['wall_seconds']:7.1f}s {r['real_time_factor']:8.4f} {r['x_real_time']:11.1f}x")
    if Path(args.birds_model).is_file():
        results["birds"] = b = birds(args)
        print("\nbirds-detect (engine) over held-out xeno-canto recordings")
        for r in b["held_out_recordings"]:
            print(f"  {r['file']:40} {r['seconds']:7.1f} s  {r['segments']:3d} segments  "
                  f"{100 * r['bird_fraction']:5.1f} % bird")
        free = b["bird_free_10min"]
        print(f"  10 min of office mixtures (no bird): {free['segments']} segments, "
              f"{100 * free['bird_fraction']:.1f} % bird; engine real-time factor {b['engine_rtf']:.4f}")
    Path(args.out, "results.json").write_text(json.dumps(results, indent=1))
    print(f"\nwritten {Path(args.out) / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
