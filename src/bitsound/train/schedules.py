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


class EpochScheduler:
    """Wraps a torch scheduler so the loop calls ``step(metric)`` once per epoch for all kinds."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, *, epochs: int,
                 steps_per_epoch: int = 1, mode: str = "max"):
        self.cfg = cfg
        base_lr = optimizer.param_groups[0]["lr"]
        min_factor = cfg.min_lr / base_lr if base_lr > 0 else 0.0
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
