"""Tests of bitsound.audio.features against librosa and slow numpy references."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import torch

from bitsound.audio import BinaryImage, LogMel, RawWaveform, build_frontend, otsu_threshold
from bitsound.audio.features import OTSU_BINS, mel_filterbank, resize_binary
from bitsound.config import BinaryImageConfig, LogMelConfig, RawConfig
from bitsound.errors import ConfigError, DataError

SR = 16000

# Both sides compute in float32, with different FFTs and summation orders, so each mel power
# carries a rounding error of about 1e-7 of the image's peak power (measured: <= 3.4e-7).
# MEL_POWER_ATOL_REL bounds that error relative to the peak, with a 3x margin.
MEL_POWER_ATOL_REL = 1e-6
# In the log domain the same error is tiny wherever the mel power is well above that floor,
# as for broadband noise (measured: <= 1e-6); near-empty bands of a pure tone sit at the
# rounding floor, where only the power-domain bound above is meaningful.
LOG_ATOL = 1e-4

LOGMEL_SETTINGS = [
    {},  # defaults: n_fft 512, hop 160, 40 Slaney mels, power 2
    {"mel_scale": "htk"},
    {"n_fft": 400, "win_length": 256, "hop_length": 128, "fmin": 50.0, "fmax": 7000.0},
    {"n_fft": 1024, "hop_length": 512, "n_mels": 64, "power": 1.0, "mel_scale": "htk"},
    {"n_fft": 255, "win_length": 200, "hop_length": 100, "n_mels": 20, "power": 1.5, "fmin": 300},
    {"n_fft": 512, "hop_length": 256, "center": False, "mel_scale": "htk", "fmax": 4000.0},
]


def _librosa_mel_power(x: np.ndarray, cfg: LogMelConfig, sr: int = SR) -> np.ndarray:
    return librosa.feature.melspectrogram(
        y=x,
        sr=sr,
        n_fft=cfg.n_fft,
        hop_length=cfg.hop_length,
        win_length=cfg.win_length,
        window="hann",
        center=cfg.center,
        pad_mode="constant",
        power=cfg.power,
        n_mels=cfg.n_mels,
        fmin=cfg.fmin,
        fmax=cfg.fmax,
        htk=cfg.mel_scale == "htk",
        norm="slaney",
    )


def _noise(batch: int, n: int, *, seed: int = 0) -> np.ndarray:
    return (0.3 * np.random.default_rng(seed).standard_normal((batch, n))).astype(np.float32)


def _tones(n: int) -> np.ndarray:
    t = np.arange(n) / SR
    return np.stack([0.5 * np.sin(2 * np.pi * 1000 * t), 0.9 * np.sin(2 * np.pi * 300 * t)]).astype(
        np.float32
    )


# --------------------------------------------------------------------------------------------
# LogMel vs librosa
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mel_scale", ["htk", "slaney"])
@pytest.mark.parametrize(
    ("n_fft", "n_mels", "fmin", "fmax"), [(512, 40, 0, None), (1024, 64, 20, 6000)]
)
def test_mel_filterbank_matches_librosa(mel_scale, n_fft, n_mels, fmin, fmax):
    ours = mel_filterbank(
        sample_rate=SR, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax or SR / 2,
        htk=mel_scale == "htk",
    )  # fmt: skip
    ref = librosa.filters.mel(
        sr=SR, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=mel_scale == "htk"
    )
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-9)  # librosa keeps float32


def test_empty_mel_filters_are_logged(caplog):
    # 64 HTK bands below 6 kHz are narrower than the 62.5 Hz bins of a 256-point FFT at the bottom.
    mel_filterbank(sample_rate=SR, n_fft=256, n_mels=64, fmin=20, fmax=6000, htk=True)
    assert "are empty (no FFT bin falls inside them)" in caplog.text


@pytest.mark.parametrize("settings", LOGMEL_SETTINGS, ids=str)
def test_logmel_matches_librosa_on_noise(settings):
    cfg = LogMelConfig(**settings)
    x = _noise(3, SR)
    ours = LogMel(cfg, sample_rate=SR)(torch.from_numpy(x)[:, None]).numpy()[:, 0]
    ref = np.log(_librosa_mel_power(x, cfg) + cfg.log_offset)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=0, atol=LOG_ATOL)


@pytest.mark.parametrize("settings", LOGMEL_SETTINGS, ids=str)
def test_logmel_power_matches_librosa_on_tones(settings):
    cfg = LogMelConfig(**settings)
    x = _tones(SR // 2)
    ours = LogMel(cfg, sample_rate=SR).mel_power(torch.from_numpy(x)[:, None]).numpy()[:, 0]
    ref = _librosa_mel_power(x, cfg)
    peak = ref.max(axis=(1, 2), keepdims=True)
    assert np.all(np.abs(ours - ref) <= MEL_POWER_ATOL_REL * peak)


def test_logmel_batched_equals_per_item():
    frontend = LogMel(LogMelConfig(), sample_rate=SR)
    x = torch.from_numpy(_noise(6, 4000)).reshape(3, 2, 4000)
    batched = frontend(x)
    for i in range(3):
        for c in range(2):
            single = frontend(x[i : i + 1, c : c + 1])[0, 0]
            torch.testing.assert_close(batched[i, c], single, rtol=0, atol=1e-5)


@pytest.mark.parametrize("n_samples", [1, 159, 160, 161, 511, 512, 16000])
@pytest.mark.parametrize("settings", LOGMEL_SETTINGS, ids=str)
def test_logmel_output_shape_matches_forward(settings, n_samples):
    frontend = LogMel(LogMelConfig(**settings), sample_rate=SR)
    if not frontend.cfg.center and n_samples < frontend.cfg.n_fft:
        with pytest.raises(DataError, match="center=False the input needs at least n_fft"):
            frontend.output_shape(2, n_samples)
        return
    out = frontend(torch.zeros(1, 2, n_samples))
    assert tuple(out.shape[1:]) == frontend.output_shape(2, n_samples)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"n_fft": 256, "win_length": 512}, "win_length=512 must be <= n_fft=256"),
        ({"fmax": 9000.0}, "fmax=9000.0 Hz is above the Nyquist frequency 8000.0 Hz"),
        ({"fmin": 5000.0, "fmax": 4000.0}, "fmin=5000.0 Hz must be below fmax=4000.0 Hz"),
    ],
)
def test_logmel_rejects_bad_settings(settings, message):
    with pytest.raises(ConfigError, match=message):
        LogMel(LogMelConfig(**settings), sample_rate=SR)


def test_frontends_reject_wrong_input_rank():
    for frontend in (LogMel(LogMelConfig(), sample_rate=SR), RawWaveform()):
        with pytest.raises(DataError, match=r"shape \(batch, channels, samples\), got \(16000,\)"):
            frontend(torch.zeros(SR))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_frontends_on_cuda_match_cpu():
    x = torch.from_numpy(_noise(4, SR)).reshape(2, 2, SR)
    for cfg in (LogMelConfig(), BinaryImageConfig(threshold="otsu")):
        cpu = build_frontend(cfg, sample_rate=SR)
        gpu = build_frontend(cfg, sample_rate=SR).to("cuda")
        out = gpu(x.to("cuda"))
        assert out.device.type == "cuda"
        if cfg.kind == "logmel":
            torch.testing.assert_close(out.cpu(), cpu(x), rtol=0, atol=1e-4)
        else:  # a pixel at the threshold may flip under different rounding
            assert (out.cpu() != cpu(x)).float().mean() < 0.01


# --------------------------------------------------------------------------------------------
# BinaryImage
# --------------------------------------------------------------------------------------------
def _otsu_reference(image: np.ndarray, n_bins: int = OTSU_BINS) -> float:
    """Slow, obvious Otsu: try every histogram split, keep the largest between-class variance."""
    values = image.astype(np.float64).ravel()
    if values.min() == values.max():
        return float(values.min())
    hist, edges = np.histogram(values, bins=n_bins, range=(values.min(), values.max()))
    centres = (edges[:-1] + edges[1:]) / 2
    best_split, best_variance = 0, -1.0
    for split in range(n_bins - 1):
        low, high = hist[: split + 1], hist[split + 1 :]
        if low.sum() == 0 or high.sum() == 0:
            continue
        mean_low = (low * centres[: split + 1]).sum() / low.sum()
        mean_high = (high * centres[split + 1 :]).sum() / high.sum()
        variance = low.sum() * high.sum() * (mean_low - mean_high) ** 2
        if variance > best_variance:
            best_split, best_variance = split, variance
    return float(centres[best_split])


def _test_images(n: int, *, seed: int = 1) -> np.ndarray:
    """Log-mel-like images: a noise floor with a random share of louder pixels."""
    rng = np.random.default_rng(seed)
    images = rng.normal(-8.0, 2.0, (n, 40, 101))
    loud = rng.random((n, 40, 101)) < rng.uniform(0.05, 0.6, (n, 1, 1))
    images += loud * rng.uniform(3.0, 10.0, (n, 1, 1))
    return images.astype(np.float32)


def test_otsu_threshold_matches_numpy_reference():
    images = _test_images(40)
    images[0] = 3.0  # constant image: threshold is its value, no foreground
    ours = otsu_threshold(torch.from_numpy(images.reshape(40, -1))).numpy()
    ref = np.array([_otsu_reference(image) for image in images])
    bin_width = (images.max(axis=(1, 2)) - images.min(axis=(1, 2))) / OTSU_BINS
    # Float32 vs float64 arithmetic: far below a bin, and the same foreground.
    assert np.all(np.abs(ours - ref) <= 1e-3 * np.maximum(bin_width, 1e-6))
    for image, t_ours, t_ref in zip(images, ours, ref, strict=True):
        np.testing.assert_array_equal(image > t_ours, image > t_ref)
    assert not (images[0] > ours[0]).any()


@pytest.mark.parametrize("threshold", ["fixed", "mean", "otsu"])
def test_binary_image_thresholds_before_resizing(threshold):
    cfg = BinaryImageConfig(threshold=threshold, threshold_value=-4.0)
    frontend = BinaryImage(cfg, sample_rate=SR)
    x = torch.from_numpy(_noise(4, SR) * np.linspace(0, 1, SR, dtype=np.float32)).reshape(2, 2, SR)
    out = frontend(x)
    assert out.shape == (2, 2, 32, 32) == (2, *frontend.output_shape(2, SR))
    assert set(out.unique().tolist()) <= {0.0, 1.0}
    # Reference: numpy thresholds on the full-resolution log-mel, then the documented resize.
    logmel = frontend.logmel(x).numpy()
    expected = np.empty_like(logmel)
    for i in np.ndindex(*logmel.shape[:2]):
        image = logmel[i]
        t = {"fixed": -4.0, "mean": image.mean(), "otsu": _otsu_reference(image)}[threshold]
        expected[i] = image > t
    expected = resize_binary(torch.from_numpy(expected), height=32, width=32)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    # The signal fades in, so both classes are present.
    assert 0 < out.mean() < 1


def test_band_median_denoise_drops_steady_background_keeps_events():
    """A steady tone (every frame) is background; a chirp burst in the middle is an event."""
    t = np.arange(SR, dtype=np.float32) / SR
    steady = 0.5 * np.sin(2 * np.pi * 300 * t)
    burst = np.where((t > 0.4) & (t < 0.6), 0.2 * np.sin(2 * np.pi * 3000 * t), 0).astype(np.float32)
    x = torch.from_numpy(steady + burst).reshape(1, 1, SR)
    plain = BinaryImageConfig(threshold="fixed", threshold_value=-6.0, height=40, width=101)
    denoised = plain.model_copy(update={"denoise": "band_median", "threshold_value": float(np.log(3))})
    logmel = BinaryImage(plain, sample_rate=SR).logmel
    tone_band = int(logmel(torch.from_numpy(steady).reshape(1, 1, SR))[0, 0].mean(-1).argmax())
    burst_band = int(logmel(torch.from_numpy(burst).reshape(1, 1, SR))[0, 0, :, 50].argmax())
    before = BinaryImage(plain, sample_rate=SR)(x)[0, 0]
    after = BinaryImage(denoised, sample_rate=SR)(x)[0, 0]
    # without denoising the loud tone's band is on in every frame; with it, off in all of them
    assert before[tone_band].all() and not after[tone_band].any()
    # the burst's band is on while it sounds (frames 0.45-0.55 s) and off before and after it
    assert after[burst_band, 45:55].all()
    # (the first and last frames see the signal's edges, a click in every band)
    assert not after[burst_band, 5:30].any() and not after[burst_band, 70:-5].any()


def test_resize_binary_keeps_blocks_and_majority():
    image = torch.zeros(1, 1, 40, 100)
    image[..., :20, :] = 1.0  # low half of the mel bands on
    out = resize_binary(image, height=32, width=32)
    assert (out[..., :16, :] == 1).all() and (out[..., 16:, :] == 0).all()
    up = resize_binary(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), height=4, width=4)
    expected = torch.tensor([[1.0, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]])
    torch.testing.assert_close(up, expected)
    # A single isolated pixel is outvoted when 3 x 3 pixels become one.
    speck = torch.zeros(1, 1, 96, 96)
    speck[..., 40, 40] = 1.0
    assert resize_binary(speck, height=32, width=32).sum() == 0


def test_binary_image_batched_equals_per_item():
    frontend = BinaryImage(BinaryImageConfig(), sample_rate=SR)
    x = torch.from_numpy(_noise(4, SR)).reshape(4, 1, SR)
    batched = frontend(x)
    for i in range(4):
        torch.testing.assert_close(batched[i], frontend(x[i : i + 1])[0], rtol=0, atol=0)


# --------------------------------------------------------------------------------------------
# RawWaveform and build_frontend
# --------------------------------------------------------------------------------------------
def test_raw_waveform_is_identity():
    x = torch.randn(2, 2, 300)
    frontend = RawWaveform()
    assert frontend(x) is x
    assert frontend.output_shape(2, 300) == tuple(x.shape[1:])


@pytest.mark.parametrize(
    ("cfg", "cls"),
    [(LogMelConfig(), LogMel), (BinaryImageConfig(), BinaryImage), (RawConfig(), RawWaveform)],
)
def test_build_frontend_dispatches_on_kind(cfg, cls):
    frontend = build_frontend(cfg, sample_rate=SR)
    assert type(frontend) is cls
    out = frontend(torch.zeros(2, 1, SR))
    assert tuple(out.shape[1:]) == frontend.output_shape(1, SR)


def test_build_frontend_rejects_unknown_config():
    with pytest.raises(ConfigError, match=r"unknown front end None \(from dict\)"):
        build_frontend({}, sample_rate=SR)
