"""From per-frame class probabilities to events.

Per class, in this order (the usual chain of DCASE baselines, e.g. Mesaros et al. 2016,
"Metrics for polyphonic sound event detection", and the DCASE 2016 task 2 baseline):

1. a median filter over the probability track (``median`` seconds), which removes isolated
   spikes and dips without moving onsets the way a mean filter would;
2. hysteresis thresholds: an event starts at a frame above ``threshold`` and extends, both
   ways, over the neighbouring frames above ``low_threshold`` (a lower second threshold keeps
   an event whole through a dip without lowering where it may start);
3. gap merging: events of one class closer than ``max_gap`` seconds become one;
4. minimum duration: events shorter than ``min_duration`` seconds are dropped.

Classes in ``ignore`` (e.g. the recipe's background class) are never reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from bitsound.config import PostprocessConfig
from bitsound.data.records import Event
from bitsound.detect.frames import FrameScores
from bitsound.errors import ConfigError


@dataclass(frozen=True)
class ClassRule:
    """The post-processing of one class, all values resolved."""

    median: float
    threshold: float
    low_threshold: float
    min_duration: float
    max_gap: float


@dataclass(frozen=True)
class Detection:
    """A detected event with its confidence (mean and peak filtered probability over it)."""

    event: Event
    confidence: float
    peak: float


def class_rules(cfg: PostprocessConfig, labels: list[str]) -> dict[str, ClassRule]:
    """The resolved rule of every reported class (``labels`` minus ``cfg.ignore``).

    Raises
    ------
    ConfigError
        ``ignore`` or ``per_class`` names a class the model does not have.
    """
    unknown = sorted((set(cfg.ignore) | set(cfg.per_class)) - set(labels))
    if unknown:
        raise ConfigError(f"postprocess names classes {unknown} that the model does not predict; "
                          f"its classes: {', '.join(labels)}")
    rules = {}
    for label in labels:
        if label in cfg.ignore:
            continue
        own = cfg.per_class.get(label)

        def pick(key, own=own):
            value = getattr(own, key) if own is not None else None
            return getattr(cfg, key) if value is None else value

        threshold = pick("threshold")
        low = pick("low_threshold")
        low = threshold if low is None else low
        if low > threshold:
            raise ConfigError(f"class {label!r}: low_threshold {low} is above threshold {threshold}")
        rules[label] = ClassRule(median=pick("median"), threshold=threshold, low_threshold=low,
                                 min_duration=pick("min_duration"), max_gap=pick("max_gap"))
    if not rules:
        raise ConfigError(f"postprocess.ignore {cfg.ignore} leaves no class to report")
    return rules


def median_frames(seconds: float, frame_hop: float) -> int:
    """An odd filter length in frames for ``seconds`` (1: no filtering)."""
    if seconds <= 0:
        return 1
    return 2 * int(round(seconds / frame_hop / 2)) + 1


def smooth(track: np.ndarray, frames: int) -> np.ndarray:
    """Median filter of a 1-D probability track, edges repeated."""
    if frames <= 1:
        return np.asarray(track, dtype=np.float64)
    return ndimage.median_filter(np.asarray(track, dtype=np.float64), size=frames, mode="nearest")


def hysteresis(track: np.ndarray, *, high: float, low: float) -> np.ndarray:
    """Frames inside a run above ``low`` that reaches ``high`` somewhere (bool, same shape).

    ``high`` and ``low`` are inclusive (>=) so that a threshold equal to a probability keeps it.
    """
    track = np.asarray(track)
    above_low = track >= low
    runs, n = ndimage.label(above_low)
    if n == 0:
        return above_low
    reaching = np.zeros(n + 1, dtype=bool)
    reaching[np.unique(runs[track >= high])] = True
    reaching[0] = False
    return reaching[runs]


def active_runs(active: np.ndarray) -> list[tuple[int, int]]:
    """``(first, stop)`` frame index pairs of the runs of True, ``stop`` exclusive."""
    padded = np.concatenate([[False], np.asarray(active, dtype=bool), [False]])
    edges = np.flatnonzero(np.diff(padded.astype(np.int8)))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


def merge_and_filter(runs: list[tuple[float, float]], *, max_gap: float, min_duration: float
                     ) -> list[tuple[float, float]]:
    """Merge (onset, offset) runs closer than ``max_gap``, then drop those under ``min_duration``."""
    merged: list[list[float]] = []
    for onset, offset in sorted(runs):
        if merged and onset - merged[-1][1] <= max_gap:
            merged[-1][1] = max(merged[-1][1], offset)
        else:
            merged.append([onset, offset])
    return [(a, b) for a, b in merged if b - a >= min_duration - 1e-9]


def detect_events(scores: FrameScores, cfg: PostprocessConfig) -> list[Detection]:
    """The events of one recording under ``cfg``, sorted by onset."""
    rules = class_rules(cfg, scores.labels)
    hop = float(np.median(np.diff(scores.timestamps))) if len(scores.timestamps) > 2 else scores.duration
    out = []
    for label, rule in rules.items():
        track = smooth(scores.probs[:, scores.labels.index(label)], median_frames(rule.median, hop))
        active = hysteresis(track, high=rule.threshold, low=rule.low_threshold)
        runs = [(float(scores.timestamps[a]), float(scores.timestamps[b])) for a, b in active_runs(active)]
        for onset, offset in merge_and_filter(runs, max_gap=rule.max_gap, min_duration=rule.min_duration):
            inside = (scores.timestamps[:-1] >= onset - 1e-9) & (scores.timestamps[1:] <= offset + 1e-9)
            values = track[inside] if inside.any() else track[:1]
            out.append(Detection(Event(onset, offset, label), float(values.mean()), float(values.max())))
    return sorted(out, key=lambda d: d.event)


__all__ = ["ClassRule", "Detection", "active_runs", "class_rules", "detect_events", "hysteresis",
           "median_frames", "merge_and_filter", "smooth"]
