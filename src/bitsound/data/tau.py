"""TAU Urban Acoustic Scenes 2019 / 2020 Mobile / 2022 Mobile (DCASE Task 1 development sets).

References: T. Heittola, A. Mesaros, T. Virtanen, "Acoustic scene classification in DCASE 2020
challenge: generalization across devices and low complexity solutions", DCASE 2020 workshop;
A. Mesaros et al., "A multi-device dataset for urban acoustic scene classification", DCASE 2018.

Layout (all three years; PATH is the ``*-development`` folder or a folder holding exactly one)::

    PATH/meta.csv       filename<TAB>scene_label<TAB>identifier<TAB>source_label
    PATH/audio/{scene}-{city}-{location}-{segment}[-{subsegment}]-{device}.wav
    PATH/evaluation_setup/fold1_train.csv, fold1_evaluate.csv   filename<TAB>scene_label

label = ``scene_label``; device = the file name's last part, upper-cased (``A``, ``B``, ``C``,
``S1`` ... ``S6``), checked against ``source_label``; group = the city (second part of the file
name), so a group split or ``leave_one_group_out`` is leave-one-city-out; ``meta`` keeps
``location`` (the ``identifier``, e.g. ``barcelona-0``) and ``city``.

The official setup (``setup=fold1``, the default when ``evaluation_setup/`` exists): fold =
``train`` or ``evaluate`` by the fold1 lists, and the clips of ``meta.csv`` that neither list
holds are left out, as DCASE does (a log line gives their number); ``data.split: {kind: folds,
val_folds: [evaluate]}`` is then the official split, with devices S4-S6 heard in evaluation
only. ``setup=none`` reads every clip of ``meta.csv`` without folds. 2022's 1-second clips carry
a sub-segment number in their names; otherwise the three years have the same shape.

``tau2020-3class:PATH`` gives DCASE 2020 Task 1b's classes: a ``scene_label`` that already is
indoor / outdoor / transportation (the "TAU Urban Acoustic Scenes 2020 3Class" set) stays, and
the ten scenes of the other sets map through :data:`THREE_CLASS`.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from bitsound.data.combine import relabel
from bitsound.data.listed import MISSING_OPTION, check_missing, present, read_table
from bitsound.data.records import Clip, Dataset, format_list
from bitsound.data.registry import choice, register_dataset, require_dir
from bitsound.errors import DataError

log = logging.getLogger("bitsound.data")

_META_COLUMNS = ("filename", "scene_label", "identifier", "source_label")
_NAME = re.compile(r"^(?P<scene>[a-z_]+)-(?P<city>[a-z]+)-(?P<rest>[\d-]+)-(?P<device>[a-z]\d?)$")
_OPTIONS = {**MISSING_OPTION,
            "setup": "'fold1' (default when evaluation_setup/ exists: the official train / "
                     "evaluate folds) or 'none' (every clip of meta.csv, no folds)"}

#: DCASE 2020 Task 1b's grouping of the ten TAU urban scenes.
THREE_CLASS = {
    "airport": "indoor", "shopping_mall": "indoor", "metro_station": "indoor",
    "park": "outdoor", "public_square": "outdoor", "street_pedestrian": "outdoor",
    "street_traffic": "outdoor",
    "bus": "transportation", "metro": "transportation", "tram": "transportation",
}
_THREE = ("indoor", "outdoor", "transportation")


def _register(kind: str, title: str) -> None:
    def factory(path: str, *, missing: str = "error", setup: str = "fold1") -> Dataset:
        return open_tau(path, kind=kind, missing=missing, setup=setup)

    factory.__doc__ = f"Open {title} (see :mod:`bitsound.data.tau`)."
    register_dataset(kind, description=f"{title}: meta.csv + audio/ (+ evaluation_setup/fold1); "
                     "device from the file name, group = city", options=_OPTIONS)(factory)


_register("tau2019", "TAU Urban Acoustic Scenes 2019 (also its Mobile set)")
_register("tau2020-mobile", "TAU Urban Acoustic Scenes 2020 Mobile")
_register("tau2022-mobile", "TAU Urban Acoustic Scenes 2022 Mobile (1-s clips)")


@register_dataset("tau2020-3class", description="any TAU scenes layout with DCASE 2020 1b labels "
                  "indoor / outdoor / transportation", options=_OPTIONS)
def open_tau2020_3class(path: str, *, missing: str = "error", setup: str = "fold1") -> Dataset:
    """A TAU scenes set with DCASE 2020 Task 1b's three classes (see module docstring)."""
    dataset = open_tau(path, kind="tau2020-3class", missing=missing, setup=setup)
    mapping = {**THREE_CLASS, **{label: label for label in _THREE}}
    return relabel(dataset, mapping, kind="tau2020-3class")


