"""``urbansound8k:PATH`` - UrbanSound8K in its distributed layout.

Reference: J. Salamon, C. Jacoby, J. P. Bello, "A Dataset and Taxonomy for Urban Sound
Research", ACM Multimedia 2014.

Layout::

    PATH/metadata/UrbanSound8K.csv   slice_file_name,fsID,start,end,salience,fold,classID,class
    PATH/audio/fold{1..10}/{fsID}-{classID}-{occurrence}-{slice}.wav

label = ``class``, fold = ``fold`` ("1" ... "10"), group = ``fsID`` (the Freesound recording the
slice was cut from). ``meta`` keeps ``classID``, ``salience`` (1 foreground, 2 background) and
the slice's ``start``/``end`` in its source recording (the files are already cut, so these are
not offsets into them).

Only the 10 official folds give honest, comparable scores: slices of one recording are spread
over up to dozens of files, and the folds keep each recording in one fold. The data set's
:attr:`~bitsound.data.records.Dataset.required_split` says so, and ``bitsound train``/``cv``
refuse every other split kind with that reason. ``?missing=skip`` uses the rows whose file is
present (a partial copy).
"""

from __future__ import annotations

from bitsound.data.listed import MISSING_OPTION, check_missing, present, read_table
from bitsound.data.records import Clip, Dataset, format_list
from bitsound.data.registry import register_dataset, require_dir, require_file
from bitsound.errors import DataError

_COLUMNS = ("slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class")
_EXPECTED = "the UrbanSound8K root with metadata/UrbanSound8K.csv and audio/fold1..fold10/"
FOLDS = tuple(str(i) for i in range(1, 11))
FOLDS_ONLY = (
    "folds",
    "UrbanSound8K cuts each Freesound recording into many slices; a random (or any non-official) "
    "split puts slices of one recording on both sides, so the score rewards memorising "
    "recordings and cannot be compared with published results. Its authors require the 10 "
    "official folds: use data.split.kind: folds (val_folds: ['10']) for train and data.cv: folds "
    "for bitsound cv",
)


@register_dataset("urbansound8k", description="UrbanSound8K: metadata/UrbanSound8K.csv + "
                  "audio/foldN/ (10 official folds only; group = fsID)", options=MISSING_OPTION)
def open_urbansound8k(path: str, *, missing: str = "error") -> Dataset:
    """Open UrbanSound8K (see module docstring).

    Raises
    ------
    DataError
        Missing folders or CSV, malformed rows (all listed), folds outside 1-10, or listed
        files that are absent (unless ``missing=skip``).
    """
    check_missing(missing, kind="urbansound8k")
    root = require_dir(path, kind="urbansound8k", expected=_EXPECTED)
    csv_path = require_file(root / "metadata" / "UrbanSound8K.csv", kind="urbansound8k",
                            expected=_EXPECTED)
    require_dir(root / "audio", kind="urbansound8k", expected=_EXPECTED)
    rows = read_table(csv_path, kind="urbansound8k", columns=_COLUMNS)
    bad = [f"line {i + 2}: {row['slice_file_name'] or '(no file name)'} (fold {row['fold']!r}, "
           f"class {row['class']!r})" for i, row in enumerate(rows)
           if row["fold"] not in FOLDS or not row["class"] or not row["slice_file_name"]]
    if bad:
        raise DataError(f"urbansound8k: rows of '{csv_path}' with a fold outside 1-10, an empty "
                        f"class or file name:\n{format_list(bad)}\nrestore the original CSV")
    paths = [root / "audio" / f"fold{row['fold']}" / row["slice_file_name"] for row in rows]
    flags = present(paths, kind="urbansound8k", listing=csv_path, missing=missing)
    clips = [
        Clip(path=str(file), label=row["class"], fold=row["fold"], group=row["fsID"],
             meta={"classID": int(row["classID"]), "salience": int(row["salience"]),
                   "source_start": float(row["start"]), "source_end": float(row["end"])})
        for row, file, ok in zip(rows, paths, flags, strict=True) if ok
    ]
    clips.sort(key=lambda clip: (int(clip.fold), clip.path))
    dataset = Dataset(kind="urbansound8k", root=str(root), clips=clips)
    dataset.required_split = FOLDS_ONLY
    return dataset
