"""Distributed training (torch.distributed, DDP, gloo on CPU) with 2 processes."""

import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from bitsound.cli import _without_nproc, main
from bitsound.config import TrainConfig
from bitsound.errors import ConfigError
from bitsound.train import ClassificationTask, distributed, fit
from bitsound.train.distributed import DistInfo, DistributedBalancedSampler, make_sampler


# ------------------------------------------------------------------ samplers and helpers
def test_balanced_sampler_deals_one_global_draw_to_the_ranks():
    labels = torch.tensor([0] * 12 + [1] * 3 + [2] * 2)
    world = 3
    ranks = [DistributedBalancedSampler(labels, num_replicas=world, rank=r, seed=5) for r in range(world)]
    for sampler in ranks:
        sampler.set_epoch(2)
    lists = [list(s) for s in ranks]
    assert all(len(x) == len(ranks[0]) == 6 for x in lists)  # ceil(17 / 3)
    g = torch.Generator().manual_seed(5 + 2)
    weights = 1.0 / torch.bincount(labels)[labels].double()
    expected = torch.multinomial(weights, 18, replacement=True, generator=g).tolist()
    interleaved = [lists[i % world][i // world] for i in range(18)]
    assert interleaved == expected
    ranks[0].set_epoch(3)
    assert list(ranks[0]) != lists[0]
    ranks[0].set_epoch(2)
    assert list(ranks[0]) == lists[0]


def test_balanced_sampler_balances_classes():
    labels = torch.tensor([0] * 900 + [1] * 100)
    drawn = torch.tensor([i for r in range(2) for i in DistributedBalancedSampler(
        labels, num_replicas=2, rank=r, seed=0)])
    share = (labels[drawn] == 1).float().mean().item()
    assert 0.45 < share < 0.55


def test_local_batches_of_the_ranks_make_up_one_global_batch():
    """Rank r's step s batch, over all ranks, is the s-th slice of one epoch permutation."""
    labels = torch.zeros(20, dtype=torch.int64)
    world, global_batch = 2, 8
    local = distributed.local_batch_size(global_batch, DistInfo(world_size=world))
    orders = []
    for rank in range(world):
        sampler = make_sampler(labels, balanced=False, seed=3, info=DistInfo(rank=rank, world_size=world))
        sampler.set_epoch(1)
        orders.append(list(sampler))
    g = torch.Generator().manual_seed(3 + 1)
    permutation = torch.randperm(20, generator=g).tolist()
    for step in range(3):
        union = sorted(i for order in orders for i in order[step * local:(step + 1) * local])
        assert union == sorted(permutation[step * global_batch:(step + 1) * global_batch])


def test_global_batch_must_divide_among_ranks():
    with pytest.raises(ConfigError, match=r"train.batch_size 10 .* all 3 processes .*batch_size=9"):
        distributed.local_batch_size(10, DistInfo(world_size=3))


def test_environment_is_read_and_checked(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    assert distributed.env_info() == DistInfo()
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert distributed.env_info() == DistInfo(rank=3, world_size=4, local_rank=1, local_world_size=2)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ConfigError, match="inconsistent distributed environment"):
        distributed.env_info()
    monkeypatch.setenv("RANK", "two")
    with pytest.raises(ConfigError, match="RANK='two' is not a whole number"):
        distributed.env_info()
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ConfigError, match="inside torchrun"):
        distributed.launch(["train"], nproc=2)


def test_single_process_helpers_do_nothing():
    assert not distributed.current().active
    assert distributed.broadcast({"a": 1}) == {"a": 1}
    assert distributed.all_sum([1, 2.5]) == [1.0, 2.5]
    model = nn.Linear(2, 2)
    assert distributed.wrap(model, torch.device("cpu")) is model
    assert distributed.main_first(lambda: 7, what="x") == 7


def test_nproc_is_removed_from_the_command_of_each_process():
    assert _without_nproc(["train", "--nproc", "2", "--recipe", "x", "--nproc=3", "-q"]) == \
        ["train", "--recipe", "x", "-q"]


# ------------------------------------------------------------------ 2 processes, gloo
def toy():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(40) % 4
    x = torch.randn(40, 6, generator=g) + y[:, None].float()
    return x, y


def toy_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 4))


class SimulatedCrash(Exception):
    pass


class StopAt(ClassificationTask):
    """Raises at one training step on every rank, as a crash both would see."""

    def __init__(self, step):
        super().__init__(mixup_alpha=0.2)
        self.step, self.calls = step, 0

    def training_loss(self, model, x, y, generator):
        self.calls += 1
        if self.calls == self.step:
            raise SimulatedCrash(f"step {self.calls}")
        return super().training_loss(model, x, y, generator)


