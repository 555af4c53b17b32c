"""Decode audio files into float32 arrays of shape (channels, samples), and cut them into windows.

Everything a file can get wrong (missing, empty, not audio, truncated, NaN samples, zero length)
is an :class:`~bitsound.errors.AudioDecodeError` naming the file and the problem; libsndfile's
own exceptions never escape this module.

Decoding uses soundfile (libsndfile >= 1.1, which reads WAV, FLAC, OGG Vorbis/Opus and MP3) and
resampling uses soxr at its "HQ" setting.

Truncated files
---------------
libsndfile silently shortens a WAV file whose data chunk was cut off, decodes an MP3 or Ogg
file cut in half up to the cut, and, for an MP3 without a Xing/Info/VBRI header, stops decoding
at a length it *estimates* from the first frame's bit rate and the file size (wrong in both
directions for variable bit rates). So the length of a file, and whether it is whole, is
decided from the file's own structure when it is opened, before any decoding:

- WAV: the RIFF ``data`` chunk must not declare more bytes than the file holds.
- FLAC: the decoder must reach the last sample STREAMINFO declares (one seek).
- Ogg (Vorbis, Opus): the last page must be complete and end its stream
  (:mod:`bitsound.audio.ogg`).
- MP3: the frame headers are walked from the first frame to the end of the audio data, between
  the ID3v2 tags and the APE/Lyrics3/ID3v1 tags (:mod:`bitsound.audio.mpeg`). The walk gives the
  exact decoded length, which :func:`audio_info` reports, and finds a last frame cut off, frames
  that stop before the audio data ends, and fewer frames than a Xing/Info/VBRI header declares.
  An MP3 whose length libsndfile underestimates is decoded through a pipe, where libsndfile
  reads the stream to its end instead of stopping at the estimate.

Decoding then checks that the decoder delivered every sample the file holds (a decoder that
stops early is a damaged stream) and that no sample is NaN or infinite. A span that ends past
the end of the file reads to the end, like slicing.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import soundfile as sf
import soxr

from bitsound.audio.mpeg import MpegScan, scan_mpeg
from bitsound.audio.ogg import ogg_problem
from bitsound.errors import AudioDecodeError, ConfigError, DataError

if TYPE_CHECKING:
    from bitsound.config import AudioConfig

logger = logging.getLogger("bitsound.audio")

ChannelPolicy = Literal["mono", "stereo"] | int | None

#: MPEG frames an MP3 decode may fall short of the frame scan's prediction before it counts as a
#: decoding error (mpg123 can drop a damaged frame; the scan's gapless arithmetic for rare
#: VBRI/layer I-II files may be off by its delay). A decoder that stops early loses far more.
MP3_DECODE_SLACK_FRAMES = 2

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
        Samples per channel the file decodes to (for MP3 from its frame headers, see the module
        notes).
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
        As :func:`load_audio`, for everything the file's structure shows: missing, empty, not
        audio, zero channels or frames, truncated (WAV, FLAC, Ogg, MP3: see the module notes).
        NaN samples and damage inside a compressed stream only show when decoding.
    """
    path = Path(path)
    with _open(path) as opened:
        f = opened.file
        return AudioInfo(
            sample_rate=f.samplerate,
            channels=f.channels,
            frames=opened.frames,
            duration=opened.frames / f.samplerate,
        )


def _decode(path: Path, *, start: float | None, end: float | None) -> tuple[np.ndarray, int]:
    """Read ``[start, end)`` seconds of ``path`` as (channels, samples) float32, checked."""
    with _open(path) as opened:
        f, length = opened.file, opened.frames
        rate = f.samplerate
        first = 0 if start is None else round(start * rate)
        stop = length if end is None else min(round(end * rate), length)
        if first >= length:
            raise DataError(
                f"start={start} s is at or past the end of '{path}' ({length / rate:.3f} s "
                "long); choose a start inside the recording"
            )
        if stop <= first:
            raise ConfigError(
                f"the span start={start} s, end={end} s is shorter than one sample at {rate} Hz"
            )
        try:
            if stop > f.frames:  # libsndfile would stop at its own, too short, estimate
                data = _read_through_pipe(path, first=first, stop=stop, channels=f.channels)
            else:
                f.seek(first)
                data = f.read(stop - first, dtype="float32", always_2d=True)
        except (sf.SoundFileError, RuntimeError) as err:
            raise AudioDecodeError(path, f"truncated or corrupt: {_sndfile_message(err)}") from err
        slack = 0
        if opened.mpeg is not None:
            slack = MP3_DECODE_SLACK_FRAMES * opened.mpeg.samples_per_frame
    _check_decoded_length(path, got=data.shape[0], wanted=stop - first, slack=slack,
                          mpeg=opened.mpeg is not None)
    if not np.isfinite(data).all():
        n_bad = int(np.size(data) - np.isfinite(data).sum())
        raise AudioDecodeError(path, f"contains NaN or infinite samples ({n_bad} of them)")
    return np.ascontiguousarray(data.T), rate


