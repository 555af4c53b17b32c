"""Sliding windows over a long recording in bounded memory.

A one-hour file is never decoded whole: soundfile reads it ``block`` seconds at a time, the
channels are mixed or picked per block, a streaming soxr resampler (the same "HQ" filter as
:func:`bitsound.audio.io.resample`, with its state carried across blocks so the result matches
resampling the whole file) brings it to the model's rate, and windows are cut from a buffer
that holds at most one block plus one window. Memory therefore depends on ``block``,
``length`` and ``batch``, never on the file's length.

Windows start at ``0, hop, 2 hop, ...``; every window that fits in the recording is produced,
and when the recording goes on past the last one, one more window, zero-padded, covers its end.
A recording shorter than one window gives one zero-padded window.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import math
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from bitsound.audio.io import AudioInfo, audio_info, open_stream, select_channels
from bitsound.errors import AudioDecodeError, ConfigError

log = logging.getLogger("bitsound.detect")

_M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


def fix_mmap_threshold(nbytes: int = 128 << 10) -> bool:
    """Make glibc serve allocations above ``nbytes`` by mmap, returned to the system when freed.

    glibc raises its mmap threshold each time a large block is freed, so after the first batch
    the batch-sized buffers of the front end come from the heap, where their varying sizes
    fragment it: a process's peak memory then drifts by tens of MB with the recording's length
    (measured: 383 / 443 / 427 MiB for 1 / 6 / 20 min; fixed threshold: 354 MiB each). A fixed
    threshold keeps it flat. 128 KiB (glibc's starting value, kept fixed): with 1 MiB the
    engine's path still grew from 318 to 365 MiB over a 60-min file, as its buffers of 128 KiB
    to 1 MiB fragmented the heap; with 128 KiB it stays at 317-319 MiB. Returns False (and
    changes nothing) where the C library is not glibc.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, int(nbytes)))
    except (OSError, AttributeError):
        ok = False
    log.debug("mallopt(M_MMAP_THRESHOLD, %d): %s", nbytes, "set" if ok else "not available")
    return ok


@dataclass(frozen=True)
class WindowBatch:
    """Consecutive windows of one recording.

    Attributes
    ----------
    windows : ndarray [shape=(n, channels, window_samples), dtype=float32]
    starts : ndarray [shape=(n,), dtype=float64]
        Start of each window in seconds.
    """

    windows: np.ndarray
    starts: np.ndarray


def _samples(seconds: float, rate: int, name: str) -> int:
    if not (math.isfinite(seconds) and seconds > 0):
        raise ConfigError(f"{name} must be a positive number of seconds, got {seconds!r}")
    n = round(seconds * rate)
    if n < 1:
        raise ConfigError(f"{name}={seconds} s is shorter than one sample at {rate} Hz")
    return n


def output_frames(info: AudioInfo, sample_rate: int) -> int:
    """Samples the recording has at ``sample_rate`` (as :func:`~bitsound.audio.io.resample`)."""
    if info.sample_rate == sample_rate:
        return info.frames
    return round(info.frames * sample_rate / info.sample_rate)


def stream_blocks(path: str | os.PathLike, *, sample_rate: int, channels, block: float = 30.0
                  ) -> Iterator[np.ndarray]:
    """Decoded, channel-selected, resampled audio of ``path``, one block at a time.

    Yields
    ------
    ndarray [shape=(channels, samples), dtype=float32]
        Consecutive pieces; joined they are the whole recording at ``sample_rate``.

    Raises
    ------
    AudioDecodeError
        As :func:`bitsound.audio.io.load_audio`: missing, empty, not audio, truncated, NaN.
    """
    path = Path(path)
    info = audio_info(path)  # header checks: missing, empty, not audio, truncated WAV
    frames = _samples(block, info.sample_rate, "block")
    resampler = None
    decoded = 0
    # the stream's real length comes from the stream itself (an MP3 header's is an estimate)
    with open_stream(path) as (f, length, slack):
        while True:
            try:
                data = f.read(frames, dtype="float32", always_2d=True)
            except (sf.SoundFileError, RuntimeError) as err:
                raise AudioDecodeError(path, f"truncated or corrupt at {decoded / info.sample_rate:.1f} s: "
                                       f"{err}") from err
            last = len(data) < frames
            if len(data) and not np.isfinite(data).all():
                raise AudioDecodeError(path, f"contains NaN or infinite samples near "
                                       f"{decoded / info.sample_rate:.1f} s")
            decoded += len(data)
            x = select_channels(np.ascontiguousarray(data.T), channels, path=path)
            if info.sample_rate != sample_rate:
                if resampler is None:
                    resampler = soxr.ResampleStream(info.sample_rate, sample_rate, x.shape[0],
                                                    dtype="float32", quality="HQ")
                x = np.ascontiguousarray(resampler.resample_chunk(np.ascontiguousarray(x.T),
                                                                  last=last).T)
            if x.shape[1]:
                yield x
            if last:
                break
    if decoded == 0 or decoded < length - slack:
        raise AudioDecodeError(path, f"truncated or corrupt: decoded only {decoded} of the {length} "
                               "frames its header declares; re-export the file or drop it")


