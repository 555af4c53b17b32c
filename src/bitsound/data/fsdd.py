"""``fsdd:PATH`` - the Free Spoken Digit Dataset.

Layout ``recordings/{digit}_{speaker}_{index}.wav``; PATH may be the dataset root or its
``recordings/`` folder. Label = the digit as a string (``"0"`` ... ``"9"``), group = the
speaker, so :func:`~bitsound.data.splits.leave_one_group_out` is leave-one-speaker-out.
``meta`` holds ``speaker`` and ``index``.

Reference: Z. Jackson et al., "Free Spoken Digit Dataset",
https://github.com/Jakobovski/free-spoken-digit-dataset.
"""

from __future__ import annotations

import re

from bitsound.data.records import Clip, Dataset, format_list
from bitsound.data.registry import register_dataset, require_dir
from bitsound.errors import DataError

_NAME = re.compile(r"^(?P<digit>\d)_(?P<speaker>[A-Za-z0-9]+)_(?P<index>\d+)\.wav$")
_EXPECTED = (
    "the FSDD root (with recordings/) or its recordings/ folder of {digit}_{speaker}_{index}.wav"
)


@register_dataset(
    "fsdd", description="Free Spoken Digit Dataset: recordings/{digit}_{speaker}_{index}.wav"
)
def open_fsdd(path: str) -> Dataset:
    """Open FSDD.

    Raises
    ------
    DataError
        Missing folder, no recordings, or file names that do not match the pattern (all listed).
    """
    folder = require_dir(path, kind="fsdd", expected=_EXPECTED)
    if (folder / "recordings").is_dir():
        folder = folder / "recordings"
    files = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    clips: list[Clip] = []
    bad: list[str] = []
    for file in files:
        match = _NAME.match(file.name)
        if match is None or not file.is_file():
            bad.append(file.name)
            continue
        clips.append(Clip(
            path=str(file),
            label=match["digit"],
            group=match["speaker"],
            meta={"speaker": match["speaker"], "index": int(match["index"])},
        ))
    if bad:
        raise DataError(
            f"fsdd: {len(bad)} entries in '{folder}' do not match {{digit}}_{{speaker}}_{{index}}"
            f".wav:\n{format_list(bad)}\nrename or move them out of the folder"
        )
    if not clips:
        raise DataError(f"fsdd: no recordings in '{folder}'; expected {_EXPECTED}")
    return Dataset(kind="fsdd", root=str(folder), clips=clips)

