"""Mixing pairs of waveforms of a training batch: between-class learning and CutMix.

A mixer is called by the training task as ``mixer(x, y, generator)`` and returns
``(mixed x, lam, partner)``: example ``i`` is trained towards ``lam[i]`` of its own label and
``1 - lam[i]`` of ``y[partner[i]]`` (``lam`` a float for the whole batch or a tensor of one
value per example; ``partner`` None when nothing was mixed). Mixup uses the same contract.

References
----------
Y. Tokozume, Y. Ushiku, T. Harada, "Learning from between-class examples for deep sound
recognition", ICLR 2018 (BC learning; used by ACDNet, seed 001).
S. Yun et al., "CutMix: regularization strategy to train strong classifiers with localizable
features", ICCV 2019 (on waveforms in seed 004, section 2.4).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from bitsound.errors import ConfigError

MIN_DB = -80.0  # floor of a frame's gain, as in the BC paper's code


def _check_wave(x: torch.Tensor, what: str) -> None:
    if x.dim() != 3:
        raise ConfigError(f"{what} mixes waveform batches (batch, channels, samples), got shape "
                          f"{tuple(x.shape)}: use augment.mixup_alpha for front-end features")


def gain_fft_size(sample_rate: int) -> int:
    """Frame length of the gain measure: the power of two nearest 0.1 s (2048 at 16 and 20 kHz,
    4096 at 44.1 kHz, the sizes of the BC paper)."""
    return 2 ** round(math.log2(0.1 * sample_rate))


def a_weighting_db(freqs: np.ndarray) -> np.ndarray:
    """The A-weighting curve (IEC 61672-1) in dB at ``freqs`` Hz, floored at :data:`MIN_DB`."""
    f2 = np.maximum(np.asarray(freqs, dtype=np.float64), 1e-3) ** 2
    ra = (12194.0 ** 2 * f2 ** 2) / ((f2 + 20.6 ** 2) * np.sqrt((f2 + 107.7 ** 2)
                                                                 * (f2 + 737.9 ** 2))
                                     * (f2 + 12194.0 ** 2))
    return np.maximum(20 * np.log10(ra) + 2.0, MIN_DB)


def clip_gain_db(x: torch.Tensor, *, sample_rate: int, mode: str = "a_weighting") -> torch.Tensor:
    """The loudest frame's level of each example, in dB (the BC paper's ``G``).

    Frames of :func:`gain_fft_size` samples, hop half of that; ``"a_weighting"``: the sum of the
    Hann-windowed power spectrum weighted by the A curve; ``"rms"``: the mean square. Channels
    are averaged; a clip shorter than one frame is zero-padded to one.

    Parameters
    ----------
    x : Tensor [shape=(batch, channels, samples)]

    Returns
    -------
    Tensor [shape=(batch,)] float64
    """
    _check_wave(x, "between-class gain")
    n_fft = gain_fft_size(sample_rate)
    wave = x.double()
    if wave.shape[-1] < n_fft:
        wave = torch.nn.functional.pad(wave, (0, n_fft - wave.shape[-1]))
    frames = wave.unfold(-1, n_fft, n_fft // 2)  # (batch, channels, n_frames, n_fft)
    if mode == "rms":
        power = frames.pow(2).mean(-1)
    elif mode == "a_weighting":
        window = torch.hann_window(n_fft, periodic=True, dtype=torch.float64, device=x.device)
        spectrum = torch.fft.rfft(frames * window, dim=-1)
        weight = torch.from_numpy(10 ** (a_weighting_db(
            np.fft.rfftfreq(n_fft, 1 / sample_rate)) / 10)).to(x.device)
        power = (spectrum.real.square() + spectrum.imag.square()) @ weight
    else:
        raise ConfigError(f"between-class gain mode must be 'a_weighting' or 'rms', got {mode!r}")
    power = power.mean(dim=1).clamp_min(10 ** (MIN_DB / 10))  # channels averaged
    return 10 * torch.log10(power).amax(dim=-1)


def bc_mix(x1: torch.Tensor, x2: torch.Tensor, r: torch.Tensor, g1: torch.Tensor,
           g2: torch.Tensor) -> torch.Tensor:
    """The BC paper's mixture of ``x1`` and ``x2`` at ratio ``r``, corrected for their gains.

    ``p = 1 / (1 + 10 ** ((g1 - g2) / 20) * (1 - r) / r)`` and
    ``mix = (p x1 + (1 - p) x2) / sqrt(p ** 2 + (1 - p) ** 2)``: ``p`` makes the two sound in
    the ratio ``r : 1 - r`` whatever their levels, and the denominator keeps the power.

    Parameters
    ----------
    x1, x2 : Tensor [shape=(batch, channels, samples)]
    r : Tensor [shape=(batch,)] in [0, 1]
    g1, g2 : Tensor [shape=(batch,)]
        Gains in dB (:func:`clip_gain_db`).
    """
    r = r.double()
    # r / (r + k (1 - r)) is the paper's p without its division by r (r may be 0).
    p = r / (r + torch.pow(10.0, (g1 - g2) / 20) * (1 - r))
    norm = torch.sqrt(p ** 2 + (1 - p) ** 2)
    p, q = (p / norm).to(x1.dtype), ((1 - p) / norm).to(x1.dtype)
    return p.view(-1, 1, 1) * x1 + q.view(-1, 1, 1) * x2


def partners_of_other_class(y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """For each example, a uniformly drawn example of the batch with a different label.

    An example whose batch holds no other label is its own partner (it stays unmixed).

    Returns
    -------
    Tensor [shape=(batch,)] int64
    """
    labels = y.cpu()
    scores = torch.rand(len(labels), len(labels), generator=generator)
    same = labels.view(-1, 1) == labels.view(1, -1)
    scores = scores.masked_fill(same, -1.0)
    partner = scores.argmax(dim=1)
    alone = same.all(dim=1)
    return torch.where(alone, torch.arange(len(labels)), partner)


class BetweenClassMixer:
    """Between-class learning: every example mixed with one of another class.

    ``r ~ U(0, 1)`` per example, the mixture :func:`bc_mix` with gains :func:`clip_gain_db`,
    the target ``r`` of the example's label and ``1 - r`` of its partner's.

    Parameters
    ----------
    sample_rate : int
        Of the waveforms (sets the gain's frame length).
    gain : {"a_weighting", "rms"}
    """

    def __init__(self, *, sample_rate: int, gain: str = "a_weighting"):
        self.sample_rate = sample_rate
        self.gain = gain

    def __call__(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator):
        _check_wave(x, "augment.between_class")
        partner = partners_of_other_class(y, generator)
        r = torch.rand(len(y), generator=generator).double()
        r = torch.where(partner == torch.arange(len(y)), torch.ones_like(r), r)
        partner = partner.to(x.device)
        gains = clip_gain_db(x, sample_rate=self.sample_rate, mode=self.gain)
        mixed = bc_mix(x, x[partner], r.to(x.device), gains, gains[partner])
        return mixed, r.to(x.device, torch.float32), partner


class CutMixer:
    """Waveform CutMix: a segment of a randomly paired example replaces the same segment.

    With probability ``p`` per batch: ``lam ~ Beta(alpha, alpha)``, a segment of
    ``int(samples * (1 - lam))`` samples centred at a uniformly drawn sample (clipped at the
    ends, as the seed-004 authors' code) comes from the paired example, and the target weight of
    the own label is the share of samples kept.
    """

    def __init__(self, *, alpha: float = 1.0, p: float = 0.8):
        self.alpha = alpha
        self.p = p

    def __call__(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator):
        _check_wave(x, "augment.cutmix")
        if float(torch.rand(1, generator=generator)) >= self.p:
            return x, 1.0, None
        # torch's Beta sampler takes no generator: seed numpy's from ours (reproducible).
        seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
        lam = float(np.random.default_rng(seed).beta(self.alpha, self.alpha))
        samples = x.shape[-1]
        cut = int(samples * (1 - lam))
        centre = int(torch.randint(samples, (1,), generator=generator))
        lo, hi = max(centre - cut // 2, 0), min(centre + cut // 2, samples)
        partner = torch.randperm(x.shape[0], generator=generator).to(x.device)
        mixed = x.clone()
        mixed[:, :, lo:hi] = x[partner, :, lo:hi]
        return mixed, 1.0 - (hi - lo) / samples, partner
