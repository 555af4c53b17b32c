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


class StudyResult(Result):
    """What ``bitsound study`` measured (``DIR/study.json``, also ``study.csv`` / ``study.md``)."""

    study: str
    description: str = ""
    base: str
    rows: list[StudyRowResult]


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


__all__ = ["ComplexityResult", "CvFold", "CvResult", "EvaluateResult", "LayerComplexity",
           "Prediction", "Result", "Scores", "SplitInfo", "StudyResult", "StudyRowResult",
           "TrainResult", "load_result", "scores_and_predictions"]
