"""Helpers for sources whose clips are listed in a metadata file (CSV or TUT/TAU text lists).

A metadata file can list audio that is not on disk: a data set distributed in several archives
of which only some were downloaded, or the layout fixtures of ``../shared/data/layouts``. By
default that is an error listing the absent files; the spec option ``missing=skip`` keeps the
rows whose audio is present and says in one log line how many were left out.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path

from bitsound.data.records import format_list
from bitsound.data.registry import choice
from bitsound.errors import DataError

log = logging.getLogger("bitsound.data")

#: The ``missing`` option of every listed source, for :func:`register_dataset`.
MISSING_OPTION = {
    "missing": "'error' (default) or 'skip': rows whose audio file is absent stop the reader, or "
               "are left out with one log line (a partial download)",
}


def check_missing(value: str, *, kind: str) -> str:
    """Validate the ``missing`` option."""
    return choice(value, option="missing", kind=kind, valid=("error", "skip"))


def present(paths: Sequence[Path], *, kind: str, listing: Path, missing: str) -> list[bool]:
    """Which listed audio files exist.

    Parameters
    ----------
    paths : sequence of Path
        The audio files the metadata file lists, resolved.
    kind : str
        The dataset kind, for messages.
    listing : Path
        The metadata file, for messages.
    missing : {"error", "skip"}

    Returns
    -------
    list of bool
        One flag per path (all True unless ``missing="skip"``).

    Raises
    ------
    DataError
        ``missing="error"`` and some files are absent (all listed), or every file is absent.
    """
    flags = [path.is_file() for path in paths]
    absent = [str(path) for path, ok in zip(paths, flags, strict=True) if not ok]
    if absent and missing == "error":
        raise DataError(
            f"{kind}: {len(absent)} of the {len(paths)} audio files listed in '{listing}' are "
            f"missing:\n{format_list(absent)}\ndownload the missing parts of the data set, or add "
            f"?missing=skip to the spec to use only the files present"
        )
    if absent and len(absent) == len(paths):
        raise DataError(f"{kind}: none of the {len(paths)} audio files listed in '{listing}' "
                        f"exists (e.g. '{absent[0]}'); check the data set root")
    if absent:
        log.info("%s: missing=skip leaves out %d of the %d rows of '%s' whose audio is not on "
                 "disk (first: %s)", kind, len(absent), len(paths), listing, absent[0])
    return flags


def read_table(path: Path, *, kind: str, columns: Sequence[str], delimiter: str = ",",
               header: bool = True) -> list[dict[str, str]]:
    """Rows of a delimited metadata file as dicts of stripped strings.

    With ``header=False`` the file has no header line and ``columns`` name its fields in order;
    trailing fields beyond them are ignored, and a row with fewer fields is an error. Blank
    lines are skipped.

    Raises
    ------
    DataError
        The file lacks a column, or a row lacks a field (all such rows listed).
    """
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        lines = [(number, row) for number, row in enumerate(reader, start=1)
                 if any(field.strip() for field in row)]
    if header:
        if not lines:
            raise DataError(f"{kind}: '{path}' is empty; expected a header with {', '.join(columns)}")
        names = [name.strip() for name in lines[0][1]]
        lacking = [c for c in columns if c not in names]
        if lacking:
            raise DataError(f"{kind}: '{path}' lacks the column(s) {lacking} (found {names}); "
                            f"restore the data set's original file")
        positions = [names.index(c) for c in columns]
        lines = lines[1:]
    else:
        positions = list(range(len(columns)))
    rows, short = [], []
    for number, row in lines:
        if len(row) <= max(positions):
            short.append(f"line {number}: {delimiter.join(row)!r}")
            continue
        rows.append({c: row[i].strip() for c, i in zip(columns, positions, strict=True)})
    if short:
        raise DataError(f"{kind}: rows of '{path}' with fewer fields than {list(columns)}:\n"
                        f"{format_list(short)}\nrepair them from the data set's original file")
    return rows
