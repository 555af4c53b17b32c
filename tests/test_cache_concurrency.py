"""Several processes sharing one feature cache: no corrupt file, no wrong array, no error.

Kept free of heavy imports: the worker processes import this module.
"""

import json
import multiprocessing
import os
import random
import subprocess
import sys

import numpy as np
import pytest

from bitsound.data.cache import FeatureCache

KEYS = [f"{i:02x}" + "c" * 62 for i in range(12)]


def expected(key: str) -> np.ndarray:
    """A distinct array per key; some large (4 MB), so that writes take a while and overlap."""
    i = int(key[:2], 16)
    n = 1_000_000 if i % 3 == 0 else 1000 + i
    return np.arange(n, dtype=np.float32) * (i + 1)


class PartialRead(AssertionError):
    pass


def _never_damaged(path, problem):
    """Stands in for FeatureCache._discard in the workers: get() found a partial or damaged file,
    which the atomic writes must make impossible (get() would remove it and return None)."""
    raise PartialRead(f"'{path}' was read while it is {problem}")


def _hammer(args) -> int:
    """Read, compute-if-missing and overwrite the keys in a random order; count what was checked."""
    root, seed, rounds = args
    rng = random.Random(seed)
    cache = FeatureCache(root)
    cache._discard = _never_damaged
    checked = 0
    for _ in range(rounds):
        keys = KEYS[:]
        rng.shuffle(keys)
        for key in keys:
            action = rng.random()
            if action < 0.4:
                got = cache.get_or_compute(key, lambda key=key: expected(key))
            elif action < 0.7:
                got = cache.put(key, expected(key))  # concurrent writers of one key
            else:
                got = cache.get(key)
                if got is None:  # not written by anyone yet (a damaged file raises PartialRead)
                    continue
            if not np.array_equal(got, expected(key)):
                raise AssertionError(f"process {seed}: key {key} served a wrong array")
            checked += 1
    return checked


@pytest.mark.slow
def test_processes_sharing_a_cache_never_see_a_partial_or_wrong_array(tmp_path):
    n_procs, rounds = 4, 6
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(n_procs) as pool:
        checked = pool.map(_hammer, [(str(tmp_path), seed, rounds) for seed in range(n_procs)])
    assert sum(checked) > n_procs * rounds * len(KEYS) * 0.5
    cache = FeatureCache(tmp_path)
    for key in KEYS:
        np.testing.assert_array_equal(cache.get(key), expected(key))
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix != ".npy"]
    assert leftovers == []  # every temporary file was renamed or removed
    assert len(list(tmp_path.rglob("*.npy"))) == len(KEYS)


@pytest.mark.slow
def test_two_training_processes_share_one_cache(tmp_path):
    """Both fill the same empty cache at once; both finish with the same model and scores."""
    cache = tmp_path / "cache"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def start(name):
        return subprocess.Popen(
            [sys.executable, "-m", "bitsound", "train", "--recipe", "quickstart",
             "--data", "synthetic:n_per_class=3,n_locations=3", "--out", str(tmp_path / name),
             "--cache", str(cache), "-q", "--set", "train.epochs=1",
             "--set", "train.num_threads=1", "--set", "data.split.val_fraction=0.34"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    procs = [start("a"), start("b")]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    a, b = (json.loads((tmp_path / n / "metrics.json").read_text()) for n in ("a", "b"))
    assert a["held_out"] == b["held_out"] and a["train_accuracy"] == b["train_accuracy"]
    files = list(cache.rglob("*"))
    npy = [p for p in files if p.suffix == ".npy"]
    assert len(npy) == 24 and all(p.suffix == ".npy" for p in files if p.is_file())
    fc = FeatureCache(cache)
    assert all(fc.get(p.stem) is not None for p in npy)


def test_the_workers_would_see_a_partial_file(tmp_path):
    """The check of the test above can fail: a half-written file makes a worker raise."""
    cache = FeatureCache(tmp_path)
    cache.put(KEYS[0], expected(KEYS[0]))
    path = cache.path_for(KEYS[0])
    path.write_bytes(path.read_bytes()[:1000])
    cache._discard = _never_damaged
    with pytest.raises(PartialRead, match="was read while it is unreadable"):
        cache.get(KEYS[0])


def test_a_file_that_cannot_be_read_back_is_a_clear_error(tmp_path, monkeypatch):
    from bitsound.errors import DataError

    cache = FeatureCache(tmp_path)
    monkeypatch.setattr(FeatureCache, "get", lambda self, key: None)  # removed at once by another
    with pytest.raises(DataError, match=r"(?s)feature cache file '.*\.npy' could not be read back.*"
                       r"--cache DIR"):
        cache.put(KEYS[0], expected(KEYS[0]))


def test_a_cache_file_that_cannot_be_opened_is_a_clear_error_and_is_kept(tmp_path, monkeypatch):
    """Only a damaged file is removed: an I/O or permission error is not the file's fault."""
    import errno

    from bitsound.data import cache as cache_module
    from bitsound.errors import DataError

    cache = FeatureCache(tmp_path)
    cache.put(KEYS[1], expected(KEYS[1]))

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(cache_module.np, "load", denied)
    with pytest.raises(DataError, match=r"feature cache file '.*\.npy' cannot be read \(Permission denied\)"):
        cache.get(KEYS[1])
    assert cache.path_for(KEYS[1]).is_file()


def test_a_full_or_read_only_cache_is_one_clear_error(tmp_path, monkeypatch):
    import errno

    from bitsound.data import cache as cache_module
    from bitsound.errors import DataError

    def full(path, array):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache_module, "_atomic_save", full)
    with pytest.raises(DataError, match=r"cannot write to the feature cache .*No space left.*--no-cache"):
        FeatureCache(tmp_path).put(KEYS[0], expected(KEYS[0]))
