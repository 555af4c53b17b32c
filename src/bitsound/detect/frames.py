"""Class probabilities along a recording: a classifier run on sliding windows.

Each window's probabilities are placed at the window's centre: frame ``k`` spans the times
closer to window ``k``'s centre than to its neighbours', the first frame starts at 0 and the
last ends at the end of the recording. With a constant hop every frame is ``hop`` long except
the first and last, which stretch over the half-window the first and last centres cannot reach.
These are the frames ``sed_scores_eval`` scores (onset and offset of each frame plus one score
per class) and the frames :mod:`bitsound.detect.postprocess` turns into events.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bitsound.audio.io import audio_info
from bitsound.detect.stream import output_frames, stream_windows
from bitsound.errors import ConfigError, DataError


@dataclass
class FrameScores:
    """Per-frame class probabilities of one recording.

    Attributes
    ----------
    filename : str
        The recording's file name (no folder), the key of DCASE annotation files.
    timestamps : ndarray [shape=(n_frames + 1,)]
        Frame boundaries in seconds, from 0 to ``duration``.
    probs : ndarray [shape=(n_frames, n_classes), dtype=float32]
    labels : list of str
    duration : float
        Length of the recording in seconds.
    """

    filename: str
    timestamps: np.ndarray
    probs: np.ndarray
    labels: list[str]
    duration: float

    @property
    def audio_id(self) -> str:
        """The file name without its extension (how ``sed_scores_eval`` names recordings)."""
        return self.filename.rsplit(".", 1)[0]

    def select(self, labels: Sequence[str]) -> FrameScores:
        """The same frames with only ``labels``' columns."""
        index = [self.labels.index(name) for name in labels]
        return FrameScores(self.filename, self.timestamps, self.probs[:, index], list(labels),
                           self.duration)


def frame_boundaries(starts: np.ndarray, *, length: float, duration: float) -> tuple[np.ndarray, int]:
    """Frame boundaries of windows starting at ``starts``: (timestamps, frames kept).

    Frames whose window centre lies at or past ``duration`` (the padded last window of a
    recording that ends just after a window) are dropped.
    """
    centres = np.asarray(starts, dtype=np.float64) + length / 2
    n = int(np.searchsorted(centres, duration, side="left")) if len(centres) > 1 else len(centres)
    n = max(n, 1)
    centres = centres[:n]
    inner = (centres[:-1] + centres[1:]) / 2
    return np.concatenate([[0.0], inner, [duration]]), n


def backend_name(classifier) -> str:
    """``"engine"`` or ``"pytorch"``: where ``classifier``'s networks run."""
    if hasattr(classifier, "backend"):  # an Ensemble
        return classifier.backend
    return "engine" if hasattr(classifier, "engine") else "pytorch"


def classifier_window_length(classifier) -> float:
    """Seconds per window the classifier was trained on (segment length or clip length)."""
    return classifier.recipe.audio.window_seconds


@torch.no_grad()
def frame_scores(classifier: Callable, path: str | os.PathLike, *, hop: float, block: float = 30.0,
                 batch: int = 256, device: str = "cpu", progress: Callable[[float], None] | None = None
                 ) -> FrameScores:
    """Run ``classifier`` over one recording in bounded memory.

    Parameters
    ----------
    classifier : SoundClassifier, EngineClassifier or Ensemble
        Called on waveform windows [shape=(batch, channels, samples)] it gives logits; it has
        ``recipe`` (audio config: rate, channels, window length) and ``labels``.
    path : str or PathLike
    hop : float
        Seconds between window starts; at most the window length.
    block, batch
        See :func:`bitsound.detect.stream.stream_windows`.
    device : str
        Where a PyTorch classifier runs (the engine runs on the CPU).
    progress : callable, optional
        Called with the seconds of audio done after every batch.

    Returns
    -------
    FrameScores
    """
    audio = classifier.recipe.audio
    length = classifier_window_length(classifier)
    if not hop <= length:
        raise ConfigError(f"hop {hop} s is longer than the model's window ({length} s): parts of the "
                          f"recording would never be seen; use a hop of at most {length} s")
    info = audio_info(path)
    duration = output_frames(info, audio.sample_rate) / audio.sample_rate
    probs, starts = [], []
    is_torch = backend_name(classifier) == "pytorch"
    for chunk in stream_windows(path, sample_rate=audio.sample_rate, channels=audio.channels,
                                length=length, hop=hop, block=block, batch=batch,
                                centred=bool(audio.segment and audio.segment.centred)):
        wave = torch.from_numpy(chunk.windows)
        if is_torch:
            wave = wave.to(device)
        logits = classifier(wave)
        probs.append(torch.softmax(logits.float(), dim=-1).cpu().numpy())
        starts.append(chunk.starts)
        if progress is not None:
            progress(float(np.clip(chunk.starts[-1] + hop, 0.0, duration)))
    if not probs:
        raise DataError(f"'{path}' gave no windows")
    starts_all = np.concatenate(starts)
    timestamps, n = frame_boundaries(starts_all, length=length, duration=duration)
    return FrameScores(filename=Path(path).name, timestamps=timestamps,
                       probs=np.concatenate(probs)[:n].astype(np.float32), labels=list(classifier.labels),
                       duration=duration)


@dataclass
class Throughput:
    """Audio seconds processed per wall-clock second (the inverse real-time factor)."""

    audio_seconds: float = 0.0
    wall_seconds: float = 0.0

    @property
    def real_time_factor(self) -> float:
        """Wall time / audio time: 0.01 means 100x faster than real time."""
        return self.wall_seconds / self.audio_seconds if self.audio_seconds else float("nan")


def timed(fn: Callable, *args, **kwargs):
    """``fn(*args, **kwargs)`` and its wall time in seconds."""
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


__all__ = ["FrameScores", "Throughput", "backend_name", "classifier_window_length", "frame_boundaries",
           "frame_scores"]
