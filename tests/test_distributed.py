"""Distributed training (torch.distributed, DDP, gloo on CPU) with 2 processes."""

import functools
import gc
import json
import logging
import os
import pickle
import sys
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from bitsound import cli
from bitsound.cli import _without_nproc, main
from bitsound.config import TrainConfig
from bitsound.data.sampler import balanced_weights
from bitsound.errors import ConfigError, DataError, DistributedError
from bitsound.train import ClassificationTask, distributed, fit
from bitsound.train.distributed import DistInfo, DistributedBalancedSampler, make_sampler

SYNTHETIC = "synthetic:n_per_class=3,n_locations=3"


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
    weights = balanced_weights(labels)
    torch.testing.assert_close(weights[[0, 12, 15]], torch.tensor([1 / 12, 1 / 3, 1 / 2]).double())
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


def test_undersampling_is_refused_for_several_processes():
    cfg = TrainConfig(balanced_sampling="undersample", batch_size=8)
    assert distributed.check_config(cfg, DistInfo()) == 8  # one process: seed 002's sampler runs
    with pytest.raises(ConfigError, match="'undersample' .* single process only.*balanced_sampling=true"):
        distributed.check_config(cfg, DistInfo(world_size=2))
    with pytest.raises(ConfigError, match="'undersample'"):
        make_sampler(torch.zeros(4, dtype=torch.int64), balanced="undersample", seed=0,
                     info=DistInfo(world_size=2))
    assert distributed.check_config(cfg.model_copy(update={"balanced_sampling": True}),
                                    DistInfo(world_size=2)) == 4


@pytest.mark.parametrize("command", ["train", "cv"])
def test_undersampling_is_refused_before_any_process_starts(command, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(distributed, "launch", lambda *a, **k: pytest.fail("processes were started"))
    code = main([command, "--recipe", "quickstart", "--data", SYNTHETIC, "--out", str(tmp_path / "run"),
                 "--cache", str(tmp_path / "cache"), "-q", "--nproc", "2",
                 "--set", "train.balanced_sampling=undersample"])
    assert code == 2
    assert "'undersample' (seed 002's class cycle) runs in a single process only" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", ["0", "-3", "two", "2.5", "100000"])
def test_nproc_must_be_a_count_of_processes(value, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(distributed, "launch", lambda *a, **k: pytest.fail("processes were started"))
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--recipe", "quickstart", "--data", SYNTHETIC, "--no-cache", "--nproc", value])
    assert exit_.value.code == 2
    assert f"--nproc must be a whole number in [1, 1024], got '{value}'" in capsys.readouterr().err


@pytest.mark.parametrize("args", [["--npr", "2"], ["--nproc", "2", "--work", "2"], ["--recip", "quickstart"]])
def test_options_are_never_abbreviated(args, capsys, monkeypatch):
    """An abbreviation such as --npr 2 would reach the processes --nproc starts, which would each
    start processes again: every option must be spelt in full."""
    monkeypatch.setattr(distributed, "launch", lambda *a, **k: pytest.fail("processes were started"))
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--recipe", "quickstart", "--no-cache", *args])
    assert exit_.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["inf", "1e20", "nan", "0", "-5", "soon", "2592001"])
def test_a_timeout_must_be_finite_and_bounded(value, monkeypatch):
    monkeypatch.setenv(distributed.TIMEOUT_ENV, value)
    with pytest.raises(ConfigError, match=rf"environment variable BITSOUND_DIST_TIMEOUT='{value}' must be "
                       r"a number of seconds in \(0, 2592000\]"):
        distributed.timeout_seconds()


def test_a_timeout_in_range_is_used(monkeypatch):
    monkeypatch.delenv(distributed.TIMEOUT_ENV, raising=False)
    assert distributed.timeout_seconds() == 6 * 3600
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "2592000")
    assert distributed.timeout_seconds() == 2592000.0


