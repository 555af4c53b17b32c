"""Decode audio files into float32 arrays of shape (channels, samples), and cut them into windows.

Everything a file can get wrong (missing, empty, not audio, truncated, NaN samples, zero length)
is an :class:`~bitsound.errors.AudioDecodeError` naming the file and the problem; libsndfile's
own exceptions never escape this module.

Decoding uses soundfile (libsndfile >= 1.1, which reads WAV, FLAC, OGG Vorbis/Opus and MP3) and
resampling uses soxr at its "HQ" setting.

Truncated files
---------------
libsndfile silently shortens a WAV file whose data chunk was cut off, and decodes an MP3 cut in
half up to the cut. Both are errors here: a dataset of silently shortened clips trains on
silence. A WAV file is truncated when its RIFF ``data`` chunk declares more bytes than the file
holds. For other formats the decoded length is checked against the length in the header; an
MP3's header length is an estimate (real files decode up to ~1 % shorter than it claims), so an
MP3 is only called truncated when it decodes more than :data:`MP3_LENGTH_SLACK` short of it.
:func:`audio_info` reads the header only, so it catches truncated WAV files but a truncated
compressed stream (and NaN samples) only shows when the audio is decoded by :func:`load_audio`.
"""

from __future__ import annotations

import logging
import math
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import soundfile as sf
import soxr

from bitsound.errors import AudioDecodeError, ConfigError, DataError

if TYPE_CHECKING:
    from bitsound.config import AudioConfig

logger = logging.getLogger("bitsound.audio")

ChannelPolicy = Literal["mono", "stereo"] | int | None

# An MP3 header's length is an estimate from the frame count or file size; the real MP3s in
# ../shared/data decode 0-0.7 % shorter than it. 2 % is three times that, and still flags a
# stream that lost a real part of its audio.
MP3_LENGTH_SLACK = 0.02

# Leading bytes of common containers that libsndfile cannot decode, so that such a file is
# reported as an unsupported format rather than as "not audio".
_UNSUPPORTED_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (4, b"ftyp", "MP4/M4A (AAC or ALAC)"),
    (0, b"\x30\x26\xb2\x75", "WMA/ASF"),
    (0, b"\x1a\x45\xdf\xa3", "Matroska/WebM"),
    (0, b"#!AMR", "AMR"),
)
_SUPPORTED_HINT = "readable: WAV, FLAC, OGG Vorbis/Opus, MP3 and the other libsndfile formats"


@dataclass(frozen=True)
class AudioInfo:
    """What a file's header says about its audio.

    Attributes
    ----------
    sample_rate : int
        Samples per second per channel.
    channels : int
        Number of channels.
    frames : int
        Samples per channel (an estimate for MP3, see the module notes).
    duration : float
        ``frames / sample_rate`` in seconds.
    """

    sample_rate: int
    channels: int
    frames: int
    duration: float


@dataclass(frozen=True)
class Segments:
    """Fixed-length windows cut from one recording.

    Attributes
    ----------
    windows : np.ndarray [shape=(n, channels, win_samples), dtype=float32]
        The windows, zero-padded where they run past the recording.
    starts : np.ndarray [shape=(n,), dtype=float64]
        Start time of each window in the recording, in seconds (negative when a clip was padded
        on the left by :func:`fix_length`).
    n_dropped : int
        Windows removed by the energy gate.
    """

    windows: np.ndarray
    starts: np.ndarray
    n_dropped: int = 0


