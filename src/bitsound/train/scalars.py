"""Per-epoch training scalars beyond the loss: sign flips of binary weights, TensorBoard.

The fraction of latent weights whose sign flipped during an epoch is what binary training is
judged by: the forward pass only sees ``sign(W)``, so an epoch in which no sign flips changed
nothing the network computes, and a rate that stays high late in training means the weights
oscillate around zero instead of settling (Helwegen et al., "Latent Weights Do Not Exist:
Rethinking Binarized Neural Network Optimization", NeurIPS 2019).

Binary layers are found by their declared precision (``weight_bits == 1``, the attribute the
complexity report reads), never by class, so any new binary layer type is tracked.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from bitsound.errors import ConfigError

log = logging.getLogger("bitsound.train")


def binary_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules that declare ``weight_bits == 1`` and own a ``weight`` tensor, with their names."""
    return [(name or type(model).__name__, m) for name, m in model.named_modules()
            if getattr(m, "weight_bits", None) == 1 and isinstance(getattr(m, "weight", None), torch.Tensor)]


class SignFlips:
    """Counts, per binary layer, the latent weights whose sign changed since :meth:`start`.

    A weight's sign is ``W >= 0`` (the convention of :func:`bitsound.nn.hard_sign`, in which
    ``sign(0) = +1``), so a weight that moves from ``+0.1`` to ``0.0`` has not flipped.

    Parameters
    ----------
    model : nn.Module
    """

    def __init__(self, model: nn.Module):
        self.layers = binary_layers(model)
        self._signs: list[torch.Tensor] = []

    def __bool__(self) -> bool:
        return bool(self.layers)

    def start(self) -> None:
        """Remember the current signs (call before an epoch)."""
        self._signs = [m.weight.detach() >= 0 for _, m in self.layers]

    def fractions(self) -> dict[str, float]:
        """Fraction of each layer's weights that flipped since :meth:`start`, plus ``"all"``."""
        out, flipped, total = {}, 0, 0
        for (name, m), before in zip(self.layers, self._signs, strict=True):
            changed = int(((m.weight.detach() >= 0) != before).sum())
            out[name] = changed / before.numel()
            flipped, total = flipped + changed, total + before.numel()
        out["all"] = flipped / total if total else 0.0
        return out


class TensorBoardLog:
    """Per-epoch scalars in ``out_dir/tensorboard`` (``train.tensorboard: true``).

    Tags: ``loss/train``, ``loss/val``, ``metrics/val_*`` (every validation metric), ``lr`` and,
    for models with binary layers, ``sign_flips/all`` and ``sign_flips/LAYER``.

    Raises
    ------
    ConfigError
        TensorBoard is not installed.
    """

    def __init__(self, out_dir: Path, *, first_epoch: int = 1):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # torch raises ImportError when the tensorboard package is absent
            raise ConfigError("train.tensorboard / --tensorboard needs the tensorboard package: "
                              "pip install 'bitsound[tensorboard]'") from None
        # purge_step drops events a crashed run wrote past the checkpoint it resumes from
        self.writer = SummaryWriter(log_dir=str(Path(out_dir) / "tensorboard"), purge_step=first_epoch)

    def write(self, record: dict, flips: dict[str, float] | None) -> None:
        epoch = int(record["epoch"])
        for key, value in record.items():
            skip = key in ("epoch", "seconds", "sign_flip_fraction", "val_n")
            if skip or not isinstance(value, (int, float)):
                continue
            if key == "train_loss":
                tag = "loss/train"
            elif key == "val_log_loss":
                tag = "loss/val"
            elif key == "lr":
                tag = "lr"
            else:
                tag = f"metrics/{key}"
            self.writer.add_scalar(tag, value, epoch)
        for name, value in (flips or {}).items():
            self.writer.add_scalar(f"sign_flips/{name}", value, epoch)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
