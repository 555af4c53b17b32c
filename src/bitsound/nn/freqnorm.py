"""Frequency-wise normalisation layers of seed 003 (BC-ResNet-ASC) and its Table 3 ablations.

All layers take feature maps ``x : Tensor [shape=(batch, channels, freq, time)]`` and return the
same shape.

- :class:`ResNorm` -- Residual Normalization, seed 003 eqs. (1)-(3):
  ``ResNorm(x) = lam * x + FreqIN(x)`` with ``FreqIN`` the instance normalisation of each
  (example, frequency) over channels and time (mean and biased variance over ``C x T``).
  ``lam = 0`` is the "w/o shortcut" ablation (plain FreqIN). No parameters.
- :class:`SubSpectralNorm` -- batch-norm with separate statistics and affine parameters for
  each of ``sub_bands`` equal frequency bands (Chang et al. 2021), the authors' ``BatchNorm2d(C *
  S)`` on the ``(N, C * S, F / S, T)`` view. At inference it is a per-(frequency, channel)
  affine map.
- :class:`GlobalFreqNorm` -- Table 3's "Global FreqNorm" baseline: each frequency bin is
  normalised by the mean and variance of that bin over the whole training data (all examples,
  channels and frames), not of the batch: the training loop measures them in one pass over the
  training features without augmentation before the first epoch
  (:mod:`bitsound.train.datastats`), and they are used unchanged in training and inference.
- :class:`FixedPCEN` -- Table 3's "Fixed PCEN" baseline: per-channel energy normalisation
  (Wang et al. 2017) with the fixed parameters of ``librosa.pcen`` (gain 0.98, bias 2, power
  0.5, time constant 0.4 s, eps 1e-6), in place of the log compression. It takes the log-mel
  features the front end gives (``log(mel_power + offset)``), recovers the mel magnitudes
  ``E = exp(x / 2) * 2**31`` (the square root of the power, scaled to the int32 range as
  librosa's documentation asks for float audio), smooths them along time with the first-order
  IIR filter ``M[t] = (1 - b) M[t-1] + b E[t]`` (``M[0] = E[0]``, the filter's steady state for
  the first frame; ``b`` from the time constant and the frame rate as in librosa) and returns
  ``(E / (eps + M)^gain + bias)^power - bias^power``.

References
----------
- B. Kim, S. Yang, J. Kim, S. Chang, "Domain generalization on efficient acoustic scene
  classification using residual normalization", DCASE 2021 (seed 003), section 2.2, Table 3.
- S. Chang, H. Park, J. Cho, H. Park, S. Yun, K. Hwang, "Subspectral normalization for neural
  audio data processing", ICASSP 2021.
- Y. Wang, P. Getreuer, T. Hughes, R. F. Lyon, R. A. Saurous, "Trainable frontend for robust
  and far-field keyword spotting", ICASSP 2017 (PCEN).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from bitsound.errors import ConfigError


def _check_map(x: torch.Tensor, who: str) -> None:
    if x.dim() != 4:
        raise ConfigError(f"{who} takes feature maps of shape (batch, channels, freq, time), "
                          f"got shape {tuple(x.shape)}")


def freq_instance_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """FreqIN (seed 003 eq. 1-2): normalise each (example, frequency) over channels and time.

    x : Tensor [shape=(batch, channels, freq, time)] -> Tensor of the same shape.
    """
    mean = x.mean(dim=(1, 3), keepdim=True)
    var = x.var(dim=(1, 3), keepdim=True, unbiased=False)
    return (x - mean) / torch.sqrt(var + eps)


class ResNorm(nn.Module):
    """Residual Normalization ``lam * x + FreqIN(x)`` (seed 003 eq. 3; see the module docstring).

    Parameters
    ----------
    lam : float >= 0
        Weight of the identity shortcut; the seed uses a fixed 0.1, and 0 is plain FreqIN.
    eps : float > 0
        Added to the variance.
    """

    def __init__(self, lam: float = 0.1, *, eps: float = 1e-5):
        super().__init__()
        if not lam >= 0:
            raise ConfigError(f"ResNorm's lambda must be >= 0 (0 is FreqIN without shortcut), got {lam}")
        if not eps > 0:
            raise ConfigError(f"ResNorm's eps must be > 0, got {eps}")
        self.lam = float(lam)
        self.eps = float(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_map(x, "ResNorm")
        normed = freq_instance_norm(x, self.eps)
        return normed if self.lam == 0 else self.lam * x + normed

    def extra_repr(self) -> str:
        return f"lam={self.lam}, eps={self.eps}"


class SubSpectralNorm(nn.Module):
    """Batch-norm per frequency sub-band (Chang et al. 2021; the module docstring).

    Parameters
    ----------
    channels : int
    sub_bands : int
        Number of equal frequency bands; the frequency axis must divide into them.
    eps, momentum : float
        As :class:`torch.nn.BatchNorm2d`.
    """

    def __init__(self, channels: int, sub_bands: int = 4, *, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        if sub_bands < 1:
            raise ConfigError(f"SubSpectralNorm needs sub_bands >= 1, got {sub_bands}")
        self.channels = channels
        self.sub_bands = sub_bands
        self.bn = nn.BatchNorm2d(channels * sub_bands, eps=eps, momentum=momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_map(x, "SubSpectralNorm")
        n, c, f, t = x.shape
        if f % self.sub_bands:
            raise ConfigError(f"SubSpectralNorm with {self.sub_bands} sub-bands needs a frequency axis "
                              f"that divides into them, got {f} bins; change the number of mel bands")
        return self.bn(x.reshape(n, c * self.sub_bands, f // self.sub_bands, t)).reshape(n, c, f, t)

    def freq_affine(self, n_freq: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The inference map as ``(scale, bias)`` [shape=(n_freq, channels)], float64."""
        bn = self.bn
        scale = 1.0 / torch.sqrt(bn.running_var.double() + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight.detach().double()
        bias = -bn.running_mean.double() * scale
        if bn.bias is not None:
            bias = bias + bn.bias.detach().double()
        # BatchNorm channel k = c * S + s holds sub-band s (bins s*F/S .. (s+1)*F/S - 1) of channel c
        band = torch.arange(n_freq) // (n_freq // self.sub_bands)
        index = torch.arange(self.channels).view(1, -1) * self.sub_bands + band.view(-1, 1)
        return scale[index], bias[index]

    def extra_repr(self) -> str:
        return f"channels={self.channels}, sub_bands={self.sub_bands}"


class GlobalFreqNorm(nn.Module):
    """Normalise each frequency bin by its mean and variance over all training data (Table 3).

    While ``collecting`` is True each batch first updates the accumulated statistics (every
    example, channel and frame of every batch seen so far count equally: a running Welford
    merge); otherwise, in training and eval mode alike, they are used as they are. Training mode
    does not update them: augmented batches (mixup, SpecAugment) are not the data, so
    :func:`bitsound.train.datastats.collect_data_statistics` fills them from the plain training
    features before the first epoch (:func:`bitsound.train.fit` does). Before any batch was
    collected the layer is the identity (mean 0, variance 1).

    Parameters
    ----------
    n_freq : int
        Number of frequency bins.
    eps : float
        Added to the variance.
    """

    #: set by :func:`~bitsound.train.datastats.collect_data_statistics` for its pass (a class
    #: default, so that networks saved before it existed rebuild with it)
    collecting: bool = False

    def __init__(self, n_freq: int, *, eps: float = 1e-5):
        super().__init__()
        self.n_freq = n_freq
        self.eps = eps
        self.register_buffer("mean", torch.zeros(n_freq))
        self.register_buffer("var", torch.ones(n_freq))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))

    @property
    def has_statistics(self) -> bool:
        return float(self.count) > 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_map(x, "GlobalFreqNorm")
        if x.shape[2] != self.n_freq:
            raise ConfigError(f"GlobalFreqNorm was built for {self.n_freq} frequency bins, got {x.shape[2]}")
        if self.collecting:
            with torch.no_grad():
                self._update(x.detach())
        view = (1, 1, self.n_freq, 1)
        return (x - self.mean.view(view)) / torch.sqrt(self.var.view(view) + self.eps)

    def _update(self, x: torch.Tensor) -> None:
        # Chan et al.'s pairwise merge of (count, mean, M2) with the batch's
        n = float(x.shape[0] * x.shape[1] * x.shape[3])
        batch_mean = x.double().mean(dim=(0, 1, 3))
        batch_m2 = x.double().var(dim=(0, 1, 3), unbiased=False) * n
        seen = float(self.count)
        total = seen + n
        delta = batch_mean - self.mean.double()
        mean = self.mean.double() + delta * (n / total)
        m2 = self.var.double() * seen + batch_m2 + delta.square() * (seen * n / total)
        self.mean.copy_(mean.to(self.mean.dtype))
        self.var.copy_((m2 / total).to(self.var.dtype))
        self.count.fill_(total)

    def extra_repr(self) -> str:
        return f"n_freq={self.n_freq}, eps={self.eps}"


