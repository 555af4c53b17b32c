"""Statistics of the training data, measured once before the first epoch.

A layer that normalises by statistics of the data (seed 003's "Global FreqNorm",
:class:`bitsound.nn.freqnorm.GlobalFreqNorm`: each frequency bin by its mean and variance over
the training data) must see the training features as they are. Accumulated while training, the
statistics would describe the batches training makes instead: mixup blends pairs of clips (the
variance shrinks), SpecAugment zeroes whole bands and frames (each band's mean and variance are
pulled towards zero), and the time crop sees only part of each clip. Freezing them after the
first epoch would still describe one epoch of augmented batches, so :func:`collect_data_statistics`
makes one pass of its own: every training example once, without augmentation (with
``audio.crop`` the centre crop, the model's test-time input), the network in eval mode and no
gradients. The layers then stay fixed for the whole run and at inference.

A layer takes part by having a boolean attribute ``collecting`` (accumulate its input's
statistics in the forward pass while True; best a class attribute defaulting to False) and a
property ``has_statistics``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

import torch
from torch import nn

from bitsound.audio.augment import FeatureAugment
from bitsound.config import AugmentConfig

log = logging.getLogger("bitsound.train")


class _Collected(Exception):
    """Raised by a hook once every collecting layer has seen the batch: the rest is not needed."""


def statistics_layers(net: nn.Module) -> list[nn.Module]:
    """The layers of ``net`` that measure statistics of the data (see the module docstring)."""
    return [m for m in net.modules() if hasattr(m, "collecting") and hasattr(m, "has_statistics")]


def plain_inputs(augment: FeatureAugment | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """Training examples as the model takes them without augmentation: the centre crop of a
    stored clip when the recipe crops (``audio.crop``), else the examples themselves."""
    if augment is None or augment.audio is None or augment.audio.crop is None:
        return lambda x: x
    crop = FeatureAugment(AugmentConfig(), input_kind=augment.input_kind, audio=augment.audio)
    return lambda x: crop(x, torch.Generator().manual_seed(0))


@torch.no_grad()
def collect_data_statistics(net: nn.Module, train_x: torch.Tensor, *, batch_size: int,
                            device: torch.device | str = "cpu",
                            prepare: Callable[[torch.Tensor], torch.Tensor] | None = None) -> int:
    """One pass over ``train_x`` [shape=(n, ...)] that fills the statistics of every layer of
    ``net`` that has none yet; returns how many layers were filled (0: nothing to do).

    Layers already holding statistics (a model being fine-tuned, or started from another with
    ``train.init_from``) keep theirs: they belong to the weights trained with them.
    """
    layers = [m for m in statistics_layers(net) if not m.has_statistics]
    if not layers:
        return 0
    prepare = prepare or (lambda x: x)
    seen: set[int] = set()

    def hook(m, inputs, output):
        seen.add(id(m))
        if len(seen) == len(layers):
            raise _Collected

    hooks = [m.register_forward_hook(hook) for m in layers]
    was = net.training
    net.eval()  # batch-norm statistics and dropout untouched
    for m in layers:
        m.collecting = True
    try:
        for start in range(0, len(train_x), batch_size):
            x = prepare(train_x[start:start + batch_size].to(device, dtype=torch.float32))
            seen.clear()
            with contextlib.suppress(_Collected):  # every layer has seen the batch
                net(x)
    finally:
        for m in layers:
            if "collecting" in vars(m) and hasattr(type(m), "collecting"):
                del m.collecting  # back to the class default, nothing left on the instance
            else:
                m.collecting = False
        for h in hooks:
            h.remove()
        net.train(was)
    log.info("data statistics of %d layer(s) measured on %d training examples, without augmentation",
             len(layers), len(train_x))
    return len(layers)


__all__ = ["collect_data_statistics", "plain_inputs", "statistics_layers"]