# --------------------------------------------------------------------------------------------
# decoding
# --------------------------------------------------------------------------------------------
def load_audio(
    path: str | os.PathLike,
    *,
    sample_rate: int | None = None,
    channels: ChannelPolicy = None,
    start: float | None = None,
    end: float | None = None,
) -> np.ndarray:
    """Decode an audio file.

    Parameters
    ----------
    path : str or PathLike
        WAV (8/16/24/32-bit integer, 32/64-bit float), FLAC, OGG, MP3 or another libsndfile format.
    sample_rate : int > 0 or None
        Resample to this rate (soxr, high quality); ``None`` keeps the file's rate.
    channels : "mono", "stereo", int >= 0 or None
        Channel policy, see :func:`select_channels`; ``None`` keeps the file's channels.
    start, end : float or None
        Read only ``[start, end)`` in seconds of the file (seeking, not decoding the rest).
        ``end`` past the end of the file reads to the end, like slicing.

    Returns
    -------
    np.ndarray [shape=(channels, samples), dtype=float32]
        Samples in [-1, 1] for integer formats.

    Raises
    ------
    AudioDecodeError
        The file is missing, empty, not audio, of an unsupported format, truncated or corrupt,
        has zero frames, or contains NaN or infinite samples.
    ConfigError
        An argument is out of range (negative ``start``, ``end <= start``, bad rate or policy).
    DataError
        ``start`` lies past the end of the file, or the channel policy does not fit the file.
    """
    _check_rate(sample_rate, name="sample_rate", allow_none=True)
    _check_policy(channels)
    _check_span(start, end)
    x, file_rate = _decode(Path(path), start=start, end=end)
    x = select_channels(x, channels, path=path)
    if sample_rate is not None and sample_rate != file_rate:
        x = resample(x, file_rate, sample_rate)
    return x


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """Read a file's header.

    Parameters
    ----------
    path : str or PathLike

    Returns
    -------
    AudioInfo

    Raises
    ------
    AudioDecodeError
        As :func:`load_audio`, for what the header shows (NaN samples and truncated compressed
        streams only show when decoding).
    """
    path = Path(path)
    with _open(path) as f:
        return AudioInfo(
            sample_rate=f.samplerate,
            channels=f.channels,
            frames=f.frames,
            duration=f.frames / f.samplerate,
        )


def _decode(path: Path, *, start: float | None, end: float | None) -> tuple[np.ndarray, int]:
    """Read ``[start, end)`` seconds of ``path`` as (channels, samples) float32, checked."""
    with _open(path) as f:
        rate, declared = f.samplerate, f.frames
        first = 0 if start is None else round(start * rate)
        stop = declared if end is None else min(round(end * rate), declared)
        if first >= declared:
            raise DataError(
                f"start={start} s is at or past the end of '{path}' ({declared / rate:.3f} s "
                "long); choose a start inside the recording"
            )
        if stop <= first:
            raise ConfigError(
                f"the span start={start} s, end={end} s is shorter than one sample at {rate} Hz"
            )
        try:
            f.seek(first)
            data = f.read(stop - first, dtype="float32", always_2d=True)
        except (sf.SoundFileError, RuntimeError) as err:
            raise AudioDecodeError(path, f"truncated or corrupt: {_sndfile_message(err)}") from err
        # An MP3 header's length is an estimate, so only a shortfall beyond the slack counts.
        slack = math.floor(MP3_LENGTH_SLACK * declared) if f.format == "MP3" else 0
    _check_decoded_length(path, got=data.shape[0], wanted=stop - first, slack=slack)
    if not np.isfinite(data).all():
        n_bad = int(np.size(data) - np.isfinite(data).sum())
        raise AudioDecodeError(path, f"contains NaN or infinite samples ({n_bad} of them)")
    return np.ascontiguousarray(data.T), rate


@contextmanager
def _open(path: Path) -> Iterator[sf.SoundFile]:
    """``sf.SoundFile`` opened for reading and checked, every failure an AudioDecodeError."""
    if not path.exists():
        raise AudioDecodeError(path, "file does not exist")
    if not path.is_file():
        raise AudioDecodeError(path, "not a regular file (a directory?)")
    if path.stat().st_size == 0:
        raise AudioDecodeError(path, "file is empty (0 bytes)")
    try:
        f = sf.SoundFile(path)
    except (sf.SoundFileError, RuntimeError) as err:
        raise AudioDecodeError(path, _open_problem(path, err)) from err
    with f:
        _check_header(path, f)
        yield f


def _check_header(path: Path, f: sf.SoundFile) -> None:
    if f.frames == 0:
        raise AudioDecodeError(path, "zero length (the file holds 0 audio frames)")
    declared = _riff_declared_frames(path)
    if declared is not None and declared > f.frames:
        raise AudioDecodeError(
            path,
            f"truncated: its WAV header declares {declared} frames but the file holds only "
            f"{f.frames} ({f.frames / f.samplerate:.3f} s); the file was cut off while copying "
            "or recording, so re-export or drop it",
        )


def _check_decoded_length(path: Path, *, got: int, wanted: int, slack: int) -> None:
    if got == 0 or got < wanted - slack:
        raise AudioDecodeError(
            path,
            f"truncated or corrupt: decoded only {got} of the {wanted} frames its header "
            "declares; re-export the file or drop it",
        )


