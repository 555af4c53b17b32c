"""Training tasks: objects that turn a batch into a loss inside the one loop.

A task knows what its batches mean and how to score them; the loop knows nothing about labels.
Distillation and quantization-aware training become new task classes, not new loops.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bitsound.errors import ConfigError


class ClassificationTask:
    """Classification with optional label smoothing and one pair mixer.

    Parameters
    ----------
    label_smoothing : float
        Weight of the uniform distribution mixed into the targets (Szegedy et al. 2016).
    mixup_alpha : float
        Beta(alpha, alpha) parameter of mixup (Zhang et al. 2018); 0 disables it.
    mixup_per_example : bool
        Draw one lambda per example (seed 002's code) instead of one per batch.
    mixer : callable, optional
        Another pair mixer, ``mixer(x, y, generator) -> (x, lam, partner)`` (see
        :mod:`bitsound.audio.wave_mix`: between-class learning, CutMix); exclusive with mixup.
    loss : {"cross_entropy", "kl_divergence"}
        ``kl_divergence`` is KL(target || softmax(logits)) averaged over the batch, the loss
        ACDNet trains its between-class targets with; it differs from the cross-entropy by the
        targets' entropy, so the gradients are the same.
    """

    def __init__(self, *, label_smoothing: float = 0.0, mixup_alpha: float = 0.0,
                 mixer=None, loss: str = "cross_entropy", mixup_per_example: bool = False):
        if mixer is not None and mixup_alpha > 0:
            raise ConfigError("mixup_alpha and another pair mixer both mix examples; choose one")
        if loss not in ("cross_entropy", "kl_divergence"):
            raise ConfigError(f"loss must be 'cross_entropy' or 'kl_divergence', got {loss!r}")
        self.label_smoothing = label_smoothing
        self.mixup_alpha = mixup_alpha
        self.mixup_per_example = bool(mixup_per_example)
        self.mixer = mixer
        self.loss = loss

    def training_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                      generator: torch.Generator) -> torch.Tensor:
        """Loss of one training batch. x : [shape=(batch, ...)], y : [shape=(batch,)] int."""
        x, lam, perm = self.mix(x, generator, y=y)
        return self.loss_on(model(x), y, x=x, lam=lam, perm=perm)

    def mix(self, x: torch.Tensor, generator: torch.Generator, *, y: torch.Tensor | None = None):
        """Mix a batch: (mixed x, lambda, partner indices); lambda is 1 and partners None
        without mixing. Lambda is a float, or a tensor [shape=(batch,)] of one per example."""
        if self.mixer is not None:
            if y is None:
                raise ConfigError("this task's mixer pairs examples by label: pass y")
            return self.mixer(x, y, generator)
        if self.mixup_alpha <= 0:
            return x, 1.0, None
        # torch's Beta sampler ignores generators; seed numpy's from ours instead so runs
        # stay reproducible and resumable.
        seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
        rng = np.random.default_rng(seed)
        perm = torch.randperm(x.shape[0], generator=generator).to(x.device)
        if self.mixup_per_example:
            lam = torch.from_numpy(rng.beta(self.mixup_alpha, self.mixup_alpha, x.shape[0])).to(x)
            weight = lam.view(-1, *([1] * (x.dim() - 1)))
            return weight * x + (1 - weight) * x[perm], lam, perm
        lam = float(rng.beta(self.mixup_alpha, self.mixup_alpha))
        return lam * x + (1 - lam) * x[perm], lam, perm

    def loss_on(self, logits: torch.Tensor, y: torch.Tensor, *, x, lam, perm):
        """The loss against the (possibly mixed) targets."""
        if self.loss == "cross_entropy" and not torch.is_tensor(lam):
            if perm is None:
                return self._ce(logits, y)
            return lam * self._ce(logits, y) + (1 - lam) * self._ce(logits, y[perm])
        target = self.targets(y, n_classes=logits.shape[-1], lam=lam, perm=perm)
        log_p = F.log_softmax(logits, dim=-1)
        cross = -(target * log_p).sum(dim=-1)
        if self.loss == "kl_divergence":
            cross = cross + torch.special.xlogy(target, target).sum(dim=-1)
        return cross.mean()

    def targets(self, y: torch.Tensor, *, n_classes: int, lam, perm) -> torch.Tensor:
        """Target distributions [shape=(batch, n_classes)]: lam of y, 1 - lam of y[perm],
        then label smoothing."""
        target = F.one_hot(y, n_classes).to(torch.float32)
        if perm is not None:
            weight = lam.view(-1, 1) if torch.is_tensor(lam) else lam
            target = weight * target + (1 - weight) * F.one_hot(y[perm], n_classes).float()
        if self.label_smoothing:
            target = (1 - self.label_smoothing) * target + self.label_smoothing / n_classes
        return target

    def _ce(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)

    @torch.no_grad()
    def predict(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities [shape=(batch, n_classes)]."""
        return torch.softmax(model(x), dim=-1)


class DistillationTask(ClassificationTask):
    """Knowledge distillation (Hinton et al. 2015) from a frozen teacher on the same features.

    loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))
           + (1 - alpha) * cross-entropy(student, labels)

    The teacher sees exactly the (augmented, mixed) batch the student sees. Used to train
    binary networks from their float twins (seed 003 distils its pruned/quantized models too).

    Parameters
    ----------
    teacher : nn.Module
        Maps the same features to logits over the same labels; kept in eval mode.
    temperature : float
        Softening temperature T.
    alpha : float in [0, 1]
        Weight of the distillation term.
    """

    def __init__(self, teacher: nn.Module, *, temperature: float = 4.0, alpha: float = 0.5,
                 label_smoothing: float = 0.0, mixup_alpha: float = 0.0, mixer=None,
                 loss: str = "cross_entropy", mixup_per_example: bool = False):
        super().__init__(label_smoothing=label_smoothing, mixup_alpha=mixup_alpha, mixer=mixer,
                         loss=loss, mixup_per_example=mixup_per_example)
        self.teacher = teacher.eval()
        for param in self.teacher.parameters():
            param.requires_grad_(False)
        self.temperature = temperature
        self.alpha = alpha

    def loss_on(self, logits, y, *, x, lam, perm):
        hard = super().loss_on(logits, y, x=x, lam=lam, perm=perm)
        self.teacher.to(x.device)
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        t = self.temperature
        soft = F.kl_div(F.log_softmax(logits / t, dim=-1), F.log_softmax(teacher_logits / t, dim=-1),
                        reduction="batchmean", log_target=True) * t * t
        return self.alpha * soft + (1 - self.alpha) * hard
