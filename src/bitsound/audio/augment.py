"""Augmentations of training batches, applied on the fly after the feature cache.

A dataset is decoded once however many epochs see it augmented. Every random draw comes from
the ``generator`` passed in, which keeps training reproducible and resumable.

Each augmentation works on some input kinds only (:data:`SUPPORTED`): ``logmel`` features
(batch, channels, freq, time), ``binary_image`` features (the same shape, values in {0, 1})
and ``waveform`` batches (batch, channels, samples) of ``frontend.kind: raw``. A recipe that
asks for one on another kind is refused when it loads (:func:`check_supported`), and
:class:`FeatureAugment` refuses a batch of the wrong kind: nothing is silently skipped.
Waveform augmentations live in :mod:`bitsound.audio.wave_augment`, the pair mixers (mixup,
CutMix, between-class learning) in the training task (:mod:`bitsound.audio.wave_mix`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bitsound.audio import wave_augment
from bitsound.config import AudioConfig, AugmentConfig
from bitsound.errors import ConfigError

WAVE, LOGMEL, IMAGE = "waveform", "logmel", "binary_image"

#: The input kinds each ``augment`` key works on.
SUPPORTED: dict[str, tuple[str, ...]] = {
    "time_shift": (WAVE, LOGMEL, IMAGE),  # a circular roll keeps binary values binary
    "freq_warp": (LOGMEL,),
    "time_stretch": (LOGMEL,),
    "time_masks": (LOGMEL,),
    "freq_masks": (LOGMEL,),
    "gain_db": (WAVE, LOGMEL),
    "mixup_alpha": (WAVE, LOGMEL, IMAGE),
    "mixup_per_example": (WAVE, LOGMEL, IMAGE),
    "time_crop": (LOGMEL, IMAGE),
    "channel_swap": (WAVE, LOGMEL, IMAGE),
    "random_crop": (WAVE,),
    "temporal_mask": (WAVE,),
    "fir_filters": (WAVE,),
    "noise": (WAVE,),
    "cutmix": (WAVE,),
    "between_class": (WAVE,),
}
_HINTS = {
    (WAVE, "time_masks"): "augment.temporal_mask masks waveforms",
    (WAVE, "freq_masks"): "augment.fir_filters removes frequency bands of waveforms",
    (LOGMEL, "between_class"): "augment.mixup_alpha mixes features",
    (IMAGE, "between_class"): "augment.mixup_alpha mixes features",
}


def active_keys(cfg: AugmentConfig) -> list[str]:
    """The ``augment`` keys that are switched on (not at their neutral default)."""
    neutral = AugmentConfig()
    return [key for key in SUPPORTED if getattr(cfg, key) != getattr(neutral, key)]


def check_supported(cfg: AugmentConfig, *, input_kind: str) -> None:
    """Refuse augmentations that do not work on ``input_kind``.

    Raises
    ------
    ConfigError
        Naming every such key, the kinds it works on and, where there is one, what to use.
    """
    bad = [key for key in active_keys(cfg) if input_kind not in SUPPORTED[key]]
    if not bad:
        return
    lines = []
    for key in bad:
        hint = _HINTS.get((input_kind, key))
        lines.append(f"  augment.{key} works on {' / '.join(SUPPORTED[key])} input only"
                     + (f"; {hint}" if hint else ""))
    raise ConfigError(f"the front end gives {input_kind} input, which these augmentations do not "
                      "support:\n" + "\n".join(lines) + "\nremove them or change the front end")


def time_shift(x: torch.Tensor, max_fraction: float, generator: torch.Generator) -> torch.Tensor:
    """Roll each example circularly along time by up to ``max_fraction`` of its frames."""
    frames = x.shape[-1]
    limit = int(max_fraction * frames)
    if limit == 0:
        return x
    shifts = torch.randint(-limit, limit + 1, (x.shape[0],), generator=generator)
    index = (torch.arange(frames).unsqueeze(0) - shifts.unsqueeze(1)) % frames
    index = index.to(x.device).view(x.shape[0], *([1] * (x.dim() - 2)), frames)
    return torch.gather(x, -1, index.expand_as(x))


def random_time_crop(x: torch.Tensor, frames: int, generator: torch.Generator) -> torch.Tensor:
    """A window of ``frames`` frames at a random start, drawn for each example on its own.

    x : Tensor [shape=(batch, channels, freq, time)] -> Tensor [shape=(batch, channels, freq, frames)]
    (seed 002: 469 -> 400 frames; each example of a later mixup pair is cropped independently).
    """
    total = x.shape[-1]
    if frames > total:
        raise ConfigError(f"augment.time_crop={frames} frames is longer than the features' {total} "
                          f"frames; lower it or lengthen audio.clip_seconds")
    starts = torch.randint(0, total - frames + 1, (x.shape[0],), generator=generator)
    index = (starts.unsqueeze(1) + torch.arange(frames).unsqueeze(0)).to(x.device)
    index = index.view(x.shape[0], *([1] * (x.dim() - 2)), frames)
    return torch.gather(x, -1, index.expand(*x.shape[:-1], frames))


def swap_channels(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Swap the two channels of each example with probability 1/2 (seed 002's left/right swap).

    x : Tensor [shape=(batch, 2, ...)] -> Tensor of the same shape.
    """
    if x.shape[1] != 2:
        raise ConfigError(f"augment.channel_swap swaps two channels, the batch has {x.shape[1]}; set "
                          f"audio.channels: stereo")
    swap = (torch.rand(x.shape[0], generator=generator) < 0.5).to(x.device)
    return torch.where(swap.view(-1, *([1] * (x.dim() - 1))), x.flip(1), x)


