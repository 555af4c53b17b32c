"""Augmentations of raw waveform batches (``frontend.kind: raw``), for training only.

Every function takes ``x : Tensor [shape=(batch, channels, samples)]`` and a
``torch.Generator`` that all random draws come from (reproducible, resumable training), and
returns a new tensor of the same shape except :func:`crop`, which returns the model input
length. They run on ``x``'s device.

- :func:`crop` - one window per example from a longer stored clip, after zero padding of both
  ends and optionally trimming the clip to its non-zero span (EnvNet / ACDNet, Tokozume et al.
  2017, 2018; Mohaimenuzzaman et al. 2021). ``starts="random"`` trains, ``"center"`` tests.
- :func:`random_gain` - a level change of up to +-``gain_db`` (ACDNet: 6 dB).
- :func:`temporal_mask` - seed 004 section 2.1: keep one window, zero the rest.
- :class:`FirFilterBank` - seed 004 section 2.2: one of eight FIR filters per example.
- :func:`add_noise` - seed 004 section 2.3: white noise at 6-32 dB SNR.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from bitsound.audio.io import SILENCE_LEVEL
from bitsound.errors import ConfigError

#: Seed 004's filters: (kind, cut-off Hz). Low-pass and high-pass at 300, 1000 and 2000 Hz,
#: band-pass 1200-3400 Hz and 340-3400 Hz.
SEED004_FILTERS: tuple[tuple[str, float | tuple[float, float]], ...] = (
    ("lowpass", 300.0), ("lowpass", 1000.0), ("lowpass", 2000.0),
    ("highpass", 300.0), ("highpass", 1000.0), ("highpass", 2000.0),
    ("bandpass", (1200.0, 3400.0)), ("bandpass", (340.0, 3400.0)),
)


def _check_wave(x: torch.Tensor, what: str) -> None:
    if x.dim() != 3:
        raise ConfigError(f"{what} works on waveform batches (batch, channels, samples), got a "
                          f"tensor of shape {tuple(x.shape)}: it is for frontend.kind 'raw'")


def _per_example(x: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    return values.to(x.device, x.dtype).view(-1, *([1] * (x.dim() - 1)))


def _chosen(batch: int, p: float, generator: torch.Generator) -> torch.Tensor:
    """Which examples an augmentation applied with probability ``p`` touches."""
    return torch.rand(batch, generator=generator) < p


# --------------------------------------------------------------------------------------------
# crop
# --------------------------------------------------------------------------------------------
def nonzero_span(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """First and one-past-last sample index that is not silent in any channel, per example.

    Silent means below :data:`bitsound.audio.io.SILENCE_LEVEL` (0 as a 16-bit integer, the
    criterion of ACDNet's data preparation on 16-bit files). An all-silent example spans its
    whole length.

    Returns
    -------
    first, stop : Tensor [shape=(batch,)] int64
    """
    nonzero = (x.abs() >= SILENCE_LEVEL).any(dim=1)  # (batch, samples)
    length = x.shape[-1]
    first = nonzero.to(torch.int8).argmax(dim=1)
    stop = length - nonzero.flip(1).to(torch.int8).argmax(dim=1)
    silent = ~nonzero.any(dim=1)
    first = torch.where(silent, torch.zeros_like(first), first)
    stop = torch.where(silent, torch.full_like(stop, length), stop)
    return first.long(), stop.long()


def crop(x: torch.Tensor, *, length: int, pad: int, trim_zeros: bool, starts: str,
         generator: torch.Generator | None = None) -> torch.Tensor:
    """One window of ``length`` samples per example of a batch of longer clips.

    Each clip (optionally reduced to its :func:`nonzero_span`) is thought of as padded with
    ``pad`` zeros at both ends; the window starts anywhere in that padded span
    (``starts="random"``, uniform over the whole-sample positions) or at its centre
    (``"center"``). A padded span shorter than the window is centred in it with more zeros.

    Parameters
    ----------
    x : Tensor [shape=(batch, channels, samples)]
    length : int > 0
        Window length in samples (the model input).
    pad : int >= 0
        Zeros added at each end first (ACDNet: ``length // 2``).
    trim_zeros : bool
        Crop from the span between the first and last non-zero sample only.
    starts : {"random", "center"}
    generator : torch.Generator
        Needed for ``"random"``.

    Returns
    -------
    Tensor [shape=(batch, channels, length)]
    """
    _check_wave(x, "crop")
    batch, channels, samples = x.shape
    if trim_zeros:
        first, stop = nonzero_span(x)
    else:
        first = torch.zeros(batch, dtype=torch.long)
        stop = torch.full((batch,), samples, dtype=torch.long)
    first, stop = first.cpu(), stop.cpu()
    spare = (stop - first) + 2 * pad - length  # start positions beyond the first
    if starts == "random":
        if generator is None:
            raise ConfigError("crop(starts='random') needs a generator")
        draw = torch.rand(batch, generator=generator)
        offset = torch.where(spare >= 0, (draw * (spare.clamp_min(0) + 1)).long(), spare // 2)
    elif starts == "center":
        offset = spare // 2
    else:
        raise ConfigError(f"crop starts must be 'random' or 'center', got {starts!r}")
    return _gather_windows(x, first, stop, (first - pad + offset).unsqueeze(1), length)


def _gather_windows(x: torch.Tensor, first: torch.Tensor, stop: torch.Tensor,
                    starts: torch.Tensor, length: int) -> torch.Tensor:
    """Windows ``x[b, :, s:s+length]`` for each start ``s`` of ``starts[b]`` (k starts), with
    samples outside ``[first[b], stop[b])`` set to zero: shape (batch * k, channels, length)."""
    batch, channels, samples = x.shape
    k = starts.shape[1]
    index = starts.unsqueeze(-1) + torch.arange(length).view(1, 1, length)  # (batch, k, length)
    valid = (index >= first.view(-1, 1, 1)) & (index < stop.view(-1, 1, 1))
    index = index.clamp(0, samples - 1).to(x.device)
    source = x.unsqueeze(1).expand(batch, k, channels, samples)
    gathered = torch.gather(source, 3, index.unsqueeze(2).expand(batch, k, channels, length))
    mask = valid.to(x.device).unsqueeze(2)
    return torch.where(mask, gathered, torch.zeros((), dtype=x.dtype, device=x.device)).reshape(
        batch * k, channels, length)


# --------------------------------------------------------------------------------------------
# level, masking, filters, noise
# --------------------------------------------------------------------------------------------
def random_gain(x: torch.Tensor, gain_db: float, generator: torch.Generator) -> torch.Tensor:
    """Scale each example by ``10 ** (g / 20)``, ``g`` uniform in [-gain_db, gain_db] dB."""
    _check_wave(x, "random_gain")
    db = (torch.rand(x.shape[0], generator=generator) * 2 - 1) * gain_db
    return x * _per_example(x, torch.pow(10.0, db / 20))


def temporal_mask(x: torch.Tensor, *, sample_rate: int, mean_seconds: float, std_seconds: float,
                  positions: int, p: float, generator: torch.Generator) -> torch.Tensor:
    """Seed 004's temporal masking: multiply by a rectangular window, keeping the length.

    For each chosen example (probability ``p``) the window is ``|N(mean, std)|`` seconds long
    (at least one sample, at most the clip) and starts at one of ``positions`` evenly spaced
    positions between the clip's start and ``samples - window``; outside it the signal is 0.
    """
    _check_wave(x, "temporal_mask")
    batch, _, samples = x.shape
    chosen = _chosen(batch, p, generator)
    seconds = (torch.randn(batch, generator=generator) * std_seconds + mean_seconds).abs()
    width = (seconds * sample_rate).round().long().clamp(1, samples)
    slot = torch.randint(0, positions, (batch,), generator=generator)
    room = samples - width
    start = (slot * room) // (positions - 1) if positions > 1 else room // 2
    t = torch.arange(samples).view(1, samples)
    keep = (t >= start.view(-1, 1)) & (t < (start + width).view(-1, 1))
    keep |= ~chosen.view(-1, 1)
    return x * keep.to(x.device, x.dtype).unsqueeze(1)


class FirFilterBank:
    """Seed 004's eight FIR filters (:data:`SEED004_FILTERS`), one drawn per chosen example.

    Filters are designed once with ``scipy.signal.firwin`` (Hamming window, ``numtaps`` taps)
    and applied as a 'same'-length convolution, which for these symmetric (linear-phase)
    filters is zero-phase: the output is not delayed.

    Parameters
    ----------
    sample_rate : int
        Of the waveforms; every cut-off must lie below its Nyquist frequency.
    numtaps : int
        Odd number of taps.
    p : float
        Probability that an example is filtered.

    Raises
    ------
    ConfigError
        A cut-off at or above Nyquist, or an even ``numtaps``.
    """

    def __init__(self, *, sample_rate: int, numtaps: int = 201, p: float = 0.5):
        nyquist = sample_rate / 2
        highest = max(max(np.atleast_1d(cut)) for _, cut in SEED004_FILTERS)
        if highest >= nyquist:
            raise ConfigError(f"augment.fir_filters: the 3400 Hz band edge of seed 004's filters "
                              f"needs audio.sample_rate above {2 * highest:g} Hz, got "
                              f"{sample_rate} Hz")
        if numtaps % 2 == 0:
            raise ConfigError(f"augment.fir_filters.numtaps={numtaps} must be odd")
        from scipy import signal  # lazy: only recipes with FIR filters need scipy.signal

        taps = [signal.firwin(numtaps, cut, pass_zero=kind, fs=sample_rate)
                for kind, cut in SEED004_FILTERS]
        self.taps = torch.from_numpy(np.stack(taps)).float()  # (8, numtaps)
        self.p = p

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Filter each chosen example of ``x`` [shape=(batch, channels, samples)]."""
        _check_wave(x, "fir_filters")
        batch, channels, samples = x.shape
        chosen = _chosen(batch, self.p, generator)
        which = torch.randint(0, len(self.taps), (batch,), generator=generator)
        out = x.clone()
        taps = self.taps.to(x.device, x.dtype)
        half = taps.shape[1] // 2
        for k in range(len(taps)):
            rows = torch.nonzero(chosen & (which == k)).flatten().to(x.device)
            if rows.numel() == 0:
                continue
            flat = x[rows].reshape(-1, 1, samples)
            filtered = F.conv1d(flat, taps[k].view(1, 1, -1), padding=half)
            out[rows] = filtered.reshape(len(rows), channels, samples)
        return out


def add_noise(x: torch.Tensor, *, snr_db: tuple[int, int], p: float,
              generator: torch.Generator) -> torch.Tensor:
    """White Gaussian noise at an SNR drawn in whole dB from ``snr_db`` (inclusive).

    The noise power is the example's mean power over all its channels and samples divided by
    ``10 ** (snr / 10)``; a silent example stays silent.
    """
    _check_wave(x, "noise")
    batch = x.shape[0]
    chosen = _chosen(batch, p, generator)
    snr = torch.randint(snr_db[0], snr_db[1] + 1, (batch,), generator=generator).double()
    noise = torch.randn(x.shape, generator=generator).to(x.device, x.dtype)
    rms = x.pow(2).mean(dim=(1, 2)).sqrt()
    scale = rms * _per_example(rms, torch.pow(10.0, -snr / 20)).view(-1)
    scale = torch.where(chosen.to(x.device), scale, torch.zeros_like(scale))
    return x + noise * scale.view(-1, 1, 1)
