"""Whole or truncated, decided from the stream itself (issue 19), on real and encoded files.

An MP3 without a Xing/Info header has no stated length: libsndfile's is an estimate from the
first frame's bit rate. These tests encode such files with Debian's ``lame`` (installed by the
Makefile) and cut real xeno-canto recordings, WAV, FLAC and Ogg files in every way a copy or a
download is cut.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from bitsound.audio import audio_info, load_audio
from bitsound.audio.mpeg import scan_mpeg
from bitsound.cli import main
from bitsound.data import check_dataset, open_dataset
from bitsound.errors import AudioDecodeError

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
XENO_CANTO = SHARED_DATA / "xeno-canto-acrocephalus"
RATE = 44100


# --------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------
def _real_mp3s() -> list[Path]:
    files = sorted((XENO_CANTO / "mp3").glob("*.mp3"))
    if not files:
        pytest.skip(f"the real xeno-canto MP3s are absent from {XENO_CANTO} (CI provides them)")
    return files


def _real_mp3(*, with_info: bool) -> Path:
    """The smallest real recording with (or without) a Xing/Info frame."""
    for path in sorted(_real_mp3s(), key=lambda p: p.stat().st_size):
        if (scan_mpeg(path).info is not None) == with_info:
            return path
    pytest.skip(f"no real MP3 {'with' if with_info else 'without'} an Info frame")


def _lame(tmp: Path, name: str, signal: np.ndarray, *args: str) -> Path:
    if shutil.which("lame") is None:
        pytest.skip("Debian's lame is not installed and `make test` could not install it "
                    "(apt-get needs root): cannot encode VBR MP3s without an Info frame")
    wav = tmp / f"{name}.wav"
    sf.write(wav, signal, RATE, subtype="PCM_16")
    mp3 = tmp / f"{name}.mp3"
    subprocess.run(["lame", "--quiet", *args, str(wav), str(mp3)], check=True)
    return mp3


def _quiet_then_loud(seconds_quiet: float = 2.0, seconds_loud: float = 20.0) -> np.ndarray:
    noise = 0.3 * np.random.default_rng(0).standard_normal(int(seconds_loud * RATE))
    return np.concatenate([np.zeros(int(seconds_quiet * RATE)), noise]).astype(np.float32)


@pytest.fixture(scope="module")
def vbr(tmp_path_factory) -> dict[str, Path]:
    """VBR MP3s of 22 s: without an Info frame (``-t``) quiet or loud first, and with one."""
    tmp = tmp_path_factory.mktemp("vbr")
    quiet_first = _quiet_then_loud()
    return {
        "quiet first": _lame(tmp, "quiet", quiet_first, "-V", "0", "-t"),
        "loud first": _lame(tmp, "loud", quiet_first[::-1].copy(), "-V", "0", "-t"),
        "info frame": _lame(tmp, "info", quiet_first, "-V", "0"),
    }


def _cut(src: Path, dst: Path, n_bytes: int) -> Path:
    dst.write_bytes(src.read_bytes()[:n_bytes])
    return dst


def _frame_starts(path: Path) -> list[int]:
    """Byte offsets of the audio frames of a whole MP3 (walked independently of the scanner)."""
    scan = scan_mpeg(path)
    data = path.read_bytes()
    pos = scan.audio_start + (scan.first.length if scan.info is not None else 0)
    starts = []
    while pos + 4 <= scan.audio_end:
        word = int.from_bytes(data[pos:pos + 4], "big")
        assert word >> 17 == 0x7FFD, hex(word)  # sync, MPEG-1, layer III (all these files)
        kbps = (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)[word >> 12 & 15]
        rate = (44100, 48000, 32000)[word >> 10 & 3]
        starts.append(pos)
        pos += 144 * kbps * 1000 // rate + (word >> 9 & 1)
    return starts


def _check_truncated(path: Path, words: str) -> None:
    """``audio_info`` and ``load_audio`` both call ``path`` truncated, naming it."""
    for read in (audio_info, load_audio):
        with pytest.raises(AudioDecodeError, match=words) as err:
            read(path)
        assert err.value.path == str(path) and f"'{path}'" in str(err.value)


# --------------------------------------------------------------------------------------------
# whole files decode whole
# --------------------------------------------------------------------------------------------
def test_every_real_xeno_canto_mp3_decodes_to_the_length_its_frames_give():
    for path in _real_mp3s():
        info = audio_info(path)
        audio = load_audio(path)
        assert audio.shape == (info.channels, info.frames), path.name
        assert np.isfinite(audio).all() and np.abs(audio).max() > 1e-3, path.name


def test_vbr_without_info_frame_whose_first_frames_are_quiet_decodes_whole(vbr):
    path = vbr["quiet first"]
    # The premise of the issue: libsndfile's length is a guess from the quiet first frame.
    assert sf.info(str(path)).frames > 3 * 22 * RATE
    info = audio_info(path)
    audio = load_audio(path)
    assert audio.shape == (1, info.frames)
    assert info.frames == scan_mpeg(path).n_frames * 1152
    assert 22.0 <= info.duration < 22.0 + 2 * 1152 / RATE  # encoder delay and padding
    # The audio is where it was encoded: silence, then noise up to the end.
    level = [np.abs(audio[0, round(a * RATE):round(b * RATE)]).mean()
             for a, b in ((0.1, 1.9), (2.1, 10.0), (20.0, 21.9))]
    assert level[0] < 1e-3 and level[1] > 0.1 and level[2] > 0.1


def test_vbr_without_info_frame_whose_first_frames_are_loud_decodes_whole(vbr):
    # Here libsndfile's guess is too short (10 s): it would stop decoding there.
    path = vbr["loud first"]
    assert sf.info(str(path)).frames < 15 * RATE
    info = audio_info(path)
    audio = load_audio(path)
    assert audio.shape == (1, info.frames) and info.duration >= 22.0
    assert np.abs(audio[0, 21 * RATE:]).max() < 1e-3  # the silent end is there
    tail = load_audio(path, start=19.5, end=20.5)  # a span past libsndfile's guess
    np.testing.assert_array_equal(tail, audio[:, round(19.5 * RATE):round(20.5 * RATE)])


def test_vbr_with_info_frame_decodes_to_the_exact_gapless_length(vbr):
    info = audio_info(vbr["info frame"])
    assert info.frames == 22 * RATE
    assert load_audio(vbr["info frame"]).shape == (1, 22 * RATE)


def test_spans_of_a_vbr_file_without_info_frame_are_exact(vbr):
    path = vbr["quiet first"]
    full = load_audio(path)
    for start, end in ((0.5, 1.25), (10.0, 12.5), (3.3, 21.9)):
        part = load_audio(path, start=start, end=end)
        np.testing.assert_allclose(part, full[:, round(start * RATE):round(end * RATE)],
                                   atol=1e-6)


def _id3v1() -> bytes:
    return b"TAG" + b"title".ljust(30, b"\0") + bytes(94) + b"\xff"


def _ape_tag() -> bytes:
    item = struct.pack("<II", 5, 0) + b"Title\0" + b"Reed!"  # value length, flags, key, value
    size = len(item) + 32

    def block(flags: int) -> bytes:
        return b"APETAGEX" + struct.pack("<IIII", 2000, size, 1, flags) + bytes(8)

    return block(0xA0000000) + item + block(0x80000000)


def _lyrics3v2() -> bytes:
    body = b"LYRICSBEGIN" + b"IND0000210"
    return body + str(len(body)).zfill(6).encode() + b"LYRICS200"


def test_end_tags_are_skipped_and_a_short_last_frame_before_them_is_whole(vbr, tmp_path):
    src = vbr["quiet first"]
    whole = audio_info(src).frames
    tags = _ape_tag() + _lyrics3v2() + _id3v1()
    tagged = tmp_path / "tagged.mp3"
    tagged.write_bytes(src.read_bytes() + tags)
    assert audio_info(tagged).frames == whole and load_audio(tagged).shape[1] == whole
    assert scan_mpeg(tagged).trailing_tags == ("ID3v1", "Lyrics3v2", "APE")
    # As xeno-canto's tagger does: the last frame short, then a tag (the decoder reads the
    # frame's missing bytes from the tag). Without the tag the same file is a cut file.
    last = _frame_starts(src)[-1]
    short = src.read_bytes()[:last + 40]
    (tmp_path / "short_tagged.mp3").write_bytes(short + _ape_tag())
    assert audio_info(tmp_path / "short_tagged.mp3").frames == whole
    (tmp_path / "short.mp3").write_bytes(short)
    _check_truncated(tmp_path / "short.mp3", "the file ends inside its last MPEG frame")


# --------------------------------------------------------------------------------------------
# cut files are truncated, with the file named
# --------------------------------------------------------------------------------------------
def test_real_mp3_without_info_frame_cut_at_half_and_mid_frame(tmp_path):
    src = _real_mp3(with_info=False)
    size = src.stat().st_size
    starts = _frame_starts(src)
    assert size // 2 not in starts  # half its bytes is inside a frame
    _check_truncated(_cut(src, tmp_path / "half.mp3", size // 2),
                     r"truncated: the file ends inside its last MPEG frame \(byte \d+")
    _check_truncated(_cut(src, tmp_path / "mid.mp3", starts[len(starts) // 3] + 17),
                     "truncated: the file ends inside its last MPEG frame")


def test_real_mp3_with_info_frame_cut_at_half_and_on_a_frame_boundary(tmp_path):
    src = _real_mp3(with_info=True)
    declared = scan_mpeg(src).info.frames
    _check_truncated(_cut(src, tmp_path / "half.mp3", src.stat().st_size // 2),
                     f"truncated: its (Xing|Info) header declares {declared} MPEG frames")
    # A cut between two frames leaves a well-formed stream; the frame count still shows it.
    boundary = _frame_starts(src)[declared // 2]
    _check_truncated(_cut(src, tmp_path / "boundary.mp3", boundary),
                     f"declares {declared} MPEG frames .* holds only {declared // 2} ")


def test_vbr_file_without_info_frame_cut_mid_frame(vbr, tmp_path):
    src = vbr["quiet first"]
    starts = _frame_starts(src)
    _check_truncated(_cut(src, tmp_path / "cut.mp3", starts[len(starts) // 2] + 100),
                     f"after {len(starts) // 2} whole frames")


def test_mp3_whose_second_half_is_zeros_or_that_has_a_hole(tmp_path):
    # A download preallocated with zeros, and 4 kB of junk inside the stream.
    src = _real_mp3(with_info=False)
    data = src.read_bytes()
    half = _frame_starts(src)[len(_frame_starts(src)) // 2]
    zeros = tmp_path / "zeros.mp3"
    zeros.write_bytes(data[:half] + bytes(len(data) - half))
    _check_truncated(zeros, f"the MPEG frames stop at byte {half}")
    hole = tmp_path / "hole.mp3"
    hole.write_bytes(data[:half] + b"\x00junk" * 800 + data[half:])
    _check_truncated(hole, f"corrupt: 4000 bytes at byte {half} are not MPEG frames")


def _pcm(seconds: float = 2.0, rate: int = 16000) -> np.ndarray:
    return (0.3 * np.sin(2 * np.pi * 440 * np.arange(int(seconds * rate)) / rate)).astype(
        np.float32)


@pytest.mark.parametrize(("fmt", "subtype", "words"), [
    ("WAV", "PCM_16", "truncated: its WAV header declares 32000 frames"),
    ("FLAC", "PCM_16", "truncated: its FLAC header declares 32000 frames"),
    ("OGG", "VORBIS", r"truncated: the file ends inside Ogg page \d+ \(byte \d+"),
    ("OGG", "OPUS", r"truncated: the file ends inside Ogg page \d+ \(byte \d+"),
])
def test_wav_flac_ogg_cut_at_half_are_truncated(tmp_path, fmt, subtype, words):
    whole = tmp_path / f"whole.{subtype.lower()}"
    sf.write(whole, _pcm(), 16000, format=fmt, subtype=subtype)
    assert audio_info(whole).frames == 32000
    _check_truncated(_cut(whole, tmp_path / f"cut.{subtype.lower()}",
                          whole.stat().st_size // 2), words)


def test_ogg_cut_at_a_page_boundary_lacks_its_end_of_stream_page(tmp_path):
    whole = tmp_path / "whole.ogg"
    sf.write(whole, _pcm(), 16000, format="OGG", subtype="VORBIS")
    data = whole.read_bytes()
    last_page = data.rfind(b"OggS")
    _check_truncated(_cut(whole, tmp_path / "cut.ogg", last_page),
                     "truncated: the Ogg stream has no end-of-stream page")


# --------------------------------------------------------------------------------------------
# data check and evaluate
# --------------------------------------------------------------------------------------------
def test_data_check_finds_every_cut_file_with_and_without_decoding(vbr, tmp_path, capsys):
    root = tmp_path / "set"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    shutil.copy(vbr["quiet first"], root / "a" / "whole.mp3")
    shutil.copy(vbr["loud first"], root / "b" / "whole.mp3")
    mp3 = vbr["quiet first"]
    _cut(mp3, root / "a" / "half.mp3", mp3.stat().st_size // 2)
    for fmt, subtype, ext in (("WAV", "PCM_16", "wav"), ("FLAC", "PCM_16", "flac"),
                              ("OGG", "VORBIS", "ogg")):
        sf.write(tmp_path / f"w.{ext}", _pcm(), 16000, format=fmt, subtype=subtype)
        _cut(tmp_path / f"w.{ext}", root / "b" / f"half.{ext}",
             (tmp_path / f"w.{ext}").stat().st_size // 2)
    for decode in ([], ["--decode"]):
        capsys.readouterr()
        assert main(["data", "check", f"folder:{root}", "--json", *decode]) == 1
        report = json.loads(capsys.readouterr().out)
        bad = {str(Path(p["path"]).relative_to(root)): p["problem"] for p in report["problems"]}
        assert set(bad) == {"a/half.mp3", "b/half.wav", "b/half.flac", "b/half.ogg"}, bad
        assert all(problem.startswith("truncated") for problem in bad.values()), bad
        # Durations are the decoded ones: the two whole 22 s MP3s, nothing of the cut files.
        whole = audio_info(vbr["quiet first"]).duration + audio_info(vbr["loud first"]).duration
        assert report["total_duration"] == pytest.approx(whole, abs=1e-3)


def test_data_check_decode_on_real_xeno_canto_reports_no_false_problem(capsys):
    _real_mp3s()
    assert main(["data", "check", f"xeno-canto:{XENO_CANTO}", "--decode", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["n_clips"] == len(_real_mp3s())
    expected = sum(audio_info(p).duration for p in _real_mp3s())
    assert report["total_duration"] == pytest.approx(expected, abs=1e-3)


def test_segments_of_a_manifest_are_checked_against_the_decoded_length(vbr, tmp_path):
    # libsndfile guesses 81 s for this 22 s file: a segment at 30-31 s is outside it.
    path = vbr["quiet first"]
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path,label,start,end\n{path},x,1,2\n{path},x,30,31\n")
    report = check_dataset(open_dataset(f"manifest:{manifest}"), decode=True)
    assert [p.index for p in report.problems] == [1]
    assert "segment 30-31 s is not inside the file (22.047 s long)" in report.problems[0].problem
    assert report.total_duration == pytest.approx(1.0)
