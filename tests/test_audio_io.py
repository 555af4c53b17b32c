"""Tests of bitsound.audio.io: decoding, resampling, channels, lengths, segmentation, errors."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from bitsound.audio import (
    audio_info,
    fix_length,
    load_audio,
    resample,
    segment,
    select_channels,
    to_model_windows,
)
from bitsound.config import AudioConfig, SegmentConfig
from bitsound.errors import AudioDecodeError, ConfigError, DataError

SR = 16000
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
XENO_CANTO_MP3 = SHARED_DATA / "xeno-canto-acrocephalus" / "mp3"


def _noise(channels: int, n: int, *, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-0.9, 0.9, (channels, n)).astype(np.float32)


def _sine(freq: float, sr: int, n: int, amp: float = 0.5) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(n) / sr)).astype(np.float32)[np.newaxis]


def _write(path: Path, x: np.ndarray, sr: int = SR, **kwargs) -> Path:
    """Write (channels, samples) audio with soundfile."""
    sf.write(path, x.T, sr, **kwargs)
    return path


def _peak_hz(x: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(x))
    return float(np.fft.rfftfreq(len(x), 1 / sr)[spectrum.argmax()])


# --------------------------------------------------------------------------------------------
# round trips
# --------------------------------------------------------------------------------------------
# Largest error of one sample: one step of the integer format, except 32-bit integers, which
# float32 output can only hold to 24 significant bits.
PCM_TOLERANCE = {
    "PCM_U8": 2.0**-7,
    "PCM_16": 2.0**-15,
    "PCM_24": 2.0**-23,
    "PCM_32": 2.0**-24,
    "FLOAT": 0.0,
}


@pytest.mark.parametrize("subtype", sorted(PCM_TOLERANCE))
def test_wav_round_trip_within_format_precision(tmp_path, subtype):
    x = _noise(2, 1000)
    path = _write(tmp_path / f"{subtype}.wav", x, subtype=subtype)
    y = load_audio(path)
    assert y.dtype == np.float32 and y.shape == (2, 1000)
    np.testing.assert_allclose(y, x, rtol=0, atol=PCM_TOLERANCE[subtype])


@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24"])
def test_flac_round_trip_is_lossless(tmp_path, subtype):
    x = _noise(1, 2000)
    y = load_audio(_write(tmp_path / "a.flac", x, subtype=subtype))
    np.testing.assert_allclose(y, x, rtol=0, atol=PCM_TOLERANCE[subtype])


def _check_lossy(x: np.ndarray, y: np.ndarray) -> None:
    assert y.shape == x.shape
    assert _peak_hz(y[0], SR) == pytest.approx(_peak_hz(x[0], SR), abs=1.0)
    assert np.corrcoef(x[0], y[0])[0, 1] > 0.99


def test_ogg_vorbis_round_trip(tmp_path):
    x = _sine(1000, SR, SR)
    _check_lossy(x, load_audio(_write(tmp_path / "a.ogg", x, format="OGG", subtype="VORBIS")))


def test_mp3_round_trip(tmp_path):
    if "MP3" not in sf.available_formats():
        pytest.skip(f"libsndfile {sf.__libsndfile_version__} cannot write MP3")
    x = _sine(1000, SR, SR)
    _check_lossy(x, load_audio(_write(tmp_path / "a.mp3", x, format="MP3")))


@pytest.fixture(scope="module")
def real_mp3() -> Path:
    files = sorted(XENO_CANTO_MP3.glob("*.mp3"), key=lambda p: p.stat().st_size)
    if not files:
        pytest.skip(f"real MP3s not found at {XENO_CANTO_MP3} (the shared data set is absent)")
    return files[0]


def test_real_mp3_decodes_and_seeks(real_mp3):
    info = audio_info(real_mp3)
    assert info.sample_rate in (32000, 44100, 48000) and info.duration > 1.0
    full = load_audio(real_mp3)
    assert full.shape[0] == info.channels
    # The frame scan gives the decoded length exactly (see the io module notes).
    assert full.shape[1] == info.frames
    assert np.abs(full).max() > 0.01
    start, end = 0.5, 1.25
    part = load_audio(real_mp3, start=start, end=end)
    first, last = round(start * info.sample_rate), round(end * info.sample_rate)
    np.testing.assert_allclose(part, full[:, first:last], atol=1e-6)
    mono = load_audio(real_mp3, sample_rate=SR, channels="mono", start=start, end=end)
    assert mono.shape == (1, round((last - first) * SR / info.sample_rate))


# --------------------------------------------------------------------------------------------
# resampling
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("orig", "target", "freq"), [(44100, 16000, 440.0), (8000, 16000, 1000.0)])
def test_resample_keeps_frequency_and_duration(orig, target, freq):
    x = _sine(freq, orig, orig)  # 1 s: spectrum bins are 1 Hz apart
    y = resample(x, orig, target)
    assert y.shape == (1, target)
    assert _peak_hz(y[0], target) == pytest.approx(freq, abs=1.0)


def test_resample_length_rounds_and_load_audio_resamples(tmp_path):
    x = _sine(440, 44100, 1000)
    assert resample(x, 44100, 16000).shape == (1, round(1000 * 16000 / 44100))
    y = load_audio(_write(tmp_path / "a.wav", x, 44100, subtype="FLOAT"), sample_rate=16000)
    np.testing.assert_array_equal(y, resample(x, 44100, 16000))


@pytest.mark.parametrize("rate", [0, -16000, 16000.5, True, None])
def test_resample_rejects_bad_rates(rate):
    with pytest.raises(ConfigError, match="target_sr must be a positive integer"):
        resample(_sine(440, SR, 100), SR, rate)


# --------------------------------------------------------------------------------------------
# channels
# --------------------------------------------------------------------------------------------
@pytest.fixture
def stereo_file(tmp_path) -> tuple[Path, np.ndarray]:
    x = np.stack([_sine(440, SR, 800)[0], _sine(660, SR, 800, amp=0.25)[0]])
    return _write(tmp_path / "stereo.wav", x, subtype="FLOAT"), x


def test_channel_policies_on_stereo_file(stereo_file):
    path, x = stereo_file
    np.testing.assert_array_equal(load_audio(path), x)
    np.testing.assert_array_equal(load_audio(path, channels="stereo"), x)
    np.testing.assert_allclose(load_audio(path, channels="mono"), x.mean(0, keepdims=True))
    np.testing.assert_array_equal(load_audio(path, channels=1), x[1:2])
    with pytest.raises(DataError, match=r"channel index 2 .*stereo\.wav.* 2 channel"):
        load_audio(path, channels=2)


def test_stereo_policy_duplicates_mono_and_rejects_surround():
    mono = _noise(1, 50)
    np.testing.assert_array_equal(select_channels(mono, "stereo"), np.repeat(mono, 2, axis=0))
    np.testing.assert_array_equal(select_channels(mono, "mono"), mono)
    with pytest.raises(DataError, match="has 6 channels but channels='stereo'"):
        select_channels(_noise(6, 50), "stereo", path="surround.wav")


@pytest.mark.parametrize("policy", ["left", -1, 1.0, True])
def test_bad_channel_policy_is_config_error(policy):
    with pytest.raises(ConfigError, match="channels must be 'mono', 'stereo'"):
        select_channels(_noise(2, 10), policy)


# --------------------------------------------------------------------------------------------
# reading a span
# --------------------------------------------------------------------------------------------
@pytest.fixture
def ramp_file(tmp_path) -> tuple[Path, np.ndarray]:
    x = (np.arange(SR, dtype=np.float32) / SR)[np.newaxis]  # sample values encode positions
    return _write(tmp_path / "ramp.wav", x, subtype="FLOAT"), x


def test_start_end_read_exactly_that_span(ramp_file):
    path, x = ramp_file
    np.testing.assert_array_equal(load_audio(path, start=0.25, end=0.5), x[:, 4000:8000])
    np.testing.assert_array_equal(load_audio(path, start=0.75), x[:, 12000:])
    np.testing.assert_array_equal(load_audio(path, end=0.1), x[:, :1600])
    # Past the end reads to the end, like slicing.
    np.testing.assert_array_equal(load_audio(path, start=0.9, end=5.0), x[:, 14400:])


def test_bad_spans(ramp_file):
    path, _ = ramp_file
    with pytest.raises(ConfigError, match=r"start must be .*>= 0, got -1"):
        load_audio(path, start=-1.0)
    with pytest.raises(ConfigError, match=r"end must be greater than start.*start=0.5 s, end=0.5"):
        load_audio(path, start=0.5, end=0.5)
    with pytest.raises(DataError, match=r"start=2.0 s is at or past the end of '.*ramp\.wav'"):
        load_audio(path, start=2.0)
    with pytest.raises(ConfigError, match="sample_rate must be a positive integer .*, got 0"):
        load_audio(path, sample_rate=0)


# --------------------------------------------------------------------------------------------
# fix_length
# --------------------------------------------------------------------------------------------
def test_fix_length_centre_crops_and_pads_equally():
    x = np.arange(1, 11, dtype=np.float32)[np.newaxis]
    np.testing.assert_array_equal(fix_length(x, 4), [[4, 5, 6, 7]])
    np.testing.assert_array_equal(fix_length(x, 10), x)
    padded = fix_length(x[:, :3], 8)
    np.testing.assert_array_equal(padded, [[0, 0, 1, 2, 3, 0, 0, 0]])  # odd: extra at the end
    np.testing.assert_array_equal(fix_length(x[:, :4], 8), [[0, 0, 1, 2, 3, 4, 0, 0]])
    with pytest.raises(ConfigError, match="n_samples must be a positive integer, got 0"):
        fix_length(x, 0)


# --------------------------------------------------------------------------------------------
# segmentation
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("seconds", "hop", "starts"),
    [
        (2.6, 0.5, [0.0, 0.5, 1.0, 1.5, 2.0]),  # partial at 2.0 s has 0.6 s of audio: kept
        (2.4, 1.0, [0.0, 1.0]),  # partial at 2.0 s has 0.4 s: dropped
        (2.5, 1.0, [0.0, 1.0, 2.0]),  # exactly half: kept
        (1.0, 0.5, [0.0]),  # exactly one window
        (0.3, 0.5, [0.0]),  # shorter than a window: one padded window
    ],
)
def test_segment_starts(seconds, hop, starts):
    n = round(seconds * 100)
    x = np.ones((2, n), dtype=np.float32)
    seg = segment(x, 100, length=1.0, hop=hop)
    np.testing.assert_allclose(seg.starts, starts)
    assert seg.windows.shape == (len(starts), 2, 100)
    assert seg.n_dropped == 0
    # Every sample of a window is real audio (1) up to the end of the recording, then zero.
    for start, window in zip(seg.starts, seg.windows, strict=True):
        real = min(100, n - round(start * 100))
        assert (window[:, :real] == 1).all() and (window[:, real:] == 0).all()


def test_segment_windows_hold_the_right_samples():
    x = np.arange(250, dtype=np.float32)[np.newaxis]
    seg = segment(x, 100, length=1.0, hop=0.75)
    np.testing.assert_array_equal(seg.windows[1, 0], np.arange(75, 175))
    assert seg.windows.shape[0] == 3  # 0, 75; partial at 150 has 100 samples left: whole


@pytest.mark.parametrize("seconds, hop", [(2.6, 0.5), (2.4, 1.0), (0.3, 0.25), (1.0, 0.3)])
def test_centred_segments_put_a_window_centre_on_every_hop_of_the_recording(seconds, hop):
    rate = 100
    x = np.arange(1, round(seconds * rate) + 1, dtype=np.float32)[np.newaxis]  # sample i holds i + 1
    seg = segment(x, rate, length=1.0, hop=hop, centred=True)
    centres = seg.starts + 0.5
    step = round(hop * rate)
    np.testing.assert_allclose(centres, np.arange(0, x.shape[1], step) / rate)
    for start, window in zip(seg.starts, seg.windows, strict=True):
        first = round(start * rate)  # negative for the first windows
        want = np.array([i + 1 if 0 <= i < x.shape[1] else 0 for i in range(first, first + rate)])
        np.testing.assert_array_equal(window[0], want)


@pytest.fixture
def gated_recording() -> np.ndarray:
    """Six 1-s windows at 100 Hz: loud, silent, loud, silent, 20 dB down, loud."""
    levels = [0.5, 0.0, 0.5, 0.0, 0.05, 0.5]
    rng = np.random.default_rng(3)
    parts = [level * np.sign(rng.standard_normal(100)) for level in levels]
    return np.concatenate(parts).astype(np.float32)[np.newaxis]


@pytest.mark.parametrize(("gate_db", "kept"), [(-30, [0, 2, 4, 5]), (-10, [0, 2, 5])])
def test_energy_gate_drops_exactly_the_quiet_windows(gated_recording, gate_db, kept, caplog):
    with caplog.at_level(logging.DEBUG, logger="bitsound.audio"):
        seg = segment(gated_recording, 100, length=1.0, hop=1.0, energy_gate_db=gate_db)
    np.testing.assert_allclose(seg.starts, kept)
    assert seg.n_dropped == 6 - len(kept)
    assert f"dropped {6 - len(kept)} of 6 windows" in caplog.text
    assert all(r.name == "bitsound.audio" for r in caplog.records)


def test_energy_gate_keeps_the_loudest_and_silent_recordings(gated_recording):
    only_loudest = segment(gated_recording[:, :200], 100, length=1.0, hop=1.0, energy_gate_db=0)
    np.testing.assert_allclose(only_loudest.starts, [0.0])
    silent = segment(np.zeros((1, 300), np.float32), 100, length=1.0, hop=1.0, energy_gate_db=-30)
    assert len(silent.windows) == 3 and silent.n_dropped == 0
    with pytest.raises(ConfigError, match="energy_gate_db .* must be <= 0 dB, got 6"):
        segment(gated_recording, 100, length=1.0, hop=1.0, energy_gate_db=6)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"length": 0.0, "hop": 1.0}, "length must be a positive number of seconds, got 0.0"),
    ({"length": 1.0, "hop": -1.0}, "hop must be a positive number of seconds, got -1.0"),
    ({"length": 1.0, "hop": 0.001}, "hop=0.001 s is shorter than one sample at 100 Hz"),
])  # fmt: skip
def test_segment_rejects_bad_lengths(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        segment(np.ones((1, 300), np.float32), 100, **kwargs)


# --------------------------------------------------------------------------------------------
# to_model_windows
# --------------------------------------------------------------------------------------------
def test_to_model_windows_without_segments_crops_to_clip_seconds():
    cfg = AudioConfig(sample_rate=100, clip_seconds=1.0)
    x = np.arange(150, dtype=np.float32)[np.newaxis]
    out = to_model_windows(x, 100, cfg)
    assert out.windows.shape == (1, 1, 100)
    np.testing.assert_array_equal(out.windows[0, 0], np.arange(25, 125))
    np.testing.assert_allclose(out.starts, [0.25])
    short = to_model_windows(x[:, :60], 100, cfg)
    np.testing.assert_allclose(short.starts, [-0.2])  # 20 zeros padded on the left
    assert short.windows.shape == (1, 1, 100)


def test_to_model_windows_with_segments_matches_segment(gated_recording):
    seg_cfg = SegmentConfig(length=1.0, hop=0.5, energy_gate_db=-30)
    cfg = AudioConfig(sample_rate=100, segment=seg_cfg)
    out = to_model_windows(gated_recording, 100, cfg)
    ref = segment(gated_recording, 100, length=1.0, hop=0.5, energy_gate_db=-30)
    np.testing.assert_array_equal(out.windows, ref.windows)
    np.testing.assert_array_equal(out.starts, ref.starts)
    assert out.n_dropped == ref.n_dropped > 0


def test_to_model_windows_checks_rate_and_channels():
    cfg = AudioConfig(sample_rate=16000, channels="stereo")
    with pytest.raises(ConfigError, match="at 8000 Hz but the audio config asks for 16000 Hz"):
        to_model_windows(_noise(2, 800), 8000, cfg)
    with pytest.raises(ConfigError, match="has 1 channel.* channels='stereo' gives 2"):
        to_model_windows(_noise(1, 800), 16000, cfg)


# --------------------------------------------------------------------------------------------
# broken files
# --------------------------------------------------------------------------------------------
def _valid_wav_bytes(tmp_path: Path) -> bytes:
    return _write(tmp_path / "valid.wav", _noise(1, SR), subtype="PCM_16").read_bytes()


def _make_missing(tmp_path):
    return tmp_path / "missing.wav"


def _make_empty(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    return path


def _make_zero_frames(tmp_path):
    return _write(tmp_path / "zero.wav", np.zeros((1, 0), np.float32))


def _make_truncated_wav(tmp_path):
    # Cut well past the 44-byte header: libsndfile alone would return the first half silently.
    data = _valid_wav_bytes(tmp_path)
    path = tmp_path / "cut.wav"
    path.write_bytes(data[: len(data) // 2])
    return path


def _make_cut_header(tmp_path):
    path = tmp_path / "header.wav"
    path.write_bytes(_valid_wav_bytes(tmp_path)[:20])
    return path


def _make_truncated_flac(tmp_path):
    data = _write(tmp_path / "valid.flac", _noise(1, SR)).read_bytes()
    path = tmp_path / "cut.flac"
    path.write_bytes(data[: len(data) // 2])
    return path


def _make_truncated_mp3(tmp_path):
    if "MP3" not in sf.available_formats():
        pytest.skip(f"libsndfile {sf.__libsndfile_version__} cannot write MP3")
    data = _write(tmp_path / "valid.mp3", _sine(1000, SR, SR), format="MP3").read_bytes()
    path = tmp_path / "cut.mp3"
    path.write_bytes(data[: len(data) // 2])
    return path


def _make_text(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("these are field notes, not audio\n" * 20)
    return path


def _make_m4a(tmp_path):
    path = tmp_path / "clip.m4a"
    path.write_bytes(b"\x00\x00\x00\x20ftypM4A " + bytes(200))
    return path


def _make_bad_mp3(tmp_path):
    path = tmp_path / "noise.mp3"
    path.write_bytes(b"\xff\xfb\x90\x00" + bytes(300))  # one frame header, then nothing
    return path


def _make_directory(tmp_path):
    path = tmp_path / "folder.wav"
    path.mkdir()
    return path


BROKEN_FILES = [
    (_make_missing, "file does not exist"),
    (_make_empty, r"file is empty \(0 bytes\)"),
    (_make_zero_frames, r"zero length \(the file holds 0 audio frames\)"),
    (_make_truncated_wav, "truncated: its WAV header declares 16000 frames but the file holds"),
    (_make_cut_header, "truncated or corrupt"),
    (_make_text, "not an audio file"),
    (_make_m4a, "unsupported format MP4/M4A"),
    (_make_directory, "not a regular file"),
]
if "MP3" in sf.available_formats():
    BROKEN_FILES.append((_make_bad_mp3, "corrupt: libsndfile recognised no decodable audio"))


@pytest.mark.parametrize(("make", "problem"), BROKEN_FILES)
def test_broken_file_raises_audio_decode_error_naming_file_and_problem(tmp_path, make, problem):
    path = make(tmp_path)
    for read in (load_audio, audio_info):
        with pytest.raises(AudioDecodeError, match=problem) as err:
            read(path)
        assert err.value.path == str(path)
        assert f"'{path}'" in str(err.value)


# A compressed stream's header survives the cut; the stream's own structure shows it (a FLAC
# decoder cannot reach the last declared sample, the MP3 frames run out or stop mid-frame).
@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (_make_truncated_flac, "truncated: its FLAC header declares 16000 frames"),
        (_make_truncated_mp3, r"truncated: (its (Xing|Info) header declares|the file ends inside)"),
    ],
)
def test_truncated_compressed_stream_is_an_error(tmp_path, make, problem):
    path = make(tmp_path)
    for read in (audio_info, load_audio):
        with pytest.raises(AudioDecodeError, match=problem) as err:
            read(path)
        assert err.value.path == str(path)


def test_mp3_without_libsndfile_mp3_support_is_named(tmp_path, monkeypatch):
    path = tmp_path / "song.mp3"
    path.write_bytes(b"ID3\x03\x00" + bytes(100))

    def unrecognised(*args, **kwargs):
        raise sf.LibsndfileError(1, prefix="Error opening: ")  # 1: SF_ERR_UNRECOGNISED_FORMAT

    formats = {k: v for k, v in sf.available_formats().items() if k != "MP3"}
    monkeypatch.setattr(sf, "SoundFile", unrecognised)
    monkeypatch.setattr(sf, "available_formats", lambda: formats)
    with pytest.raises(AudioDecodeError, match="unsupported format MP3 .* no MP3 decoder"):
        load_audio(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_samples_are_an_error(tmp_path, bad):
    x = _noise(1, 100)
    x[0, 10] = bad
    path = _write(tmp_path / "nan.wav", x, subtype="FLOAT")
    with pytest.raises(AudioDecodeError, match=r"contains NaN or infinite samples \(1 of them\)"):
        load_audio(path)
    assert audio_info(path).frames == 100  # the header alone is fine


@pytest.mark.parametrize("n", [7998, 7999, 8000, 8001, 8002])
def test_fix_length_is_exact_one_sample_either_side(n):
    # A clip one sample short once came back unpadded (offset 0 was taken for a crop).
    x = np.ones((1, n), dtype=np.float32)
    out = fix_length(x, 8000)
    assert out.shape == (1, 8000)
    assert out.sum() == min(n, 8000)
