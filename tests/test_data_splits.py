"""Tests of bitsound.data.splits: folds, leave-one-group-out, stratified and group splits."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from bitsound.data import (
    Clip,
    Dataset,
    given_folds,
    group_split,
    leave_one_group_out,
    stratified_split,
)
from bitsound.errors import ConfigError, DataError


def _clips(n: int = 60, *, n_labels: int = 3, n_groups: int = 6, n_folds: int = 4,
           seed: int = 0) -> list[Clip]:
    rng = np.random.default_rng(seed)
    return [
        Clip(path=f"/c{i}.wav", label=f"l{rng.integers(n_labels)}", fold=str(1 + i % n_folds),
             group=f"g{rng.integers(n_groups)}")
        for i in range(n)
    ]


def _assert_partition(split, n: int) -> None:
    train, val = set(split.train.tolist()), set(split.val.tolist())
    assert not train & val, "train and val overlap"
    assert train | val == set(range(n)), "some clips are in neither part"
    assert train and val
    assert split.train.dtype == np.int64 and np.all(np.diff(split.train) > 0)


# ------------------------------------------------------------------ given folds
def test_given_folds_one_split_per_fold_covering_everything():
    clips = _clips()
    splits = given_folds(clips)
    assert [s.name for s in splits] == ["1", "2", "3", "4"]
    for s in splits:
        _assert_partition(s, len(clips))
        assert {clips[i].fold for i in s.val} == {s.name}
        assert s.name not in {clips[i].fold for i in s.train}
    # Every clip validates exactly once.
    assert sorted(np.concatenate([s.val for s in splits]).tolist()) == list(range(len(clips)))


def test_given_folds_with_named_validation_folds():
    clips = _clips()
    (split,) = given_folds(clips, val_folds=[4, "2"])
    assert split.name == "2+4"
    assert {clips[i].fold for i in split.val} == {"2", "4"}
    _assert_partition(split, len(clips))


def test_given_folds_sorts_numerically():
    clips = [Clip(path=f"/{i}", label="a", fold=str(f)) for i, f in enumerate([10, 2, 1])]
    assert [s.name for s in given_folds(clips)] == ["1", "2", "10"]


@pytest.mark.parametrize("val_folds", [["9"], [], ["1", "2", "3", "4"]])
def test_given_folds_rejects_bad_validation_folds(val_folds):
    with pytest.raises(ConfigError, match=r"not a proper subset of the dataset's folds"):
        given_folds(_clips(), val_folds=val_folds)


def test_given_folds_needs_folds_on_every_clip():
    clips = _clips()[:5] + [Clip(path="/nofold.wav", label="l0")]
    with pytest.raises(DataError, match=r"1 of 6 clips have none:\n  - /nofold.wav\n.*fold column"):
        given_folds(clips)


def test_given_folds_needs_two_folds():
    clips = [Clip(path=f"/{i}", label="a", fold="1") for i in range(3)]
    with pytest.raises(DataError, match=r"at least two distinct folds.*fold='1'"):
        given_folds(clips)


# ------------------------------------------------------------------ leave one group out
def test_leave_one_group_out():
    clips = _clips()
    splits = leave_one_group_out(Dataset(kind="t", root="r", clips=clips))
    groups = sorted({c.group for c in clips})
    assert [s.name for s in splits] == groups
    for s in splits:
        _assert_partition(s, len(clips))
        assert {clips[i].group for i in s.val} == {s.name}
        assert s.name not in {clips[i].group for i in s.train}


def test_leave_one_group_out_needs_groups():
    with pytest.raises(DataError, match="group-based split needs a group on every clip"):
        leave_one_group_out([Clip(path="/a", label="x"), Clip(path="/b", label="y")])
    with pytest.raises(DataError, match="at least two distinct groups"):
        leave_one_group_out([Clip(path="/a", label="x", group="g")])


# ------------------------------------------------------------------ stratified
def test_stratified_split_keeps_class_proportions():
    clips = _clips(200)
    split = stratified_split(clips, val_fraction=0.25, seed=3)
    _assert_partition(split, len(clips))
    total = Counter(c.label for c in clips)
    val = Counter(clips[i].label for i in split.val)
    for label, n in total.items():
        assert val[label] == round(n * 0.25)


def test_stratified_split_is_deterministic_by_seed():
    clips = _clips(100)
    a = stratified_split(clips, val_fraction=0.3, seed=1)
    b = stratified_split(clips, val_fraction=0.3, seed=1)
    c = stratified_split(clips, val_fraction=0.3, seed=2)
    assert np.array_equal(a.val, b.val) and np.array_equal(a.train, b.train)
    assert not np.array_equal(a.val, c.val)


def test_stratified_split_puts_small_classes_on_both_sides():
    clips = [Clip(path=f"/{i}", label="big") for i in range(20)]
    clips += [Clip(path="/s1", label="small"), Clip(path="/s2", label="small")]
    split = stratified_split(clips, val_fraction=0.1, seed=0)
    assert {clips[i].label for i in split.val} == {"big", "small"}
    assert {clips[i].label for i in split.train} == {"big", "small"}


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.2, 1.5])
def test_val_fraction_must_be_inside_zero_one(fraction):
    with pytest.raises(ConfigError, match=r"must lie strictly between 0 and 1"):
        stratified_split(_clips(), val_fraction=fraction, seed=0)
    with pytest.raises(ConfigError, match=r"must lie strictly between 0 and 1"):
        group_split(_clips(), val_fraction=fraction, seed=0)


# ------------------------------------------------------------------ group split
def test_group_split_is_group_disjoint_for_many_seeds_and_shapes():
    # A property test by brute force: random datasets, fractions and seeds.
    for seed in range(60):
        rng = np.random.default_rng(seed)
        clips = _clips(int(rng.integers(10, 120)), n_labels=int(rng.integers(1, 5)),
                       n_groups=int(rng.integers(2, 15)), seed=seed)
        if len({c.group for c in clips}) < 2:
            continue
        fraction = float(rng.uniform(0.05, 0.95))
        split = group_split(clips, val_fraction=fraction, seed=seed)
        _assert_partition(split, len(clips))
        train_groups = {clips[i].group for i in split.train}
        val_groups = {clips[i].group for i in split.val}
        assert not train_groups & val_groups, f"seed {seed}: a group is on both sides"


def test_group_split_is_deterministic_and_near_the_fraction():
    clips = _clips(300, n_groups=30)
    a = group_split(clips, val_fraction=0.2, seed=5)
    b = group_split(clips, val_fraction=0.2, seed=5)
    assert np.array_equal(a.val, b.val)
    assert abs(len(a.val) / len(clips) - 0.2) < 0.05
    assert not np.array_equal(a.val, group_split(clips, val_fraction=0.2, seed=6).val)


def test_group_split_keeps_every_class_on_both_sides_when_possible():
    # Groups 0-3 hold only class a, groups 4-7 only class b: a careless split loses a class.
    clips = [Clip(path=f"/{g}-{i}", label="a" if g < 4 else "b", group=f"g{g}")
             for g in range(8) for i in range(5)]
    for seed in range(10):
        split = group_split(clips, val_fraction=0.25, seed=seed)
        assert {clips[i].label for i in split.val} == {"a", "b"}
        assert {clips[i].label for i in split.train} == {"a", "b"}


def test_group_split_needs_two_groups():
    clips = [Clip(path=f"/{i}", label="a", group="only") for i in range(4)]
    with pytest.raises(DataError, match="at least two distinct groups"):
        group_split(clips, val_fraction=0.5, seed=0)
