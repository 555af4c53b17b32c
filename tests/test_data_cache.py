"""Tests of bitsound.data.cache: keys, memory-mapped reads, atomic writes, damaged files."""

from __future__ import annotations

import io
import logging
import threading
from pathlib import Path

import numpy as np
import pytest

from bitsound.config import AudioConfig
from bitsound.data import FeatureCache, default_cache_root, make_key
from bitsound.data import cache as cache_module
from bitsound.errors import ConfigError, DataError

CONFIG = {"audio": {"sample_rate": 16000, "channels": "mono"}, "front_end": {"n_mels": 40}}


def _leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and p.suffix != ".npy"]


# ------------------------------------------------------------------ keys
def test_key_is_stable_and_ignores_dict_order():
    reordered = {"front_end": {"n_mels": 40}, "audio": {"channels": "mono", "sample_rate": 16000}}
    key = make_key("file:/a.wav|size=1", CONFIG)
    assert key == make_key("file:/a.wav|size=1", reordered)
    assert len(key) == 64 and int(key, 16) >= 0


def test_any_change_gives_a_new_key():
    key = make_key("id", CONFIG)
    changed = {**CONFIG, "front_end": {"n_mels": 64}}
    assert make_key("id", changed) != key
    assert make_key("id2", CONFIG) != key
    assert make_key("id", CONFIG, version=cache_module.FORMAT_VERSION + 1) != key


def test_pydantic_configs_are_accepted():
    assert make_key("id", AudioConfig()) == make_key("id", AudioConfig().model_dump(mode="json"))
    assert make_key("id", AudioConfig(sample_rate=8000)) != make_key("id", AudioConfig())


@pytest.mark.parametrize("bad", [{"path": Path("/x")}, {"x": float("nan")}])
def test_non_json_config_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="not plain JSON"):
        make_key("id", bad)


# ------------------------------------------------------------------ round trip
def test_put_then_get_returns_a_read_only_memory_map(tmp_path):
    cache = FeatureCache(tmp_path)
    key = make_key("id", CONFIG)
    features = np.random.default_rng(0).standard_normal((3, 40, 101)).astype(np.float32)
    stored = cache.put(key, features)
    loaded = cache.get(key)
    for array in (stored, loaded):
        assert isinstance(array, np.memmap)
        assert not array.flags.writeable
        assert array.dtype == np.float32 and np.array_equal(array, features)
    assert cache.path_for(key) == tmp_path / key[:2] / f"{key}.npy"
    assert key in cache and cache.get(make_key("other", CONFIG)) is None


def test_get_or_compute_computes_once(tmp_path):
    cache = FeatureCache(tmp_path)
    key = make_key("id", CONFIG)
    calls = []

    def compute():
        calls.append(1)
        return np.arange(5.0)

    first = cache.get_or_compute(key, compute)
    second = cache.get_or_compute(key, compute)
    assert len(calls) == 1
    assert np.array_equal(first, second) and isinstance(second, np.memmap)


def test_config_change_invalidates(tmp_path):
    cache = FeatureCache(tmp_path)
    cache.put(make_key("id", CONFIG), np.zeros(3))
    assert cache.get(make_key("id", {**CONFIG, "front_end": {"n_mels": 64}})) is None


def test_edge_shapes_round_trip(tmp_path):
    cache = FeatureCache(tmp_path)
    for i, array in enumerate([np.zeros((0, 3), np.float32), np.float64(2.5),
                               np.arange(6).reshape(2, 3).T, np.array([1, 2], ">i4")]):
        assert np.array_equal(cache.put(make_key(str(i), {}), array), array)


def test_object_arrays_are_refused(tmp_path):
    with pytest.raises(TypeError, match="numeric dtype"):
        FeatureCache(tmp_path).put(make_key("id", {}), np.array([{"a": 1}], dtype=object))


def test_malformed_keys_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="build it with"):
        FeatureCache(tmp_path).get("../../etc/passwd")


# ------------------------------------------------------------------ atomicity
def test_no_temporary_files_are_left(tmp_path):
    cache = FeatureCache(tmp_path)
    for i in range(5):
        cache.put(make_key(str(i), CONFIG), np.full(10, i))
    assert _leftovers(tmp_path) == []
    assert len(list(tmp_path.rglob("*.npy"))) == 5


def test_a_failed_write_leaves_neither_temp_file_nor_entry(tmp_path, monkeypatch):
    cache = FeatureCache(tmp_path)
    key = make_key("id", CONFIG)

    def broken_save(handle, array, allow_pickle):
        handle.write(b"\x93NUMPY partial")
        raise OSError("disk full")

    monkeypatch.setattr(cache_module.np, "save", broken_save)
    with pytest.raises(DataError, match="cannot write to the feature cache .*disk full"):
        cache.put(key, np.zeros(4))
    monkeypatch.undo()
    assert cache.get(key) is None
    assert _leftovers(tmp_path) == []


def test_concurrent_writers_and_readers_see_only_complete_arrays(tmp_path):
    cache = FeatureCache(tmp_path)
    key = make_key("shared", CONFIG)
    expected = np.arange(200_000, dtype=np.float64)
    errors: list[str] = []

    def writer():
        for _ in range(5):
            cache.put(key, expected)

    def reader():
        for _ in range(50):
            got = cache.get(key)
            if got is not None and not np.array_equal(got, expected):
                errors.append("read a partial array")

    threads = [threading.Thread(target=writer) for _ in range(3)]
    threads += [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert np.array_equal(cache.get(key), expected)
    assert _leftovers(tmp_path) == []


# ------------------------------------------------------------------ damaged files
def _npz_bytes() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, a=np.arange(100.0))
    return buf.getvalue()


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda data: data[: len(data) // 2], id="truncated"),
        pytest.param(lambda data: data[:20], id="header-cut"),
        pytest.param(lambda data: b"", id="empty"),
        pytest.param(lambda data: b"not a numpy file at all" * 10, id="garbage"),
        pytest.param(lambda data: data + b"\0" * 16, id="trailing-bytes"),
        # np.load reads a zip signature as an .npz (found by benchmarks/fuzz_readers.py)
        pytest.param(lambda data: b"PK\x03\x04", id="zip-signature"),
        pytest.param(lambda data: _npz_bytes(), id="npz-archive"),
    ],
)
def test_damaged_file_is_removed_and_recomputed(tmp_path, caplog, damage):
    cache = FeatureCache(tmp_path)
    key = make_key("id", CONFIG)
    cache.put(key, np.arange(100.0))
    path = cache.path_for(key)
    path.write_bytes(damage(path.read_bytes()))

    with caplog.at_level(logging.WARNING, logger="bitsound.data.cache"):
        assert cache.get(key) is None
    assert not path.exists()
    assert any("removing it and recomputing" in r.getMessage() for r in caplog.records)
    recomputed = cache.get_or_compute(key, lambda: np.arange(100.0))
    assert np.array_equal(recomputed, np.arange(100.0))


# ------------------------------------------------------------------ default root
def test_default_root_honours_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("BITSOUND_CACHE", str(tmp_path / "c"))
    assert default_cache_root() == tmp_path / "c"
    assert FeatureCache().root == tmp_path / "c"
    monkeypatch.delenv("BITSOUND_CACHE")
    assert default_cache_root() == Path.home() / ".cache" / "bitsound" / "features"