def warp(x: torch.Tensor, *, freq: float, time: float,
         generator: torch.Generator) -> torch.Tensor:
    """Stretch each example by a random factor along frequency and time.

    A frequency stretch of a (log-)mel image approximates vocal tract length perturbation
    (Jaitly & Hinton 2013), which helps generalise to unseen speakers; a time stretch mimics
    speaking rate. Factors are drawn uniformly from ``[1 - freq, 1 + freq]`` and
    ``[1 - time, 1 + time]``; the image is resampled bilinearly about its low-frequency edge and
    its temporal centre, with edge values repeated where the stretch uncovers the border.
    """
    batch = x.shape[0]
    scale_f = 1 + (torch.rand(batch, generator=generator) * 2 - 1) * freq
    scale_t = 1 + (torch.rand(batch, generator=generator) * 2 - 1) * time
    theta = torch.zeros(batch, 2, 3)
    theta[:, 0, 0] = 1 / scale_t  # grid x runs along time (last axis)
    theta[:, 1, 1] = 1 / scale_f  # grid y runs along frequency
    theta[:, 1, 2] = 1 / scale_f - 1  # keep the lowest band fixed: y = -1 maps to -1
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def mask_axis(x: torch.Tensor, *, axis: int, count: int, max_fraction: float,
              generator: torch.Generator) -> torch.Tensor:
    """SpecAugment masking (Park et al. 2019): set ``count`` random bands of ``axis`` to the
    example's mean, each up to ``max_fraction`` of the axis wide."""
    size = x.shape[axis]
    max_width = max(1, int(max_fraction * size))
    batch = x.shape[0]
    positions = torch.arange(size).view(1, size)
    keep = torch.ones(batch, size, dtype=torch.bool)
    for _ in range(count):
        width = torch.randint(0, max_width + 1, (batch, 1), generator=generator)
        start = (torch.rand(batch, 1, generator=generator) * (size - width + 1)).long()
        keep &= ~((positions >= start) & (positions < start + width))
    shape = [batch] + [1] * (x.dim() - 1)
    shape[axis] = size
    keep = keep.view(shape).to(x.device)
    fill = x.mean(dim=tuple(range(1, x.dim())), keepdim=True)
    return torch.where(keep, x, fill)


def random_gain(x: torch.Tensor, gain_db: float, generator: torch.Generator) -> torch.Tensor:
    """Add a random level offset of up to +-gain_db, expressed in natural-log power units."""
    offsets_db = (torch.rand(x.shape[0], generator=generator) * 2 - 1) * gain_db
    offsets = (offsets_db * torch.log(torch.tensor(10.0)) / 10).to(x.device)
    return x + offsets.view(-1, *([1] * (x.dim() - 1)))


