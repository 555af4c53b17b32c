"""The one training loop: every recipe and task trains through :func:`fit`.

It owns what all training shares: device placement, optimiser and schedule, shuffling and
class-balanced sampling, augmentation, validation, early stopping, atomic best/last
checkpoints, resuming after a crash, a progress bar and a JSON-lines log per epoch. What a batch
means and how it is scored belongs to the task object.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from bitsound.audio.augment import FeatureAugment
from bitsound.config import TrainConfig
from bitsound.errors import CheckpointError, ConfigError
from bitsound.train.checkpoint import load_torch, save_text, save_torch
from bitsound.train.scalars import SignFlips, TensorBoardLog
from bitsound.train.schedules import EpochScheduler

log = logging.getLogger("bitsound.train")

CHECKPOINT_DIR = "checkpoints"


@dataclass
class FitResult:
    """What :func:`fit` returns; the model is left holding the best weights."""

    best_epoch: int
    best_metric: float | None
    epochs_run: int
    history: list[dict] = field(default_factory=list)
    stopped_early: bool = False


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so CPU runs are repeatable."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """``"auto"`` is CUDA when available, else CPU; anything else must be a torch device name."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device {name!r} is not a device; use auto, cpu or cuda[:N]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device {name!r} asks for CUDA but none is available; use auto or cpu")
    return device


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    o = cfg.optimizer
    params = [p for p in model.parameters() if p.requires_grad]
    if o.name == "adam":
        return torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
    if o.name == "adamw":
        return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)
    return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay,
                           nesterov=o.nesterov)


def epoch_order(y: torch.Tensor, *, balanced: bool, generator: torch.Generator) -> torch.Tensor:
    """Example indices for one epoch: a permutation, or class-balanced draws with replacement."""
    if not balanced:
        return torch.randperm(len(y), generator=generator)
    counts = torch.bincount(y)
    weights = 1.0 / counts[y].double()
    return torch.multinomial(weights, len(y), replacement=True, generator=generator)


def schedule_monitor(cfg: TrainConfig) -> tuple[str, str]:
    """The metric a plateau schedule watches and whether larger is better.

    ``train.schedule.monitor`` (default: the early-stopping metric); its mode is
    ``schedule.monitor_mode``, else the early-stopping mode for the same metric, else ``min``
    for a loss and ``max`` otherwise.
    """
    es, sched = cfg.early_stopping, cfg.schedule
    metric = sched.monitor or es.metric
    if sched.monitor_mode is not None:
        return metric, sched.monitor_mode
    if metric == es.metric:
        return metric, es.mode
    return metric, "min" if "loss" in metric else "max"


class _Monitor:
    """Tracks the early-stopping metric: best value, best epoch, epochs without improvement."""

    def __init__(self, metric: str, mode: str):
        self.metric, self.mode = metric, mode
        self.best: float | None = None
        self.best_epoch = -1
        self.stale = 0

    def update(self, record: dict, epoch: int) -> bool:
        if not self.metric:
            return True  # no validation: the newest epoch is the one we keep
        value = record.get(self.metric)
        if value is None:
            valid = ", ".join(k for k in record if k.startswith("val_") or k == "train_loss")
            raise ConfigError(f"train.early_stopping.metric {self.metric!r} is not measured; "
                              f"valid: {valid}")
        better = self.best is None or (value > self.best if self.mode == "max" else value < self.best)
        if better:
            self.best, self.best_epoch, self.stale = float(value), epoch, 0
        else:
            self.stale += 1
        return better

    def state(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "stale": self.stale}

    def load(self, state: dict) -> None:
        self.best, self.best_epoch, self.stale = state["best"], state["best_epoch"], state["stale"]


