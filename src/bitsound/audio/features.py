"""Front ends: ``torch.nn.Module``s that turn batches of waveforms into model input.

Every front end takes ``x : Tensor [shape=(batch, channels, samples)]``, runs on whatever device
its buffers are on (CPU or CUDA, batched, no numpy in ``forward``) and can state its output
shape without running: ``output_shape(n_channels, n_samples)``.

- :class:`LogMel` matches ``np.log(librosa.feature.melspectrogram(...) + log_offset)`` with
  ``window="hann", pad_mode="constant"`` (librosa >= 0.10 defaults) and ``norm="slaney"``.
- :class:`BinaryImage` is the thresholded 32x32 mel image of seed 000 (Ab Rahman, XNOR-Net for
  bird-sound detection): "each spectrogram [is converted] into a binary image. The images are
  then reshaped to 32x32 pixels".
- :class:`RawWaveform` passes the waveform through (seeds 001 and 004).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bitsound.config import BinaryImageConfig, LogMelConfig, RawConfig
from bitsound.errors import ConfigError, DataError

logger = logging.getLogger("bitsound.audio")

OTSU_BINS = 256  # histogram resolution of the Otsu threshold, as skimage.filters.threshold_otsu


# --------------------------------------------------------------------------------------------
# mel filterbank (numpy, at construction time only)
# --------------------------------------------------------------------------------------------
def hz_to_mel(freq: np.ndarray, *, htk: bool) -> np.ndarray:
    """Hz to mel: HTK ``2595 log10(1 + f/700)`` or Slaney (linear below 1 kHz, log above).

    Same numbers as ``librosa.hz_to_mel``.
    """
    freq = np.asarray(freq, dtype=np.float64)
    if htk:
        return 2595.0 * np.log10(1.0 + freq / 700.0)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    linear = freq / f_sp
    log = min_log_mel + np.log(np.maximum(freq, min_log_hz) / min_log_hz) / logstep
    return np.where(freq >= min_log_hz, log, linear)


def mel_to_hz(mels: np.ndarray, *, htk: bool) -> np.ndarray:
    """Inverse of :func:`hz_to_mel`."""
    mels = np.asarray(mels, dtype=np.float64)
    if htk:
        return 700.0 * (10.0 ** (mels / 2595.0) - 1.0)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    return np.where(
        mels >= min_log_mel, min_log_hz * np.exp(logstep * (mels - min_log_mel)), f_sp * mels
    )


def mel_filterbank(
    *, sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float, htk: bool,
    norm: str = "slaney",
) -> np.ndarray:
    """Triangular mel filters with Slaney area normalisation, or none.

    Same construction as ``librosa.filters.mel(norm="slaney")``: ``n_mels + 2`` edges equally
    spaced in mel, triangles between neighbouring edges, each scaled by ``2 / bandwidth`` so it
    has unit area in Hz. ``norm="none"`` keeps the triangles' peak at 1 (librosa's
    ``norm=None``, which seed 002's features use).

    Returns
    -------
    np.ndarray [shape=(n_mels, n_fft // 2 + 1), dtype=float64]
    """
    fft_freqs = np.fft.rfftfreq(n_fft, d=1.0 / sample_rate)
    edges = mel_to_hz(
        np.linspace(hz_to_mel(fmin, htk=htk), hz_to_mel(fmax, htk=htk), n_mels + 2), htk=htk
    )
    widths = np.diff(edges)
    ramps = edges[:, np.newaxis] - fft_freqs[np.newaxis, :]
    rising = -ramps[:-2] / widths[:-1, np.newaxis]
    falling = ramps[2:] / widths[1:, np.newaxis]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    if norm == "slaney":
        weights *= (2.0 / (edges[2:] - edges[:-2]))[:, np.newaxis]
    elif norm != "none":
        raise ConfigError(f"mel filter norm must be 'slaney' or 'none', got {norm!r}")
    empty = np.flatnonzero(weights.max(axis=1) == 0)
    if empty.size:
        # Not an error (librosa also only warns), but those channels will be constant.
        logger.warning(
            "mel filters %s are empty (no FFT bin falls inside them); use fewer n_mels=%d or a "
            "larger n_fft=%d",
            empty.tolist(),
            n_mels,
            n_fft,
        )
    return weights


# --------------------------------------------------------------------------------------------
# front ends
# --------------------------------------------------------------------------------------------
def _check_input(x: Tensor) -> None:
    if x.ndim != 3:
        raise DataError(
            f"a front end takes a tensor of shape (batch, channels, samples), got {tuple(x.shape)}"
        )


class LogMel(nn.Module):
    """Log-mel spectrogram, ``log(mel_power + log_offset)``.

    Periodic Hann window of ``win_length`` zero-padded to ``n_fft`` (centred), STFT with the
    signal zero-padded by ``n_fft // 2`` at both ends when ``center``, ``|X| ** power``, then a
    mel filterbank (HTK or Slaney scale, Slaney area normalisation or none: ``mel_norm``).

    Parameters
    ----------
    cfg : LogMelConfig
    sample_rate : int > 0
        Rate of the input waveforms in Hz.

    Raises
    ------
    ConfigError
        ``win_length > n_fft``, ``fmax`` above Nyquist or ``fmin >= fmax``.
    """

    def __init__(self, cfg: LogMelConfig, *, sample_rate: int):
        super().__init__()
        win_length = cfg.win_length or cfg.n_fft
        fmax = sample_rate / 2 if cfg.fmax is None else cfg.fmax
        _check_logmel_config(cfg, sample_rate=sample_rate, win_length=win_length, fmax=fmax)
        self.cfg = cfg
        self.sample_rate = sample_rate
        window = torch.hann_window(win_length, periodic=True, dtype=torch.float64)
        left = (cfg.n_fft - win_length) // 2  # librosa.util.pad_center
        window = F.pad(window, (left, cfg.n_fft - win_length - left))
        fbank = mel_filterbank(
            sample_rate=sample_rate,
            n_fft=cfg.n_fft,
            n_mels=cfg.n_mels,
            fmin=cfg.fmin,
            fmax=fmax,
            htk=cfg.mel_scale == "htk",
            norm=cfg.mel_norm,
        )
        self.register_buffer("window", window.float())
        self.register_buffer("mel_basis", torch.from_numpy(fbank).float())

    def forward(self, x: Tensor) -> Tensor:
        """Compute the log-mel spectrogram.

        Parameters
        ----------
        x : Tensor [shape=(batch, channels, samples)]
            Cast to the module's dtype (float32 unless moved).

        Returns
        -------
        Tensor [shape=(batch, channels, n_mels, frames)]
        """
        return torch.log(self.mel_power(x) + self.cfg.log_offset)

    def mel_power(self, x: Tensor) -> Tensor:
        """The mel spectrogram before the log, shape (batch, channels, n_mels, frames)."""
        _check_input(x)
        batch, channels, n_samples = x.shape
        if not self.cfg.center and n_samples < self.cfg.n_fft:
            raise DataError(
                f"with center=False the input needs at least n_fft={self.cfg.n_fft} samples, "
                f"got {n_samples}"
            )
        spec = torch.stft(
            x.reshape(batch * channels, n_samples).to(self.window.dtype),
            n_fft=self.cfg.n_fft,
            hop_length=self.cfg.hop_length,
            window=self.window,
            center=self.cfg.center,
            pad_mode="constant",
            return_complex=True,
        )
        # re^2 + im^2 is several times faster on CPU than abs() or a sum over view_as_real.
        power = spec.real.square() + spec.imag.square()
        if self.cfg.power != 2.0:
            power = power.pow(self.cfg.power / 2)
        mel = torch.matmul(self.mel_basis, power)
        return mel.reshape(batch, channels, self.cfg.n_mels, -1)

    def n_frames(self, n_samples: int) -> int:
        """STFT frames for ``n_samples`` input samples."""
        cfg = self.cfg
        padded = n_samples + 2 * (cfg.n_fft // 2) if cfg.center else n_samples
        if padded < cfg.n_fft:
            raise DataError(
                f"with center=False the input needs at least n_fft={cfg.n_fft} samples, "
                f"got {n_samples}"
            )
        return 1 + (padded - cfg.n_fft) // cfg.hop_length

    def output_shape(self, n_channels: int, n_samples: int) -> tuple[int, int, int]:
        """Per-example output shape ``(channels, n_mels, frames)``."""
        return (n_channels, self.cfg.n_mels, self.n_frames(n_samples))


def _check_logmel_config(
    cfg: LogMelConfig, *, sample_rate: int, win_length: int, fmax: float
) -> None:
    integer = isinstance(sample_rate, (int, np.integer)) and not isinstance(sample_rate, bool)
    if not integer or sample_rate <= 0:
        raise ConfigError(f"sample_rate must be a positive integer, got {sample_rate!r}")
    if win_length > cfg.n_fft:
        raise ConfigError(f"win_length={win_length} must be <= n_fft={cfg.n_fft}")
    if fmax > sample_rate / 2:
        raise ConfigError(
            f"fmax={fmax} Hz is above the Nyquist frequency {sample_rate / 2} Hz of "
            f"sample_rate={sample_rate}; lower fmax or leave it None"
        )
    if cfg.fmin >= fmax:
        raise ConfigError(f"fmin={cfg.fmin} Hz must be below fmax={fmax} Hz")


class BinaryImage(nn.Module):
    """Log-mel image thresholded to {0, 1} and resized (seed 000).

    Order follows seed 000: each log-mel image (one per example and channel, frequency on the
    height axis with low frequencies first, time on the width axis) is thresholded at its own
    resolution, then resized to ``(height, width)``. The resize is bilinear interpolation
    (``torch.nn.functional.interpolate``, ``antialias=True`` so that shrinking averages every
    pixel a target pixel covers rather than sampling two of them) of the binary image, followed
    by ``>= 0.5``: a target pixel is on when the weighted majority of the pixels it covers is on.
    Bilinear rather than nearest, so that no row or column of the spectrogram is skipped.

    Denoising (``cfg.denoise``), before the threshold: ``"band_median"`` subtracts each mel
    band's median over the image's frames, so that a steady background (a recording's own
    noise floor) sits at 0 and only what rises above it can turn a pixel on; with
    ``threshold="fixed"`` and ``threshold_value=log(3)`` a pixel is on when its power is more
    than 3x its band's median, the median-clipping rule of bird-detection front ends.

    Thresholds (``cfg.threshold``), per image:

    - ``"fixed"``: ``logmel > cfg.threshold_value``;
    - ``"mean"``: ``logmel > mean(logmel)``;
    - ``"otsu"``: ``logmel > t`` with ``t`` Otsu's threshold [1]_ on a histogram of
      :data:`OTSU_BINS` bins between the image's minimum and maximum (the bin centre that
      maximises the between-class variance, as ``skimage.filters.threshold_otsu``).

    Parameters
    ----------
    cfg : BinaryImageConfig
    sample_rate : int > 0

    References
    ----------
    .. [1] N. Otsu, "A threshold selection method from gray-level histograms", IEEE Trans.
       Systems, Man, and Cybernetics 9(1), 1979.
    """

    def __init__(self, cfg: BinaryImageConfig, *, sample_rate: int):
        super().__init__()
        self.cfg = cfg
        self.logmel = LogMel(cfg, sample_rate=sample_rate)

    def forward(self, x: Tensor) -> Tensor:
        """Compute the binary image.

        Parameters
        ----------
        x : Tensor [shape=(batch, channels, samples)]

        Returns
        -------
        Tensor [shape=(batch, channels, height, width)]
            Values in {0., 1.}.
        """
        image = self.logmel(x)
        if self.cfg.denoise == "band_median":
            image = image - image.median(dim=-1, keepdim=True).values
        binary = (image > self.threshold(image)).to(image.dtype)
        return resize_binary(binary, height=self.cfg.height, width=self.cfg.width)

    def threshold(self, image: Tensor) -> Tensor:
        """Per-image threshold (batch, channels, 1, 1) of log-mel images (batch, channels, H, W)."""
        kind = self.cfg.threshold
        if kind == "fixed":
            return torch.full_like(image[..., :1, :1], self.cfg.threshold_value)
        if kind == "mean":
            return image.mean(dim=(-2, -1), keepdim=True)
        if kind == "otsu":
            flat = image.reshape(-1, image.shape[-2] * image.shape[-1])
            return otsu_threshold(flat).reshape(*image.shape[:-2], 1, 1)
        raise ConfigError(f"threshold must be 'fixed', 'mean' or 'otsu', got {kind!r}")

    def output_shape(self, n_channels: int, n_samples: int) -> tuple[int, int, int]:
        """Per-example output shape ``(channels, height, width)``."""
        self.logmel.n_frames(n_samples)  # raises if the input is too short for one frame
        return (n_channels, self.cfg.height, self.cfg.width)


def resize_binary(binary: Tensor, *, height: int, width: int) -> Tensor:
    """Resize {0, 1} images (..., H, W) to (..., height, width): antialiased bilinear, >= 0.5."""
    lead = binary.shape[:-2]
    flat = binary.reshape(-1, 1, *binary.shape[-2:])
    resized = F.interpolate(
        flat, size=(height, width), mode="bilinear", align_corners=False, antialias=True
    )
    return (resized >= 0.5).to(binary.dtype).reshape(*lead, height, width)


def otsu_threshold(values: Tensor, *, n_bins: int = OTSU_BINS) -> Tensor:
    """Otsu's threshold of each row, batched.

    Parameters
    ----------
    values : Tensor [shape=(n, pixels)]
    n_bins : int
        Histogram bins between each row's minimum and maximum.

    Returns
    -------
    Tensor [shape=(n,)]
        The bin centre maximising the between-class variance (foreground: ``values > t``).
        A constant row gets its value, so it has no foreground.
    """
    lo = values.amin(dim=1, keepdim=True)
    span = values.amax(dim=1, keepdim=True) - lo
    width = torch.where(span > 0, span / n_bins, torch.ones_like(span))
    index = ((values - lo) / width).floor().long().clamp_(0, n_bins - 1)
    hist = torch.zeros(values.shape[0], n_bins, dtype=values.dtype, device=values.device)
    hist.scatter_add_(1, index, torch.ones_like(values))
    centres = lo + (torch.arange(n_bins, device=values.device, dtype=values.dtype) + 0.5) * (
        span / n_bins
    )
    # Class weights and means for a split after bin k (k = 0 .. n_bins-2).
    w_low = hist.cumsum(1)[:, :-1]
    w_high = hist.sum(1, keepdim=True) - w_low
    moment = (hist * centres).cumsum(1)
    mean_low = moment[:, :-1] / w_low.clamp_min(1)
    mean_high = (moment[:, -1:] - moment[:, :-1]) / w_high.clamp_min(1)
    between = w_low * w_high * (mean_low - mean_high).square()
    best = between.argmax(dim=1, keepdim=True)
    return centres.gather(1, best).squeeze(1)


class RawWaveform(nn.Module):
    """The waveform itself (seeds 001, 004)."""

    def forward(self, x: Tensor) -> Tensor:
        """Return the input.

        Parameters
        ----------
        x : Tensor [shape=(batch, channels, samples)]

        Returns
        -------
        Tensor [shape=(batch, channels, samples)]
        """
        _check_input(x)
        return x

    def output_shape(self, n_channels: int, n_samples: int) -> tuple[int, int]:
        """Per-example output shape ``(channels, samples)``."""
        return (n_channels, n_samples)


def build_frontend(
    cfg: LogMelConfig | BinaryImageConfig | RawConfig, *, sample_rate: int
) -> nn.Module:
    """The front end a config describes.

    Parameters
    ----------
    cfg : LogMelConfig, BinaryImageConfig or RawConfig
    sample_rate : int > 0
        Rate of the waveforms it will receive.

    Returns
    -------
    LogMel, BinaryImage or RawWaveform
    """
    # BinaryImageConfig subclasses LogMelConfig, so dispatch on ``kind``, not on the type.
    kind = getattr(cfg, "kind", None)
    if kind == "binary_image":
        return BinaryImage(cfg, sample_rate=sample_rate)
    if kind == "logmel":
        return LogMel(cfg, sample_rate=sample_rate)
    if kind == "raw":
        return RawWaveform()
    raise ConfigError(
        f"unknown front end {kind!r} (from {type(cfg).__name__}); "
        "valid kinds: 'logmel', 'binary_image', 'raw'"
    )
