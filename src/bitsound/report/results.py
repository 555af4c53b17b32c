"""Typed result objects: what train, cv, evaluate, complexity and study produce.

Each command builds one of these and writes it (``metrics.json``, ``cv.json``, ``--json``
output, ``study.json``); the CLI tables and the HTML report read the same objects back with
:func:`load_result`, so no module spells a result key that another module has to guess.

The JSON keys are the field names below; they are the ones ``metrics.json`` and ``cv.json``
always had, with the held-out ``predictions`` (one row per scored clip, or per window for
window-level recipes) added so that confusion matrices and per-group accuracies can be recomputed
from any result file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from bitsound.errors import DataError
from bitsound.metrics import classification_report


class Result(BaseModel):
    """Base of every result: unknown keys are errors (a misspelt key is never read as absent)."""

    model_config = ConfigDict(extra="forbid")

    def to_json(self, **kwargs: Any) -> dict:
        """The JSON-able dict this result is written as."""
        return self.model_dump(mode="json", **kwargs)

    def save(self, path: Path) -> None:
        """Write the result as indented JSON, atomically."""
        from bitsound.train.checkpoint import save_json

        save_json(self.to_json(), Path(path))


R = TypeVar("R", bound=Result)


class Prediction(Result):
    """One held-out example: its clip, what it is and what the model said.

    ``window`` is the window index within the clip for window-level scoring, else None;
    ``probability`` is the model's probability of the predicted label.
    """

    clip: str
    true: str
    predicted: str
    probability: float
    group: str | None = None
    device: str | None = None
    fold: str | None = None
    window: int | None = None


class DeviceScore(Result):
    """Accuracy on the examples of one recording device; ``seen``: in the training data."""

    device: str
    n: int
    accuracy: float
    seen: bool | None = None


class Scores(Result):
    """Classification scores of one set of examples (see :mod:`bitsound.metrics`)."""

    n: int
    accuracy: float
    balanced_accuracy: float
    macro_f1: float
    log_loss: float
    per_class_recall: dict[str, float | None]
    labels: list[str]
    confusion_matrix: list[list[int]]
    per_device: list[DeviceScore] | None = None


class SplitInfo(Result):
    """Which split a model was scored on: ``kind`` as in ``data.split.kind``."""

    kind: str
    name: str | None = None
    n_train: int | None = None
    n_val: int | None = None
    note: str | None = None


class TrainResult(Result):
    """What ``bitsound train`` measured (``DIR/metrics.json``)."""

    recipe: str
    data: str
    split: SplitInfo
    n_train_clips: int
    n_train_windows: int
    labels: list[str]
    params: int
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    train_seconds: float
    score_level: Literal["clip", "window"]
    train_accuracy: float
    held_out: Scores | None
    predictions: list[Prediction] = []
    references: list[str] = []
    # devices of the training data ("seen" by the model); empty without devices
    train_devices: list[str] = []
    # the check of every clip before training (bitsound.preflight): counts and clips left out
    clip_check: dict | None = None


class CvFold(Result):
    """One fold's held-out scores in a cross-validation."""

    held_out: str
    n: int
    accuracy: float
    balanced_accuracy: float
    macro_f1: float
    log_loss: float


class CvResult(Result):
    """What ``bitsound cv`` measured (``DIR/cv.json``); each fold's run is ``DIR/cv-FOLD/``."""

    recipe: str
    data: str
    split: str
    folds: list[CvFold]
    mean_accuracy: float
    std_accuracy: float
    min_accuracy: float
    predictions: list[Prediction] = []
    references: list[str] = []
    clip_check: dict | None = None


class EvaluateResult(Scores):
    """What ``bitsound evaluate`` measured: scores on every clip of one data set."""

    level: Literal["clip", "window"]
    data: str
    model: str | None = None
    predictions: list[Prediction] = []
    clip_check: dict | None = None


class LayerComplexity(Result):
    """One counted layer of a complexity report (see :mod:`bitsound.complexity`)."""

    name: str
    type: str
    output_shape: list[int] | None
    calls: int
    params: int
    nonzero_params: int
    scale_params: int
    binary_weights: int = 0  # absent in files written before it existed
    bits_per_weight: int
    input_bits: int
    bytes: dict[str, float]
    macs: int
    bops: int
    activation_bytes: int


