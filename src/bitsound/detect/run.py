"""What ``bitsound detect`` and ``bitsound evaluate-events`` do, as plain functions."""

from __future__ import annotations

import itertools
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from bitsound.audio.io import audio_info
from bitsound.config import ClassPostprocess, DetectConfig, PostprocessConfig
from bitsound.data.events import EventTable, format_dcase, write_text_atomic
from bitsound.detect.frames import FrameScores, backend_name, frame_scores
from bitsound.detect.metrics import event_based
from bitsound.detect.postprocess import Detection, detect_events
from bitsound.detect.stream import output_frames
from bitsound.errors import ConfigError

log = logging.getLogger("bitsound.detect")


def load_classifier(*, model: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
                    engine: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
                    isa: str = "auto"):
    """The PyTorch model (``model.pt``) or the engine model (``.bsnn``) as an audio classifier;
    several of either as an :class:`~bitsound.detect.ensemble.Ensemble` that averages their
    probabilities.

    With both, the networks run in the engine and the i-th ``.bsnn`` file must have been exported
    from the i-th ``model.pt`` (same labels and recipe): a mismatch is an error, not a silent
    choice.
    """
    models = [model] if isinstance(model, (str, os.PathLike)) else list(model or [])
    engines = [engine] if isinstance(engine, (str, os.PathLike)) else list(engine or [])
    if not models and not engines:
        raise ConfigError("give --model DIR/model.pt, --engine FILE.bsnn, or both (the engine runs "
                          "the network exported from that model)")
    if models and engines and len(models) != len(engines):
        raise ConfigError(f"{len(models)} --model and {len(engines)} --engine files: with both, give "
                          "one .bsnn per model.pt, in the same order (each exported from its model)")
    if engines:
        members = [_engine_classifier(path, models[i] if models else None, isa)
                   for i, path in enumerate(engines)]
        names = engines
    else:
        from bitsound.modelfile import load_model

        members = [load_model(path) for path in models]
        names = models
    if len(members) == 1:
        return members[0]
    from bitsound.detect.ensemble import Ensemble

    return Ensemble(members, [str(n) for n in names])


def _engine_classifier(engine: str, model: str | None, isa: str):
    """The engine classifier of ``engine``, checked against the ``model.pt`` it came from."""
    from bitsound.engine.classifier import load_classifier as load_engine

    classifier = load_engine(engine, isa=isa)
    if model:
        from bitsound.modelfile import load_model

        torch_model = load_model(model)
        if list(torch_model.labels) != list(classifier.labels) or (
            torch_model.recipe.model_dump(mode="json") != classifier.recipe.model_dump(mode="json")
        ):
            raise ConfigError(f"'{engine}' was not exported from '{model}' (their labels or recipes "
                              f"differ); export it again with `bitsound export --model {model} --out "
                              f"{engine}`, or give only one of --model and --engine")
    return classifier


@dataclass
class DetectionRun:
    """Frame scores of every file and how long they took."""

    frames: list[FrameScores]
    audio_seconds: float
    wall_seconds: float
    backend: str
    settings: dict = field(default_factory=dict)

    @property
    def real_time_factor(self) -> float:
        """Wall time / audio time (0.01: a 100-s recording takes 1 s)."""
        return self.wall_seconds / self.audio_seconds if self.audio_seconds else float("nan")


def score_files(classifier, paths: Sequence[str | Path], *, detect: DetectConfig,
                device: str = "cpu", show_progress: bool = True) -> DetectionRun:
    """Frame scores of each file, with progress bars over files and over audio seconds.

    Raises
    ------
    AudioDecodeError
        A file cannot be decoded (checked for all files before any is scored).
    ConfigError
        Two files share a name (DCASE annotation files key recordings by file name).
    """
    paths = [Path(p) for p in paths]
    names = [p.name for p in paths]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"files {twice} occur twice (by name); DCASE TSV rows name recordings by "
                          "file name, so give each recording once")
    rate = classifier.recipe.audio.sample_rate
    durations = [output_frames(audio_info(p), rate) / rate for p in paths]  # header errors first
    total = sum(durations)
    frames = []
    backend = backend_name(classifier)
    if backend == "pytorch":
        classifier = classifier.to(device)
    started = time.perf_counter()
    columns = [TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[done]}"),
               TimeRemainingColumn()]
    with Progress(*columns, transient=True, disable=not show_progress) as progress:
        files_task = progress.add_task("files", total=len(paths), done=f"0/{len(paths)}")
        audio_task = progress.add_task("audio", total=total, done="0 s")
        finished = 0.0
        for i, (path, duration) in enumerate(zip(paths, durations, strict=True)):
            def step(seconds, base=finished):
                progress.update(audio_task, completed=base + seconds,
                                done=f"{base + seconds:.0f}/{total:.0f} s")

            frames.append(frame_scores(classifier, path, hop=detect.hop, block=detect.block,
                                       batch=detect.batch, device=device, progress=step))
            finished += duration
            progress.update(files_task, completed=i + 1, done=f"{i + 1}/{len(paths)}")
    wall = time.perf_counter() - started
    return DetectionRun(frames=frames, audio_seconds=total, wall_seconds=wall, backend=backend,
                        settings={"hop": detect.hop, "block": detect.block, "batch": detect.batch,
                                  "models": len(classifier) if hasattr(classifier, "members") else 1})


def detections(run: DetectionRun, cfg: PostprocessConfig) -> dict[str, list[Detection]]:
    """Events of every file of ``run`` under ``cfg``."""
    return {f.filename: detect_events(f, cfg) for f in run.frames}


def as_table(found: dict[str, list[Detection]]) -> EventTable:
    return {name: [d.event for d in ds] for name, ds in found.items()}


