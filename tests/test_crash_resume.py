"""Crash safety: a training process killed with SIGKILL mid-epoch, or while it writes a
checkpoint, resumes with --resume to the same final model and metrics as a run never
interrupted; damaged model, checkpoint and cache files give one clear error (or, for the cache,
are recomputed).

The killed runs are real ``python -m bitsound train`` processes. A small harness script stops
each at an exact point (it patches the training step, or ``torch.save`` so that half of the
checkpoint is on disk) and signals the test, which then sends SIGKILL: nothing runs after it,
as after a power cut or the OOM killer.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from bitsound.cli import main

HARNESS = r'''
import io, os, sys, time
from pathlib import Path
import torch
from bitsound.cli import main

mode, at, marker = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])

def stop_here():
    marker.write_text("stopped")
    time.sleep(600)  # the test kills us here

if mode == "step":  # stop before the at-th training step (counted over all epochs)
    from bitsound.train.tasks import ClassificationTask
    real = ClassificationTask.training_loss
    calls = {"n": 0}
    def training_loss(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == at:
            stop_here()
        return real(self, *args, **kwargs)
    ClassificationTask.training_loss = training_loss
elif mode == "write":  # stop halfway through the at-th (atomic) write of checkpoints/last.pt
    import bitsound.train.checkpoint as checkpoint
    import bitsound.train.loop as loop
    real_save = loop.save_torch
    calls = {"n": 0}
    def save_torch(obj, path):
        if Path(path).name == "last.pt":
            calls["n"] += 1
            if calls["n"] == at:
                def half(handle):
                    buf = io.BytesIO()
                    torch.save(obj, buf)
                    data = buf.getvalue()
                    handle.write(data[: len(data) // 2])
                    handle.flush()
                    os.fsync(handle.fileno())
                    stop_here()
                return checkpoint._atomic_write(path, half)
        return real_save(obj, path)
    loop.save_torch = save_torch
sys.exit(main(sys.argv[4:]))
'''

STEPS_PER_EPOCH = 4  # 14 training clips in batches of 4


def train_args(out, cache):
    return ["train", "--recipe", "quickstart", "--data", "synthetic:n_per_class=3,n_locations=3",
            "--out", str(out), "--cache", str(cache), "-q", "--set", "train.epochs=3",
            "--set", "train.batch_size=4", "--set", "train.num_threads=1",
            "--set", "data.split.val_fraction=0.34"]


def env():
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def run_to_the_end(args):
    done = subprocess.run([sys.executable, "-m", "bitsound", *args], env=env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def kill_at(tmp_path, mode, at, args):
    """Start the harness, wait until it stops at the point asked for, then SIGKILL it."""
    script = tmp_path / "harness.py"
    script.write_text(HARNESS)
    marker = tmp_path / f"stopped-{mode}"
    proc = subprocess.Popen([sys.executable, str(script), mode, str(at), str(marker), *args],
                            env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not marker.exists():
        if proc.poll() is not None:
            pytest.fail(f"the run ended before it was killed: {proc.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the run never reached the point to kill it at")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL


def outcome(out):
    """What must not depend on the crash: scores, chosen epoch, per-epoch losses, weights."""
    metrics = json.loads((out / "metrics.json").read_text())
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    for record in log:
        record.pop("seconds")
    weights = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    return {"held_out": metrics["held_out"], "best_epoch": metrics["best_epoch"],
            "epochs_run": metrics["epochs_run"], "train_accuracy": metrics["train_accuracy"],
            "predictions": metrics["predictions"], "log": log}, weights


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("straight")
    run_to_the_end(train_args(root / "run", root / "cache"))
    return outcome(root / "run")


def assert_same(resumed, uninterrupted):
    (got, got_weights), (want, want_weights) = resumed, uninterrupted
    assert got == want
    assert got_weights.keys() == want_weights.keys()
    for key in want_weights:
        torch.testing.assert_close(got_weights[key], want_weights[key], rtol=0, atol=0)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(tmp_path, uninterrupted):
    args = train_args(tmp_path / "run", tmp_path / "cache")
    kill_at(tmp_path, "step", STEPS_PER_EPOCH + 2, args)  # epoch 2, before its second step
    log = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in log] == [1]
    assert not (tmp_path / "run" / "model.pt").exists()
    run_to_the_end([*args, "--resume"])
    assert_same(outcome(tmp_path / "run"), uninterrupted)


@pytest.mark.slow
def test_sigkill_mid_checkpoint_write_then_resume_matches_uninterrupted_run(tmp_path, uninterrupted):
    args = train_args(tmp_path / "run", tmp_path / "cache")
    kill_at(tmp_path, "write", 2, args)  # halfway through epoch 2's last.pt
    ckpt = tmp_path / "run" / "checkpoints"
    partial = list(ckpt.glob(".last.pt.*.tmp"))
    assert len(partial) == 1 and partial[0].stat().st_size > 0  # killed mid-write, really
    assert torch.load(ckpt / "last.pt", weights_only=True)["epoch"] == 0  # epoch 1's, whole
    run_to_the_end([*args, "--resume"])
    assert not list(ckpt.glob(".*.tmp"))
    assert_same(outcome(tmp_path / "run"), uninterrupted)


# ------------------------------------------------------------------ damaged files, one error each
def tiny_run(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--recipe", "quickstart", "--data", "synthetic:n_per_class=2,n_locations=2",
                 "--out", str(out), "--no-cache", "-q", "--set", "train.epochs=1",
                 "--set", "data.split.kind=none"]) == 0
    return out


def _flag_first_member_encrypted(data: bytes) -> bytes:
    """Set the 'encrypted' bit of the first member in the ZIP central directory."""
    at = data.index(b"PK\x01\x02") + 8  # general purpose flags of the central directory entry
    return data[:at] + bytes([data[at] | 1]) + data[at + 1:]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("trained"))


@pytest.mark.parametrize("damage, says", [
    (lambda data: data[: len(data) // 2], "is truncated"),
    (lambda data: data[:-1], "is truncated"),
    (lambda data: b"", "is empty"),
    (lambda data: b"not a model at all", "is not a PyTorch file"),
    (lambda data: data[:2000] + bytes([data[2000] ^ 0x40]) + data[2001:], "fails its CRC-32"),
    (_flag_first_member_encrypted, "is damaged"),  # zipfile raises RuntimeError (found by fuzzing)
])
def test_damaged_model_file_is_one_clear_error(trained, tmp_path, capsys, damage, says):
    damaged = tmp_path / "model.pt"
    damaged.write_bytes(damage((trained / "model.pt").read_bytes()))
    code = main(["evaluate", "--model", str(damaged), "--data", "synthetic:n_per_class=1", "-q"])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err and "Errno" not in err
    assert str(damaged) in err.replace("\n", "") and says in err.replace("\n", " ")


def test_damaged_checkpoint_is_one_clear_error_on_resume(trained, tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    data = (trained / "checkpoints" / "last.pt").read_bytes()
    (run / "checkpoints" / "last.pt").write_bytes(data[: len(data) - 100])
    args = ["train", "--recipe", "quickstart", "--data", "synthetic:n_per_class=2,n_locations=2",
            "--out", str(run), "--no-cache", "-q", "--set", "train.epochs=1",
            "--set", "data.split.kind=none", "--resume"]
    code = main(args)
    err = capsys.readouterr().err.replace("\n", " ")
    assert code == 2
    assert "Traceback" not in err
    assert "checkpoint" in err and "last.pt" in err and "is truncated" in err
    # what the message says to do works: delete it and rerun, and --resume starts from scratch
    assert "delete it and rerun: --resume then starts from scratch" in " ".join(err.split())
    (run / "checkpoints" / "last.pt").unlink()
    assert main(args) == 0
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 0


def test_a_damaged_best_checkpoint_says_to_rerun_without_resume(tmp_path):
    from bitsound.errors import CheckpointError
    from bitsound.train.checkpoint import load_torch

    best = tmp_path / "checkpoints" / "best.pt"
    best.parent.mkdir()
    best.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"is empty .*rerun without --resume \(--resume continues "
                       r"only from checkpoints/last.pt\)"):
        load_torch(best)


def test_resume_removes_every_interrupted_write_of_the_run(tmp_path):
    """A crash may interrupt the write of model.pt, metrics.json or log.jsonl in OUT as well as a
    checkpoint's: --resume removes all those partial files, and nothing else."""
    from bitsound.config import TrainConfig
    from bitsound.train import ClassificationTask, fit

    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    partial = [out / ".model.pt.x1y2.tmp", out / ".metrics.json.abc.tmp", out / ".log.jsonl.q.tmp",
               out / "checkpoints" / ".last.pt.z9.tmp"]
    kept = [out / "notes.tmp", out / ".mine.tmp", out / "data.csv"]
    for path in partial + kept:
        path.write_bytes(b"half")
    torch.manual_seed(0)
    x, y = torch.randn(8, 3), torch.arange(8) % 2
    fit(model=torch.nn.Linear(3, 2), task=ClassificationTask(), train_x=x, train_y=y,
        cfg=TrainConfig(epochs=1, batch_size=4, device="cpu"), out_dir=out, resume=True,
        fingerprint="t", show_progress=False)
    assert [p for p in partial if p.exists()] == []
    assert all(p.exists() for p in kept)


