"""``xeno-canto:PATH`` - full-length xeno-canto recordings with their metadata.

Layout::

    PATH/mp3/{Genus}-{epithet}-{id}.mp3
    PATH/metadata.csv      Recording_ID,Genus,Specific_epithet,...,Country,Quality,...

Each recording is one clip of the whole file (cut it into windows with the audio config's
``segment`` section). label = the scientific species name ``"Genus epithet"`` (e.g.
``"Acrocephalus palustris"``): unambiguous, unlike English names, and the same across
xeno-canto's languages. group = the xeno-canto recording id, so windows of one recording never
straddle a split. ``meta`` is the recording's metadata row (country, quality, vocalization
type, recordist, license ...).

Decision: a recording without a metadata row, a metadata row without a recording, or a file
whose species disagrees with its row is a :class:`DataError` listing all of them, because the
metadata carries the license and attribution each recording needs.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from bitsound.data.records import Clip, Dataset, format_list
from bitsound.data.registry import register_dataset, require_dir, require_file
from bitsound.errors import DataError

_NAME = re.compile(r"^(?P<genus>[A-Z][a-z]+)-(?P<epithet>[a-z]+)-(?P<id>\d+)\.mp3$", re.IGNORECASE)
_COLUMNS = ("Recording_ID", "Genus", "Specific_epithet")
_EXPECTED = "a folder with mp3/{Genus}-{epithet}-{id}.mp3 and metadata.csv"


@register_dataset(
    "xeno-canto", description="xeno-canto recordings: mp3/{Genus}-{epithet}-{id}.mp3 + metadata.csv"
)
def open_xeno_canto(path: str) -> Dataset:
    """Open a xeno-canto download (see module docstring).

    Raises
    ------
    DataError
        Missing folder or CSV, bad file names, or files and metadata rows that do not match.
    """
    root = require_dir(path, kind="xeno-canto", expected=_EXPECTED)
    mp3_dir = require_dir(root / "mp3", kind="xeno-canto", expected=_EXPECTED)
    rows = _read_metadata(require_file(root / "metadata.csv", kind="xeno-canto",
                                       expected=_EXPECTED))
    files, problems = _scan_files(mp3_dir)
    problems += [f"recording {rid}: in metadata.csv but mp3/ has no file for it"
                 for rid in sorted(set(rows) - set(files))]

    clips: list[Clip] = []
    for rid, (file, species) in sorted(files.items(), key=lambda item: item[1][0].name):
        row = rows.get(rid)
        if row is None:
            problems.append(f"{file.name}: recording {rid} has no row in metadata.csv")
            continue
        label = f"{row['Genus']} {row['Specific_epithet']}"
        if label.lower() != species.lower():
            problems.append(f"{file.name}: file name says {species!r}, metadata.csv says {label!r}")
            continue
        clips.append(Clip(path=str(file), label=label, group=rid, meta=dict(row)))
    if problems:
        raise DataError(
            f"xeno-canto: '{root}' is inconsistent:\n{format_list(problems)}\n"
            "every mp3 needs exactly one metadata.csv row (it holds the license) and vice versa: "
            "restore the missing files or rows, or remove the extra ones"
        )
    if not clips:
        raise DataError(f"xeno-canto: no recordings in '{mp3_dir}'; expected {_EXPECTED}")
    return Dataset(kind="xeno-canto", root=str(root), clips=clips)


def _read_metadata(csv_path: Path) -> dict[str, dict[str, str]]:
    """Metadata rows keyed by recording id."""
    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in _COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(
                f"xeno-canto: '{csv_path}' lacks the column(s) {missing}; it needs at least "
                f"{', '.join(_COLUMNS)} as in xeno-canto's export"
            )
        rows: dict[str, dict[str, str]] = {}
        duplicates: list[str] = []
        for row in reader:
            clean = {k: (v or "").strip() for k, v in row.items() if k}
            rid = clean["Recording_ID"]
            if rid in rows:
                duplicates.append(f"line {reader.line_num}: recording {rid}")
            rows[rid] = clean
    if duplicates:
        raise DataError(f"xeno-canto: '{csv_path}' lists recordings twice:\n"
                        f"{format_list(duplicates)}\nkeep one row per recording")
    return rows


def _scan_files(mp3_dir: Path) -> tuple[dict[str, tuple[Path, str]], list[str]]:
    """Recordings by id as ``(file, "Genus epithet")``, and naming problems."""
    files: dict[str, tuple[Path, str]] = {}
    problems: list[str] = []
    for file in sorted(mp3_dir.iterdir()):
        if file.name.startswith("."):
            continue
        match = _NAME.match(file.name)
        if match is None or not file.is_file():
            problems.append(f"{file.name}: not named {{Genus}}-{{epithet}}-{{id}}.mp3")
        elif match["id"] in files:
            problems.append(f"{file.name}: recording {match['id']} appears twice")
        else:
            files[match["id"]] = (file, f"{match['genus']} {match['epithet']}")
    return files, problems