class ComplexityResult(Result):
    """What ``bitsound complexity`` measured: parameters, bytes per rule, MACs, BOPs, per layer."""

    input_shape: list[int]
    params: int
    nonzero_params: int
    scale_params: int
    macs: int
    bops: int
    bytes: dict[str, float]
    kb: dict[str, float]
    flops_seed001: dict[str, float]
    # parameters each size rule counts (absent in files written before it existed)
    params_by_rule: dict[str, int] = {}
    # weights stored at one bit (seed 002's "binary weights"; absent in older files)
    binary_weights: int = 0
    peak_activation_bytes: int
    peak_activation_layer: str | None
    layers: list[LayerComplexity]
    model: str | None = None
    budget_violations: list[str] = []

    @property
    def mac_equivalents(self) -> float:
        """MACs plus binary operations at 1/64 MAC each (seed 001's XNOR-Net cost model)."""
        from bitsound.complexity import XNOR_SPEEDUP

        return self.macs + self.bops / XNOR_SPEEDUP


class StudyRowResult(Result):
    """One row of a study: a variation of the base recipe, trained in ``DIR/rowNN``."""

    row: str
    train_accuracy: float
    val_accuracy: float | None
    val_balanced_accuracy: float | None
    params: int
    storage_kb: float
    macs: int
    bops: int
    best_epoch: int
    train_seconds: float
    # held-out accuracy per recording device (seed 003 Table 3's columns); empty without devices
    per_device: list[DeviceScore] = []


class StudyResult(Result):
    """What ``bitsound study`` measured (``DIR/study.json``, also ``study.csv`` / ``study.md``)."""

    study: str
    description: str = ""
    base: str
    rows: list[StudyRowResult]


class CompressStep(Result):
    """One step of an iterative prune stage: channels removed per layer and what followed."""

    step: int
    removed: dict[str, int]
    params: int
    criterion_accuracy: float | None = None
    reverted: bool = False


class CompressRow(Result):
    """One stage of ``bitsound compress`` (row 0 is the input model), measured on its saved model.

    Sizes follow :mod:`bitsound.complexity` (``bytes``/``kb`` per rule); ``held_out_*`` is the
    base model's held-out split; ``criterion_accuracy`` the data that decided (see
    :class:`CompressResult`); ``bsnn_bytes`` / ``engine_ms`` (mean per example, one thread) the
    exported model; ``engine`` its agreement with PyTorch (labels, logits, int8 codes).
    """

    stage: str
    kind: str
    model: str | None
    params: int
    nonzero_params: int
    bytes: dict[str, float]
    kb: dict[str, float]
    macs: int
    bops: int
    flops_seed001: float
    held_out_accuracy: float | None
    held_out_balanced_accuracy: float | None = None
    criterion_accuracy: float | None = None
    seconds: float
    bsnn_bytes: int | None = None
    engine_ms: float | None = None
    engine: dict | None = None
    notes: list[str] = []
    steps: list[CompressStep] = []


class CompressResult(Result):
    """What ``bitsound compress`` measured (``DIR/compress.json``, also ``compress.md``)."""

    pipeline: str
    description: str = ""
    model: str
    recipe: str
    data: str
    split: SplitInfo
    # what decided: "validation: ..." (a part of the training clips) or "held_out"
    criterion: str
    rows: list[CompressRow]
    references: list[str] = []


class PredictRow(Result):
    """One file of ``bitsound predict`` (``--json`` prints a list of them): the label, its
    probability, how many windows were averaged and every class's probability."""

    file: str
    label: str
    probability: float
    n_windows: int
    probabilities: dict[str, float] = {}


class DetectedEvent(Result):
    """One event ``bitsound detect`` found: times in seconds, mean and peak class probability."""

    onset: float
    offset: float
    event_label: str
    confidence: float
    peak: float


class DetectResult(Result):
    """``bitsound detect``'s JSON beside the TSV: every file's events, the settings, the speed."""

    files: dict[str, list[DetectedEvent]]
    postprocess: dict[str, Any] | None = None
    backend: str | None = None
    settings: dict[str, Any] = {}
    audio_seconds: float | None = None
    wall_seconds: float | None = None
    real_time_factor: float | None = None


class EventScoresResult(Result):
    """``bitsound evaluate-events --json``: sed_eval's event- and segment-based scores (overall and
    per class, as sed_eval reports them) and, with frame scores, PSDS1/PSDS2."""

    event_based: dict[str, Any]
    segment_based: dict[str, Any]
    psds1: dict[str, Any] | float | None = None
    psds2: dict[str, Any] | float | None = None


class ClipProblem(Result):
    path: str
    problem: str


