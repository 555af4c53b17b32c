"""Learning-rate schedules stepped once per epoch (see :class:`bitsound.config.ScheduleConfig`)."""

from __future__ import annotations

import math

import torch

from bitsound.config import ScheduleConfig


def cosine_factor(epoch: int, *, epochs: int, warmup: int, min_factor: float) -> float:
    """LR multiplier at ``epoch``: linear warm-up over ``warmup`` epochs, then cosine decay."""
    if epoch < warmup:
        return (epoch + 1) / (warmup + 1)
    span = max(1, epochs - warmup)
    progress = min(1.0, (epoch - warmup) / span)
    return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * progress))


def sgdr_factor(epoch: int, *, epochs: int, restarts: list[int], min_factor: float) -> float:
    """Cosine annealing restarted at each epoch listed in ``restarts`` (SGDR)."""
    starts = [0] + sorted(r for r in restarts if 0 < r < epochs)
    ends = starts[1:] + [epochs]
    for start, end in zip(starts, ends, strict=True):
        if start <= epoch < end:
            progress = (epoch - start) / max(1, end - start)
            return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * progress))
    return min_factor


def step_factor(cfg: ScheduleConfig, *, epochs: int, min_factor: float, epoch: int, step: int,
                steps: int) -> float:
    """LR multiplier before batch ``step`` of ``steps`` in ``epoch`` (``schedule.per_step``).

    ``sgdr``, as the authors' code of seed 002 (``LR_WarmRestart``): within a cycle of ``L``
    epochs starting at ``s``, the position is ``t = epoch - s + step / (steps - 1)``, so the
    first batch of a cycle has the maximum rate and its last batch ``min_lr`` exactly; the factor
    is ``min + (1 - min) (1 + cos(pi t / L)) / 2``. ``cosine``: ``t = epoch + step / steps``,
    a linear warm-up from 0 over ``warmup_epochs`` (seed 003), then the cosine decay to
    ``min_lr`` over the remaining epochs.
    """
    if cfg.name == "sgdr":
        starts = [0] + sorted(r for r in cfg.restarts if 0 < r < epochs)
        start = max(s for s in starts if s <= epoch)
        end = next((s for s in starts if s > epoch), epochs)
        t = epoch - start + (step / (steps - 1) if steps > 1 else 1.0)
        return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * t / (end - start)))
    t = epoch + step / steps
    if t < cfg.warmup_epochs:
        return t / cfg.warmup_epochs
    span = max(1e-9, epochs - cfg.warmup_epochs)
    progress = min(1.0, (t - cfg.warmup_epochs) / span)
    return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * progress))


class EpochScheduler:
    """Wraps a torch scheduler so the loop calls ``step(metric)`` once per epoch for all kinds,
    and ``step_batch`` before every batch (which sets the rate only with ``per_step``)."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, *, epochs: int,
                 steps_per_epoch: int = 1, mode: str = "max"):
        self.cfg = cfg
        self.optimizer, self.epochs = optimizer, epochs
        base_lr = optimizer.param_groups[0]["lr"]
        min_factor = cfg.min_lr / base_lr if base_lr > 0 else 0.0
        self.base_lrs = [group.get("initial_lr", group["lr"]) for group in optimizer.param_groups]
        self.min_factor = min_factor
        lr_lambda = optim_lambda(cfg, epochs=epochs, min_factor=min_factor,
                                 steps_per_epoch=steps_per_epoch)
        if cfg.name == "plateau":
            self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode=mode, factor=cfg.gamma, patience=cfg.patience, min_lr=cfg.min_lr)
        else:
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)

    def step(self, metric: float | None) -> None:
        if self.cfg.name == "plateau":
            if metric is not None:  # without validation data there is nothing to watch
                self.scheduler.step(metric)
        else:
            self.scheduler.step()

    def step_batch(self, epoch: int, step: int, steps: int) -> None:
        """Before batch ``step`` of ``steps`` of ``epoch`` (0-based): with ``per_step``, set the rate."""
        if not self.cfg.per_step:
            return
        factor = step_factor(self.cfg, epochs=self.epochs, min_factor=self.min_factor, epoch=epoch,
                             step=step, steps=steps)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * factor

    def state_dict(self) -> dict:
        # LambdaLR stores None for plain functions: they are rebuilt from the config.
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.scheduler.load_state_dict(state)


def optim_lambda(cfg: ScheduleConfig, *, epochs: int, min_factor: float, steps_per_epoch: int = 1):
    if cfg.name == "inverse_time":
        return lambda epoch: 1.0 / (1.0 + cfg.decay * epoch * steps_per_epoch)
    if cfg.name == "constant" or cfg.name == "plateau":
        return lambda epoch: 1.0
    if cfg.name == "step":
        return lambda epoch: cfg.gamma ** (epoch // cfg.step_size)
    if cfg.name == "cosine":
        return lambda epoch: cosine_factor(epoch, epochs=epochs, warmup=cfg.warmup_epochs,
                                           min_factor=min_factor)
    return lambda epoch: sgdr_factor(epoch, epochs=epochs, restarts=cfg.restarts,
                                     min_factor=min_factor)
