"""Augmentations of front-end feature batches, applied on the fly to training batches only.

They act on (batch, channels, freq, time) log-feature tensors, after the feature cache, so a
dataset is decoded once however many epochs see it augmented. Every random draw comes from the
``generator`` passed in, which keeps training reproducible and resumable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bitsound.config import AugmentConfig


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

    Masks and shifts need a time axis, so they apply to 4-D (batch, channels, freq, time)
    features only; binary images are left alone except for mixup (done by the task).
    """

    def __init__(self, cfg: AugmentConfig):
        self.cfg = cfg

    @property
    def active(self) -> bool:
        c = self.cfg
        return bool(c.time_shift or c.time_masks or c.freq_masks or c.gain_db or c.freq_warp
                    or c.time_stretch)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        c = self.cfg
        if x.dim() != 4 or not self.active:
            return x
        if c.gain_db:
            x = random_gain(x, c.gain_db, generator)
        if c.freq_warp or c.time_stretch:
            x = warp(x, freq=c.freq_warp, time=c.time_stretch, generator=generator)
        if c.time_shift:
            x = time_shift(x, c.time_shift, generator)
        if c.freq_masks:
            x = mask_axis(x, axis=2, count=c.freq_masks, max_fraction=c.freq_mask_width,
                          generator=generator)
        if c.time_masks:
            x = mask_axis(x, axis=3, count=c.time_masks, max_fraction=c.time_mask_width,
                          generator=generator)
        return x
