"""Recipes shipped with bitsound: YAML files in this folder, found by name."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from bitsound.config import Recipe, apply_overrides, parse_recipe, read_yaml
from bitsound.errors import ConfigError


def _shipped() -> dict[str, Path]:
    folder = resources.files(__package__)
    return {Path(str(entry)).stem: Path(str(entry)) for entry in folder.iterdir()
            if str(entry).endswith(".yaml")}


def list_recipes() -> list[tuple[str, str]]:
    """(name, description) of each shipped recipe."""
    rows = []
    for name, path in sorted(_shipped().items()):
        rows.append((name, str(read_yaml(path).get("description", "")).strip().split("\n")[0]))
    return rows


def load_recipe(name_or_path: str, *, overrides: list[str] | None = None) -> Recipe:
    """A shipped recipe by name, or a YAML file by path, with ``key=value`` overrides applied."""
    path = Path(name_or_path)
    shipped = _shipped()
    if name_or_path in shipped:
        path = shipped[name_or_path]
    elif not (path.suffix in (".yaml", ".yml") or path.exists()):
        raise ConfigError(f"unknown recipe {name_or_path!r}: not a shipped recipe "
                          f"({', '.join(sorted(shipped))}) nor a YAML file")
    data = apply_overrides(read_yaml(path), overrides or [])
    return parse_recipe(data, source=f"'{path}'")