class DataCheckResult(Result):
    """``bitsound data check --json``: counts of a data set and every problem found."""

    kind: str
    root: str
    ok: bool
    n_clips: int
    total_duration: float
    per_class: dict[str, int]
    per_fold: dict[str, int]
    per_group: dict[str, int]
    per_device: dict[str, int]
    sample_rates: dict[str, int]
    channels: dict[str, int]
    problems: list[ClipProblem]


class DataCacheResult(Result):
    """``bitsound data cache --json``: how many clips the cache held, how many were computed now
    (in how many processes, how fast) and every clip that could not be decoded."""

    recipe: str
    cache: str
    n_clips: int
    n_cached: int
    n_computed: int
    seconds: float
    workers: int
    clips_per_second: float | None
    failures: list[ClipProblem]

    @classmethod
    def from_report(cls, report: Any, *, recipe: str, cache: str) -> DataCacheResult:
        """From :class:`bitsound.extract.FillReport`."""
        return cls(recipe=recipe, cache=cache, n_clips=report.n_clips, n_cached=report.n_cached,
                   n_computed=report.n_computed, seconds=round(report.seconds, 3),
                   workers=report.workers, clips_per_second=report.clips_per_second,
                   failures=[ClipProblem(path=p, problem=w) for p, w in report.failures])


class LayerBenchResult(Result):
    """``bitsound bench layer --json``: one binary conv layer in the engine vs torch fp32, same run."""

    cin: int
    cout: int
    size: list[int]
    kernel: int
    threads: int
    isa: str
    form: str
    float_out_form: str
    macs: int
    torch_ms: float
    engine_ms: float
    engine_float_out_ms: float
    pack_ms: float
    speedup: float
    speedup_float_out: float
    torch_macs_per_s: float
    engine_macs_per_s: float
    peak_macs_per_s: float
    peak_method: str
    fraction_of_peak: float
    cpu: str


class MixResult(Result):
    """``bitsound mix``'s ``OUT/split.json``: the settings, counts per part and which event files
    and background recordings each part holds."""

    config: dict[str, Any]
    summary: dict[str, Any]
    split: dict[str, Any]


def scores_and_predictions(y_true: np.ndarray, probs: np.ndarray, *, labels: list[str],
                           clips: list, windows: np.ndarray | None = None
                           ) -> tuple[Scores, list[Prediction]]:
    """Scores of class probabilities and one :class:`Prediction` per example.

    Parameters
    ----------
    y_true : ndarray [shape=(n,)] of int
    probs : ndarray [shape=(n, n_classes)]
    labels : list of str
        Class names in index order.
    clips : list of Clip [length n]
        The clip of each example (its path, group, device and fold are kept).
    windows : ndarray [shape=(n,)] of int, optional
        Window index of each example within its clip (window-level scoring).
    """
    scores = Scores.model_validate(classification_report(y_true, probs, labels=labels))
    predicted = np.asarray(probs).argmax(axis=1)
    rows = [Prediction(clip=str(clip.path), true=labels[int(t)], predicted=labels[int(p)],
                       probability=float(probs[i, p]), group=clip.group, device=clip.device,
                       fold=clip.fold, window=None if windows is None else int(windows[i]))
            for i, (clip, t, p) in enumerate(zip(clips, y_true, predicted, strict=True))]
    return scores, rows


def load_result(path: Path, cls: type[R]) -> R:
    """Read a result file written by a bitsound command.

    Raises
    ------
    DataError
        The file is missing, not JSON, or not a ``cls`` (the message names the first wrong key).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as err:
        raise DataError(f"cannot read result file '{path}': {err.strerror}") from None
    except json.JSONDecodeError as err:
        raise DataError(f"result file '{path}' is not valid JSON ({err}); rerun the command that "
                        f"wrote it") from None
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise DataError(f"result file '{path}' is not a {cls.__name__}: {where}: {first['msg']}; "
                        f"it was written by another bitsound version or edited by hand") from None


__all__ = ["ClipProblem", "ComplexityResult", "CompressResult", "CompressRow", "CompressStep", "CvFold",
           "CvResult", "DataCacheResult", "DataCheckResult", "DetectResult", "DetectedEvent",
           "EvaluateResult", "EventScoresResult", "LayerBenchResult", "LayerComplexity", "MixResult",
           "Prediction", "PredictRow", "Result", "Scores", "SplitInfo", "StudyResult", "StudyRowResult",
           "TrainResult", "load_result", "scores_and_predictions"]