def stream_windows(path: str | os.PathLike, *, sample_rate: int, channels, length: float, hop: float,
                   block: float = 30.0, batch: int = 256, centred: bool = False) -> Iterator[WindowBatch]:
    """Windows of ``length`` seconds every ``hop`` seconds over ``path``, in batches.

    As :func:`bitsound.audio.io.segment` cuts them: windows start at 0, hop, ... (the last one
    zero-padded when the recording goes on past the last whole window), or with ``centred``
    are centred on 0, hop, ... up to the end, half a window of zeros before the start and after
    the end (their starts, in :attr:`WindowBatch.starts`, are then the true ones: the first is
    negative).

    Parameters
    ----------
    path : str or PathLike
    sample_rate : int
        Rate of the windows (the model's).
    channels : "mono", "stereo" or int
        Channel policy (:func:`bitsound.audio.io.select_channels`).
    length, hop : float > 0
        Window length and hop in seconds.
    block : float > 0
        Seconds decoded at a time.
    batch : int > 0
        Windows per :class:`WindowBatch` (the last one may hold fewer).
    centred : bool
        Centre the windows on 0, hop, ... (``audio.segment.centred``).

    Yields
    ------
    WindowBatch
    """
    win = _samples(length, sample_rate, "window length")
    step = _samples(hop, sample_rate, "hop")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ConfigError(f"batch must be a positive integer, got {batch!r}")
    # sample positions below are in the stream as the windows see it: ``lead`` zeros, then the
    # recording
    lead = win // 2 if centred else 0
    buffer = np.zeros((0, 0), dtype=np.float32)
    offset = 0  # sample index of buffer[:, 0]
    next_start = 0
    total = 0
    pending: list[tuple[np.ndarray, int]] = []

    def flush():
        nonlocal pending
        windows = np.stack([w for w, _ in pending])
        starts = (np.array([s for _, s in pending], dtype=np.float64) - lead) / sample_rate
        pending = []
        return WindowBatch(windows=windows, starts=starts)

    def padded_window():
        """The window at ``next_start``, zeros past the end of the stream."""
        window = np.zeros((buffer.shape[0], win), dtype=np.float32)
        tail = buffer[:, next_start - offset:next_start - offset + win]  # empty past the end
        window[:, :tail.shape[1]] = tail
        return window

    for x in stream_blocks(path, sample_rate=sample_rate, channels=channels, block=block):
        if total == 0 and lead:
            x = np.concatenate([np.zeros((x.shape[0], lead), dtype=x.dtype), x], axis=1)
        buffer = x if buffer.size == 0 else np.concatenate([buffer, x], axis=1)
        total += x.shape[1]
        while next_start + win <= total:
            at = next_start - offset
            pending.append((buffer[:, at:at + win].copy(), next_start))
            next_start += step
            if len(pending) == batch:
                yield flush()
        # drop what no later window needs (with hop > length the next window may start past
        # the samples decoded so far: keep nothing then, and count the dropped samples)
        keep = min(next_start, total) - offset
        if keep > 0:
            buffer = buffer[:, keep:]
            offset += keep
    if total == 0:
        return
    if centred:
        # the windows still centred inside the recording (centre = start in these positions)
        while next_start < total - lead:
            pending.append((padded_window(), next_start))
            next_start += step
            if len(pending) == batch:
                yield flush()
    elif next_start == 0 or (next_start < total and next_start - step + win < total):
        # the recording is shorter than a window, or goes on past the last whole one
        pending.append((padded_window(), next_start))
    if pending:
        yield flush()


__all__ = ["WindowBatch", "fix_mmap_threshold", "output_frames", "stream_blocks", "stream_windows"]
