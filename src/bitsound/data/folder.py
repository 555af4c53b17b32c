"""``folder:PATH`` - one subfolder per class, audio files anywhere inside it.

::

    PATH/
      dog/        a.wav  b.flac  more/c.ogg
      rain/       d.mp3

Rules (nothing is skipped without saying so):

- Audio files are ``.wav .flac .ogg .mp3`` in any letter case, searched recursively.
- Other files (in class folders or at the top level) are listed in one logged warning.
- Names starting with ``.`` (``.DS_Store``, ``.git``) are hidden and skipped; their count is
  logged at INFO level.
- No class folder at all, or a class folder without audio files, is a :class:`DataError`: a
  class with no examples is almost always a mistake (e.g. files in an unsupported format).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from bitsound.data.records import Clip, Dataset, format_list, relative_name
from bitsound.data.registry import register_dataset, require_dir
from bitsound.errors import DataError

log = logging.getLogger(__name__)

#: File name suffixes (lower case) treated as audio by the folder and manifest sources.
AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".mp3"})


def is_audio_file(path: str | Path) -> bool:
    """True when the suffix of ``path`` is a supported audio extension (any letter case)."""
    return Path(path).suffix.lower() in AUDIO_EXTENSIONS


def walk_files(folder: Path) -> tuple[list[Path], int]:
    """All non-hidden files below ``folder`` in sorted order, and the number of hidden entries."""
    files: list[Path] = []
    hidden = 0
    for dirpath, dirnames, filenames in os.walk(folder):
        hidden += sum(name.startswith(".") for name in dirnames + filenames)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))  # prune in place
        files.extend(Path(dirpath) / f for f in sorted(filenames) if not f.startswith("."))
    return files, hidden


def _scan_root(root: Path) -> tuple[list[Path], list[Path], int]:
    """Class folders, loose top-level files and the hidden count of the top level."""
    class_dirs, loose, hidden = [], [], 0
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            hidden += 1
        elif entry.is_dir():
            class_dirs.append(entry)
        else:
            loose.append(entry)
    return class_dirs, loose, hidden


@register_dataset("folder", description="one subfolder per class with audio files (recursive)")
def open_folder(path: str) -> Dataset:
    """Open a class-per-subfolder tree.

    Parameters
    ----------
    path : str
        The folder whose subfolders are the classes.

    Returns
    -------
    Dataset
        Labels are the subfolder names; ``fold``, ``group`` and ``device`` are None.

    Raises
    ------
    DataError
        Missing folder, no class folders, or class folders without audio files.
    """
    expected = "a folder with one subfolder of audio files per class"
    root = require_dir(path, kind="folder", expected=expected)
    class_dirs, others, hidden = _scan_root(root)
    if not class_dirs:
        raise DataError(
            f"folder: '{root}' has no class subfolders; expected {expected}, "
            "e.g. PATH/dog/*.wav and PATH/rain/*.wav"
        )

    clips: list[Clip] = []
    empty: list[str] = []
    for class_dir in class_dirs:
        files, n_hidden = walk_files(class_dir)
        hidden += n_hidden
        audio = [f for f in files if is_audio_file(f)]
        others.extend(f for f in files if not is_audio_file(f))
        if not audio:
            empty.append(f"{class_dir.name}/ ({len(files)} non-audio files)")
        clips.extend(Clip(path=str(f), label=class_dir.name) for f in audio)

    if empty:
        raise DataError(
            f"folder: class folders without audio files in '{root}':\n{format_list(empty)}\n"
            f"add {'/'.join(sorted(AUDIO_EXTENSIONS))} files to them or remove the folders"
        )
    _report_skipped(root, others, hidden)
    return Dataset(kind="folder", root=str(root), clips=clips)


def _report_skipped(root: Path, others: list[Path], hidden: int) -> None:
    if others:
        names = [relative_name(p, root) for p in others]
        log.warning(
            "folder: %d files in '%s' are not audio (%s) and are not used:\n%s",
            len(names), root, ", ".join(sorted(AUDIO_EXTENSIONS)), format_list(names),
        )
    if hidden:
        log.info("folder: skipped %d hidden entries (names starting with '.') in '%s'",
                 hidden, root)
