"""Atomic writes of checkpoints, JSON and JSON-lines files.

A crash mid-write must never leave a half-written file under the final name: everything is
written to a temporary file in the same folder, flushed to disk, then renamed over the target.
"""

from __future__ import annotations

import json
import os
import tempfile
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
    """Load a bitsound file with ``weights_only=True`` (no arbitrary code execution)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} '{path}' does not exist; check the path (train writes "
                              f"DIR/model.pt)")
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


def save_bytes(data: bytes, path: Path) -> None:
    """Write ``data`` to ``path`` atomically."""
    _atomic_write(path, lambda handle: handle.write(data))
