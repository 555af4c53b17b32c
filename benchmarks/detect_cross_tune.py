"""Validation scores of a detector (one model or an ensemble) with tuned post-processing that
was not tuned on the files it is scored on: the validation mixtures are split in two halves
(even and odd files), post-processing is tuned on one half and scored on the other, both ways,
and the detections of both halves are scored together.

This is how the ensemble size of office-events was chosen without touching the test set
(README, Sound event detection):

    python benchmarks/detect_cross_tune.py --mixtures runs/office-mixtures \\
        --model runs/office-events/model.pt --model runs/office-events-seed1/model.pt

It prints event- and segment-based F1 with the first model's recipe post-processing and with
the cross-tuned post-processing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bitsound.data.events import read_annotations
from bitsound.detect.metrics import evaluate_events
from bitsound.detect.run import DetectionRun, as_table, detections, load_classifier, score_files, tune


def scores(ref, found, labels, durations) -> dict:
    report = evaluate_events(ref, as_table(found), labels=labels, durations=durations)
    return {"event_f1": report["event_based"]["f1"], "segment_f1": report["segment_based"]["f1"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mixtures", default="runs/office-mixtures", help="bitsound mix output")
    parser.add_argument("--model", action="append", required=True, metavar="MODEL.pt",
                        help="a model; more than once: their ensemble")
    args = parser.parse_args()
    mix = Path(args.mixtures)
    files = sorted((mix / "dev/audio").glob("val_*.wav"))
    if not files:
        raise SystemExit(f"no validation mixtures (dev/audio/val_*.wav) under '{mix}'")
    ref = {k: v for k, v in read_annotations(mix / "dev/events.tsv").items() if k.startswith("val_")}
    classifier = load_classifier(model=args.model)
    settings = classifier.recipe.detect
    run = score_files(classifier, files, detect=settings, show_progress=False)
    post = settings.postprocess
    labels = [c for c in run.frames[0].labels if c not in post.ignore]
    durations = {f.audio_id: f.duration for f in run.frames}
    halves = [DetectionRun(frames=run.frames[k::2], audio_seconds=0.0, wall_seconds=0.0,
                           backend=run.backend) for k in (0, 1)]
    crossed = {}
    for k in (0, 1):
        tuned, _ = tune(halves[k], ref, base=post, show_progress=False)
        crossed.update(detections(halves[1 - k], tuned))
    result = {"models": args.model, "val_files": len(files),
              "recipe": scores(ref, detections(run, post), labels, durations),
              "cross_tuned": scores(ref, crossed, labels, durations)}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
