"""``manifest:FILE.csv`` - a CSV file that lists the clips.

Columns:

========  ========  ====================================================================
column    required  meaning
========  ========  ====================================================================
path      yes       audio file; a relative path is resolved against the CSV's folder
label     yes       class name (non-empty)
fold      no        predefined fold (empty: none)
group     no        speaker / recording / location (empty: none)
device    no        recording device (empty: none)
start     no        segment start in seconds (empty: 0)
end       no        segment end in seconds (empty: end of file); must be > start
========  ========  ====================================================================

Any other column is kept in ``Clip.meta``. Every row problem is collected and reported in one
:class:`DataError` that names the CSV, the line and the fix.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

from bitsound.data.records import Clip, Dataset, format_list
from bitsound.data.registry import register_dataset, require_file
from bitsound.errors import DataError

REQUIRED = ("path", "label")
OPTIONAL = ("fold", "group", "device", "start", "end")
_EXPECTED = "a CSV file with a header row and at least the columns path,label"


@register_dataset(
    "manifest", description="CSV file with columns path,label[,fold,group,device,start,end]"
)
def open_manifest(path: str) -> Dataset:
    """Open a CSV manifest.

    Parameters
    ----------
    path : str
        The CSV file (UTF-8, optional byte-order mark).

    Returns
    -------
    Dataset

    Raises
    ------
    DataError
        Missing file, missing columns, or bad rows (all of them listed at once).
    """
    csv_path = require_file(path, kind="manifest", expected=_EXPECTED)
    try:
        return _read(csv_path)
    except UnicodeDecodeError as err:
        raise DataError(f"manifest '{csv_path}' is not UTF-8 text (byte {err.start}: {err.reason}); "
                        "save it as UTF-8 CSV") from None
    except csv.Error as err:
        raise DataError(f"manifest '{csv_path}' is not a readable CSV file ({err}); check its quotes "
                        "and separators (comma-separated, a header line first)") from None


def _read(csv_path: Path) -> Dataset:
    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        _check_columns(csv_path, columns)
        reader.fieldnames = columns  # tolerate " label" style headers
        clips: list[Clip] = []
        problems: list[str] = []
        for row in reader:
            clip, row_problems = _parse_row(row, csv_path.parent)
            problems.extend(f"line {reader.line_num}: {p}" for p in row_problems)
            if clip is not None:
                clips.append(clip)
    if problems:
        raise DataError(
            f"manifest '{csv_path}' has {len(problems)} problem(s):\n{format_list(problems)}\n"
            "fix these rows (paths are relative to the CSV's folder, labels must be non-empty, "
            "start/end are seconds with end > start) or remove them"
        )
    if not clips:
        raise DataError(f"manifest '{csv_path}' has a header but no rows; add one row per clip")
    return Dataset(kind="manifest", root=str(csv_path), clips=clips)


def _check_columns(csv_path: Path, columns: list[str]) -> None:
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        raise DataError(
            f"manifest '{csv_path}' lacks the column(s) {missing} (found {columns}); the first "
            f"line must be a header with {', '.join(REQUIRED)} and optionally "
            f"{', '.join(OPTIONAL)}"
        )
    duplicated = sorted({c for c in columns if columns.count(c) > 1})
    if duplicated:
        raise DataError(f"manifest '{csv_path}' repeats the column(s) {duplicated}; keep one each")


def _parse_row(row: dict[str, str | None], base: Path) -> tuple[Clip | None, list[str]]:
    """A clip from one CSV row, or None and the row's problems."""
    if None in row:
        return None, [f"more fields than header columns: {row[None]}"]  # type: ignore[index]
    values = {k: (v or "").strip() for k, v in row.items()}
    problems: list[str] = []
    label = values["label"]
    if not label:
        problems.append("empty label")
    file_path = _resolve(values["path"], base, problems)
    start = _seconds(values.get("start", ""), "start", problems)
    end = _seconds(values.get("end", ""), "end", problems)
    if start is not None and end is not None and end <= start:
        problems.append(f"end ({end:g} s) must be greater than start ({start:g} s)")
    if problems:
        return None, problems
    meta = {k: v for k, v in values.items() if k not in REQUIRED + OPTIONAL}
    return Clip(
        path=str(file_path),
        label=label,
        fold=values.get("fold") or None,
        group=values.get("group") or None,
        device=values.get("device") or None,
        start=start,
        end=end,
        meta=meta,
    ), []


def _resolve(text: str, base: Path, problems: list[str]) -> Path | None:
    if not text:
        problems.append("empty path")
        return None
    path = Path(os.path.expanduser(text))
    path = path if path.is_absolute() else base / path
    if not path.is_file():
        problems.append(f"audio file '{path}' does not exist")
        return None
    return path


def _seconds(text: str, name: str, problems: list[str]) -> float | None:
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        problems.append(f"{name} {text!r} is not a number of seconds")
        return None
    if not math.isfinite(value) or value < 0:
        problems.append(f"{name} {text!r} must be a finite number of seconds >= 0")
        return None
    return value