def _open_problem(path: Path, err: Exception) -> str:
    """Turn a libsndfile open error into a problem a user can act on."""
    message = _sndfile_message(err)
    lowered = message.lower()
    if "not recognised" in lowered or "unknown format" in lowered:
        container = _unsupported_container(path)
        if container is not None:
            return f"unsupported format {container}; convert it to WAV or FLAC ({_SUPPORTED_HINT})"
        return f"not an audio file (libsndfile: {message}; {_SUPPORTED_HINT})"
    if "malformed" in lowered or "error in" in lowered:
        return f"truncated or corrupt ({message})"
    if "does not exist" in lowered:
        # We checked that the file exists; libsndfile says this when a decoder gives up
        # (e.g. an MP3 with no valid frame).
        return "corrupt: libsndfile recognised no decodable audio stream in it"
    return f"unsupported format or corrupt file (libsndfile: {message})"


def _sndfile_message(err: Exception) -> str:
    # LibsndfileError.error_string is libsndfile's own text, without soundfile's "Error opening".
    message = str(getattr(err, "error_string", None) or err).strip().rstrip(".")
    return message.removeprefix("Error :").strip()


def _unsupported_container(path: Path) -> str | None:
    with open(path, "rb") as fh:
        head = fh.read(16)
    for offset, magic, name in _UNSUPPORTED_SIGNATURES:
        if head[offset : offset + len(magic)] == magic:
            return name
    looks_mp3 = head.startswith(b"ID3") or (len(head) > 1 and head[0] == 0xFF and head[1] >= 0xE0)
    if looks_mp3 and "MP3" not in sf.available_formats():
        return f"MP3 (this libsndfile {sf.__libsndfile_version__} has no MP3 decoder; >= 1.1 has)"
    return None


def _riff_declared_frames(path: Path) -> int | None:
    """Frames the ``data`` chunk of a RIFF/WAVE file declares, or None when not known.

    Only the chunk headers are read. Streaming writers put 0 or 0xFFFFFFFF in the size when
    the length is unknown; such files are not checked.
    """
    with open(path, "rb") as fh:
        if fh.read(4) != b"RIFF" or fh.read(8)[4:] != b"WAVE":
            return None
        block_align = None
        while True:
            header = fh.read(8)
            if len(header) < 8:
                return None
            chunk_id, size = header[:4], struct.unpack("<I", header[4:])[0]
            if chunk_id == b"fmt ":
                fmt = fh.read(size + size % 2)
                block_align = struct.unpack("<H", fmt[12:14])[0] if len(fmt) >= 14 else None
            elif chunk_id == b"data":
                if block_align in (None, 0) or size in (0, 0xFFFFFFFF):
                    return None
                return size // block_align
            else:
                fh.seek(size + size % 2, os.SEEK_CUR)  # chunks are padded to even sizes


# --------------------------------------------------------------------------------------------
# argument checks
# --------------------------------------------------------------------------------------------
def _check_rate(rate, *, name: str, allow_none: bool = False) -> None:
    if rate is None and allow_none:
        return
    if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or rate <= 0:
        raise ConfigError(f"{name} must be a positive integer number of Hz, got {rate!r}")


def _check_span(start: float | None, end: float | None) -> None:
    if start is not None and not (math.isfinite(start) and start >= 0):
        raise ConfigError(f"start must be a finite number of seconds >= 0, got {start!r}")
    if end is not None:
        if not (math.isfinite(end) and end > 0):
            raise ConfigError(f"end must be a finite number of seconds > 0, got {end!r}")
        if start is not None and end <= start:
            raise ConfigError(f"end must be greater than start, got start={start} s, end={end} s")


def _check_audio_array(x: np.ndarray, *, name: str = "x") -> None:
    if not isinstance(x, np.ndarray) or x.ndim != 2:
        shape = getattr(x, "shape", None)
        raise DataError(f"{name} must be a numpy array of shape (channels, samples), got {shape}")