def test_checkpoint_of_another_model_is_named(trained, tmp_path):
    from bitsound.errors import CheckpointError
    from bitsound.train.loop import _load_weights

    state = torch.load(trained / "checkpoints" / "last.pt", weights_only=True)
    with pytest.raises(CheckpointError, match="last.pt' does not fit this model"):
        _load_weights(torch.nn.Linear(2, 2), state, trained / "checkpoints" / "last.pt")


def test_damaged_cache_files_are_recomputed(tmp_path):
    """Every feature file cut short or scribbled over is removed, recomputed and rewritten."""
    from bitsound.data import FeatureCache

    args = ["train", "--recipe", "quickstart", "--data", "synthetic:n_per_class=2,n_locations=2",
            "--cache", str(tmp_path / "cache"), "-q", "--set", "train.epochs=1",
            "--set", "data.split.kind=none"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    files = sorted((tmp_path / "cache").rglob("*.npy"))
    assert len(files) == 16
    good = {f: f.read_bytes() for f in files}
    for i, f in enumerate(files):
        data = good[f]
        f.write_bytes(data[: len(data) // 2] if i % 2 else b"\x93NUMPY garbage" + data[20:])
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    assert {f: f.read_bytes() for f in files} == good
    cache = FeatureCache(tmp_path / "cache")
    assert all(cache.get(f.stem) is not None for f in files)
    a = json.loads((tmp_path / "a" / "metrics.json").read_text())
    b = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert a["train_accuracy"] == b["train_accuracy"]