def write_events(found: dict[str, list[Detection]], *, tsv: Path, json_path: Path | None = None,
                 run: DetectionRun | None = None, cfg: PostprocessConfig | None = None) -> None:
    """DCASE TSV of the events (every file listed, files without events as empty rows) and,
    optionally, JSON with confidences, the settings and the throughput."""
    write_text_atomic(tsv, format_dcase(as_table(found)))
    if json_path is None:
        return
    from bitsound.report.results import DetectedEvent, DetectResult

    result = DetectResult(
        files={name: [DetectedEvent(onset=round(d.event.onset, 4), offset=round(d.event.offset, 4),
                                    event_label=d.event.label, confidence=round(d.confidence, 4),
                                    peak=round(d.peak, 4)) for d in ds] for name, ds in found.items()},
        postprocess=cfg.model_dump(mode="json") if cfg else None,
    )
    if run is not None:
        result = result.model_copy(update={
            "backend": run.backend, "settings": run.settings, "audio_seconds": round(run.audio_seconds, 3),
            "wall_seconds": round(run.wall_seconds, 3), "real_time_factor": run.real_time_factor})
    write_text_atomic(json_path, json.dumps(result.to_json(), indent=1))


def load_postprocess(path: str | Path) -> PostprocessConfig:
    """A post-processing config from JSON or YAML (e.g. what ``detect --tune`` wrote)."""
    import yaml
    from pydantic import ValidationError

    from bitsound.config import format_validation_error

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read post-processing file '{path}': {err}") from None
    if isinstance(data, dict) and "postprocess" in data and "tuning" in data:
        data = data["postprocess"]
    try:
        return PostprocessConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source=f"'{path}'")) from None


# --------------------------------------------------------------------------------------------
# tuning
# --------------------------------------------------------------------------------------------
DEFAULT_MEDIANS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7)
DEFAULT_THRESHOLDS = (0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
DEFAULT_LOW_RATIOS = (1.0, 0.6)
# gaps merged within one event: speech and laughter pause between syllables, and a window
# classifier's track dips there
DEFAULT_MAX_GAPS = (0.0, 0.3, 0.8)


def tune(run: DetectionRun, ref: EventTable, *, base: PostprocessConfig,
         medians: Sequence[float] = DEFAULT_MEDIANS, thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
         low_ratios: Sequence[float] = DEFAULT_LOW_RATIOS, max_gaps: Sequence[float] = DEFAULT_MAX_GAPS,
         collar: float = 0.2,
         offset_fraction: float = 0.2, show_progress: bool = True) -> tuple[PostprocessConfig, dict]:
    """Per-class median filter length, hysteresis thresholds and gap merging that maximise
    event-based F1.

    Every combination of the grid is applied to all classes at once and scored with sed_eval;
    each class keeps its best combination (event-based per-class F1 depends only on that
    class's events, so choosing per class is choosing the best of the grid for each). Ties go
    to the earlier, simpler combination. ``base`` supplies ``ignore`` and ``min_duration``. Run it
    on validation recordings, never on the test set.

    Returns
    -------
    (PostprocessConfig, dict)
        The tuned config and a report: per class the chosen values and their F1, and the
        overall event-based F1 before and after on these recordings.
    """
    files = {f.filename for f in run.frames}
    missing = sorted(files - set(ref))
    if missing:
        raise ConfigError(f"the tuning reference does not annotate {len(missing)} of the files: "
                          f"{missing[:5]}; tune on annotated validation recordings")
    ref = {name: ref[name] for name in files}  # the reference of the files tuned on
    labels = [lab for lab in run.frames[0].labels if lab not in base.ignore]
    best: dict[str, tuple[float, float, dict]] = {}
    grid = list(itertools.product(medians, thresholds, low_ratios, max_gaps))
    with Progress(transient=True, disable=not show_progress) as progress:
        task = progress.add_task("tuning", total=len(grid))
        for median, high, ratio, gap in grid:
            low = max(min(high * ratio, high), 0.01)
            cfg = base.model_copy(update={"median": median, "threshold": high,
                                          "low_threshold": low, "max_gap": gap, "per_class": {}})
            scores = event_based(ref, as_table(detections(run, cfg)), labels=labels, collar=collar,
                                 offset_fraction=offset_fraction)
            for label in labels:
                row = scores["per_class"][label]
                f1 = row["f1"] or 0.0
                er = row["error_rate"] if row["error_rate"] is not None else float("inf")
                if label not in best or (f1, -er) > best[label][:2]:
                    best[label] = (f1, -er, {"median": median, "threshold": high, "low_threshold": low,
                                             "max_gap": gap})
            progress.advance(task)
    per_class = {label: ClassPostprocess(**choice) for label, (_, _, choice) in best.items()}
    tuned = base.model_copy(update={"per_class": per_class})
    before = event_based(ref, as_table(detections(run, base)), labels=labels, collar=collar,
                         offset_fraction=offset_fraction)
    after = event_based(ref, as_table(detections(run, tuned)), labels=labels, collar=collar,
                        offset_fraction=offset_fraction)
    report = {"n_files": len(files), "grid": {"medians": list(medians), "thresholds": list(thresholds),
                                              "low_ratios": list(low_ratios), "max_gaps": list(max_gaps)},
              "per_class": {label: {**choice, "f1": f1} for label, (f1, _, choice) in best.items()},
              "event_f1_before": before["f1"], "event_f1_after": after["f1"]}
    return tuned, report


__all__ = ["DetectionRun", "as_table", "detections", "load_classifier", "load_postprocess",
           "score_files", "tune", "write_events"]
