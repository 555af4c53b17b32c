"""Dataset sources found by name: ``open_dataset("fsdd:/data/fsdd")``.

A source is a factory ``factory(path: str, **options) -> Dataset`` registered under a kind name
with :func:`register_dataset`. A spec string is ``KIND:PATH``, split on the first colon (so paths
may contain colons); a kind that takes no path (``synthetic``) may be given alone.

Kinds that declare options take them after the path as ``KIND:PATH?key=value,key=value``
(e.g. ``esc50:/data/ESC-50?missing=skip``). A kind without options keeps any ``?`` as part of
its path; an option the kind does not declare is an error that lists the valid ones.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from bitsound.data.records import Dataset
from bitsound.errors import DataError, RegistryError
from bitsound.registry import Registry

Factory = Callable[..., Dataset]


@dataclass(frozen=True)
class _Entry:
    factory: Factory
    path_required: bool
    options: dict[str, str]


# The shared name registry gives unique names and errors that list the valid kinds.
DATASETS: Registry[_Entry] = Registry("dataset kind")


def register_dataset(
    name: str,
    *,
    description: str,
    path_required: bool = True,
    options: Mapping[str, str] | None = None,
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
    options : mapping of str to str, optional
        Option names the factory takes as keyword arguments (string values), each with a
        one-line description for error messages; given as ``KIND:PATH?key=value,...``.

    Raises
    ------
    RegistryError
        ``name`` is already registered or is not a valid kind name.
    """
    if not name or ":" in name:
        raise RegistryError(f"dataset kind {name!r} must be a non-empty name without ':'")

    def decorator(factory: Factory) -> Factory:
        DATASETS.add(name, _Entry(factory, path_required, dict(options or {})),
                     description=description)
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
    options: dict[str, str] = {}
    if entry.options and "?" in path:
        path, _, query = path.rpartition("?")
        options = parse_options(query, spec=spec, valid=entry.options)
    if entry.path_required and not path:
        description = dict(DATASETS.describe())[kind]
        raise RegistryError(f"dataset spec {spec!r} has no path; write it as {kind}:PATH ({description})")
    return entry.factory(path, **options)


def parse_options(query: str, *, spec: str, valid: Mapping[str, str]) -> dict[str, str]:
    """``key=value,key=value`` after a spec's ``?`` as a dict, every key checked.

    Raises
    ------
    RegistryError
        A part is not ``key=value``, a key is repeated, or a key is not one of ``valid``.
    """
    options: dict[str, str] = {}
    listing = "; ".join(f"{key}: {text}" for key, text in valid.items())
    for part in query.split(","):
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise RegistryError(f"dataset spec {spec!r}: option {part!r} is not key=value; "
                                f"options: {listing}")
        if key not in valid:
            raise RegistryError(f"dataset spec {spec!r}: unknown option {key!r}; options: {listing}")
        if key in options:
            raise RegistryError(f"dataset spec {spec!r}: option {key!r} is given twice")
        options[key] = value
    return options


def choice(value: str, *, option: str, kind: str, valid: tuple[str, ...]) -> str:
    """Check a string option against its valid values (for factories)."""
    if value not in valid:
        raise RegistryError(f"{kind}: option {option}={value!r} is not one of {', '.join(valid)}")
    return value


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