# --------------------------------------------------------------------------------------------
# array operations
# --------------------------------------------------------------------------------------------
def resample(x: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample with soxr ("HQ" quality).

    Parameters
    ----------
    x : np.ndarray [shape=(channels, samples) or (samples,)]
    orig_sr, target_sr : int > 0
        Rates in Hz.

    Returns
    -------
    np.ndarray [shape=(channels, round(samples * target_sr / orig_sr))]
        Same dtype as ``x`` for float32/float64 input.
    """
    _check_rate(orig_sr, name="orig_sr")
    _check_rate(target_sr, name="target_sr")
    if x.ndim not in (1, 2):
        raise DataError(f"x must have shape (channels, samples) or (samples,), got {x.shape}")
    if orig_sr == target_sr:
        return x
    # soxr wants (samples, channels).
    y = soxr.resample(x.T, orig_sr, target_sr, quality="HQ")
    return np.ascontiguousarray(y.T)


def select_channels(
    x: np.ndarray, policy: ChannelPolicy, *, path: str | os.PathLike | None = None
) -> np.ndarray:
    """Apply a channel policy.

    Parameters
    ----------
    x : np.ndarray [shape=(channels, samples)]
    policy : "mono", "stereo", int >= 0 or None
        ``"mono"`` averages all channels; ``"stereo"`` keeps a 2-channel signal and duplicates a
        mono one; an int keeps that channel index; ``None`` keeps ``x`` as it is.
    path : str or PathLike, optional
        The file ``x`` came from, named in error messages.

    Returns
    -------
    np.ndarray [shape=(1 or 2 or channels, samples)]

    Raises
    ------
    ConfigError
        Unknown policy.
    DataError
        The index is out of range, or ``"stereo"`` is asked of a file with more than 2 channels.
    """
    _check_audio_array(x)
    _check_policy(policy)
    n = x.shape[0]
    source = f"'{path}'" if path is not None else "the signal"
    if policy is None:
        return x
    if policy == "mono":
        return x if n == 1 else x.mean(axis=0, keepdims=True, dtype=np.float64).astype(x.dtype)
    if policy == "stereo":
        if n > 2:
            raise DataError(
                f"{source} has {n} channels but channels='stereo' needs 1 or 2; pick one channel "
                "by index or use 'mono'"
            )
        return np.repeat(x, 2, axis=0) if n == 1 else x
    if policy >= n:
        raise DataError(
            f"channel index {policy} asked for, but {source} has {n} channel(s) "
            f"(valid indices: 0..{n - 1})"
        )
    return x[policy : policy + 1]


def _check_policy(policy) -> None:
    index = isinstance(policy, (int, np.integer)) and not isinstance(policy, bool) and policy >= 0
    if not (policy is None or policy in ("mono", "stereo") or index):
        raise ConfigError(
            f"channels must be 'mono', 'stereo', a channel index >= 0 or None, got {policy!r}"
        )


def fix_length(x: np.ndarray, n_samples: int) -> np.ndarray:
    """Centre-crop or zero-pad the last axis to ``n_samples``.

    Padding is split equally between both ends (one more sample at the end when odd).

    Parameters
    ----------
    x : np.ndarray [shape=(..., samples)]
    n_samples : int > 0

    Returns
    -------
    np.ndarray [shape=(..., n_samples)]
    """
    _check_count(n_samples, name="n_samples")
    offset = _centre_offset(x.shape[-1], n_samples)
    if x.shape[-1] >= n_samples:  # not `offset >= 0`: one sample short also gives offset 0
        return x[..., offset : offset + n_samples]
    pad = [(0, 0)] * (x.ndim - 1) + [(-offset, n_samples - x.shape[-1] + offset)]
    return np.pad(x, pad)


def _centre_offset(n: int, target: int) -> int:
    """Where a centred window of ``target`` samples starts in ``n`` (negative: left padding)."""
    return (n - target) // 2 if n >= target else -((target - n) // 2)


def _check_count(n, *, name: str) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {n!r}")


def segment(
    x: np.ndarray,
    sample_rate: int,
    *,
    length: float,
    hop: float,
    energy_gate_db: float | None = None,
) -> Segments:
    """Cut a recording into fixed-length windows.

    Windows start at 0, hop, 2 hop, ... and every window lying wholly inside the recording is
    kept. After the last whole window, the next one (one hop later) is kept zero-padded if at
    least half of it is real audio. A recording shorter than one window gives one window,
    zero-padded at the end.

    Parameters
    ----------
    x : np.ndarray [shape=(channels, samples)]
    sample_rate : int > 0
    length, hop : float > 0
        Window length and hop in seconds (rounded to whole samples).
    energy_gate_db : float <= 0 or None
        Drop windows whose RMS, in dB relative to the loudest window of this recording, is
        below this level (e.g. -30). The loudest window always stays; a silent recording keeps
        all its windows (there is nothing to rank). ``None`` keeps every window.

    Returns
    -------
    Segments
    """
    _check_audio_array(x)
    _check_rate(sample_rate, name="sample_rate")
    if x.shape[1] == 0:
        raise DataError("cannot segment an empty signal (0 samples)")
    win = _seconds_to_samples(length, sample_rate, "length")
    step = _seconds_to_samples(hop, sample_rate, "hop")
    if energy_gate_db is not None and not energy_gate_db <= 0:
        raise ConfigError(
            f"energy_gate_db is a level relative to the loudest window and must be <= 0 dB, "
            f"got {energy_gate_db}"
        )
    starts = _window_starts(x.shape[1], win=win, step=step)
    tail = max(0, starts[-1] + win - x.shape[1])
    padded = np.pad(x, [(0, 0), (0, tail)]) if tail else x
    windows = np.stack([padded[:, s : s + win] for s in starts])
    segments = Segments(windows=windows, starts=np.asarray(starts, dtype=np.float64) / sample_rate)
    if energy_gate_db is None:
        return segments
    return _energy_gate(segments, energy_gate_db)


def _seconds_to_samples(seconds: float, sample_rate: int, name: str) -> int:
    if not (math.isfinite(seconds) and seconds > 0):
        raise ConfigError(f"{name} must be a positive number of seconds, got {seconds!r}")
    n = round(seconds * sample_rate)
    if n < 1:
        raise ConfigError(f"{name}={seconds} s is shorter than one sample at {sample_rate} Hz")
    return n


def _window_starts(n: int, *, win: int, step: int) -> list[int]:
    if n <= win:
        return [0]
    starts = list(range(0, n - win + 1, step))
    partial = starts[-1] + step
    if partial < n and 2 * (n - partial) >= win:
        starts.append(partial)
    return starts


def _energy_gate(segments: Segments, gate_db: float) -> Segments:
    windows = segments.windows
    rms = np.sqrt(np.mean(np.square(windows, dtype=np.float64), axis=(1, 2)))
    if rms.max() == 0:
        logger.debug("energy gate: the recording is silent; keeping all %d windows", len(rms))
        return segments
    with np.errstate(divide="ignore"):
        level_db = 20 * np.log10(rms / rms.max())
    keep = level_db >= gate_db
    n_dropped = int(len(keep) - keep.sum())
    if n_dropped:
        logger.debug(
            "energy gate: dropped %d of %d windows quieter than %s dB below the loudest",
            n_dropped,
            len(keep),
            gate_db,
        )
    return Segments(windows=windows[keep], starts=segments.starts[keep], n_dropped=n_dropped)


def to_model_windows(x: np.ndarray, sample_rate: int, cfg: AudioConfig) -> Segments:
    """Turn a decoded clip into the windows a model sees.

    With ``cfg.segment`` set the clip is cut by :func:`segment`; otherwise it is centre-cropped
    or zero-padded by :func:`fix_length` to ``cfg.clip_seconds``, giving one window.

    Parameters
    ----------
    x : np.ndarray [shape=(channels, samples)]
        Decoded with ``load_audio(path, sample_rate=cfg.sample_rate, channels=cfg.channels)``.
    sample_rate : int
        The rate of ``x``; must equal ``cfg.sample_rate``.
    cfg : AudioConfig

    Returns
    -------
    Segments
        ``windows`` of shape (n, cfg.n_channels, window samples).

    Raises
    ------
    ConfigError
        ``x`` was not decoded at ``cfg.sample_rate`` or with ``cfg.channels``.
    """
    _check_audio_array(x)
    if sample_rate != cfg.sample_rate:
        raise ConfigError(
            f"the clip is at {sample_rate} Hz but the audio config asks for {cfg.sample_rate} Hz; "
            "decode it with load_audio(..., sample_rate=cfg.sample_rate)"
        )
    if x.shape[0] != cfg.n_channels:
        raise ConfigError(
            f"the clip has {x.shape[0]} channel(s) but channels={cfg.channels!r} gives "
            f"{cfg.n_channels}; decode it with load_audio(..., channels=cfg.channels)"
        )
    if cfg.segment is not None:
        seg = cfg.segment
        return segment(
            x, sample_rate, length=seg.length, hop=seg.hop, energy_gate_db=seg.energy_gate_db
        )
    n = round(cfg.clip_seconds * sample_rate)
    window = fix_length(x, n)
    start = _centre_offset(x.shape[1], n) / sample_rate
    return Segments(windows=window[np.newaxis], starts=np.array([start]))