def _worker(rank, world, root):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      LOCAL_WORLD_SIZE=str(world))
    dist.init_process_group("gloo", init_method=f"file://{root}/rendezvous", rank=rank,
                            world_size=world)
    torch.set_num_threads(1)
    x, y = toy()
    cfg = TrainConfig(epochs=4, batch_size=8, device="cpu",
                      optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9})

    def validate(model):
        return {"accuracy": float((model(x).argmax(1) == y).float().mean())}

    results = {}
    for name in ("a", "b", "balanced"):
        model = toy_model()
        result = fit(model=model, task=ClassificationTask(mixup_alpha=0.2), train_x=x, train_y=y,
                     cfg=cfg.model_copy(update={"balanced_sampling": name == "balanced"}),
                     out_dir=root / name, validate=validate, fingerprint="t", show_progress=False)
        results[name] = (model, result)
    # crash at epoch 3 on both ranks, then resume
    crashed = False
    try:
        fit(model=toy_model(), task=StopAt(5 * 2 + 2), train_x=x, train_y=y, cfg=cfg,
            out_dir=root / "crashed", validate=validate, fingerprint="t", show_progress=False)
    except SimulatedCrash:
        crashed = True
    assert crashed
    resumed = toy_model()
    fit(model=resumed, task=ClassificationTask(mixup_alpha=0.2), train_x=x, train_y=y, cfg=cfg,
        out_dir=root / "crashed", validate=validate, fingerprint="t", resume=True,
        show_progress=False)
    flat = {name: torch.cat([p.detach().flatten() for p in m.state_dict().values()])
            for name, (m, _) in results.items()}
    flat["resumed"] = torch.cat([p.detach().flatten() for p in resumed.state_dict().values()])
    torch.save({"weights": flat, "history": [r.history for _, r in results.values()]},
               root / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_processes_agree_repeat_and_resume(tmp_path):
    mp.spawn(_worker, args=(2, tmp_path), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for name in ("a", "b", "balanced", "resumed"):  # DDP keeps the replicas identical
        torch.testing.assert_close(ranks[0]["weights"][name], ranks[1]["weights"][name], rtol=0, atol=0)
    w = ranks[0]["weights"]
    torch.testing.assert_close(w["a"], w["b"], rtol=0, atol=0)  # same seed, same world: same run
    torch.testing.assert_close(w["a"], w["resumed"], rtol=0, atol=0)  # a crash changes nothing
    assert ranks[0]["history"] == ranks[1]["history"]  # every rank saw rank 0's records
    for history in (ranks[0]["history"][0], ranks[0]["history"][2]):  # plain, balanced
        assert [r["epoch"] for r in history] == [1, 2, 3, 4]
        assert history[-1]["val_accuracy"] > 0.5 and history[-1]["train_loss"] < history[0]["train_loss"]
    assert not torch.equal(w["a"], w["balanced"])
    for name in ("a", "crashed"):  # rank 0 alone wrote the log: one line per epoch
        lines = (tmp_path / name / "log.jsonl").read_text().splitlines()
        assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3, 4]
    assert torch.load(tmp_path / "a" / "checkpoints" / "last.pt", weights_only=True)["world_size"] == 2


@pytest.mark.slow
def test_train_nproc_2_runs_a_recipe_with_gloo(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--recipe", "quickstart", "--data", "synthetic:n_per_class=3,n_locations=3",
                 "--out", str(out), "--cache", str(tmp_path / "cache"), "-q", "--nproc", "2",
                 "--set", "train.epochs=2", "--set", "train.batch_size=8",
                 "--set", "data.split.val_fraction=0.34"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["held_out"]["n"] == 10 and metrics["epochs_run"] == 2
    lines = (out / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert (out / "model.pt").is_file() and not list(out.rglob("*.tmp"))
    # rank 0 filled the cache once; the other rank read it
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 24


def test_a_failing_process_stops_the_others():
    import sys
    import time

    started = time.monotonic()
    code = distributed.launch([], nproc=2, command=[
        sys.executable, "-c", "import os, sys, time\n"
        "if os.environ['RANK'] == '1': sys.exit(3)\n"
        "time.sleep(120)"])
    assert code == 3
    assert time.monotonic() - started < 60  # rank 0 was stopped, not waited for


def test_a_batch_that_does_not_divide_is_refused_before_starting(tmp_path, capsys):
    code = main(["train", "--recipe", "quickstart", "--data", "synthetic:n_per_class=3,n_locations=3",
                 "--out", str(tmp_path / "run"), "--no-cache", "-q", "--nproc", "2",
                 "--set", "train.batch_size=7"])
    assert code == 2
    assert "train.batch_size 7 is the global batch of all 2 processes" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
