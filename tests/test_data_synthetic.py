"""Tests of the synthetic generator: spec, determinism, loading, and how hard the task is."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from bitsound.data import SyntheticParams, leave_one_group_out, open_dataset, stratified_split
from bitsound.data.synthetic import CLASSES, DEVICES, NATIVE_RATE, location_of
from bitsound.errors import ConfigError, DataError

SMALL = "synthetic:n_per_class=3,n_classes=4,n_locations=3"


# ------------------------------------------------------------------ spec
def test_default_spec_sizes():
    ds = open_dataset("synthetic")
    assert len(ds) == 8 * 80
    assert ds.labels == sorted(name for name, _ in CLASSES)
    assert len({c.group for c in ds}) == 8
    assert {c.device for c in ds} <= {d.name for d in DEVICES}
    assert ds.generated and ds.native_rate == NATIVE_RATE


def test_spec_keys_are_parsed():
    ds = open_dataset("synthetic: n_per_class=5, seed=7, n_classes=3, duration=0.5")
    assert ds.params == SyntheticParams(n_per_class=5, seed=7, n_classes=3, duration=0.5)
    assert len(ds) == 15 and len(ds.labels) == 3
    assert ds.load(ds[0]).shape == (1, 8000)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("synthetic:size=3", r"known key; valid keys: n_per_class, n_classes"),
        ("synthetic:seed", r"not key=value"),
        ("synthetic:n_per_class=many", r"n_per_class='many' must be an integer"),
        ("synthetic:n_classes=9", r"n_classes must be in 2..8"),
        ("synthetic:snr_low=30", r"snr_low must be <= snr_high"),
    ],
)
def test_bad_specs_explain_the_rule(spec, message):
    with pytest.raises(ConfigError, match=message):
        open_dataset(spec)


# ------------------------------------------------------------------ determinism
def test_same_seed_gives_bit_identical_audio():
    a, b = open_dataset(SMALL), open_dataset(SMALL)
    for clip_a, clip_b in zip(a, b, strict=True):
        assert clip_a == clip_b
        assert np.array_equal(a.load(clip_a), b.load(clip_b))
        assert a.identity(clip_a) == b.identity(clip_b)


def test_other_seed_or_clip_gives_other_audio():
    a, b = open_dataset(SMALL), open_dataset(SMALL + ",seed=1")
    assert not np.array_equal(a.load(a[0]), b.load(b[0]))
    assert not np.array_equal(a.load(a[0]), a.load(a[1]))
    assert a.identity(a[0]) != b.identity(b[0])
    assert len({a.identity(c) for c in a}) == len(a)


def test_clips_do_not_depend_on_how_many_are_generated():
    small, large = open_dataset(SMALL), open_dataset("synthetic:n_per_class=5,n_classes=4,"
                                                     "n_locations=3")
    assert np.array_equal(small.load(small[0]), large.load(large[0]))
    assert small.identity(small[0]) == large.identity(large[0])  # so they share cache entries


# ------------------------------------------------------------------ loading
def test_audio_is_float32_finite_and_audible():
    ds = open_dataset(SMALL)
    for clip in ds:
        x = ds.load(clip)
        assert x.dtype == np.float32 and x.shape == (1, NATIVE_RATE)
        assert np.isfinite(x).all() and np.abs(x).max() <= 1.0
        assert np.sqrt(np.mean(x**2)) > 1e-3


def test_load_resamples_and_applies_the_channel_policy():
    ds = open_dataset(SMALL)
    assert ds.load(ds[0], sample_rate=8000).shape == (1, 8000)
    stereo = ds.load(ds[0], sample_rate=22050, channels="stereo")
    assert stereo.shape == (2, 22050) and stereo.dtype == np.float32
    assert np.array_equal(stereo[0], stereo[1])
    assert np.array_equal(ds.load(ds[0], channels=0), ds.load(ds[0]))
    with pytest.raises(DataError, match="channel index 1"):
        ds.load(ds[0], channels=1)


def test_subset_keeps_the_generator():
    ds = open_dataset(SMALL)
    sub = ds.subset([5, 2])
    assert np.array_equal(sub.load(sub[0]), ds.load(ds[5]))
    assert sub.identity(sub[1]) == ds.identity(ds[2])


def test_foreign_clip_is_a_data_error():
    ds = open_dataset(SMALL)
    with pytest.raises(DataError, match="not made by the synthetic generator"):
        ds.load(type(ds[0])(path="synthetic://x", label="bark"))


def test_locations_have_home_classes():
    params = SyntheticParams()
    counts = Counter(location_of(params, 0, take) for take in range(params.n_per_class))
    # Half of a class's clips at its two home locations, the rest spread over all eight.
    assert sorted(counts.values()) == [5] * 6 + [25, 25]
    uniform = SyntheticParams(home_share=0.0)
    assert set(Counter(location_of(uniform, 0, t) for t in range(80)).values()) == {10}


# ------------------------------------------------------------------ difficulty
def _mean_log_spectra(x: np.ndarray, n_fft: int = 512, hop: int = 256) -> np.ndarray:
    """Per-clip mean of log band energies in 40 log-spaced bands, shape (clips, 40)."""
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft, axis=1)[:, ::hop]
    power = np.abs(np.fft.rfft(frames * np.hanning(n_fft), axis=-1)) ** 2
    edges = np.unique(np.geomspace(2, n_fft // 2 + 1, 41).astype(int))
    bands = np.stack([power[..., a:b].mean(-1) for a, b in zip(edges[:-1], edges[1:],
                                                                 strict=True)], -1)
    return np.log(bands + 1e-10).mean(axis=1)


def _ridge_accuracy(features, targets, train, val, n_classes, lam=1.0) -> float:
    """Accuracy of a one-vs-all ridge-regression linear classifier."""
    mean, std = features[train].mean(0), features[train].std(0) + 1e-9

    def design(idx):
        return np.c_[(features[idx] - mean) / std, np.ones(len(idx))]

    a = design(train)
    weights = np.linalg.solve(a.T @ a + lam * np.eye(a.shape[1]), a.T @ np.eye(n_classes)[
        targets[train]])
    return float((np.argmax(design(val) @ weights, 1) == targets[val]).mean())


@pytest.fixture(scope="module")
def linear_baseline():
    ds = open_dataset("synthetic:n_per_class=40")
    features = _mean_log_spectra(np.stack([ds.load(c)[0] for c in ds]))
    targets = ds.targets()

    def accuracy(split):
        return _ridge_accuracy(features, targets, split.train, split.val, len(ds.labels))

    random_split = np.mean([accuracy(stratified_split(ds, val_fraction=0.25, seed=s))
                            for s in range(4)])
    per_location = [accuracy(split) for split in leave_one_group_out(ds)]
    return random_split, per_location, 1 / len(ds.labels)


def test_classes_differ_but_are_not_linearly_separable(linear_baseline):
    random_split, per_location, chance = linear_baseline
    assert 2 * chance < random_split < 0.95
    assert all(chance < acc < 1.0 for acc in per_location)


def test_leave_location_out_is_harder_than_a_random_split(linear_baseline):
    random_split, per_location, _ = linear_baseline
    assert np.mean(per_location) < random_split - 0.05
