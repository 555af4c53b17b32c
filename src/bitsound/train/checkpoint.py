"""Atomic writes of checkpoints, JSON and JSON-lines files.

A crash mid-write must never leave a half-written file under the final name: everything is
written to a temporary file in the same folder, flushed to disk, then renamed over the target.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from bitsound.errors import CheckpointError


def _atomic_write(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_torch(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path`` atomically."""
    _atomic_write(path, lambda handle: torch.save(obj, handle))


def save_json(obj: Any, path: Path) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    data = (json.dumps(obj, indent=2) + "\n").encode()
    _atomic_write(path, lambda handle: handle.write(data))


def save_text(text: str, path: Path) -> None:
    _atomic_write(path, lambda handle: handle.write(text.encode()))


def load_torch(path: Path, *, what: str = "checkpoint") -> dict:
    """Load a bitsound file with ``weights_only=True`` (no arbitrary code execution).

    The file is checked first (:func:`torch_file_problem`): an empty, truncated or damaged file,
    or one that is not a PyTorch archive, is one :class:`CheckpointError` that names the file
    and what is wrong with it, never a traceback.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} '{path}' does not exist; check the path (train writes "
                              f"DIR/model.pt)")
    problem = torch_file_problem(path)
    if problem is not None:
        raise CheckpointError(f"{what} '{path}' {problem}; {_remedy(what, path)}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for corrupt files
        raise CheckpointError(f"{what} '{path}' cannot be loaded ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''}); it is corrupt "
                              f"or not a bitsound file") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{what} '{path}' is not a bitsound file (top level is "
                              f"{type(obj).__name__}, expected a dict)")
    return obj


_REMEDY = {
    # fit resumes from checkpoints/last.pt only (best.pt holds no optimiser state)
    "checkpoint": "delete it and rerun without --resume (--resume continues only from "
                  "checkpoints/last.pt)",
    "resume checkpoint": "delete it and rerun: --resume then starts from scratch, since it "
                         "continues only from checkpoints/last.pt",
    "model file": "train the model again, or copy the file again from where it was written",
    "": "replace it with a good copy",
}


def _remedy(what: str, path: Path) -> str:
    if what == "checkpoint" and path.name == "last.pt":
        return _REMEDY["resume checkpoint"]
    return _REMEDY.get(what, _REMEDY[""])
#: The first bytes of every ZIP archive, the container torch.save writes.
_ZIP_MAGIC = b"PK\x03\x04"


def torch_file_problem(path: Path) -> str | None:
    """What is wrong with a file ``torch.save`` should have written, in words; None if nothing.

    torch.save writes a ZIP archive whose members carry CRC-32 checksums, which torch.load does
    not verify: a flipped bit in a tensor would load silently. So the archive's structure and
    every member's checksum are checked here: empty, not a ZIP archive, truncated (no central
    directory at its end: an interrupted copy or download), damaged (a checksum fails).
    """
    size = path.stat().st_size
    if size == 0:
        return "is empty (0 bytes)"
    with path.open("rb") as handle:
        head = handle.read(len(_ZIP_MAGIC))
    if head != _ZIP_MAGIC:
        return (f"is not a PyTorch file: it starts with {head!r}, not a ZIP archive's "
                f"{_ZIP_MAGIC!r}")
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except zipfile.BadZipFile:
        return (f"is truncated: its {size} bytes do not end with the directory a complete ZIP "
                "archive ends with (an interrupted write, copy or download?)")
    # RuntimeError: zipfile's answer to a member flagged as encrypted (one flipped bit does it)
    except (zipfile.LargeZipFile, OSError, EOFError, ValueError, NotImplementedError, RuntimeError) as err:
        return f"is damaged ({size} bytes; the ZIP archive cannot be read: {err})"
    if bad is not None:
        return f"is damaged: its part '{bad}' fails its CRC-32 checksum"
    return None


def save_bytes(data: bytes, path: Path) -> None:
    """Write ``data`` to ``path`` atomically."""
    _atomic_write(path, lambda handle: handle.write(data))
