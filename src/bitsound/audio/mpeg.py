"""Walk the frame headers of an MPEG audio (MP3) file without decoding it.

An MP3 file says how long it is only when its first frame is a Xing/Info or VBRI header;
otherwise libsndfile (through mpg123) estimates the length from the first frame's bit rate and
the file size, which is wrong for variable-bit-rate files by any factor (a quiet first frame of a
VBR file is coded at 32 kbit/s). The frame headers are the facts: each one gives the size of its
frame, so walking them from the first frame to the end of the audio data finds

- how many audio frames the stream holds, hence its decoded length in samples (less the
  encoder delay and padding a LAME/Lavc tag declares, which mpg123 removes);
- whether the last frame is cut off, or the frames stop before the end of the audio data
  (a cut or partly downloaded file), or the Xing/Info/VBRI header declares more frames than
  there are.

The audio data lies between the ID3v2 tags at the start and the APEv1/v2, Lyrics3 v1/v2 and
ID3v1 tags at the end (in any order); they are skipped. Only the 4-byte frame headers are read,
so a scan costs a few milliseconds per megabyte.

Reference: ISO/IEC 11172-3 and 13818-3 (frame header, frame length), the Xing/Info, VBRI and
LAME tag layouts as written by LAME 3.100 and read by mpg123.
"""

from __future__ import annotations

import functools
import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from bitsound.errors import AudioDecodeError

