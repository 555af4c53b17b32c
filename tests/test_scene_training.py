"""Training ingredients of seeds 002 and 003 inside the one training loop.

Seed 002: the class-balancing undersampled sampler, per-example mixup of independently cropped
examples, left/right channel swapping, weight decay on convolutions only, SGD warm restarts set
per batch (checked against the formula of the authors' ``LR_WarmRestart``). Seed 003: the
linear warm-up + cosine schedule per batch, time rolling before a crop.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from bitsound.audio.augment import FeatureAugment, random_time_crop, swap_channels
from bitsound.config import AugmentConfig, ScheduleConfig, TrainConfig, parse_recipe
from bitsound.data.sampler import class_cycle_order, undersampled_epoch_size
from bitsound.errors import ConfigError
from bitsound.train import ClassificationTask, fit
from bitsound.train.loop import epoch_order, make_optimizer, seed_everything
from bitsound.train.schedules import step_factor

# ------------------------------------------------------------------------------ sampler


def test_undersampled_epoch_uses_min_count_of_each_class_one_per_class_in_turn():
    y = torch.tensor([0] * 10 + [1] * 4 + [2] * 7)
    order = class_cycle_order(y, generator=torch.Generator().manual_seed(0))
    assert len(order) == undersampled_epoch_size(y) == 3 * 4
    assert len(set(order.tolist())) == len(order)  # without replacement
    rounds = y[order].view(-1, 3)
    assert all(sorted(r.tolist()) == [0, 1, 2] for r in rounds)  # one of each class per round
    assert sorted(order[y[order] == 1].tolist()) == list(range(10, 14))  # the minority whole
    # the class order within rounds and the subsets of the larger classes change between epochs
    g = torch.Generator().manual_seed(1)
    epochs = [class_cycle_order(y, generator=g) for _ in range(6)]
    assert len({tuple(e.tolist()) for e in epochs}) == 6
    assert len({tuple(r.tolist()) for e in epochs for r in y[e].view(-1, 3)}) > 1
    used = torch.cat([e[y[e] == 0] for e in epochs])
    assert len(set(used.tolist())) > 4  # other examples of class 0 in other epochs
    assert torch.equal(epoch_order(y, balanced="undersample", generator=torch.Generator().manual_seed(0)),
                       order)


class _Recorder(ClassificationTask):
    def __init__(self):
        super().__init__()
        self.batches: list[list[int]] = []

    def training_loss(self, model, x, y, generator):
        self.batches.append(y.tolist())
        return super().training_loss(model, x, y, generator)


def test_fit_with_undersampling_builds_balanced_batches(tmp_path):
    y = torch.tensor([0] * 12 + [1] * 5 + [2] * 9)
    x = torch.randn(len(y), 1, 4, 6)
    seed_everything(0)
    task = _Recorder()
    fit(model=nn.Sequential(nn.Flatten(), nn.Linear(24, 3)), task=task, train_x=x, train_y=y,
        cfg=TrainConfig(epochs=2, batch_size=6, balanced_sampling="undersample"), out_dir=tmp_path,
        show_progress=False)
    assert len(task.batches) == 2 * math.ceil(15 / 6)  # epochs of 3 x 5 examples
    for batch in task.batches:
        counts = np.bincount(batch, minlength=3)
        assert counts.max() - counts.min() <= 1, batch
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and all(math.isfinite(r["train_loss"]) for r in log)


# ------------------------------------------------------------------------------ augmentations


def test_time_crop_takes_one_window_per_example():
    x = torch.arange(4 * 2 * 3 * 20, dtype=torch.float32).view(4, 2, 3, 20).repeat(16, 1, 1, 1)
    out = random_time_crop(x, 7, torch.Generator().manual_seed(0))
    assert out.shape == (64, 2, 3, 7)
    starts = out[:, 0, 0, 0] - x[:, 0, 0, 0]
    assert ((starts >= 0) & (starts <= 13)).all() and len(set(starts.tolist())) > 3  # independent
    for i, s in enumerate(starts.long().tolist()):
        assert torch.equal(out[i], x[i, :, :, s:s + 7])  # the same window on every band and channel
    with pytest.raises(ConfigError, match="time_crop=30"):
        random_time_crop(x, 30, torch.Generator())


def test_channel_swap_flips_about_half_the_examples():
    x = torch.randn(400, 2, 3, 5)
    out = swap_channels(x, torch.Generator().manual_seed(0))
    same = (out == x).flatten(1).all(1)
    flipped = (out == x.flip(1)).flatten(1).all(1)
    assert (same | flipped).all() and 150 < int(flipped.sum()) < 250
    with pytest.raises(ConfigError, match="swaps two channels"):
        swap_channels(torch.randn(2, 1, 3, 5), torch.Generator())


def test_roll_happens_on_the_whole_clip_before_the_crop():
    x = torch.arange(30, dtype=torch.float32).view(1, 1, 1, 30).repeat(50, 1, 2, 1)
    aug = FeatureAugment(AugmentConfig(time_shift=0.5, time_crop=10), input_kind="logmel")
    out = aug(x, torch.Generator().manual_seed(0))
    assert out.shape == (50, 1, 2, 10)
    # a window of the rolled clip: consecutive values modulo 30, sometimes across the wrap
    steps = (out[:, 0, 0, 1:] - out[:, 0, 0, :-1]) % 30
    assert (steps == 1).all()
    assert (out[:, 0, 0, 1:] < out[:, 0, 0, :-1]).any()


def test_per_example_mixup_mixes_each_pair_with_its_own_lambda():
    task = ClassificationTask(mixup_alpha=0.4, mixup_per_example=True)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 2, 3, 4)
    y = torch.randint(0, 3, (64,))
    mixed, lam, perm = task.mix(x, g, y=y)
    assert lam.shape == (64,) and len(set(lam.tolist())) == 64 and ((lam >= 0) & (lam <= 1)).all()
    want = lam.view(-1, 1, 1, 1) * x + (1 - lam.view(-1, 1, 1, 1)) * x[perm]
    assert torch.allclose(mixed, want)
    logits = torch.randn(64, 3)
    one_hot = nn.functional.one_hot
    target = lam.view(-1, 1) * one_hot(y, 3) + (1 - lam.view(-1, 1)) * one_hot(y[perm], 3)
    manual = -(target * torch.log_softmax(logits, -1)).sum(-1).mean()
    assert torch.allclose(task.loss_on(logits, y, x=mixed, lam=lam, perm=perm), manual)


def test_recipe_refuses_swaps_without_two_channels_and_lonely_mixup_options():
    base = {"name": "r", "model": {"name": "cnn2d"}, "audio": {"channels": "mono"}}
    with pytest.raises(ConfigError, match="channel_swap.*stereo"):
        parse_recipe({**base, "augment": {"channel_swap": True}})
    with pytest.raises(ConfigError, match="mixup_per_example needs"):
        parse_recipe({**base, "augment": {"mixup_per_example": True}})
    with pytest.raises(ConfigError, match="time_crop"):
        parse_recipe({**base, "frontend": {"kind": "raw"}, "augment": {"time_crop": 10}})
    with pytest.raises(ConfigError, match="per_step"):
        parse_recipe({**base, "train": {"schedule": {"name": "step", "per_step": True}}})


# ------------------------------------------------------------------------------ optimiser and schedule


def test_weight_decay_on_convolutions_only():
    net = nn.Sequential(nn.BatchNorm2d(2), nn.Conv2d(2, 4, 3, bias=True), nn.BatchNorm2d(4),
                        nn.Flatten(), nn.Linear(4, 3))
    opt = make_optimizer(net, TrainConfig.model_validate(
        {"optimizer": {"name": "sgd", "lr": 0.1, "weight_decay": 1e-3, "weight_decay_on": "conv"}}))
    decayed = [p for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]]
    assert len(decayed) == 1 and decayed[0] is net[1].weight
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(net.parameters()))
    every = make_optimizer(net, TrainConfig.model_validate({"optimizer": {"name": "sgd",
                                                                          "weight_decay": 1e-3}}))
    assert len(every.param_groups) == 1 and every.param_groups[0]["weight_decay"] == 1e-3


def _authors_warm_restart(epoch: int, batch: int, nbatch: int, *, starts, lengths, lr=0.025, low=2.5e-6):
    """McDonnell-Lab's LR_WarmRestart.on_batch_begin (epochs counted from 0 here)."""
    start = max(s for s in starts if s <= epoch)
    pts = epoch - start + batch / (nbatch - 1.0)
    return low + 0.5 * (lr - low) * (1.0 + math.cos(pts / lengths[starts.index(start)] * math.pi))


