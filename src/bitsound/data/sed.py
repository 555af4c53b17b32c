"""``sed:DIR``: strongly labelled recordings, e.g. the mixtures ``bitsound mix`` writes.

Layout::

    DIR/audio/NAME.wav ...      the recordings (any format load_audio reads)
    DIR/events.tsv              DCASE TSV: filename  onset  offset  event_label
    DIR/meta.csv                optional: filename,label,fold,group (one row per recording)

Every recording becomes one :class:`~bitsound.data.records.Clip` carrying its events. The clip
label is what the recording holds outside its events: ``meta.csv``'s ``label`` column, else
``background``. ``fold`` and ``group`` (e.g. the background recording of a mixture) come from
``meta.csv``; without it the group is the file itself. A recording in ``audio/`` that neither
file lists is an error (an unannotated file is not the same as a file with no events: list it in
``meta.csv``, or as a row with empty times in ``events.tsv``).
"""

from __future__ import annotations

import csv
from pathlib import Path

from bitsound.data.events import read_annotations
from bitsound.data.records import Clip, Dataset, format_list
from bitsound.data.registry import register_dataset, require_dir, require_file
from bitsound.errors import DataError

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3"}
DEFAULT_LABEL = "background"


@register_dataset("sed", description="strongly labelled recordings: DIR/audio/ + DIR/events.tsv "
                                     "(DCASE) [+ DIR/meta.csv], e.g. from bitsound mix")
def open_sed(path: str) -> Dataset:
    root = require_dir(path, kind="sed", expected="audio/ and events.tsv (see bitsound mix)")
    audio_dir = require_dir(root / "audio", kind="sed", expected="the recordings")
    table = read_annotations(require_file(root / "events.tsv", kind="sed",
                                          expected="a DCASE TSV of the events"), format="dcase")
    meta = _read_meta(root / "meta.csv")
    files = sorted(p.name for p in audio_dir.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise DataError(f"sed: '{audio_dir}' holds no audio files ({', '.join(sorted(AUDIO_SUFFIXES))})")
    listed = set(table) | set(meta)
    unlisted = [f for f in files if f not in listed]
    if unlisted:
        raise DataError(f"sed: {len(unlisted)} recordings in '{audio_dir}' are neither in events.tsv "
                        f"nor in meta.csv, so whether they hold events is unknown:\n"
                        f"{format_list(unlisted)}\nannotate them or move them out")
    absent = sorted((set(table) | set(meta)) - set(files))
    if absent:
        raise DataError(f"sed: events.tsv / meta.csv name {len(absent)} files missing from "
                        f"'{audio_dir}':\n{format_list(absent)}")
    clips = []
    for name in files:
        row = meta.get(name, {})
        clips.append(Clip(path=str(audio_dir / name), label=row.get("label") or DEFAULT_LABEL,
                          fold=row.get("fold") or None, group=row.get("group") or name,
                          events=tuple(table.get(name, ())), meta={"filename": name}))
    return Dataset(kind="sed", root=str(root), clips=clips)


def _read_meta(path: Path) -> dict[str, dict[str, str]]:
    if not path.exists():
        return {}
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or "filename" not in reader.fieldnames:
            raise DataError(f"sed: '{path}' needs a header with a 'filename' column (and optional "
                            f"label, fold, group); it has {reader.fieldnames}")
        unknown = sorted(set(reader.fieldnames) - {"filename", "label", "fold", "group"})
        if unknown:
            raise DataError(f"sed: '{path}' has unknown columns {unknown}; valid: filename, label, "
                            "fold, group")
        rows = {}
        for line_no, row in enumerate(reader, start=2):
            name = (row.get("filename") or "").strip()
            if not name:
                raise DataError(f"sed: '{path}' line {line_no}: empty filename")
            if name in rows:
                raise DataError(f"sed: '{path}' line {line_no}: '{name}' is listed twice")
            rows[name] = {k: (v or "").strip() for k, v in row.items()}
        return rows
