"""Dataset sources found by name: ``open_dataset("fsdd:/data/fsdd")``.

A source is a factory ``factory(path: str) -> Dataset`` registered under a kind name with
:func:`register_dataset`. A spec string is ``KIND:PATH``, split on the first colon (so paths
may contain colons); a kind that takes no path (``synthetic``) may be given alone.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bitsound.data.records import Dataset
from bitsound.errors import DataError, RegistryError
from bitsound.registry import Registry

Factory = Callable[[str], Dataset]


@dataclass(frozen=True)
class _Entry:
    factory: Factory
    path_required: bool


# The shared name registry gives unique names and errors that list the valid kinds.
DATASETS: Registry[_Entry] = Registry("dataset kind")


def register_dataset(
    name: str, *, description: str, path_required: bool = True
) -> Callable[[Factory], Factory]:
    """Register a dataset factory under ``name``.

    Parameters
    ----------
    name : str
        The KIND of the spec string; must not contain a colon.
    description : str
        One line for ``bitsound list datasets``.
    path_required : bool
        False for sources that can be opened without a path (e.g. generated data).

    Raises
    ------
    RegistryError
        ``name`` is already registered or is not a valid kind name.
    """
    if not name or ":" in name:
        raise RegistryError(f"dataset kind {name!r} must be a non-empty name without ':'")

    def decorator(factory: Factory) -> Factory:
        DATASETS.add(name, _Entry(factory, path_required), description=description)
        return factory

    return decorator


def list_datasets() -> list[tuple[str, str]]:
    """All registered kinds as ``(name, description)``, sorted by name."""
    return DATASETS.describe()


def parse_spec(spec: str) -> tuple[str, str]:
    """Split ``KIND:PATH`` on the first colon; ``KIND`` alone gives an empty path."""
    kind, _, path = spec.strip().partition(":")
    return kind.strip(), path.strip()


def open_dataset(spec: str) -> Dataset:
    """Open a dataset from a ``KIND:PATH`` spec string.

    Parameters
    ----------
    spec : str
        e.g. ``"fsdd:/data/fsdd"``, ``"manifest:train.csv"``, ``"synthetic"``,
        ``"synthetic:n_per_class=20,seed=3"``.

    Returns
    -------
    Dataset

    Raises
    ------
    RegistryError
        Unknown kind (the message lists the valid ones) or a missing path.
    DataError
        The path is missing or does not have the expected layout.
    """
    if not isinstance(spec, str):
        raise RegistryError(
            f"a dataset spec is a string KIND:PATH, got {type(spec).__name__} {spec!r}; "
            "e.g. open_dataset(f'folder:{path}')"
        )
    kind, path = parse_spec(spec)
    if kind not in DATASETS:
        raise RegistryError(
            f"unknown dataset kind {kind!r} in spec {spec!r}; specs look like KIND:PATH and the "
            f"valid kinds are: {', '.join(DATASETS)}"
        )
    entry = DATASETS.get(kind)
    if entry.path_required and not path:
        description = dict(DATASETS.describe())[kind]
        raise RegistryError(f"dataset spec {spec!r} has no path; write it as {kind}:PATH ({description})")
    return entry.factory(path)


# ------------------------------------------------------------------ path checks for factories
def require_dir(path: str | Path, *, kind: str, expected: str) -> Path:
    """Resolve ``path`` and check that it is a folder.

    Parameters
    ----------
    path : str or Path
        What the user gave (``~`` is expanded).
    kind : str
        The dataset kind, for the message.
    expected : str
        What the folder should contain, for the message.

    Raises
    ------
    DataError
        It does not exist or is not a folder.
    """
    resolved = Path(os.path.expanduser(str(path))).resolve()
    if not resolved.exists():
        raise DataError(f"{kind}: folder '{resolved}' does not exist; expected {expected}")
    if not resolved.is_dir():
        raise DataError(f"{kind}: '{resolved}' is not a folder; expected {expected}")
    return resolved


def require_file(path: str | Path, *, kind: str, expected: str) -> Path:
    """Resolve ``path`` and check that it is a regular file (see :func:`require_dir`)."""
    resolved = Path(os.path.expanduser(str(path))).resolve()
    if not resolved.exists():
        raise DataError(f"{kind}: file '{resolved}' does not exist; expected {expected}")
    if not resolved.is_file():
        raise DataError(f"{kind}: '{resolved}' is not a file; expected {expected}")
    return resolved