def test_sgdr_per_batch_follows_the_authors_schedule():
    cfg = ScheduleConfig(name="sgdr", restarts=[10, 30, 70, 150], min_lr=2.5e-6, per_step=True)
    starts, lengths = [0, 10, 30, 70, 150], [10, 20, 40, 80, 160]
    for epoch in (0, 5, 9, 10, 29, 30, 149, 150, 309):
        for batch in (0, 7, 13):
            ours = 0.025 * step_factor(cfg, epochs=310, min_factor=1e-4, epoch=epoch, step=batch, steps=14)
            ref = _authors_warm_restart(epoch, batch, 14, starts=starts, lengths=lengths)
            assert math.isclose(ours, ref, rel_tol=1e-9, abs_tol=1e-15), (epoch, batch)
    # each cycle begins at the maximum and its last batch reaches the minimum
    assert step_factor(cfg, epochs=310, min_factor=1e-4, epoch=10, step=0, steps=14) == 1.0
    assert math.isclose(step_factor(cfg, epochs=310, min_factor=1e-4, epoch=29, step=13, steps=14), 1e-4)


def test_cosine_per_batch_warms_up_linearly_from_zero():
    cfg = ScheduleConfig(name="cosine", warmup_epochs=5, per_step=True)
    f = [step_factor(cfg, epochs=100, min_factor=0.0, epoch=e, step=s, steps=4)
         for e in range(5) for s in range(4)]
    assert f[0] == 0.0 and np.allclose(np.diff(f), 1 / 20)
    assert step_factor(cfg, epochs=100, min_factor=0.0, epoch=5, step=0, steps=4) == 1.0
    assert math.isclose(step_factor(cfg, epochs=100, min_factor=0.0, epoch=52, step=2, steps=4), 0.5)


def test_the_loop_sets_the_rate_before_every_batch(tmp_path):
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    cfg = TrainConfig.model_validate({"epochs": 2, "batch_size": 2,
                                      "optimizer": {"name": "sgd", "lr": 0.1, "weight_decay": 0},
                                      "schedule": {"name": "sgdr", "restarts": [1], "min_lr": 0.001,
                                                   "per_step": True}})
    seen = []  # the rate each optimizer step of fit() uses, read as the step begins
    handle = register_optimizer_step_pre_hook(lambda opt, a, kw: seen.append(opt.param_groups[0]["lr"]))
    try:
        seed_everything(0)
        fit(model=nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), task=ClassificationTask(),
            train_x=torch.randn(10, 1, 4), train_y=torch.arange(10) % 2, cfg=cfg, out_dir=tmp_path,
            show_progress=False)
    finally:
        handle.remove()
    assert len(seen) == 2 * 5  # two epochs of five batches
    # a warm restart at each epoch: 0.1 on its first batch, down to min_lr on its last
    assert seen[0] == seen[5] == 0.1 and math.isclose(seen[4], 0.001) and math.isclose(seen[9], 0.001)
    assert all(a > b for a, b in zip(seen[:4], seen[1:5], strict=True))