# Bit rates in kbit/s by (MPEG-1?, layer) and index 1..14; index 0 is "free format".
_BITRATES = {
    (True, 1): (32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (True, 2): (32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (True, 3): (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (False, 1): (32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (False, 2): (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    (False, 3): (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
# Sample rates by version bits (0: MPEG-2.5, 2: MPEG-2, 3: MPEG-1) and rate index 0..2.
_RATES = {0: (11025, 12000, 8000), 2: (22050, 24000, 16000), 3: (44100, 48000, 32000)}
_VERSION_NAMES = {0: "MPEG-2.5", 2: "MPEG-2", 3: "MPEG-1"}
#: Frames that must follow a candidate first frame, each header consistent with it, before
#: the candidate counts as the start of the stream (a lone 0xFFE sync pattern in junk is common).
CHAIN = 4
#: Bytes after the last whole frame that may be neither frames nor a known tag (some encoders
#: and taggers leave a little padding). More than this is a stream that stops early.
TAIL_SLACK = 1024
#: Samples mpg123 drops at the start of a gapless decode besides the encoder delay (its layer III
#: synthesis delay), and keeps back from the encoder padding at the end.
GAPLESS_DELAY = 529


@dataclass(frozen=True)
class FrameHeader:
    """One decoded 4-byte MPEG audio frame header."""

    version: int  # version bits: 0 = MPEG-2.5, 2 = MPEG-2, 3 = MPEG-1
    layer: int  # 1, 2 or 3
    crc: bool
    bitrate: int  # bit/s
    sample_rate: int
    padding: int
    mono: bool
    length: int  # bytes of the whole frame, header included
    stream: tuple[int, int, int, bool]  # what must not change within one stream

    @property
    def samples(self) -> int:
        """Samples per channel this frame decodes to."""
        if self.layer == 1:
            return 384
        if self.layer == 2 or self.version == 3:
            return 1152
        return 576

    @property
    def channels(self) -> int:
        return 1 if self.mono else 2

    def same_stream(self, other: FrameHeader) -> bool:
        """True when ``other`` can follow this frame in one stream (what a decoder accepts)."""
        return self.stream == other.stream


# A stream repeats a few dozen distinct header words; caching them makes a scan ~5x faster.
@functools.lru_cache(maxsize=4096)
def parse_header(word: int) -> FrameHeader | None:
    """The frame header in the big-endian 32-bit ``word``, or None when it is not one.

    Free-format frames (bit-rate index 0) give None: their length is not in the header.
    """
    if word >> 21 != 0x7FF:
        return None
    version = (word >> 19) & 3
    layer_bits = (word >> 17) & 3
    rate_index = (word >> 10) & 3
    bitrate_index = (word >> 12) & 0xF
    if version == 1 or layer_bits == 0 or rate_index == 3 or word & 3 == 2:
        return None
    if bitrate_index in (0, 15):
        return None
    layer = 4 - layer_bits
    mpeg1 = version == 3
    bitrate = 1000 * _BITRATES[(mpeg1, layer)][bitrate_index - 1]
    sample_rate = _RATES[version][rate_index]
    padding = (word >> 9) & 1
    if layer == 1:
        length = (12 * bitrate // sample_rate + padding) * 4
    elif layer == 3 and not mpeg1:
        length = 72 * bitrate // sample_rate + padding
    else:
        length = 144 * bitrate // sample_rate + padding
    mono = (word >> 6) & 3 == 3
    return FrameHeader(version=version, layer=layer, crc=not (word >> 16) & 1, bitrate=bitrate,
                       sample_rate=sample_rate, padding=padding, mono=mono, length=length,
                       stream=(version, layer, sample_rate, mono))


@dataclass(frozen=True)
class InfoFrame:
    """What a Xing/Info or VBRI header in the first frame declares."""

    kind: str  # "Xing", "Info" or "VBRI"
    frames: int | None  # audio frames after this one, when declared
    encoder_delay: int = 0  # samples the decoder drops at the start (LAME/Lavc tag)
    encoder_padding: int = 0  # samples it drops at the end


@dataclass(frozen=True)
class MpegScan:
    """What the frame headers of one MP3 file show.

    Attributes
    ----------
    first : FrameHeader
        The first frame (rate, channels, layer of the stream).
    info : InfoFrame or None
        The Xing/Info/VBRI header, when the first frame is one (it holds no audio).
    n_frames : int
        Whole audio frames found (the info frame not counted).
    audio_start, audio_end : int
        Byte range of the audio data: after the leading ID3v2 tags, before the trailing tags.
    scan_end : int
        Where the last whole frame ends.
    partial : tuple of int or None
        ``(offset, length)`` of a last frame that runs past ``audio_end``.
    gaps : list of (int, int)
        ``(offset, n_bytes)`` of data between frames that is not a frame (the decoder skips
        it, leaving a gap in the audio).
    trailing_tags : tuple of str
        The tags found after the audio data, outermost last.
    """

    first: FrameHeader
    info: InfoFrame | None
    n_frames: int
    audio_start: int
    audio_end: int
    scan_end: int
    partial: tuple[int, int] | None = None
    gaps: list[tuple[int, int]] = field(default_factory=list)
    trailing_tags: tuple[str, ...] = ()

    @property
    def sample_rate(self) -> int:
        return self.first.sample_rate

    @property
    def channels(self) -> int:
        return self.first.channels

    @property
    def samples_per_frame(self) -> int:
        return self.first.samples

    @property
    def partial_tolerated(self) -> bool:
        """True for a short last frame followed by an end tag: the file was written whole.

        Some taggers (xeno-canto's among them) leave the last frame short before the tag they
        append; the decoder fills it from the tag's bytes. A cut file has lost its end tag.
        """
        return self.partial is not None and bool(self.trailing_tags)

    @property
    def n_decoded_frames(self) -> int:
        """MPEG frames the decoder turns into audio (a tolerated short last frame included)."""
        return self.n_frames + int(self.partial_tolerated)

    @property
    def decoded_frames(self) -> int:
        """Samples per channel that mpg123 (libsndfile's MP3 decoder) gives for this stream.

        Without a frame count in an info frame it decodes every frame. With one it decodes
        gaplessly: it drops the encoder delay plus its own :data:`GAPLESS_DELAY` at the start
        and the encoder padding less that delay at the end (never more than the frames hold).
        """
        spf = self.samples_per_frame
        frames = self.n_decoded_frames
        if self.info is None or self.info.frames is None:
            return frames * spf
        declared = self.info.frames * spf
        begin = self.info.encoder_delay + GAPLESS_DELAY
        end = min(declared, declared - self.info.encoder_padding + GAPLESS_DELAY, frames * spf)
        return max(0, end - begin)

    @property
    def duration(self) -> float:
        return self.decoded_frames / self.sample_rate

    def problem(self) -> str | None:
        """Why the stream is truncated or corrupt, or None when it is whole."""
        spf, rate = self.samples_per_frame, self.sample_rate
        declared = self.info.frames if self.info is not None else None
        if declared is not None and self.n_decoded_frames < declared:
            return (f"truncated: its {self.info.kind} header declares {declared} MPEG frames "
                    f"({declared * spf / rate:.3f} s) but the file holds only {self.n_frames} "
                    f"({self.n_frames * spf / rate:.3f} s); the file was cut off while copying "
                    "or downloading, so fetch it again or drop it")
        if self.partial is not None and not self.partial_tolerated:
            offset, length = self.partial
            have = self.audio_end - offset
            return (f"truncated: the file ends inside its last MPEG frame (byte {offset}: "
                    f"{have} of its {length} bytes are there) after {self.n_frames} whole frames "
                    f"({self.n_frames * spf / rate:.3f} s); the file was cut off while copying "
                    "or downloading, so fetch it again or drop it")
        tail = self.audio_end - self.scan_end
        if self.partial is None and tail > TAIL_SLACK:
            return (f"truncated or corrupt: the MPEG frames stop at byte {self.scan_end} after "
                    f"{self.n_frames} frames ({self.n_frames * spf / rate:.3f} s), but "
                    f"{tail} more bytes of audio data follow that are not MPEG frames (a "
                    "partly downloaded or damaged file); fetch it again or drop it")
        if self.gaps:
            offset, size = self.gaps[0]
            more = f" and {len(self.gaps) - 1} more gap(s)" if len(self.gaps) > 1 else ""
            return (f"corrupt: {size} bytes at byte {offset} are not MPEG frames{more}, so the "
                    "decoded audio would have a hole there; re-encode the file from its source "
                    "or drop it")
        return None


def scan_mpeg(path: str | os.PathLike) -> MpegScan:
    """Walk the frame headers of an MP3 file.

    Parameters
    ----------
    path : str or PathLike

    Returns
    -------
    MpegScan

    Raises
    ------
    AudioDecodeError
        The file holds no run of valid MPEG audio frames (or only free-format frames, whose
        length this scan cannot know).
    """
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise AudioDecodeError(path, "file is empty (0 bytes)")
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
        start = _skip_id3v2(data, 0)
        end, tags = _strip_trailing_tags(data, start)
        first_at = _find_stream(data, start, end)
        if first_at is None:
            raise AudioDecodeError(
                path, "corrupt: no run of valid MPEG audio frames found (not an MP3 stream, or "
                "free-format MP3); re-encode it from its source or drop it")
        return _walk(data, first_at, start, end, tags)


def _word(data, pos: int) -> int:
    return int.from_bytes(data[pos:pos + 4], "big")


def _skip_id3v2(data, pos: int = 0) -> int:
    """Offset just past the ID3v2 tag(s) at ``pos`` (several are sometimes stacked)."""
    while data[pos:pos + 3] == b"ID3" and pos + 10 <= len(data):
        flags = data[pos + 5]
        size = _syncsafe(data[pos + 6:pos + 10])
        pos += 10 + size + (10 if flags & 0x10 else 0)
    return min(pos, len(data))


def _syncsafe(raw: bytes) -> int:
    return (raw[0] & 0x7F) << 21 | (raw[1] & 0x7F) << 14 | (raw[2] & 0x7F) << 7 | raw[3] & 0x7F


def _strip_trailing_tags(data, start: int) -> tuple[int, tuple[str, ...]]:
    """End of the audio data before the APE, Lyrics3 and ID3v1 tags, and the tags found."""
    end = len(data)
    tags: list[str] = []
    while end > start:
        if end - 128 >= start and data[end - 128:end - 125] == b"TAG":
            end -= 128
            tags.append("ID3v1")
        elif end - 32 >= start and data[end - 32:end - 24] == b"APETAGEX":
            # footer: id (8), version (4), size of items + footer (4), item count (4), flags (4)
            (tag_size,) = struct.unpack("<I", data[end - 20:end - 16])
            (flags,) = struct.unpack("<I", data[end - 12:end - 8])
            header = 32 if flags & 0x80000000 else 0
            if tag_size + header > end - start:
                break
            end -= tag_size + header
            tags.append("APE")
        elif end - 15 >= start and data[end - 9:end] == b"LYRICS200":
            digits = bytes(data[end - 15:end - 9])
            if not digits.isdigit() or int(digits) + 15 > end - start:
                break
            end -= int(digits) + 15
            tags.append("Lyrics3v2")
        elif end - 9 >= start and data[end - 9:end] == b"LYRICSEND":
            begin = data.rfind(b"LYRICSBEGIN", max(start, end - 5100 - 11), end)
            if begin < 0:
                break
            end = begin
            tags.append("Lyrics3v1")
        elif end - 10 >= start and data[end - 10:end - 7] == b"3DI":  # ID3v2 footer at the end
            size = _syncsafe(data[end - 4:end])
            if size + 20 > end - start:
                break
            end -= size + 20
            tags.append("ID3v2")
        else:
            break
    return end, tuple(tags)


def _header_at(data, pos: int, end: int) -> FrameHeader | None:
    if pos + 4 > end:
        return None
    return parse_header(_word(data, pos))


def _chains(data, pos: int, end: int, first: FrameHeader) -> bool:
    """True when ``CHAIN`` consistent frames follow the frame at ``pos`` (or the data ends)."""
    for _ in range(CHAIN + 1):
        header = _header_at(data, pos, end)
        if header is None or not first.same_stream(header):
            return False
        pos += header.length
        if pos >= end:
            return True
    return True


def _find_stream(data, pos: int, end: int) -> int | None:
    """Offset of the first frame that starts a consistent run of frames, from ``pos`` on."""
    while pos < end:
        pos = data.find(b"\xff", pos, end)
        if pos < 0:
            return None
        header = _header_at(data, pos, end)
        if header is not None and _chains(data, pos, end, header):
            return pos
        pos += 1
    return None


def _walk(data, first_at: int, start: int, end: int, tags: tuple[str, ...]) -> MpegScan:
    first = _header_at(data, first_at, end)
    info = _info_frame(data, first_at, first)
    pos = first_at + first.length if info is not None else first_at
    n_frames = 0
    gaps: list[tuple[int, int]] = []
    partial = None
    if first_at > start:
        gaps.append((start, first_at - start))
    scan_end = pos
    stream = first.stream
    while pos < end:
        header = parse_header(int.from_bytes(data[pos:pos + 4], "big")) if pos + 4 <= end else None
        if header is not None and header.stream == stream:
            if pos + header.length > end:
                partial = (pos, header.length)
                break
            n_frames += 1
            pos += header.length
            scan_end = pos
            continue
        if data[pos:pos + 3] == b"ID3":  # a tag between two streams (concatenated files)
            skipped = _skip_id3v2(data, pos)
            if skipped > pos + 10:
                pos = skipped
                scan_end = pos
                continue
        resumed = _find_stream(data, pos + 1, end)
        if resumed is None:
            break
        gaps.append((pos, resumed - pos))
        pos = resumed
    if start < first_at and gaps and gaps[0][0] == start and gaps[0][1] <= TAIL_SLACK:
        gaps.pop(0)  # a little padding before the first frame is harmless
    return MpegScan(first=first, info=info, n_frames=n_frames, audio_start=start, audio_end=end,
                    scan_end=scan_end, partial=partial, gaps=gaps, trailing_tags=tags)


def _info_frame(data, pos: int, first: FrameHeader) -> InfoFrame | None:
    """The Xing/Info or VBRI header in the frame at ``pos``, if it is one."""
    frame = bytes(data[pos:pos + first.length])
    if first.layer == 3:
        # Bytes of layer III side information, which the Xing/Info tag follows.
        side = {(True, True): 17, (True, False): 32, (False, True): 9, (False, False): 17}[
            (first.version == 3, first.mono)]
        at = 4 + side + (2 if first.crc else 0)
        for offset in dict.fromkeys((at, 4 + side)):
            tag = frame[offset:offset + 4]
            if tag in (b"Xing", b"Info"):
                return _xing(frame, offset, tag.decode())
    if frame[36:40] == b"VBRI" and len(frame) >= 54:
        return InfoFrame(kind="VBRI", frames=struct.unpack(">I", frame[50:54])[0])
    return None


def _xing(frame: bytes, offset: int, kind: str) -> InfoFrame:
    (flags,) = struct.unpack(">I", frame[offset + 4:offset + 8])
    cursor = offset + 8
    frames = None
    if flags & 1:
        (frames,) = struct.unpack(">I", frame[cursor:cursor + 4])
        cursor += 4
    cursor += (4 if flags & 2 else 0) + (100 if flags & 4 else 0) + (4 if flags & 8 else 0)
    delay = padding = 0
    encoder = frame[cursor:cursor + 4]
    if encoder in (b"LAME", b"Lavf", b"Lavc", b"GOGO") and len(frame) >= cursor + 24:
        raw = frame[cursor + 21:cursor + 24]
        delay = raw[0] << 4 | raw[1] >> 4
        padding = (raw[1] & 0x0F) << 8 | raw[2]
    return InfoFrame(kind=kind, frames=frames, encoder_delay=delay, encoder_padding=padding)
