"""ESC-10 / ESC-50 environmental sounds, in both published layouts.

Reference: K. J. Piczak, "ESC: Dataset for Environmental Sound Classification",
ACM Multimedia 2015.

``esc10-2015:PATH`` - the original 2015 ESC-10 release::

    PATH/NNN - Class name/{fold}-{freesound_id}-{take}.ogg

label = the class name (``"Dog bark"``), fold = the first character of the file name,
group = the Freesound source id (all takes cut from one source recording).

``esc50:PATH`` - today's ESC-50 distribution::

    PATH/audio/{fold}-{src}-{take}-{target}.wav
    PATH/meta/esc50.csv    filename,fold,target,category,esc10,src_file,take

label = ``category``, fold = ``fold``, group = ``src_file``. ``esc10:PATH`` is the same layout
restricted to the rows whose ``esc10`` column is ``True``.

Class subsets (seed 001, Mohaimenuzzaman et al., "Pruning vs XNOR-Net", section IV-A): the
ESC-50 data set's :attr:`~bitsound.data.records.Dataset.class_order` lists the classes so that
its first N are the paper's S_N (``data.classes: 20`` in a recipe selects S20):

- S10 = ESC-10 (targets 0, 10, 11, 20, 38, 21, 40, 41, 1, 12, the order of the authors' code),
- S20 = S10 + {5, 31, 18, 27, 48, 8, 15, 45, 25, 34},
- S30 = S20 + {3, 14, 23, 36, 43, 7, 22, 28, 30, 49},
- S40 = S30 + {6, 9, 16, 17, 24, 29, 32, 35, 37, 44},
- S50 = ESC-50 (the 10 targets left, in ascending order).

The targets are ESC-50's ``target`` column; their names come from ``esc50.csv``.

In both layouts every audio file must be accounted for: files that do not match the naming
scheme (2015) or that are missing from / extra to ``esc50.csv`` are a :class:`DataError` that
lists them (``esc50:PATH?missing=skip`` uses the rows whose file is present, for a partial
copy). Names starting with ``.`` and plain files at the top level (README) are ignored.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from bitsound.data.listed import MISSING_OPTION, check_missing, present
from bitsound.data.records import Clip, Dataset, format_list
from bitsound.data.registry import register_dataset, require_dir, require_file
from bitsound.errors import DataError

#: Seed 001's class subsets as ESC-50 targets: S_N is the first N (see the module docstring).
SUBSET_TARGETS: tuple[int, ...] = (
    0, 10, 11, 20, 38, 21, 40, 41, 1, 12,
    5, 31, 18, 27, 48, 8, 15, 45, 25, 34,
    3, 14, 23, 36, 43, 7, 22, 28, 30, 49,
    6, 9, 16, 17, 24, 29, 32, 35, 37, 44,
    2, 4, 13, 19, 26, 33, 39, 42, 46, 47,
)

_CLASS_DIR = re.compile(r"^(?P<class_id>\d{3}) - (?P<name>.+)$")
_CLIP_2015 = re.compile(r"^(?P<fold>\d)-(?P<source>\d+)-(?P<take>[A-Za-z])\.ogg$")
_ESC50_COLUMNS = ("filename", "fold", "target", "category", "esc10", "src_file", "take")
_EXPECTED_2015 = "the ESC-10 2015 release: folders 'NNN - Class name' of {fold}-{id}-{take}.ogg"
_EXPECTED_50 = "the ESC-50 root with audio/*.wav and meta/esc50.csv"


# ------------------------------------------------------------------ ESC-10, 2015 layout
@register_dataset(
    "esc10-2015", description="ESC-10 2015 release: 'NNN - Class'/{fold}-{id}-{take}.ogg"
)
def open_esc10_2015(path: str) -> Dataset:
    """Open the 2015 ESC-10 release (see module docstring).

    Raises
    ------
    DataError
        Missing folder, no class folders, unexpected folders or file names (all listed).
    """
    root = require_dir(path, kind="esc10-2015", expected=_EXPECTED_2015)
    dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    bad = [f"{d.name}/ (not 'NNN - Class name')" for d in dirs if not _CLASS_DIR.match(d.name)]
    clips: list[Clip] = []
    for class_dir in dirs:
        match = _CLASS_DIR.match(class_dir.name)
        if match is not None:
            clips.extend(_clips_2015(class_dir, match["name"], match["class_id"], bad))
    if bad:
        raise DataError(
            f"esc10-2015: unexpected entries in '{root}':\n{format_list(bad)}\n"
            f"expected {_EXPECTED_2015}; rename or remove them"
        )
    if not clips:
        raise DataError(f"esc10-2015: no clips in '{root}'; expected {_EXPECTED_2015}")
    return Dataset(kind="esc10-2015", root=str(root), clips=clips)


def _clips_2015(class_dir: Path, label: str, class_id: str, bad: list[str]) -> list[Clip]:
    clips = []
    for file in sorted(class_dir.iterdir()):
        if file.name.startswith("."):
            continue
        match = _CLIP_2015.match(file.name)
        if match is None or not file.is_file():
            bad.append(f"{class_dir.name}/{file.name}")
            continue
        clips.append(Clip(
            path=str(file),
            label=label,
            fold=match["fold"],
            group=match["source"],
            meta={"class_id": class_id, "take": match["take"]},
        ))
    return clips


# ------------------------------------------------------------------ ESC-50 layout
@register_dataset("esc50", description="ESC-50: audio/*.wav + meta/esc50.csv (label = category; "
                  "data.classes: N gives seed 001's subset S_N)", options=MISSING_OPTION)
def open_esc50(path: str, *, missing: str = "error") -> Dataset:
    """Open today's ESC-50 layout (see module docstring).

    Raises
    ------
    DataError
        Missing folders or CSV, missing columns, or files and CSV rows that do not match.
    """
    return _open_esc50_layout(path, kind="esc50", esc10_only=False, missing=missing)


@register_dataset("esc10", description="ESC-10 subset of the ESC-50 layout (rows with esc10=True)",
                  options=MISSING_OPTION)
def open_esc10(path: str, *, missing: str = "error") -> Dataset:
    """Open the ESC-10 subset of an ESC-50 tree (rows whose ``esc10`` column is True)."""
    return _open_esc50_layout(path, kind="esc10", esc10_only=True, missing=missing)


def _open_esc50_layout(path: str, *, kind: str, esc10_only: bool, missing: str) -> Dataset:
    check_missing(missing, kind=kind)
    root = require_dir(path, kind=kind, expected=_EXPECTED_50)
    audio_dir = require_dir(root / "audio", kind=kind, expected=_EXPECTED_50)
    csv_path = require_file(root / "meta" / "esc50.csv", kind=kind, expected=_EXPECTED_50)
    rows = _read_esc50_csv(csv_path)
    order = _class_order(rows, csv_path)
    files = {p.name for p in audio_dir.iterdir() if p.is_file() and not p.name.startswith(".")}
    listed = {row["filename"] for row in rows}
    if missing == "skip":
        flags = present([audio_dir / row["filename"] for row in rows], kind=kind,
                        listing=csv_path, missing=missing)
        rows = [row for row, ok in zip(rows, flags, strict=True) if ok]
        listed = {row["filename"] for row in rows}
    _check_files_match(csv_path, audio_dir, files, listed)

    clips = [
        Clip(
            path=str(audio_dir / row["filename"]),
            label=row["category"],
            fold=row["fold"],
            group=row["src_file"],
            meta={"target": int(row["target"]), "take": row["take"], "esc10": row["esc10"]},
        )
        for row in sorted(rows, key=lambda r: r["filename"])
        if not esc10_only or row["esc10"].lower() == "true"
    ]
    if not clips:
        raise DataError(f"{kind}: '{csv_path}' selects no clips; check its esc10/category columns")
    dataset = Dataset(kind=kind, root=str(root), clips=clips)
    if order is not None:
        dataset.class_order = order[:10] if esc10_only else order
    return dataset


def _class_order(rows: list[dict[str, str]], csv_path: Path) -> tuple[str, ...] | None:
    """Category names in seed 001's subset order, from the CSV's target -> category pairs.

    None when the CSV does not name all 50 targets (a cut-down CSV): no subset order then.
    """
    names: dict[int, set[str]] = {}
    for row in rows:
        names.setdefault(int(row["target"]), set()).add(row["category"])
    clashes = [f"target {t}: {sorted(n)}" for t, n in sorted(names.items()) if len(n) > 1]
    if clashes:
        raise DataError(f"esc50: '{csv_path}' names a target with several categories:\n"
                        f"{format_list(clashes)}\nrestore the original ESC-50 esc50.csv")
    if set(names) != set(SUBSET_TARGETS):
        return None
    return tuple(next(iter(names[t])) for t in SUBSET_TARGETS)


def _read_esc50_csv(csv_path: Path) -> list[dict[str, str]]:
    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in _ESC50_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(
                f"esc50: '{csv_path}' lacks the column(s) {missing}; the ESC-50 meta file has "
                f"the header {','.join(_ESC50_COLUMNS)}"
            )
        rows = [{k: (v or "").strip() for k, v in row.items() if k} for row in reader]
    bad = [
        f"line {i + 2}: {row['filename'] or '(empty filename)'}"
        for i, row in enumerate(rows)
        if not row["filename"] or not row["category"] or not row["target"].isdigit()
    ]
    if bad:
        raise DataError(
            f"esc50: rows of '{csv_path}' with an empty filename/category or a non-integer "
            f"target:\n{format_list(bad)}\nrepair them from the original ESC-50 esc50.csv"
        )
    return rows


def _check_files_match(csv_path: Path, audio_dir: Path, files: set[str], listed: set[str]) -> None:
    problems = [f"{name}: listed in esc50.csv but not in audio/" for name in sorted(listed - files)]
    problems += [f"{name}: in audio/ but not in esc50.csv" for name in sorted(files - listed)]
    if problems:
        raise DataError(
            f"esc50: '{audio_dir}' and '{csv_path}' disagree:\n{format_list(problems)}\n"
            "restore the missing files, add the extra files to the CSV, or move them elsewhere"
        )
