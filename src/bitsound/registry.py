"""A small name -> object registry shared by models, quantizers and recipes.

Names are unique (a clash is an error, not an override) and lookups that fail quote what was
asked for and what is valid.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from bitsound.errors import RegistryError

T = TypeVar("T")


class Registry(Generic[T]):
    """Objects registered under unique names, with a one-line description each.

    Parameters
    ----------
    kind : str
        What is registered ("model", "dataset", ...), used in error messages.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, tuple[T, str]] = {}

    def register(self, name: str, *, description: str = "") -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            self.add(name, obj, description=description)
            return obj

        return decorator

    def add(self, name: str, obj: T, *, description: str = "") -> None:
        if name in self._items:
            raise RegistryError(f"{self.kind} '{name}' is registered twice; pick another name")
        self._items[name] = (obj, description)

    def remove(self, name: str) -> None:
        """Unregister ``name`` (for plugins and tests that register temporary entries)."""
        self.get(name)
        del self._items[name]

    def get(self, name: str) -> T:
        if not isinstance(name, str) or name not in self._items:
            valid = ", ".join(sorted(self._items)) or "(none)"
            raise RegistryError(f"unknown {self.kind} {name!r}; valid {self.kind}s: {valid}")
        return self._items[name][0]

    def describe(self) -> list[tuple[str, str]]:
        return sorted((name, desc) for name, (_, desc) in self._items.items())

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))
