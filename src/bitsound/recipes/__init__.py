"""Recipes shipped with bitsound: YAML files in this folder, found by name."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from bitsound.config import Recipe, apply_overrides, parse_recipe, read_yaml
from bitsound.errors import ConfigError


def _shipped(subfolder: str = "") -> dict[str, Path]:
    folder = resources.files(__package__)
    if subfolder:
        folder = folder / subfolder
    return {Path(str(entry)).stem: Path(str(entry)) for entry in folder.iterdir()
            if str(entry).endswith(".yaml")}


def list_recipes() -> list[tuple[str, str]]:
    """(name, description) of each shipped recipe and study (studies run with bitsound study)."""
    rows = []
    for kind, folder in (("", ""), ("study: ", "studies")):
        for name, path in sorted(_shipped(folder).items()):
            summary = str(read_yaml(path).get("description", "")).strip().split("\n")[0]
            rows.append((name, kind + summary))
    return rows


def list_pipelines() -> list[tuple[str, str]]:
    """(name, description) of each shipped compression pipeline (bitsound compress)."""
    return [(name, str(read_yaml(path).get("description", "")).strip().split("\n")[0])
            for name, path in sorted(_shipped("compress").items())]


def _shipped_or_file(folder: str, name_or_path: str, *, what: str, shipped_word: str) -> Path:
    """A shipped YAML file of ``folder`` by name, or a YAML file by path."""
    shipped = _shipped(folder)
    if name_or_path in shipped:
        return shipped[name_or_path]
    path = Path(name_or_path)
    if not path.is_file():
        raise ConfigError(f"unknown {what} {name_or_path!r}: not a shipped {shipped_word} "
                          f"({', '.join(sorted(shipped)) or 'none'}) nor an existing YAML file")
    return path


def pipeline_path(name_or_path: str) -> Path:
    """A shipped compression pipeline by name, or a pipeline YAML file by path."""
    return _shipped_or_file("compress", name_or_path, what="compression pipeline", shipped_word="one")


def study_path(name_or_path: str) -> Path:
    """A shipped study by name, or a study YAML file by path."""
    return _shipped_or_file("studies", name_or_path, what="study", shipped_word="study")


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
