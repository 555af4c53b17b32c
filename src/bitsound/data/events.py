"""Sound event annotations: read and write them, and turn them into window labels.

Four annotation formats are read into ``{filename: [Event, ...]}``:

``dcase``
    DCASE tab-separated values, a header ``filename  onset  offset  event_label`` (DCASE 2017+,
    DESED, the output of ``bitsound detect``). A row with a file name and empty times names a
    file annotated with no event.
``audacity``
    An Audacity label track export: ``start  end  label`` per line; the ``\\  f_low  f_high``
    lines of spectral selections are read and ignored. Also the layout of URBAN-SED ``.txt``
    files and the ``non_verified`` TUT Sound Events annotations.
``raven``
    A Raven (Cornell) selection table: tab-separated with a header naming ``Begin Time (s)``,
    ``End Time (s)`` and a label column (``Annotation``, ``Species``, ``Label``, ``Class`` or
    ``Type``, or the one given). A selection listed once per view (waveform and spectrogram)
    counts once.
``ann``
    TUT Sound Events 2016/2017 ``.ann``: ``file  scene  onset  offset  label  [mixture  id]``,
    or three columns like ``audacity``.

Formats without a file column (``audacity``, ``raven`` without ``Begin File``, three-column
``ann``) are keyed by the annotation file's stem plus ``.wav`` unless ``filename`` is given.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from bitsound.data.records import Event, format_list
from bitsound.errors import DataError

log = logging.getLogger("bitsound.data.events")

FORMATS = ("auto", "dcase", "audacity", "raven", "ann")
DCASE_COLUMNS = ("filename", "onset", "offset", "event_label")
RAVEN_LABEL_COLUMNS = ("Annotation", "Species", "Label", "Class", "Type", "Sound Type")

EventTable = dict[str, list[Event]]


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------
def read_annotations(path: str | os.PathLike, *, format: str = "auto", filename: str | None = None,
                     label_column: str | None = None) -> EventTable:
    """Read an annotation file into events per audio file.

    Parameters
    ----------
    path : str or PathLike
        The annotation file.
    format : {"auto", "dcase", "audacity", "raven", "ann"}
        ``"auto"`` decides from the suffix (``.ann``) and the first line (a DCASE or Raven
        header), else Audacity.
    filename : str, optional
        Key for formats without a file column (default: the annotation file's stem + ``.wav``).
    label_column : str, optional
        Raven: the column holding the label.

    Returns
    -------
    dict of str to list of Event
        Sorted by onset within each file. A file annotated with no events maps to ``[]``.

    Raises
    ------
    DataError
        The file cannot be read, a line has too few columns, a time is not a number, an
        event ends before it starts, or the format is unknown.
    """
    path = Path(path)
    if format not in FORMATS:
        raise DataError(f"unknown annotation format {format!r} for '{path}'; valid: {', '.join(FORMATS)}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read annotation file '{path}': {err}") from None
    lines = text.splitlines()
    if format == "auto":
        format = _sniff(path, lines)
    key = filename or f"{path.stem}.wav"
    if format == "dcase":
        table = _read_dcase(path, lines)
    elif format == "raven":
        table = _read_raven(path, lines, key=key, label_column=label_column)
    elif format == "ann":
        table = _read_ann(path, lines, key=key)
    else:
        table = {key: _read_three_columns(path, lines)}
    return {name: sorted(events) for name, events in table.items()}


def _sniff(path: Path, lines: list[str]) -> str:
    first = next((line for line in lines if line.strip()), "")
    cells = [c.strip() for c in first.split("\t")]
    if path.suffix.lower() == ".ann":
        return "ann"
    if {"onset", "offset"} <= set(cells):
        return "dcase"
    if "Begin Time (s)" in cells:
        return "raven"
    return "audacity"


def _number(path: Path, line_no: int, text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"'{path}' line {line_no}: {what} {text!r} is not a number of seconds") from None
    return value


def _event(path: Path, line_no: int, onset: str, offset: str, label: str) -> Event:
    label = label.strip()
    if not label:
        raise DataError(f"'{path}' line {line_no}: the event has no label; give every event a class")
    start = _number(path, line_no, onset, "onset")
    end = _number(path, line_no, offset, "offset")
    try:
        return Event(start, end, label)
    except DataError as err:
        raise DataError(f"'{path}' line {line_no}: {err}") from None


def _read_dcase(path: Path, lines: list[str]) -> EventTable:
    rows = [line.split("\t") for line in lines]
    header = [c.strip() for c in rows[0]] if rows else []
    missing = [c for c in DCASE_COLUMNS if c not in header]
    if missing:
        raise DataError(f"'{path}': a DCASE annotation file needs the header "
                        f"{chr(9).join(DCASE_COLUMNS)} (tab-separated); it lacks {missing}")
    at = {name: header.index(name) for name in DCASE_COLUMNS}
    table: EventTable = {}
    for line_no, row in enumerate(rows[1:], start=2):
        if not "".join(row).strip():
            continue
        cells = [c.strip() for c in row] + [""] * (len(header) - len(row))
        name = cells[at["filename"]]
        if not name:
            raise DataError(f"'{path}' line {line_no}: empty filename")
        events = table.setdefault(name, [])
        onset, offset, label = cells[at["onset"]], cells[at["offset"]], cells[at["event_label"]]
        if not onset and not offset and not label:
            continue  # a file with no events
        events.append(_event(path, line_no, onset, offset, label))
    return table


def _read_three_columns(path: Path, lines: list[str]) -> list[Event]:
    events = []
    for line_no, line in enumerate(lines, start=1):
        if not line.strip() or line.startswith("\\"):  # "\" lines: Audacity spectral selection
            continue
        cells = line.split("\t")
        if len(cells) < 3:
            raise DataError(f"'{path}' line {line_no}: expected 'onset<TAB>offset<TAB>label', got "
                            f"{line!r}")
        events.append(_event(path, line_no, cells[0], cells[1], "\t".join(cells[2:])))
    return events


def _read_ann(path: Path, lines: list[str], *, key: str) -> EventTable:
    first = next((line for line in lines if line.strip()), "")
    if len(first.split("\t")) <= 3:
        return {key: _read_three_columns(path, lines)}
    table: EventTable = {}
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        cells = line.split("\t")
        if len(cells) < 5:
            raise DataError(f"'{path}' line {line_no}: a TUT .ann line is 'file<TAB>scene<TAB>onset"
                            f"<TAB>offset<TAB>label[...]', got {line!r}")
        table.setdefault(cells[0].strip(), []).append(
            _event(path, line_no, cells[2], cells[3], cells[4]))
    return table


def _read_raven(path: Path, lines: list[str], *, key: str, label_column: str | None) -> EventTable:
    reader = csv.DictReader(io.StringIO("\n".join(lines)), delimiter="\t")
    header = reader.fieldnames or []
    for needed in ("Begin Time (s)", "End Time (s)"):
        if needed not in header:
            raise DataError(f"'{path}': a Raven selection table needs a '{needed}' column; it has "
                            f"{header}")
    if label_column is None:
        label_column = next((c for c in RAVEN_LABEL_COLUMNS if c in header), None)
    if label_column is None or label_column not in header:
        tried = label_column or list(RAVEN_LABEL_COLUMNS)
        raise DataError(f"'{path}': no label column found (tried {tried}); its columns are "
                        f"{header}: pass label_column=NAME")
    by_file = "Begin File" in header and "File Offset (s)" in header
    table: EventTable = {}
    seen: set[tuple[str, str]] = set()
    for line_no, row in enumerate(reader, start=2):
        selection = (row.get("Selection") or "").strip()
        name = row["Begin File"].strip() if by_file else key
        if selection and (name, selection) in seen:
            continue  # the same selection in another view
        seen.add((name, selection))
        begin, end = row["Begin Time (s)"], row["End Time (s)"]
        if by_file:  # times of a multi-file table run over the concatenated files
            offset = _number(path, line_no, row["File Offset (s)"], "File Offset (s)")
            length = _number(path, line_no, end, "end") - _number(path, line_no, begin, "begin")
            begin, end = str(offset), str(offset + length)
        table.setdefault(name, []).append(_event(path, line_no, begin, end, row[label_column] or ""))
    return table


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------
def format_dcase(table: Mapping[str, Sequence[Event]]) -> str:
    """DCASE TSV text of ``table``; files with no events get a row with empty times."""
    lines = ["\t".join(DCASE_COLUMNS)]
    for name in sorted(table):
        events = sorted(table[name])
        if not events:
            lines.append(f"{name}\t\t\t")
        lines += [f"{name}\t{e.onset:.3f}\t{e.offset:.3f}\t{e.label}" for e in events]
    return "\n".join(lines) + "\n"


def write_dcase(path: str | os.PathLike, table: Mapping[str, Sequence[Event]]) -> Path:
    """Write ``table`` as a DCASE TSV file, atomically (tmp file + replace)."""
    return write_text_atomic(path, format_dcase(table))


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------------------------
# window labels
# --------------------------------------------------------------------------------------------
def window_labels(events: Iterable[Event] | None, starts: np.ndarray, *, length: float,
                  clip_label: str, region: float | None = None,
                  min_overlap: float = 0.5) -> list[str]:
    """The training label of each window of a strongly or weakly labelled clip.

    A window takes the label of the event that overlaps its labelled region most, when that
    overlap is at least ``min_overlap`` of the region or of the event, whichever is shorter (so
    a 0.1-s knock inside a 1-s window counts, and so does a long event covering the window);
    otherwise it takes ``clip_label`` (the background of a mixture, or a weak clip label).
    Without events (``None``) every window takes ``clip_label``.

    Parameters
    ----------
    events : iterable of Event or None
        Times in seconds of the same file as ``starts``.
    starts : ndarray [shape=(n_windows,)]
        Window start times in seconds.
    length : float
        Window length in seconds.
    clip_label : str
    region : float, optional
        Length of the window's centred part whose content names the window (seconds, at most
        ``length``); ``None``: the whole window. A short region sharpens onsets when window
        probabilities are placed at window centres (see :mod:`bitsound.detect`).
    min_overlap : float in (0, 1]

    Returns
    -------
    list of str [length n_windows]
    """
    starts = np.asarray(starts, dtype=np.float64).reshape(-1)
    if events is None:
        return [clip_label] * len(starts)
    events = list(events)
    if not 0 < min_overlap <= 1:
        raise DataError(f"min_overlap must lie in (0, 1], got {min_overlap}")
    region = length if region is None else float(region)
    if not 0 < region <= length:
        raise DataError(f"the labelled region ({region} s) must lie in (0, window length {length} s]")
    if not events:
        return [clip_label] * len(starts)
    lo = starts + (length - region) / 2
    hi = lo + region
    onsets = np.array([e.onset for e in events])
    offsets = np.array([e.offset for e in events])
    # overlap[w, e] in seconds, then as a fraction of the shorter of region and event
    overlap = np.clip(np.minimum(hi[:, None], offsets[None]) - np.maximum(lo[:, None], onsets[None]),
                      0, None)
    fraction = overlap / np.minimum(region, offsets - onsets)[None]
    best = fraction.argmax(axis=1)
    hit = fraction[np.arange(len(starts)), best] >= min_overlap - 1e-9
    return [events[b].label if h else clip_label for b, h in zip(best, hit, strict=True)]


def check_known_labels(table: Mapping[str, Sequence[Event]], labels: Sequence[str], *, what: str) -> None:
    """Raise a DataError when ``table`` holds labels outside ``labels``."""
    unknown = sorted({e.label for events in table.values() for e in events} - set(labels))
    if unknown:
        raise DataError(f"{what} has event labels {unknown} that are not among {sorted(labels)}")


def missing_files(table: Mapping[str, object], names: Iterable[str]) -> list[str]:
    """Names in ``names`` that ``table`` does not list (for error messages)."""
    return sorted(set(names) - set(table))


__all__ = ["DCASE_COLUMNS", "Event", "EventTable", "check_known_labels", "format_dcase",
           "format_list", "missing_files", "read_annotations", "window_labels", "write_dcase",
           "write_text_atomic"]
