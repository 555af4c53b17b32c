"""Classification metrics on predicted probabilities.

All functions take integer targets ``y_true`` [shape=(n,)] and, where needed, class
probabilities ``probs`` [shape=(n, n_classes)] whose rows sum to one. Classes absent from
``y_true`` are left out of averaged recalls and F1 (as scikit-learn does for balanced accuracy),
so evaluating on a subset of a model's labels is meaningful.
"""

from __future__ import annotations

import re

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, *, n_classes: int) -> np.ndarray:
    """Counts ``C[i, j]`` of clips of true class ``i`` predicted as ``j``."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return matrix


def per_class_recall(matrix: np.ndarray) -> np.ndarray:
    """Recall of each class; NaN for classes with no true examples."""
    support = matrix.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(matrix) / support, np.nan)


def macro_f1(matrix: np.ndarray) -> float:
    """Unweighted mean F1 over the classes present in the targets."""
    tp = np.diag(matrix).astype(float)
    support = matrix.sum(axis=1)
    predicted = matrix.sum(axis=0)
    denom = support + predicted
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(denom > 0, 2 * tp / denom, 0.0)
    return float(f1[support > 0].mean())


def log_loss(y_true: np.ndarray, probs: np.ndarray, *, eps: float = 1e-7) -> float:
    """Mean negative log-likelihood of the true class, probabilities clipped to [eps, 1]."""
    picked = probs[np.arange(len(y_true)), y_true]
    return float(-np.log(np.clip(picked, eps, 1.0)).mean())


def classification_report(y_true, probs, *, labels: list[str]) -> dict:
    """Every metric bitsound reports, as a JSON-able dict.

    Parameters
    ----------
    y_true : array [shape=(n,)] of int
    probs : array [shape=(n, n_classes)]
    labels : list of str
        Class names in index order.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    if len(y_true) == 0:
        raise ValueError("classification_report needs at least one example")
    y_pred = probs.argmax(axis=1)
    matrix = confusion_matrix(y_true, y_pred, n_classes=len(labels))
    recall = per_class_recall(matrix)
    present = ~np.isnan(recall)
    return {
        "n": int(len(y_true)),
        "accuracy": float((y_pred == y_true).mean()),
        "balanced_accuracy": float(recall[present].mean()),
        "macro_f1": macro_f1(matrix),
        "log_loss": log_loss(y_true, probs),
        "per_class_recall": {lab: (None if np.isnan(r) else float(r))
                             for lab, r in zip(labels, recall, strict=True)},
        "labels": list(labels),
        "confusion_matrix": matrix.tolist(),
    }


def per_device_accuracy(y_true, probs, devices: list[str | None], *,
                        seen: list[str] | None = None) -> list[dict]:
    """Accuracy of the examples of each recording device (seed 003 Table 3's columns).

    Parameters
    ----------
    y_true : array [shape=(n,)] of int
    probs : array [shape=(n, n_classes)]
    devices : list of str or None [length n]
        The device of each example; None counts as ``"(none)"``.
    seen : list of str, optional
        The devices of the model's training data; each row's ``seen`` is True / False, or None
        when not known.

    Returns
    -------
    list of dict
        ``{"device", "n", "accuracy", "seen"}`` per device, in natural order (A, B, C, S1 ...).
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    correct = np.asarray(probs).argmax(axis=1) == y_true
    names = np.array(["(none)" if d is None else str(d) for d in devices], dtype=object)
    seen_set = None if seen is None else {str(d) for d in seen}
    rows = []
    for device in sorted(set(names.tolist()), key=_natural_key):
        members = names == device
        rows.append({"device": device, "n": int(members.sum()),
                     "accuracy": float(correct[members].mean()),
                     "seen": None if seen_set is None else device in seen_set})
    return rows


def _natural_key(text: str) -> list[tuple[int, int | str]]:
    return [(0, int(part)) if part.isdigit() else (1, part)
            for part in re.split(r"(\d+)", text) if part]
