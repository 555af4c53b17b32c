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
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from bitsound.audio.augment import FeatureAugment
from bitsound.config import TrainConfig
from bitsound.data.sampler import balanced_weights, class_cycle_order, undersampled_epoch_size
from bitsound.errors import CheckpointError, ConfigError
from bitsound.train import distributed
from bitsound.train.checkpoint import load_torch, save_text, save_torch
from bitsound.train.datastats import collect_data_statistics, plain_inputs
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
    if o.weight_decay_on == "conv" and o.weight_decay > 0:
        # seed 002: weight decay on the convolution weights only (Keras kernel_regularizer)
        conv = {id(m.weight) for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)}
        params = [{"params": [p for p in params if id(p) in conv]},
                  {"params": [p for p in params if id(p) not in conv], "weight_decay": 0.0}]
    if o.name == "adam":
        return torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
    if o.name == "adamw":
        return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)
    return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay,
                           nesterov=o.nesterov)


def epoch_order(y: torch.Tensor, *, balanced: bool | str, generator: torch.Generator) -> torch.Tensor:
    """Example indices for one epoch: a permutation, class-balanced draws with replacement, or
    (``balanced="undersample"``) seed 002's undersampled class cycle
    (:func:`bitsound.data.sampler.class_cycle_order`)."""
    if balanced == "undersample":
        return class_cycle_order(y, generator=generator)
    if not balanced:
        return torch.randperm(len(y), generator=generator)
    return torch.multinomial(balanced_weights(y), len(y), replacement=True, generator=generator)


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
        Applied to each training batch. Layers that normalise by statistics of the data
        (:mod:`bitsound.train.datastats`) get them from one pass over ``train_x`` without it
        before the first epoch.
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
    With ``cfg.weight_average`` the moving average of the weights is what is validated, saved
    as the best checkpoint and left in ``model`` at the end (:func:`weight_average`).
    select_best : bool
        Keep the epoch with the best validation metric (and stop early). False keeps the last
        epoch and never stops early: cross-validation uses it so that the held-out fold only
        measures the model and never chooses it.

    In a process group of several ranks (:mod:`bitsound.train.distributed`) the model trains
    in DistributedDataParallel, ``cfg.batch_size`` is the global batch, and only rank 0
    validates and writes files; every rank returns the same result, but only rank 0's model is
    left holding the best weights (the others keep the last epoch's: they score nothing).
    """
    out_dir = Path(out_dir)
    ckpt_dir = out_dir / CHECKPOINT_DIR
    log_path = out_dir / "log.jsonl"
    ranks = distributed.current()
    batch_size = distributed.check_config(cfg, ranks)  # this rank's share of the global batch
    device = distributed.device_for(cfg.device, ranks)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    model.to(device)
    trained = distributed.wrap(model, device)  # the model itself in a single process
    optimizer = make_optimizer(model, cfg)
    es = cfg.early_stopping
    sampler = (distributed.make_sampler(train_y, balanced=cfg.balanced_sampling, seed=cfg.seed,
                                        info=ranks) if ranks.active else None)
    per_epoch = undersampled_epoch_size(train_y) if cfg.balanced_sampling == "undersample" else len(train_y)
    steps = math.ceil((len(sampler) if sampler else per_epoch) / batch_size)
    watched, watched_mode = schedule_monitor(cfg)
    scheduler = EpochScheduler(optimizer, cfg.schedule, epochs=cfg.epochs, steps_per_epoch=steps,
                               mode=watched_mode)
    monitor = _Monitor(es.metric if validate and select_best else "", es.mode)
    generator = torch.Generator().manual_seed(cfg.seed)
    history: list[dict] = []
    start_epoch = 0

    # Rank 0 reads the checkpoint and sends it to the others (which may not share its disk).
    state = (distributed.from_main(lambda: _resume_state(ckpt_dir / "last.pt", fingerprint),
                                   what="reading the checkpoint") if resume else None)
    if state is not None:
        history, start_epoch = _restore(state, ckpt_dir / "last.pt", model=model,
                                        optimizer=optimizer, scheduler=scheduler,
                                        generator=generator, monitor=monitor)
        if state.get("world_size", 1) != ranks.world_size:
            log.warning("resuming a run of %d process(es) with %d: the rest of it draws other "
                        "batches than the interrupted run would have", state.get("world_size", 1),
                        ranks.world_size)
        log.info("resuming from epoch %d of %d (%s)", start_epoch + 1, cfg.epochs, ckpt_dir)
    elif resume:
        log.warning("--resume: no checkpoint in %s yet, starting from scratch", ckpt_dir)
    if resume and ranks.is_main:
        _remove_partial_writes(out_dir)
    # The log on disk is rewritten from the checkpointed history, so epochs that ran after the
    # last checkpoint before a crash do not appear twice.
    if ranks.is_main:
        save_text("".join(json.dumps(r) + "\n" for r in history), log_path)
    if start_epoch == 0:  # layers normalising by the data's statistics: from the plain features
        collect_data_statistics(model, train_x, batch_size=batch_size, device=device,
                                prepare=plain_inputs(augment))
    averaged = weight_average(model, cfg.weight_average, state, ckpt_dir / "last.pt")
    kept = averaged.module if averaged is not None else model  # what is scored and saved

    stopped_early = False
    flips = SignFlips(model)
    board = (TensorBoardLog(out_dir, first_epoch=start_epoch + 1)
             if cfg.tensorboard and ranks.is_main else None)
    progress = Progress(TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(),
                        TextColumn("{task.completed}/{task.total} batches"),
                        TextColumn("loss {task.fields[loss]:.4f}"), TimeRemainingColumn(),
                        transient=True, disable=not (show_progress and ranks.is_main))
    with progress, (contextlib.closing(board) if board else contextlib.nullcontext()):
        bar = progress.add_task("train", total=steps, epoch=0, loss=float("nan"))
        for epoch in range(start_epoch, cfg.epochs):
            started = time.perf_counter()
            progress.reset(bar, total=steps, epoch=f"{epoch + 1}/{cfg.epochs}", loss=float("nan"))
            model.train()
            flips.start()
            if sampler is not None:  # this rank's share of one global order per epoch
                sampler.set_epoch(epoch)
                order = torch.tensor(list(sampler), dtype=torch.int64)
                generator = distributed.seed_epoch(cfg.seed, epoch, ranks)
            else:
                order = epoch_order(train_y, balanced=cfg.balanced_sampling, generator=generator)
            total_loss = 0.0
            for step in range(steps):
                idx = order[step * batch_size:(step + 1) * batch_size]
                x = train_x[idx].to(device, dtype=torch.float32)
                y = train_y[idx].to(device)
                if augment is not None:
                    x = augment(x, generator)
                loss = task.training_loss(trained, x, y, generator)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"training loss became {loss.item()} at epoch "
                                             f"{epoch + 1}; lower train.optimizer.lr")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                scheduler.step_batch(epoch, step, steps)  # sets the rate with schedule.per_step
                optimizer.step()
                if averaged is not None:
                    averaged.update_parameters(model)
                total_loss += loss.item() * len(idx)
                progress.update(bar, advance=1, loss=total_loss / min(len(order), (step + 1) * batch_size))

            if ranks.active:  # the mean over every example of every rank
                loss_sum, count = distributed.all_sum([total_loss, len(order)])
                train_loss = loss_sum / count
            else:
                train_loss = total_loss / len(order)
            record = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"],
                      "train_loss": train_loss}
            flipped = flips.fractions() if flips else None
            if flipped is not None:
                record["sign_flip_fraction"] = flipped["all"]
            # train.validate_every: held-out scores every N epochs and always after the last
            validating = validate is not None and ((epoch + 1) % cfg.validate_every == 0
                                                   or epoch + 1 == cfg.epochs)
            if validating and ranks.is_main:
                kept.eval()
                with torch.no_grad():
                    record.update({f"val_{k}": v for k, v in validate(kept).items()
                                   if isinstance(v, (int, float))})
            record["seconds"] = round(time.perf_counter() - started, 3)
            # every rank decides early stopping and the schedule on rank 0's record
            record = distributed.broadcast(record)
            # an epoch without scores neither improves nor counts towards early stopping
            improved = monitor.update(record, epoch) if validating or not monitor.metric else False
            if cfg.schedule.name == "plateau" and validating and watched not in record:
                raise ConfigError(f"train.schedule.monitor {watched!r} is not measured; valid: "
                                  + ", ".join(k for k in record if k.startswith("val_")))
            scheduler.step(record.get(watched))
            history.append(record)
            if board is not None:
                board.write(record, flipped)
            log.info("epoch %s", " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                           for k, v in record.items()))
            if ranks.is_main:
                if improved:
                    save_torch({"model": kept.state_dict(), "epoch": epoch}, ckpt_dir / "best.pt")
                average = {"weight_average": averaged.state_dict()} if averaged is not None else {}
                save_torch({**average, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict(), "generator": generator.get_state(),
                            "torch_rng": torch.get_rng_state(), "monitor": monitor.state(),
                            "history": [json.dumps(r) for r in history], "epoch": epoch,
                            "fingerprint": fingerprint, "world_size": ranks.world_size},
                           ckpt_dir / "last.pt")
                with log_path.open("a") as handle:
                    handle.write(json.dumps(record) + "\n")
            if monitor.metric and es.patience is not None and monitor.stale >= es.patience:
                log.info("early stopping: %s did not improve for %d epochs", es.metric, es.patience)
                stopped_early = True
                break

    def load_best() -> int:
        best = load_torch(ckpt_dir / "best.pt")
        _load_weights(model, best, ckpt_dir / "best.pt")
        return int(best["epoch"])

    # Only rank 0 scores and saves the model: the others learn the best epoch, not its weights.
    best_epoch = distributed.from_main(load_best, what="reading the best checkpoint")
    model.eval()
    return FitResult(best_epoch=best_epoch + 1, best_metric=monitor.best,
                     epochs_run=len(history), history=history, stopped_early=stopped_early)


def _first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none)."""
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def weight_average(model: nn.Module, decay: float | None, state: dict | None,
                   path: Path) -> AveragedModel | None:
    """The moving average of ``model``'s weights and buffers (``train.weight_average``), or
    None; when resuming, restored from the checkpoint ``state`` read from ``path``."""
    if decay is None:
        return None
    averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    if state is not None:
        if "weight_average" not in state:
            raise CheckpointError(f"cannot resume from '{path}': it was written without "
                                  "train.weight_average; drop the setting or use a fresh --out DIR")
        try:
            averaged.load_state_dict(state["weight_average"])
        except (TypeError, RuntimeError, AttributeError) as err:
            raise CheckpointError(f"cannot resume from '{path}': its weight average does not fit "
                                  f"this model ({_first_line(err)}); delete it to start over, or use "
                                  "a fresh --out DIR") from None
    return averaged


_RESUME_KEYS = ("model", "optimizer", "scheduler", "generator", "torch_rng", "monitor", "history",
                "epoch")


def _resume_state(path: Path, fingerprint: str) -> dict | None:
    """The checkpoint to resume from, or None when there is none yet."""
    if not path.is_file():
        return None
    state = load_torch(path)
    missing = [key for key in _RESUME_KEYS if key not in state]
    if missing:
        raise CheckpointError(f"cannot resume from '{path}': it lacks {missing}, so it is not a "
                              "checkpoint of bitsound train (or is damaged); delete it to start over, "
                              "or use a fresh --out DIR")
    if state.get("fingerprint") != fingerprint:
        raise CheckpointError(f"cannot resume from '{path}': it was written by "
                              f"another recipe or data set; use a fresh --out DIR or drop --resume")
    return state


#: The files a run writes into its output folder, whose interrupted writes ``--resume`` removes.
_OUT_FILES = ("model.pt", "metrics.json", "log.jsonl")


def _remove_partial_writes(out_dir: Path) -> None:
    """Delete the temporary files of writes that a crash interrupted: any in ``checkpoints/``,
    and those of ``model.pt``, ``metrics.json`` and ``log.jsonl`` in ``out_dir`` (the finished
    files were never touched: writes are atomic renames, :mod:`bitsound.train.checkpoint`)."""
    partials = list((out_dir / CHECKPOINT_DIR).glob(".*.tmp"))
    partials += [p for name in _OUT_FILES for p in out_dir.glob(f".{name}.*.tmp")]
    for partial in sorted(partials):
        log.info("removing '%s', a write that was interrupted", partial)
        partial.unlink(missing_ok=True)


def _load_weights(model: nn.Module, state: dict, path: Path) -> None:
    try:
        model.load_state_dict(state["model"])
    except (KeyError, TypeError, RuntimeError, AttributeError) as err:
        raise CheckpointError(f"checkpoint '{path}' does not fit this model ({_first_line(err)}); "
                              "it is damaged or from another model: delete it, or use a fresh --out "
                              "DIR") from None


def _restore(state: dict, path: Path, *, model, optimizer, scheduler, generator,
             monitor) -> tuple[list[dict], int]:
    """Load a resume checkpoint into the training objects; returns the history so far and the
    epoch to start from. A checkpoint that does not fit is an error naming the file."""
    _load_weights(model, state, path)
    try:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        monitor.load(state["monitor"])
        return [json.loads(line) for line in state["history"]], int(state["epoch"]) + 1
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as err:
        raise CheckpointError(f"cannot resume from '{path}': its training state is damaged "
                              f"({type(err).__name__}: {_first_line(err)}); delete it to start over, "
                              "or use a fresh --out DIR") from None