def open_tau(path: str, *, kind: str, missing: str = "error", setup: str = "fold1") -> Dataset:
    """Open a TAU Urban Acoustic Scenes development set.

    Parameters
    ----------
    path : str
        The development folder (with ``meta.csv``), or a folder holding exactly one.
    kind : str
        The registered kind, for messages and ``Dataset.kind``.
    missing : {"error", "skip"}
        What to do with rows whose audio is absent.
    setup : {"fold1", "none"}
        Official train/evaluate folds (when ``evaluation_setup/`` exists) or none.

    Raises
    ------
    DataError
        No ``meta.csv``, malformed rows or file names (all listed), a device that disagrees
        with ``source_label``, fold lists that disagree with ``meta.csv``, or absent audio.
    """
    check_missing(missing, kind=kind)
    choice(setup, option="setup", kind=kind, valid=("fold1", "none"))
    root = _development_root(path, kind=kind)
    meta_path = root / "meta.csv"
    rows = read_table(meta_path, kind=kind, columns=_META_COLUMNS, delimiter="\t")
    parsed = _parse_rows(rows, meta_path, kind=kind)
    folds = _read_setup(root, rows, kind=kind, missing=missing) if setup == "fold1" else None
    if folds is not None:
        kept = [p for p in parsed if p["filename"] in folds]
        if len(kept) < len(parsed):
            log.info("%s: the official fold1 setup uses %d of the %d clips of '%s'; the other %d "
                     "are left out as in DCASE (setup=none reads them all)", kind, len(kept),
                     len(parsed), meta_path, len(parsed) - len(kept))
        parsed = kept
    paths = [root / p["filename"] for p in parsed]
    flags = present(paths, kind=kind, listing=meta_path, missing=missing)
    clips = [
        Clip(path=str(file), label=p["scene_label"], fold=folds[p["filename"]] if folds else None,
             group=p["city"], device=p["device"],
             meta={"location": p["identifier"], "city": p["city"]})
        for p, file, ok in zip(parsed, paths, flags, strict=True) if ok
    ]
    clips.sort(key=lambda clip: clip.path)
    return Dataset(kind=kind, root=str(root), clips=clips)


def _development_root(path: str, *, kind: str) -> Path:
    expected = "a TAU development folder with meta.csv and audio/, or a folder holding one"
    root = require_dir(path, kind=kind, expected=expected)
    if (root / "meta.csv").is_file():
        return root
    candidates = sorted(p for p in root.iterdir() if p.is_dir() and (p / "meta.csv").is_file())
    if len(candidates) == 1:
        return candidates[0]
    found = ", ".join(p.name for p in candidates) or "none"
    raise DataError(f"{kind}: '{root}' has no meta.csv, and {len(candidates)} of its folders "
                    f"have one ({found}); give the development folder itself")


def _parse_rows(rows: list[dict[str, str]], meta_path: Path, *, kind: str) -> list[dict]:
    parsed, bad = [], []
    for number, row in enumerate(rows, start=2):
        name = Path(row["filename"]).stem
        match = _NAME.match(name)
        if match is None:
            bad.append(f"line {number}: {row['filename']!r} is not "
                       "audio/{scene}-{city}-{location}-{segment}-{device}.wav")
            continue
        device = match["device"]
        if row["source_label"].lower() != device:
            bad.append(f"line {number}: {row['filename']} names device {device!r} but "
                       f"source_label is {row['source_label']!r}")
            continue
        if not row["scene_label"]:
            bad.append(f"line {number}: {row['filename']} has an empty scene_label")
            continue
        parsed.append({**row, "device": device.upper(), "city": match["city"]})
    if bad:
        raise DataError(f"{kind}: rows of '{meta_path}' that cannot be read:\n{format_list(bad)}\n"
                        "restore the data set's meta.csv")
    # A row repeated verbatim is harmless (the 2019 fixture has some): keep one, say so.
    unique: dict[str, dict] = {}
    clashes, repeats = [], 0
    for p in parsed:
        first = unique.setdefault(p["filename"], p)
        if first is not p:
            repeats += 1
            if first != p:
                clashes.append(f"{p['filename']}: {first['scene_label']}/{first['identifier']} "
                               f"and {p['scene_label']}/{p['identifier']}")
    if clashes:
        raise DataError(f"{kind}: '{meta_path}' lists these files twice with different "
                        f"labels:\n{format_list(clashes)}\nrestore the data set's meta.csv")
    if repeats:
        log.info("%s: '%s' repeats %d rows verbatim; each file is read once", kind, meta_path,
                 repeats)
    return list(unique.values())


def _read_setup(root: Path, rows: list[dict[str, str]], *, kind: str,
                missing: str) -> dict[str, str] | None:
    """filename -> "train" / "evaluate" from ``evaluation_setup/fold1_*.csv``; None without it."""
    setup = root / "evaluation_setup"
    lists = {fold: setup / f"fold1_{fold}.csv" for fold in ("train", "evaluate")}
    if not all(p.is_file() for p in lists.values()):
        log.info("%s: no evaluation_setup/fold1_{train,evaluate}.csv in '%s'; reading every clip "
                 "of meta.csv without folds", kind, root)
        return None
    scene_of = {row["filename"]: row["scene_label"] for row in rows}
    fold_of: dict[str, str] = {}
    problems, unknown = [], []
    for fold, list_path in lists.items():
        for row in read_table(list_path, kind=kind, columns=("filename", "scene_label"),
                              delimiter="\t"):
            name = row["filename"]
            if name not in scene_of:
                unknown.append(f"{list_path.name}: {name}")
            elif scene_of[name] != row["scene_label"]:
                problems.append(f"{list_path.name}: {name} is {row['scene_label']!r} here but "
                                f"{scene_of[name]!r} in meta.csv")
            elif name in fold_of:
                problems.append(f"{list_path.name}: {name} is also in fold1_{fold_of[name]}.csv")
            else:
                fold_of[name] = fold
    if unknown and missing == "error":
        problems += [f"{item} is not in meta.csv" for item in unknown]
    if problems:
        raise DataError(f"{kind}: '{setup}' disagrees with meta.csv:\n{format_list(problems)}\n"
                        "restore the data set's files, or use ?setup=none to read meta.csv alone")
    if unknown:
        log.info("%s: missing=skip leaves out %d rows of evaluation_setup/ that meta.csv does not "
                 "list (first: %s)", kind, len(unknown), unknown[0])
    return fold_of