@dataclass(frozen=True)
class _Opened:
    """An open, checked file: libsndfile's handle and the length the file really decodes to."""

    file: sf.SoundFile
    frames: int
    mpeg: MpegScan | None = None


@contextmanager
def _open(path: Path) -> Iterator[_Opened]:
    """The file opened for reading and checked whole; every failure an AudioDecodeError."""
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
        yield _check_whole(path, f)


def _check_whole(path: Path, f: sf.SoundFile) -> _Opened:
    """Check the file's structure (see the module notes) and find its decoded length."""
    if f.format == "MP3":
        stat = path.stat()
        scan = _scan_mpeg_cached(str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        problem = scan.problem()
        if problem is not None:
            raise AudioDecodeError(path, problem)
        frames = scan.decoded_frames
        if scan.info is not None and scan.info.frames is not None:
            # With a declared frame count libsndfile's length is mpg123's exact one.
            frames = min(frames, f.frames)
        if frames == 0:
            raise AudioDecodeError(path, "zero length (the file holds 0 audio frames)")
        return _Opened(file=f, frames=frames, mpeg=scan)
    if f.format == "OGG":  # before the length: a cut Ogg file may report 0 frames
        problem = ogg_problem(path)
        if problem is not None:
            raise AudioDecodeError(path, problem)
    if f.frames == 0:
        raise AudioDecodeError(path, "zero length (the file holds 0 audio frames)")
    if f.format in ("WAV", "WAVEX"):
        _check_riff(path, f)
    elif f.format == "FLAC":
        _check_flac_end(path, f)
    return _Opened(file=f, frames=f.frames)


# Segments of one long MP3 (a manifest's start/end) open it many times: scan it once. The size
# and modification time in the key make an edited file a new entry.
@functools.lru_cache(maxsize=64)
def _scan_mpeg_cached(path: str, size: int, mtime_ns: int) -> MpegScan:
    return scan_mpeg(path)


def _check_riff(path: Path, f: sf.SoundFile) -> None:
    declared = _riff_declared_frames(path)
    if declared is not None and declared > f.frames:
        raise AudioDecodeError(
            path,
            f"truncated: its WAV header declares {declared} frames but the file holds only "
            f"{f.frames} ({f.frames / f.samplerate:.3f} s); the file was cut off while copying "
            "or recording, so re-export or drop it",
        )


def _check_flac_end(path: Path, f: sf.SoundFile) -> None:
    """A FLAC file must decode its last declared sample: a cut file cannot seek there."""
    try:
        f.seek(f.frames - 1)
        got = f.read(1, dtype="float32", always_2d=True).shape[0]
        f.seek(0)
    except (sf.SoundFileError, RuntimeError):
        got = 0
    if got != 1:
        raise AudioDecodeError(
            path,
            f"truncated: its FLAC header declares {f.frames} frames "
            f"({f.frames / f.samplerate:.3f} s) but the stream ends before the last of them; the "
            "file was cut off while copying or downloading, so fetch it again or drop it",
        )


@contextmanager
def open_stream(path: str | os.PathLike) -> Iterator[tuple[sf.SoundFile, int, int]]:
    """Open ``path`` for reading block by block to its real end (streaming over long files).

    Yields ``(file, frames, slack)``: a libsndfile handle positioned at the start that decodes the
    whole stream (through a pipe where libsndfile's MP3 length estimate is too short), the number
    of frames the stream really holds (from :func:`audio_info`'s checks), and how many frames a
    decoder may legitimately come up short of it (MP3 decoder delay). Raises
    :class:`~bitsound.errors.AudioDecodeError` as :func:`load_audio` for a bad file.
    """
    path = Path(path)
    with _open(path) as opened:
        frames = opened.frames
        slack = MP3_DECODE_SLACK_FRAMES * opened.mpeg.samples_per_frame if opened.mpeg is not None else 0
        if frames <= opened.file.frames:
            yield opened.file, frames, slack
            return
    read_fd, feeder = _feed_pipe(path)
    try:
        with sf.SoundFile(read_fd, closefd=False) as f:
            yield f, frames, slack
    finally:
        os.close(read_fd)  # also unblocks the feeder when reading stopped early
        feeder.join()


def _feed_pipe(path: Path) -> tuple[int, threading.Thread]:
    """A pipe's read end and the thread that writes ``path`` into it."""
    read_fd, write_fd = os.pipe()

    def feed() -> None:
        with open(path, "rb") as src, os.fdopen(write_fd, "wb") as sink:
            try:
                while chunk := src.read(1 << 16):
                    sink.write(chunk)
            except BrokenPipeError:
                pass  # the reader had what it needed and closed its end

    feeder = threading.Thread(target=feed, name="bitsound-pipe-feed", daemon=True)
    feeder.start()
    return read_fd, feeder


def _read_through_pipe(path: Path, *, first: int, stop: int, channels: int) -> np.ndarray:
    """Frames ``[first, stop)`` of ``path`` [shape=(frames, channels)], decoded from a pipe.

    libsndfile stops reading a seekable MP3 at the length mpg123 estimated when it opened the
    file; from a pipe it cannot estimate and reads the stream to its end. A thread feeds the
    file into the pipe.
    """
    read_fd, feeder = _feed_pipe(path)
    out = np.empty((stop, channels), dtype=np.float32)
    done = 0
    try:
        with sf.SoundFile(read_fd, closefd=False) as f:
            while done < stop:
                n = f.read(out=out[done:]).shape[0]
                if n == 0:
                    break
                done += n
    finally:
        os.close(read_fd)  # also unblocks the feeder when decoding stopped early
        feeder.join()
    return out[first:done]


def _check_decoded_length(path: Path, *, got: int, wanted: int, slack: int, mpeg: bool) -> None:
    if got > 0 and got >= wanted - slack:
        return
    if mpeg:
        raise AudioDecodeError(
            path,
            f"corrupt: the decoder gave only {got} of the {wanted} frames its MPEG frame headers "
            "hold (a damaged stream); re-encode the file from its source or drop it",
        )
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
        with open(path, "rb") as fh:
            ogg = fh.read(4) == b"OggS"
        problem = ogg_problem(path) if ogg else None  # says where an Ogg file was cut
        return problem or f"truncated or corrupt ({message})"
    if "channel count is zero" in lowered:
        return ("zero channels: its header declares 0 audio channels, so there is nothing to "
                "read; re-export the file or drop it")
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
        if n == 1:
            _note_duplicated_mono(path)
            return np.repeat(x, 2, axis=0)
        return x
    if policy >= n:
        raise DataError(
            f"channel index {policy} asked for, but {source} has {n} channel(s) "
            f"(valid indices: 0..{n - 1})"
        )
    return x[policy : policy + 1]


# Mono signals duplicated to two channels so far; feature building reports the count once.
_duplicated_mono = 0


def duplicated_mono_count() -> int:
    """How many mono signals :func:`select_channels` has duplicated to two channels in this
    process (callers take differences to report one line per batch of work)."""
    return _duplicated_mono


def _note_duplicated_mono(path: str | os.PathLike | None) -> None:
    global _duplicated_mono
    _duplicated_mono += 1
    logger.debug("channels='stereo': mono %s duplicated to both channels",
                 f"'{path}'" if path is not None else "signal")


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
    centred: bool = False,
) -> Segments:
    """Cut a recording into fixed-length windows.

    Windows start at 0, hop, 2 hop, ... and every window lying wholly inside the recording is
    kept. After the last whole window, the next one (one hop later) is kept zero-padded if at
    least half of it is real audio. A recording shorter than one window gives one window,
    zero-padded at the end. With ``centred`` the windows are instead centred on 0, hop,
    2 hop, ... for every centre inside the recording (``win // 2`` zero samples before it, as
    many as needed after it; the first start is negative).

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
    if centred:
        lead = win // 2
        starts = list(range(0, x.shape[1], step))  # in the padded signal: centres 0, step, ...
    else:
        lead = 0
        starts = _window_starts(x.shape[1], win=win, step=step)
    tail = max(0, starts[-1] + win - lead - x.shape[1])
    padded = np.pad(x, [(0, 0), (lead, tail)]) if lead or tail else x
    windows = np.stack([padded[:, s : s + win] for s in starts])
    segments = Segments(windows=windows,
                        starts=(np.asarray(starts, dtype=np.float64) - lead) / sample_rate)
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


def crop_starts(first: int, stop: int, *, length: int, pad: int, n_crops: int) -> np.ndarray:
    """Start samples of ``n_crops`` test windows over a clip's span, padded at both ends.

    The span ``[first, stop)`` is padded with ``pad`` zeros at each end; the windows of
    ``length`` samples start ``stride = (padded - length) // (n_crops - 1)`` apart from the
    padded span's start (EnvNet / ACDNet multi-crop testing), and a single window is centred.
    A padded span shorter than the window gives centred windows with more zeros.

    Returns
    -------
    np.ndarray [shape=(n_crops,), dtype=int64]
        Starts in the clip's sample indices (negative: before its first sample).
    """
    _check_count(length, name="length")
    _check_count(n_crops, name="n_crops")
    spare = (stop - first) + 2 * pad - length
    if spare < 0 or n_crops == 1:
        offsets = np.full(n_crops, spare // 2, dtype=np.int64)
    else:
        offsets = np.arange(n_crops, dtype=np.int64) * (spare // (n_crops - 1))
    return first - pad + offsets


#: A sample counts as silent for ``crop.trim_zeros`` when it would be 0 as a 16-bit integer:
#: the digital silence ESC-50's short clips are padded with, also after lossy decoding.
SILENCE_LEVEL = 0.5 / 32768


def span_of(x: np.ndarray, *, trim_zeros: bool) -> tuple[int, int]:
    """``[first, stop)`` of the samples above :data:`SILENCE_LEVEL` in any channel (the whole
    clip if none or when not ``trim_zeros``)."""
    if trim_zeros:
        nonzero = np.flatnonzero((np.abs(x) >= SILENCE_LEVEL).any(axis=0))
        if nonzero.size:
            return int(nonzero[0]), int(nonzero[-1]) + 1
    return 0, int(x.shape[-1])


def crop_windows(x: np.ndarray, *, length: int, pad: int, trim_zeros: bool,
                 n_crops: int) -> tuple[np.ndarray, np.ndarray]:
    """Test windows of one clip (see :func:`crop_starts`): zeros outside its span.

    Parameters
    ----------
    x : np.ndarray [shape=(channels, samples)]

    Returns
    -------
    windows : np.ndarray [shape=(n_crops, channels, length)]
    starts : np.ndarray [shape=(n_crops,)] start samples
    """
    _check_audio_array(x)
    first, stop = span_of(x, trim_zeros=trim_zeros)
    starts = crop_starts(first, stop, length=length, pad=pad, n_crops=n_crops)
    windows = np.zeros((n_crops, x.shape[0], length), dtype=x.dtype)
    for i, start in enumerate(starts.tolist()):
        lo, hi = max(start, first), min(start + length, stop)
        if hi > lo:
            windows[i, :, lo - start:hi - start] = x[:, lo:hi]
    return windows, starts


def crop_geometry(cfg: AudioConfig) -> tuple[int, int, int]:
    """(window, pad, stored) lengths in samples of ``cfg.crop`` at ``cfg.sample_rate``."""
    length = round(cfg.clip_seconds * cfg.sample_rate)
    return (length, round(cfg.crop.pad * length), round(cfg.crop.source_seconds * cfg.sample_rate))


def to_model_windows(x: np.ndarray, sample_rate: int, cfg: AudioConfig) -> Segments:
    """Turn a decoded clip into the windows a model sees.

    With ``cfg.segment`` set the clip is cut by :func:`segment`; with ``cfg.crop`` it is
    centre-cropped or zero-padded to ``crop.source_seconds`` and cut into ``crop.test_crops``
    windows of ``cfg.clip_seconds`` by :func:`crop_windows` (multi-crop testing: a clip's
    probabilities are the mean over its windows); otherwise it is centre-cropped or
    zero-padded by :func:`fix_length` to ``cfg.clip_seconds``, giving one window.

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
            x, sample_rate, length=seg.length, hop=seg.hop, energy_gate_db=seg.energy_gate_db,
            centred=seg.centred,
        )
    if cfg.crop is not None:
        length, pad, stored = crop_geometry(cfg)
        source = fix_length(x, stored)
        windows, starts = crop_windows(source, length=length, pad=pad,
                                       trim_zeros=cfg.crop.trim_zeros, n_crops=cfg.crop.test_crops)
        offset = _centre_offset(x.shape[1], stored)
        return Segments(windows=windows, starts=(starts + offset) / sample_rate)
    n = round(cfg.clip_seconds * sample_rate)
    window = fix_length(x, n)
    start = _centre_offset(x.shape[1], n) / sample_rate
    return Segments(windows=window[np.newaxis], starts=np.array([start]))