class FixedPCEN(nn.Module):
    """Per-channel energy normalisation with fixed parameters (see the module docstring).

    Parameters
    ----------
    hop_seconds : float > 0
        Time between frames of the input features (the front end's hop), for the smoother.
    time_constant, gain, bias, power, eps : float
        librosa.pcen's defaults.
    """

    def __init__(self, *, hop_seconds: float, time_constant: float = 0.4, gain: float = 0.98,
                 bias: float = 2.0, power: float = 0.5, eps: float = 1e-6):
        super().__init__()
        if not hop_seconds > 0 or not time_constant > 0:
            raise ConfigError(f"FixedPCEN needs hop_seconds > 0 and time_constant > 0, got "
                              f"{hop_seconds} and {time_constant}")
        t_frames = time_constant / hop_seconds
        self.b = (math.sqrt(1 + 4 * t_frames ** 2) - 1) / (2 * t_frames ** 2)
        self.hop_seconds, self.time_constant = hop_seconds, time_constant
        self.gain, self.bias, self.power, self.eps = gain, bias, power, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_map(x, "FixedPCEN")
        energy = torch.exp(x.double() / 2) * 2.0 ** 31
        smooth = torch.empty_like(energy)
        state = energy[..., 0]
        for t in range(energy.shape[-1]):
            state = (1 - self.b) * state + self.b * energy[..., t]
            smooth[..., t] = state
        agc = energy / torch.pow(self.eps + smooth, self.gain)
        out = torch.pow(agc + self.bias, self.power) - self.bias ** self.power
        return out.to(x.dtype)

    def extra_repr(self) -> str:
        return (f"hop_seconds={self.hop_seconds}, time_constant={self.time_constant}, b={self.b:.5f}, "
                f"gain={self.gain}, bias={self.bias}, power={self.power}")


__all__ = ["FixedPCEN", "GlobalFreqNorm", "ResNorm", "SubSpectralNorm", "freq_instance_norm"]