def fit(*, model: nn.Module, task, train_x: torch.Tensor, train_y: torch.Tensor,
        cfg: TrainConfig, out_dir: Path, augment: FeatureAugment | None = None,
        validate: Callable[[nn.Module], dict] | None = None, resume: bool = False,
        fingerprint: str = "", select_best: bool = True, show_progress: bool = True) -> FitResult:
    """Train ``model`` in place and return the history; the best weights are loaded at the end.

    Parameters
    ----------
    model : nn.Module
        Maps a batch of features [shape=(batch, ...)] to logits.
    task : ClassificationTask or another task
        Provides ``training_loss(model, x, y, generator)``.
    train_x : Tensor [shape=(n, ...)]
        Training features (front end already applied).
    train_y : Tensor [shape=(n,)] of int64
    cfg : TrainConfig
    out_dir : Path
        Receives ``log.jsonl`` and ``checkpoints/{best,last}.pt``.
    augment : FeatureAugment, optional
        Applied to each training batch.
    validate : callable, optional
        ``validate(model) -> dict`` of held-out metrics (without the ``val_`` prefix), called
        after every epoch in eval mode. Without it there is no early stopping and the last
        epoch is the best.
    resume : bool
        Continue from ``checkpoints/last.pt`` if present (after a crash or interruption).
    fingerprint : str
        Identifies the experiment; resuming a checkpoint with another fingerprint is an error.

    Each epoch's record in ``log.jsonl`` holds ``epoch``, ``lr``, ``train_loss``, the
    validation metrics as ``val_*``, ``seconds`` and, for models with binary layers
    (``weight_bits == 1``), ``sign_flip_fraction``: the fraction of their latent weights whose
    sign changed during the epoch. With ``cfg.tensorboard`` the same scalars (and the flip
    fraction per binary layer) go to ``out_dir/tensorboard``.
    select_best : bool
        Keep the epoch with the best validation metric (and stop early). False keeps the last
        epoch and never stops early: cross-validation uses it so that the held-out fold only
        measures the model and never chooses it.
    """
    out_dir = Path(out_dir)
    ckpt_dir = out_dir / CHECKPOINT_DIR
    log_path = out_dir / "log.jsonl"
    device = resolve_device(cfg.device)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    model.to(device)
    optimizer = make_optimizer(model, cfg)
    es = cfg.early_stopping
    steps = math.ceil(len(train_y) / cfg.batch_size)
    watched, watched_mode = schedule_monitor(cfg)
    scheduler = EpochScheduler(optimizer, cfg.schedule, epochs=cfg.epochs, steps_per_epoch=steps,
                               mode=watched_mode)
    monitor = _Monitor(es.metric if validate and select_best else "", es.mode)
    generator = torch.Generator().manual_seed(cfg.seed)
    history: list[dict] = []
    start_epoch = 0

    if resume and (ckpt_dir / "last.pt").is_file():
        state = load_torch(ckpt_dir / "last.pt")
        if state.get("fingerprint") != fingerprint:
            raise CheckpointError(f"cannot resume from '{ckpt_dir / 'last.pt'}': it was written by "
                                  f"another recipe or data set; use a fresh --out DIR or drop --resume")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        monitor.load(state["monitor"])
        history = [json.loads(line) for line in state["history"]]
        start_epoch = state["epoch"] + 1
        log.info("resuming from epoch %d of %d (%s)", start_epoch + 1, cfg.epochs, ckpt_dir)
    elif resume:
        log.warning("--resume: no checkpoint in %s yet, starting from scratch", ckpt_dir)
    # The log on disk is rewritten from the checkpointed history, so epochs that ran after the
    # last checkpoint before a crash do not appear twice.
    save_text("".join(json.dumps(r) + "\n" for r in history), log_path)

    n = len(train_y)
    stopped_early = False
    flips = SignFlips(model)
    board = TensorBoardLog(out_dir, first_epoch=start_epoch + 1) if cfg.tensorboard else None
    progress = Progress(TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(),
                        TextColumn("{task.completed}/{task.total} batches"),
                        TextColumn("loss {task.fields[loss]:.4f}"), TimeRemainingColumn(),
                        transient=True, disable=not show_progress)
    with progress, (contextlib.closing(board) if board else contextlib.nullcontext()):
        bar = progress.add_task("train", total=steps, epoch=0, loss=float("nan"))
        for epoch in range(start_epoch, cfg.epochs):
            started = time.perf_counter()
            progress.reset(bar, total=steps, epoch=f"{epoch + 1}/{cfg.epochs}", loss=float("nan"))
            model.train()
            flips.start()
            order = epoch_order(train_y, balanced=cfg.balanced_sampling, generator=generator)
            total_loss = 0.0
            for step in range(steps):
                idx = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
                x = train_x[idx].to(device, dtype=torch.float32)
                y = train_y[idx].to(device)
                if augment is not None:
                    x = augment(x, generator)
                loss = task.training_loss(model, x, y, generator)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"training loss became {loss.item()} at epoch "
                                             f"{epoch + 1}; lower train.optimizer.lr")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total_loss += loss.item() * len(idx)
                progress.update(bar, advance=1, loss=total_loss / min(n, (step + 1) * cfg.batch_size))

            record = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"],
                      "train_loss": total_loss / n}
            flipped = flips.fractions() if flips else None
            if flipped is not None:
                record["sign_flip_fraction"] = flipped["all"]
            if validate is not None:
                model.eval()
                with torch.no_grad():
                    record.update({f"val_{k}": v for k, v in validate(model).items()
                                   if isinstance(v, (int, float))})
            record["seconds"] = round(time.perf_counter() - started, 3)
            improved = monitor.update(record, epoch)
            if cfg.schedule.name == "plateau" and validate is not None and watched not in record:
                raise ConfigError(f"train.schedule.monitor {watched!r} is not measured; valid: "
                                  + ", ".join(k for k in record if k.startswith("val_")))
            scheduler.step(record.get(watched))
            history.append(record)
            if board is not None:
                board.write(record, flipped)
            log.info("epoch %s", " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                           for k, v in record.items()))
            if improved:
                save_torch({"model": model.state_dict(), "epoch": epoch}, ckpt_dir / "best.pt")
            save_torch({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "generator": generator.get_state(),
                        "torch_rng": torch.get_rng_state(), "monitor": monitor.state(),
                        "history": [json.dumps(r) for r in history], "epoch": epoch,
                        "fingerprint": fingerprint}, ckpt_dir / "last.pt")
            with log_path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
            if monitor.metric and es.patience is not None and monitor.stale >= es.patience:
                log.info("early stopping: %s did not improve for %d epochs", es.metric, es.patience)
                stopped_early = True
                break

    best = load_torch(ckpt_dir / "best.pt")
    model.load_state_dict(best["model"])
    model.eval()
    return FitResult(best_epoch=best["epoch"] + 1, best_metric=monitor.best,
                     epochs_run=len(history), history=history, stopped_early=stopped_early)
