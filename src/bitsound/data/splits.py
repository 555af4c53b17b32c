"""Train / validation splits over a list of clips.

Every function takes the clips (or a :class:`~bitsound.data.records.Dataset`) and returns index
arrays into them. Splits that must keep related clips apart use ``Clip.fold`` (predefined folds)
or ``Clip.group`` (speaker, source recording, location): clips of one group never appear on both
sides, which is what "unseen speakers / recordings / locations" means.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from bitsound.data.records import Clip, Dataset, format_list
from bitsound.errors import ConfigError, DataError

#: Candidate group assignments tried by :func:`group_split`.
_GROUP_SPLIT_TRIALS = 200


@dataclass(frozen=True)
class Split:
    """One train / validation partition.

    Parameters
    ----------
    name : str
        The validation fold or group (``"3"``, ``"george"``; ``"1+2"`` for several folds), or a
        description of a random split (``"stratified(0.2, seed=0)"``).
    train, val : np.ndarray [shape=(n,), dtype=int64]
        Sorted indices into the clip list.
    """

    name: str
    train: np.ndarray
    val: np.ndarray

    def __repr__(self) -> str:
        return f"Split({self.name!r}, train={len(self.train)}, val={len(self.val)})"


# ------------------------------------------------------------------ predefined folds / groups
def given_folds(
    clips: Sequence[Clip] | Dataset, *, val_folds: Iterable[str | int] | None = None
) -> list[Split]:
    """Splits from the clips' predefined folds.

    Parameters
    ----------
    clips : sequence of Clip or Dataset
    val_folds : iterable of str or int, optional
        ``None``: one split per fold (k-fold cross-validation, each fold validates once).
        Otherwise one split whose validation set is these folds and whose train set is the rest.

    Returns
    -------
    list of Split

    Raises
    ------
    DataError
        Some clips have no fold, or there are fewer than two folds.
    ConfigError
        ``val_folds`` names a fold that does not exist or leaves nothing to train on.
    """
    clips = _as_clips(clips)
    folds = _require_attribute(clips, "fold", fix="use a source with folds or a manifest with a "
                               "fold column, or use stratified_split / group_split instead")
    names = _natural_sorted(set(folds))
    if val_folds is None:
        return [_split_by(folds, {name}, name) for name in names]
    chosen = {str(f) for f in val_folds}
    unknown = sorted(chosen - set(names))
    if unknown or not chosen or chosen == set(names):
        raise ConfigError(
            f"val_folds={sorted(chosen)} is not a proper subset of the dataset's folds {names}; "
            "name one or more existing folds and leave at least one for training"
        )
    return [_split_by(folds, chosen, "+".join(_natural_sorted(chosen)))]


def leave_one_group_out(clips: Sequence[Clip] | Dataset) -> list[Split]:
    """One split per group: validate on that group, train on all others.

    Raises
    ------
    DataError
        Some clips have no group, or there are fewer than two groups.
    """
    clips = _as_clips(clips)
    groups = _require_attribute(clips, "group", fix="use a source that sets groups (speaker, "
                                "recording, location) or add a group column to the manifest")
    return [_split_by(groups, {g}, g) for g in _natural_sorted(set(groups))]


# ------------------------------------------------------------------ random splits
def stratified_split(
    clips: Sequence[Clip] | Dataset, *, val_fraction: float, seed: int
) -> Split:
    """A random split that keeps each class's proportion on both sides.

    Each class with at least two clips puts ``round(n * val_fraction)`` of them (at least one and
    at most ``n - 1``) into validation. Ignores groups: use :func:`group_split` when clips of one
    speaker or recording must stay together.

    Parameters
    ----------
    clips : sequence of Clip or Dataset
    val_fraction : float
        In (0, 1).
    seed : int
        The same seed gives the same split.

    Raises
    ------
    ConfigError
        ``val_fraction`` outside (0, 1).
    DataError
        Fewer than two clips.
    """
    clips = _as_clips(clips)
    _check_fraction(val_fraction)
    if len(clips) < 2:
        raise DataError(f"stratified_split needs at least 2 clips, got {len(clips)}")
    rng = np.random.default_rng(seed)
    val: list[int] = []
    for label in sorted({c.label for c in clips}):
        members = np.array([i for i, c in enumerate(clips) if c.label == label])
        if len(members) < 2:
            continue  # a singleton class can only train
        n_val = min(max(round(len(members) * val_fraction), 1), len(members) - 1)
        val.extend(rng.permutation(members)[:n_val].tolist())
    if not val:
        raise DataError("stratified_split: every class has a single clip, so none can validate; "
                        "add clips or use a larger dataset")
    return _from_val(len(clips), val, f"stratified({val_fraction:g}, seed={seed})")


def group_split(clips: Sequence[Clip] | Dataset, *, val_fraction: float, seed: int) -> Split:
    """A random group-disjoint split: all clips of a group land on the same side.

    Tries many random group orders (seeded), takes from each the prefix whose clip count is
    closest to the target, and keeps the candidate that, in order of priority, leaves the fewest
    classes missing from either side and puts the share of clips closest to ``val_fraction``
    into validation.

    Parameters
    ----------
    clips : sequence of Clip or Dataset
    val_fraction : float
        Target share of clips (not groups) in validation, in (0, 1).
    seed : int
        The same seed gives the same split.

    Raises
    ------
    ConfigError
        ``val_fraction`` outside (0, 1).
    DataError
        Clips without a group, or fewer than two groups.
    """
    clips = _as_clips(clips)
    _check_fraction(val_fraction)
    groups = _require_attribute(clips, "group", fix="set groups or use stratified_split")
    _, group_of = np.unique(np.array(groups, dtype=object), return_inverse=True)
    _, label_of = np.unique(np.array([c.label for c in clips], dtype=object), return_inverse=True)
    # Clips per (group, label): every candidate is scored from this table, not from the clips.
    table = np.zeros((group_of.max() + 1, label_of.max() + 1), dtype=np.int64)
    np.add.at(table, (group_of, label_of), 1)
    rng = np.random.default_rng(seed)
    best_key, best_groups = None, None
    for _ in range(_GROUP_SPLIT_TRIALS):
        val_groups = _closest_prefix(rng.permutation(len(table)), table.sum(1),
                                     target=val_fraction * len(clips))
        key = _score(table, val_groups, val_fraction)
        if best_key is None or key < best_key:
            best_key, best_groups = key, val_groups
    return _from_val(len(clips), np.flatnonzero(best_groups[group_of]),
                     f"group({val_fraction:g}, seed={seed})")


def unseen_device_split(clips: Sequence[Clip] | Dataset, *, val_devices: Iterable[str],
                        val_fraction: float, seed: int) -> Split:
    """A group-disjoint split whose training side never hears ``val_devices``.

    :func:`group_split` (by group: the city for the TAU sets, the recording elsewhere) chooses
    the validation groups; every clip of ``val_devices`` in the training groups is then dropped,
    so validation holds seen devices of unseen groups and unseen devices (the DCASE 2020 Task 1a
    question: does the model generalise to devices it never heard?). Dropped clips are in
    neither index array.

    Parameters
    ----------
    clips : sequence of Clip or Dataset
    val_devices : iterable of str
        Devices heard in validation only (e.g. ``["S4", "S5", "S6"]``).
    val_fraction, seed
        As in :func:`group_split`.

    Raises
    ------
    DataError
        Clips without a device or group.
    ConfigError
        ``val_devices`` names a device the clips do not have, or all of them.
    """
    clips = _as_clips(clips)
    devices = _require_attribute(clips, "device", fix="use a source that sets devices (tau2020-"
                                 "mobile, a manifest with a device column)")
    unseen = {str(d) for d in val_devices}
    known = _natural_sorted(set(devices))
    unknown = sorted(unseen - set(known))
    if unknown or not unseen or unseen >= set(known):
        raise ConfigError(f"val_devices={sorted(unseen)} must name some but not all of the "
                          f"devices {known}")
    split = group_split(clips, val_fraction=val_fraction, seed=seed)
    train = np.array([i for i in split.train.tolist() if devices[i] not in unseen],
                     dtype=np.int64)
    in_val = {devices[i] for i in split.val.tolist()}
    missing = sorted(unseen - in_val)
    if missing:
        raise DataError(f"unseen_devices: the validation groups hold no clip of {missing}; "
                        f"choose another data.split.seed or val_fraction")
    name = f"unseen_devices({'+'.join(_natural_sorted(unseen))}, {split.name})"
    return Split(name=name, train=train, val=split.val)


def _closest_prefix(order: np.ndarray, sizes: np.ndarray, *, target: float) -> np.ndarray:
    """Mask of the groups in the prefix of ``order`` whose clip count is closest to ``target``.

    The prefix holds at least one group and leaves at least one for training.
    """
    totals = np.cumsum(sizes[order])[:-1]
    k = int(np.argmin(np.abs(totals - target))) + 1
    chosen = np.zeros(len(sizes), dtype=bool)
    chosen[order[:k]] = True
    return chosen


def _score(table: np.ndarray, val_groups: np.ndarray, val_fraction: float) -> tuple[int, float]:
    """(classes missing from either side, distance of the val share from the target)."""
    in_val = table[val_groups].sum(0)
    in_train = table[~val_groups].sum(0)
    missing = int((in_val == 0).sum() + (in_train == 0).sum())
    return missing, abs(in_val.sum() / table.sum() - val_fraction)


# ------------------------------------------------------------------ helpers
def _as_clips(clips: Sequence[Clip] | Dataset) -> list[Clip]:
    return list(clips.clips if isinstance(clips, Dataset) else clips)


def _check_fraction(val_fraction: float) -> None:
    if not 0.0 < float(val_fraction) < 1.0:
        raise ConfigError(
            f"val_fraction={val_fraction!r} must lie strictly between 0 and 1, e.g. 0.2"
        )


def _require_attribute(clips: list[Clip], attribute: str, *, fix: str) -> list[str]:
    """The clips' ``fold`` / ``group`` values; every clip needs one and there must be >= 2."""
    values = [getattr(c, attribute) for c in clips]
    lacking = [c.path for c, v in zip(clips, values, strict=True) if v is None]
    if lacking:
        raise DataError(
            f"a {attribute}-based split needs a {attribute} on every clip, but {len(lacking)} of "
            f"{len(clips)} clips have none:\n{format_list(lacking)}\n{fix}"
        )
    distinct = set(values)
    if len(distinct) < 2:
        raise DataError(
            f"a {attribute}-based split needs at least two distinct {attribute}s, but all "
            f"{len(clips)} clips have {attribute}={next(iter(distinct), None)!r}; {fix}"
        )
    return values


def _split_by(values: list[str], val_values: set[str], name: str) -> Split:
    val = [i for i, v in enumerate(values) if v in val_values]
    return _from_val(len(values), val, name)


def _from_val(n: int, val: Iterable[int], name: str) -> Split:
    mask = np.zeros(n, dtype=bool)
    mask[list(val)] = True
    return Split(name=name, train=np.flatnonzero(~mask), val=np.flatnonzero(mask))


def _natural_sorted(values: Iterable[str]) -> list[str]:
    """Sort so that ``"fold2"`` comes before ``"fold10"``."""
    def key(text: str) -> list[tuple[int, int | str]]:
        return [(0, int(part)) if part.isdigit() else (1, part)
                for part in re.split(r"(\d+)", text) if part]
    return sorted(values, key=key)


def class_counts(clips: Sequence[Clip], indices: np.ndarray) -> Counter[str]:
    """Clips per label among ``indices`` (handy to inspect a split)."""
    return Counter(clips[i].label for i in indices.tolist())
