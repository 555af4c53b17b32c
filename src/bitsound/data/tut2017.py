"""``tut2017:PATH`` - TUT Acoustic Scenes 2017 (development or evaluation set).

Reference: A. Mesaros, T. Heittola, T. Virtanen, "TUT database for acoustic scene
classification and sound event detection", EUSIPCO 2016.

Layout (the distributed one; ``../shared/data/tut2017-scenes`` has the same, without folds)::

    PATH/meta.txt                       audio/{recording}_{start}_{end}.wav<TAB>scene<TAB>recording
    PATH/audio/...
    PATH/evaluation_setup/fold{k}_evaluate.txt   (optional) audio/...<TAB>scene, k = 1..4

label = the scene (15 classes), group = the recording id (the 10-s clips of one recording share
its place and background, so splits must keep them together), fold = ``k`` of the
``fold{k}_evaluate.txt`` that lists the clip (the official 4-fold setup; each clip is evaluated
in exactly one fold), None without ``evaluation_setup/``. ``meta`` keeps ``recording``, and
``start``/``end`` seconds of the clip in its recording when the file name carries them.

``tut2017-3class:PATH`` is the same data with the indoor / outdoor / transportation labels of
DCASE 2020 Task 1b (:data:`THREE_CLASS`), through :func:`~bitsound.data.combine.relabel`.
``?missing=skip`` uses the rows whose audio file is present.
"""

from __future__ import annotations

import re
from pathlib import Path

from bitsound.data.combine import relabel
from bitsound.data.listed import MISSING_OPTION, check_missing, present, read_table
from bitsound.data.records import Clip, Dataset, format_list
from bitsound.data.registry import register_dataset, require_dir, require_file
from bitsound.errors import DataError

_EXPECTED = "the TUT Acoustic Scenes 2017 root: meta.txt (file<TAB>scene<TAB>recording) + audio/"
_SPAN = re.compile(r"^(?P<recording>.+)_(?P<start>\d+(?:\.\d+)?)_(?P<end>\d+(?:\.\d+)?)$")
_FOLD_FILE = re.compile(r"^fold(?P<fold>\d+)_evaluate\.txt$")

#: DCASE 2020 Task 1b's grouping of the 15 TUT 2017 scenes (../shared/data/tut2017-scenes).
THREE_CLASS = {
    "cafe/restaurant": "indoor", "grocery_store": "indoor", "home": "indoor",
    "library": "indoor", "office": "indoor", "metro_station": "indoor",
    "beach": "outdoor", "city_center": "outdoor", "forest_path": "outdoor", "park": "outdoor",
    "residential_area": "outdoor",
    "bus": "transportation", "car": "transportation", "train": "transportation",
    "tram": "transportation",
}


@register_dataset("tut2017", description="TUT Acoustic Scenes 2017: meta.txt + audio/ (+ "
                  "evaluation_setup/ folds); 15 scenes, group = recording", options=MISSING_OPTION)
def open_tut2017(path: str, *, missing: str = "error") -> Dataset:
    """Open TUT Acoustic Scenes 2017 (see module docstring).

    Raises
    ------
    DataError
        Missing meta.txt, malformed rows, a clip listed twice, fold files that disagree with
        meta.txt, or listed audio that is absent (unless ``missing=skip``).
    """
    check_missing(missing, kind="tut2017")
    root = require_dir(path, kind="tut2017", expected=_EXPECTED)
    meta_path = require_file(root / "meta.txt", kind="tut2017", expected=_EXPECTED)
    rows = read_table(meta_path, kind="tut2017", columns=("file", "scene", "recording"),
                      delimiter="\t", header=False)
    _check_rows(rows, meta_path)
    folds = _read_folds(root, {row["file"]: row["scene"] for row in rows})
    paths = [root / row["file"] for row in rows]
    flags = present(paths, kind="tut2017", listing=meta_path, missing=missing)
    clips = []
    for row, file, ok in zip(rows, paths, flags, strict=True):
        if not ok:
            continue
        meta = {"recording": row["recording"]}
        span = _SPAN.match(Path(row["file"]).stem)
        if span is not None:
            meta.update(start=float(span["start"]), end=float(span["end"]))
        clips.append(Clip(path=str(file), label=row["scene"], fold=folds.get(row["file"]),
                          group=row["recording"], meta=meta))
    clips.sort(key=lambda clip: clip.path)
    return Dataset(kind="tut2017", root=str(root), clips=clips)


@register_dataset("tut2017-3class", description="tut2017 with the DCASE 2020 1b labels indoor / "
                  "outdoor / transportation", options=MISSING_OPTION)
def open_tut2017_3class(path: str, *, missing: str = "error") -> Dataset:
    """TUT Acoustic Scenes 2017 with :data:`THREE_CLASS` labels (original in meta)."""
    return relabel(open_tut2017(path, missing=missing), THREE_CLASS, kind="tut2017-3class")


def _check_rows(rows: list[dict[str, str]], meta_path: Path) -> None:
    bad = [f"{row['file'] or '(no file)'}: scene {row['scene']!r}, recording "
           f"{row['recording']!r}" for row in rows
           if not row["file"] or not row["scene"] or not row["recording"]]
    seen: set[str] = set()
    for row in rows:
        if row["file"] in seen:
            bad.append(f"{row['file']}: listed twice")
        seen.add(row["file"])
    if bad:
        raise DataError(f"tut2017: rows of '{meta_path}' with an empty field or listed twice:\n"
                        f"{format_list(bad)}\nrestore the data set's meta.txt")


def _read_folds(root: Path, scene_of: dict[str, str]) -> dict[str, str]:
    """Clip file -> fold from ``evaluation_setup/fold{k}_evaluate.txt``, checked against meta."""
    setup = root / "evaluation_setup"
    if not setup.is_dir():
        return {}
    fold_of: dict[str, str] = {}
    problems: list[str] = []
    files = sorted(p for p in setup.iterdir() if _FOLD_FILE.match(p.name))
    for fold_file in files:
        fold = _FOLD_FILE.match(fold_file.name)["fold"]
        for row in read_table(fold_file, kind="tut2017", columns=("file", "scene"),
                              delimiter="\t", header=False):
            name = row["file"]
            if name not in scene_of:
                problems.append(f"{fold_file.name}: {name} is not in meta.txt")
            elif scene_of[name] != row["scene"]:
                problems.append(f"{fold_file.name}: {name} is {row['scene']!r} here but "
                                f"{scene_of[name]!r} in meta.txt")
            elif name in fold_of:
                problems.append(f"{fold_file.name}: {name} is also evaluated in fold "
                                f"{fold_of[name]}")
            else:
                fold_of[name] = fold
    if problems:
        raise DataError(f"tut2017: '{setup}' disagrees with meta.txt:\n{format_list(problems)}\n"
                        "restore the data set's evaluation_setup/ or remove it to read meta.txt "
                        "without folds")
    return fold_of