def test_the_cores_are_divided_among_the_processes():
    assert distributed.threads_per_process(2, cores=16) == 8
    assert distributed.threads_per_process(3, cores=2) == 1
    # a user's OMP_NUM_THREADS never makes N processes use every core, but a lower one is kept
    assert distributed.threads_per_process(4, requested="16", cores=16) == 4
    assert distributed.threads_per_process(4, requested="2", cores=16) == 2
    assert distributed.threads_per_process(4, requested="4,2", cores=16) == 4
    assert distributed.threads_per_process(4, requested="0", cores=16) == 4


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
    assert distributed.from_main(lambda: 7, what="x", share=False) == 7


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
    flat = {name: flatten(m.state_dict()) for name, (m, _) in results.items()}
    flat["resumed"] = flatten(resumed.state_dict())
    torch.save({"weights": flat, "history": [r.history for _, r in results.values()],
                "best_epochs": [r.best_epoch for _, r in results.values()]}, root / f"rank{rank}.pt")
    leave_group()


def leave_group():
    """As distributed.session does: free the DDP wrappers (reference cycles) while the group
    exists, then leave it together."""
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


def flatten(state: dict) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in state.values()])


@pytest.mark.slow
def test_two_gloo_processes_agree_repeat_and_resume(tmp_path):
    mp.spawn(_worker, args=(2, tmp_path), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for name in ("a", "b", "balanced", "resumed"):
        folder = tmp_path / ("crashed" if name == "resumed" else name) / "checkpoints"
        last, best = (torch.load(folder / f, weights_only=True)["model"] for f in ("last.pt", "best.pt"))
        # rank 0 holds the best epoch's weights; rank 1 the last epoch's, which DDP kept identical
        # to rank 0's (the best weights are not sent to ranks that score nothing)
        torch.testing.assert_close(ranks[0]["weights"][name], flatten(best), rtol=0, atol=0)
        torch.testing.assert_close(ranks[1]["weights"][name], flatten(last), rtol=0, atol=0)
    assert ranks[0]["best_epochs"] == ranks[1]["best_epochs"]
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


#: Each rank of a --nproc run, started by the tests instead of ``python -m bitsound``: it counts
#: the clips whose features it computes, and (with DIE_AT > 0) rank 1 crashes at that training step.
HARNESS = r"""
import os, sys
from pathlib import Path
import bitsound.pipeline as pipeline
from bitsound.cli import main
from bitsound.train.tasks import ClassificationTask

computed, die_at = Path(sys.argv[1]), int(sys.argv[2])
real_features = pipeline.clip_features
def clip_features(*args, **kwargs):
    with computed.open("a") as handle:
        handle.write(os.environ["RANK"] + "\n")
    return real_features(*args, **kwargs)
pipeline.clip_features = clip_features
real_loss, steps = ClassificationTask.training_loss, {"n": 0}
def training_loss(self, *args, **kwargs):
    steps["n"] += 1
    if steps["n"] == die_at and os.environ["RANK"] == "1":
        os._exit(3)  # a crash: no exception, no goodbye to the other rank
    return real_loss(self, *args, **kwargs)
ClassificationTask.training_loss = training_loss
sys.exit(main(sys.argv[3:]))
"""


def launch_through_harness(tmp_path, monkeypatch, *, die_at: int = 0):
    """Make --nproc start every rank through HARNESS; returns the file of computed clips."""
    script, computed = tmp_path / "harness.py", tmp_path / "computed.txt"
    script.write_text(HARNESS)
    monkeypatch.setattr(distributed, "launch", functools.partial(
        distributed.launch, command=[sys.executable, str(script), str(computed), str(die_at)]))
    return computed


def nproc_2_args(out, cache):
    return ["train", "--recipe", "quickstart", "--data", SYNTHETIC, "--out", str(out), "--cache",
            str(cache), "-q", "--nproc", "2", "--set", "train.epochs=2", "--set", "train.batch_size=8",
            "--set", "data.split.val_fraction=0.34"]


@pytest.mark.slow
def test_train_nproc_2_runs_a_recipe_with_gloo(tmp_path, monkeypatch):
    computed = launch_through_harness(tmp_path, monkeypatch)
    out = tmp_path / "run"
    assert main(nproc_2_args(out, tmp_path / "cache")) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["held_out"]["n"] == 10 and metrics["epochs_run"] == 2
    lines = (out / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert (out / "model.pt").is_file() and not list(out.rglob("*.tmp"))
    # rank 0 computed every clip's features once; the other rank read them all from the cache
    assert computed.read_text().split() == ["0"] * 24
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 24


@pytest.mark.slow
def test_a_rank_that_dies_stops_the_run(tmp_path, monkeypatch, capfd):
    """Rank 1 crashes mid-epoch without a word: rank 0 is not left waiting for it, the run
    fails with rank 1's exit status and writes no model."""
    launch_through_harness(tmp_path, monkeypatch, die_at=3)
    started = time.monotonic()
    code = main(nproc_2_args(tmp_path / "run", tmp_path / "cache"))
    # rank 1's status (rank 0's, 1, only if it ended within the same 50 ms sweep of launch)
    assert code in (3, 1)
    assert time.monotonic() - started < 120
    assert not (tmp_path / "run" / "model.pt").exists()
    assert "by peer" in capfd.readouterr().err  # rank 0 said why it stopped (gloo's words)


def test_a_failing_process_stops_the_others():
    started = time.monotonic()
    code = distributed.launch([], nproc=2, grace_s=1.0, command=[
        sys.executable, "-c", "import os, sys, time\n"
        "if os.environ['RANK'] == '1': sys.exit(3)\n"
        "time.sleep(120)"])
    assert code == 3
    assert time.monotonic() - started < 60  # rank 0 was stopped, not waited for


def test_rank_0_may_say_why_before_the_others_are_stopped(tmp_path, capfd, monkeypatch):
    """Rank 1 ends first (it only knows that rank 0 failed); rank 0, still printing its error,
    is not terminated before it has said what went wrong. Each process gets its share of the
    cores, whatever OMP_NUM_THREADS the user set."""
    monkeypatch.setenv("OMP_NUM_THREADS", "64")
    code = distributed.launch([str(tmp_path)], nproc=2, command=[
        sys.executable, "-c", "import os, sys, time\n"
        "open(os.path.join(sys.argv[1], 'threads' + os.environ['RANK']), 'w')"
        ".write(os.environ['OMP_NUM_THREADS'])\n"
        "if os.environ['RANK'] == '1': sys.exit(2)\n"
        "time.sleep(1.5)\n"
        "print('rank 0: clip a.wav is broken', file=sys.stderr, flush=True)\n"
        "sys.exit(2)"])
    assert code == 2
    assert "rank 0: clip a.wav is broken" in capfd.readouterr().err
    share = distributed.threads_per_process(2, requested="64")
    assert share <= max(1, (os.cpu_count() or 1) // 2)
    assert [(tmp_path / f"threads{r}").read_text() for r in range(2)] == [str(share)] * 2


def test_a_batch_that_does_not_divide_is_refused_before_starting(tmp_path, capsys):
    code = main(["train", "--recipe", "quickstart", "--data", SYNTHETIC,
                 "--out", str(tmp_path / "run"), "--no-cache", "-q", "--nproc", "2",
                 "--set", "train.batch_size=7"])
    assert code == 2
    assert "train.batch_size 7 is the global batch of all 2 processes" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ failures between ranks
def _raise(err):
    raise err


def _failure_worker(rank, world, root):
    """from_main / main_first when rank 0's part fails, and a recipe refused on every rank."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      LOCAL_WORLD_SIZE=str(world))
    dist.init_process_group("gloo", init_method=f"file://{root}/rendezvous", rank=rank,
                            world_size=world)
    torch.set_num_threads(1)
    seen = {}

    def attempt(name, fn):
        try:
            seen[name] = ("ok", fn())
        except Exception as err:
            seen[name] = (type(err).__name__, str(err))

    attempt("from_main", lambda: distributed.from_main(
        lambda: _raise(DataError("clip 'a.wav' is broken")), what="checking the clips"))
    attempt("shared", lambda: distributed.from_main(lambda: {"rank": rank}, what="x"))
    attempt("not shared", lambda: distributed.from_main(lambda: {"rank": rank}, what="x", share=False))
    ran = []
    attempt("main_first", lambda: distributed.main_first(
        lambda: ran.append(rank) or _raise(DataError("the cache is full")), what="computing features"))
    seen["ran"] = ran

    def fill():  # rank 0 first, then the others, which find what rank 0 wrote
        if rank == 0:
            time.sleep(0.5)
            (root / "filled").write_text("by rank 0")
        return (root / "filled").read_text()

    attempt("order", lambda: distributed.main_first(fill, what="computing features"))
    # a refused recipe: rank 0 says why, the others stop; nothing was checked or computed
    import bitsound.experiment as experiment
    from bitsound.data import FeatureCache, open_dataset
    from bitsound.recipes import load_recipe

    experiment.check_clips = lambda *a, **k: pytest.fail("the clips were checked")
    recipe = load_recipe("quickstart", overrides=["train.balanced_sampling=undersample"])
    attempt("undersample", lambda: experiment.train_on_split(
        recipe, open_dataset(SYNTHETIC), None, out_dir=root / "run", cache=FeatureCache(root / "cache"),
        show_progress=False))
    seen["main"] = distributed.quiet_other_ranks()
    seen["level"] = logging.getLogger("bitsound").level
    (root / f"seen{rank}.pkl").write_bytes(pickle.dumps(seen))
    leave_group()


@pytest.mark.slow
def test_a_failure_on_rank_0_stops_the_others_with_its_reason(tmp_path):
    mp.spawn(_failure_worker, args=(2, tmp_path), nprocs=2, join=True)
    zero, one = (pickle.loads((tmp_path / f"seen{r}.pkl").read_bytes()) for r in range(2))
    assert zero["from_main"] == ("DataError", "clip 'a.wav' is broken")
    assert one["from_main"] == ("DistributedError", "rank 1: rank 0 stopped while checking the clips "
                                "(DataError: clip 'a.wav' is broken)")
    assert zero["shared"] == one["shared"] == ("ok", {"rank": 0})
    assert zero["not shared"] == ("ok", {"rank": 0}) and one["not shared"] == ("ok", None)
    assert zero["main_first"] == ("DataError", "the cache is full")
    assert one["main_first"][0] == "DistributedError" and "computing features" in one["main_first"][1]
    assert zero["ran"] == [0] and one["ran"] == []  # rank 1 never ran what failed on rank 0
    assert zero["order"] == one["order"] == ("ok", "by rank 0")
    assert zero["undersample"][0] == "ConfigError" and "'undersample'" in zero["undersample"][1]
    assert one["undersample"][0] == "DistributedError" and "'undersample'" in one["undersample"][1]
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run").exists()
    assert (zero["main"], one["main"]) == (True, False)
    assert one["level"] == logging.ERROR  # warnings too are rank 0's to print


def test_other_ranks_leave_rank_0s_failure_to_rank_0(monkeypatch, capsys):
    """An error that only says rank 0 failed is printed by rank 0 alone; any other is printed."""
    for key, value in {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(key, value)
    stopped = DistributedError("rank 1: rank 0 stopped while computing features (DataError: x)")
    monkeypatch.setattr(cli, "cmd_train", lambda args: _raise(stopped))
    assert main(["train", "--recipe", "quickstart"]) == 2
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(cli, "cmd_train", lambda args: _raise(DataError("rank 1's own disk is full")))
    assert main(["train", "--recipe", "quickstart"]) == 2
    assert "rank 1's own disk is full" in capsys.readouterr().err
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setattr(cli, "cmd_train", lambda args: _raise(stopped))
    assert main(["train", "--recipe", "quickstart"]) == 2
    assert "rank 0 stopped while computing features" in capsys.readouterr().err


def test_the_parity_benchmark_refuses_to_compare_one_process_with_itself(tmp_path):
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "distributed_parity.py"
    done = subprocess.run([sys.executable, str(script), "--nproc", "1", "--out", str(tmp_path / "p")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "--nproc 1: the benchmark compares 1 process with N" in done.stderr
    assert not (tmp_path / "p").exists()