class FeatureAugment:
    """Applies the augmentations of an :class:`~bitsound.config.AugmentConfig` to a batch.

    Parameters
    ----------
    cfg : AugmentConfig
    input_kind : {"waveform", "logmel", "binary_image"}, optional
        What the batches are (:func:`bitsound.config.input_kind` of the front end). Without it
        a 3-D batch counts as waveforms and a 4-D batch as log-mel features.
    audio : AudioConfig, optional
        Needed for waveforms: the sample rate (filters, masks) and ``crop`` (stored clips are
        cut to the model input here, at random with ``cfg.random_crop``, else centred).

    Raises
    ------
    ConfigError
        An augmentation the input kind does not support, or a waveform augmentation without
        the audio config it needs.

    Notes
    -----
    Order on waveforms: crop, gain, temporal mask, FIR filter, noise, time shift, channel swap
    (seed 004 filters after masking and adds noise last). On features: channel swap, gain,
    warp, time shift, time crop, SpecAugment masks (their widths are fractions of the cropped
    window). The pair mixers run after these, in the task, so
    each example of a pair was cropped and swapped on its own (seed 002).
    """

    def __init__(self, cfg: AugmentConfig, *, input_kind: str | None = None,
                 audio: AudioConfig | None = None):
        self.cfg = cfg
        self.input_kind = input_kind
        self.audio = audio
        if input_kind is not None:
            check_supported(cfg, input_kind=input_kind)
        wave_keys = [k for k in active_keys(cfg) if SUPPORTED[k] == (WAVE,)
                     and k not in ("cutmix", "between_class")]
        if wave_keys and audio is None:
            raise ConfigError(f"augment.{wave_keys[0]} needs the audio config (sample rate, "
                              "crop): build FeatureAugment(cfg, input_kind=..., audio=...)")
        self.filters = None
        if cfg.fir_filters is not None:
            self.filters = wave_augment.FirFilterBank(
                sample_rate=audio.sample_rate, numtaps=cfg.fir_filters.numtaps,
                p=cfg.fir_filters.p)

    @property
    def active(self) -> bool:
        c = self.cfg
        return bool(c.time_shift or c.time_masks or c.freq_masks or c.gain_db or c.freq_warp
                    or c.time_stretch or self._crops or c.temporal_mask or c.fir_filters
                    or c.noise or c.time_crop or c.channel_swap)

    @property
    def _crops(self) -> bool:
        return self.audio is not None and self.audio.crop is not None

    def _kind_of(self, x: torch.Tensor) -> str:
        expected = {WAVE: 3, LOGMEL: 4, IMAGE: 4}
        if self.input_kind is None:
            if x.dim() not in (3, 4):
                raise ConfigError(f"augmentations take waveform (batch, channels, samples) or "
                                  f"feature (batch, channels, freq, time) batches, got shape "
                                  f"{tuple(x.shape)}")
            kind = WAVE if x.dim() == 3 else LOGMEL
            check_supported(self.cfg, input_kind=kind)
            return kind
        if x.dim() != expected[self.input_kind]:
            raise ConfigError(f"augmentations were set up for {self.input_kind} batches of "
                              f"{expected[self.input_kind]} dimensions, got shape "
                              f"{tuple(x.shape)}")
        return self.input_kind

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        kind = self._kind_of(x)
        if not self.active:
            return x
        if kind == WAVE:
            return self._waveform(x, generator)
        c = self.cfg
        if c.channel_swap:
            x = swap_channels(x, generator)
        if c.gain_db:
            x = random_gain(x, c.gain_db, generator)
        if c.freq_warp or c.time_stretch:
            x = warp(x, freq=c.freq_warp, time=c.time_stretch, generator=generator)
        if c.time_shift:  # rolls the whole clip, before a window of it is cropped
            x = time_shift(x, c.time_shift, generator)
        if c.time_crop:
            x = random_time_crop(x, c.time_crop, generator)
        if c.freq_masks:
            x = mask_axis(x, axis=2, count=c.freq_masks, max_fraction=c.freq_mask_width,
                          generator=generator)
        if c.time_masks:
            x = mask_axis(x, axis=3, count=c.time_masks, max_fraction=c.time_mask_width,
                          generator=generator)
        return x

    def _waveform(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        c, audio = self.cfg, self.audio
        if self._crops:
            from bitsound.audio.io import crop_geometry

            length, pad, _ = crop_geometry(audio)
            x = wave_augment.crop(x, length=length, pad=pad, trim_zeros=audio.crop.trim_zeros,
                                  starts="random" if c.random_crop else "center",
                                  generator=generator)
        if c.gain_db:
            x = wave_augment.random_gain(x, c.gain_db, generator)
        if c.temporal_mask is not None:
            m = c.temporal_mask
            x = wave_augment.temporal_mask(x, sample_rate=audio.sample_rate,
                                           mean_seconds=m.mean_seconds, std_seconds=m.std_seconds,
                                           positions=m.positions, p=m.p, generator=generator)
        if self.filters is not None:
            x = self.filters(x, generator)
        if c.noise is not None:
            x = wave_augment.add_noise(x, snr_db=c.noise.snr_db, p=c.noise.p, generator=generator)
        if c.time_shift:
            x = time_shift(x, c.time_shift, generator)
        if c.channel_swap:
            x = swap_channels(x, generator)
        return x
