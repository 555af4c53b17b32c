"""Training tasks: objects that turn a batch into a loss inside the one loop.

A task knows what its batches mean and how to score them; the loop knows nothing about labels.
Distillation and quantization-aware training become new task classes, not new loops.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class ClassificationTask:
    """Cross-entropy classification with optional label smoothing and mixup.

    Parameters
    ----------
    label_smoothing : float
        Weight of the uniform distribution mixed into the targets (Szegedy et al. 2016).
    mixup_alpha : float
        Beta(alpha, alpha) parameter of mixup (Zhang et al. 2018); 0 disables it.
    """

    def __init__(self, *, label_smoothing: float = 0.0, mixup_alpha: float = 0.0):
        self.label_smoothing = label_smoothing
        self.mixup_alpha = mixup_alpha

    def training_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                      generator: torch.Generator) -> torch.Tensor:
        """Loss of one training batch. x : [shape=(batch, ...)], y : [shape=(batch,)] int."""
        if self.mixup_alpha > 0:
            # torch's Beta sampler ignores generators; seed numpy's from ours instead so runs
            # stay reproducible and resumable.
            seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
            lam = float(np.random.default_rng(seed).beta(self.mixup_alpha, self.mixup_alpha))
            perm = torch.randperm(x.shape[0], generator=generator).to(x.device)
            logits = model(lam * x + (1 - lam) * x[perm])
            return lam * self._ce(logits, y) + (1 - lam) * self._ce(logits, y[perm])
        return self._ce(model(x), y)

    def _ce(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)

    @torch.no_grad()
    def predict(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities [shape=(batch, n_classes)]."""
        return torch.softmax(model(x), dim=-1)

