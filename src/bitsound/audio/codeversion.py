"""The version of the code that turns an audio file into features, for the feature cache's keys.

Decision: the version is a hash of everything that decides a clip's features, not a number that
a developer bumps:

- the source text of the modules that decode audio and compute the front ends
  (:mod:`bitsound.audio.io`, :mod:`bitsound.audio.features` and every module of
  :mod:`bitsound.audio` they import, found by following their import statements);
- the source text of the functions elsewhere that shape a clip before the front end
  (:data:`FEATURE_FUNCTIONS`: the pipeline's windowing, energy gate and cropping, and every data
  set's ``load``), read from their modules' text without importing them;
- the versions of the libraries that decode, resample and compute (:data:`FEATURE_LIBRARIES`,
  and the libsndfile that soundfile runs), so that an upgrade which changes decoding is never
  served features of the old one.

A number has to be remembered and was not: the MP3 decoding rules
changed (whole VBR files, cut files refused) without ``FEATURE_FORMAT_VERSION`` changing, so a
cache went on serving features of the old decoding. A hash cannot be forgotten. Its price is that
an edit which changes no number (a comment, a docstring) also makes the features be computed
once more after the upgrade: minutes of work, never a wrong result. ``FEATURE_FORMAT_VERSION`` in
:mod:`bitsound.pipeline` stays for changes of the cached arrays' layout made elsewhere.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
from collections.abc import Iterable

log = logging.getLogger(__name__)

#: The modules whose code decides what a clip's features are.
FEATURE_MODULES = ("bitsound.audio.io", "bitsound.audio.features")
#: Imports followed from them: modules in this package only (torch, numpy ... have versions).
FOLLOW_PREFIX = "bitsound.audio"
#: Functions outside :mod:`bitsound.audio` that shape a clip before the front end, as
#: ``module:qualified name``; a data set class with its own ``load`` must be listed (a test checks).
FEATURE_FUNCTIONS = (
    "bitsound.pipeline:window_audio",
    "bitsound.pipeline:clip_features",
    "bitsound.data.records:Dataset.load",
    "bitsound.data.synthetic:SyntheticDataset.load",
    "bitsound.data.combine:CombinedDataset.load",
)
#: Distributions whose versions decide the features: decoding (soundfile, and its libsndfile),
#: resampling (soxr) and the front ends' arithmetic (numpy, torch).
FEATURE_LIBRARIES = ("numpy", "soundfile", "soxr", "torch")


def _source(name: str) -> bytes | None:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        return None
    getter = getattr(spec.loader, "get_source", None)
    text = getter(name) if getter is not None else None
    return None if text is None else text.encode("utf-8")


def _imports(name: str, source: bytes, *, prefix: str, package: bool) -> set[str]:
    """Modules under ``prefix`` that module ``name`` imports (absolute or relative)."""
    found: set[str] = set()
    here = name if package else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = here.split(".")
                anchor = ".".join(parts[:len(parts) - node.level + 1])
                base = f"{anchor}.{base}" if base else anchor
            found.add(base)
            # ``from bitsound.audio import mpeg`` imports a module, not a name
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {m for m in found if m == prefix or m.startswith(prefix + ".")}


def code_digest(modules: Iterable[str], *, prefix: str) -> str:
    """sha256 (16 hex digits) over the source of ``modules`` and the modules under ``prefix``
    they import, directly or not.

    Raises
    ------
    ModuleNotFoundError
        A module of ``modules`` has no source (a module they import but that does not exist as
        a module, such as an imported function's name, is left out).
    """
    seen: dict[str, bytes] = {}
    todo = list(modules)
    roots = set(todo)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        try:
            source = _source(name)
        except (ImportError, ValueError):
            source = None
        if source is None:
            if name in roots:
                raise ModuleNotFoundError(f"no source for module {name!r}")
            continue  # ``from pkg import function``: not a module
        seen[name] = source
        spec = importlib.util.find_spec(name)
        is_package = bool(spec and spec.submodule_search_locations)
        todo.extend(_imports(name, source, prefix=prefix, package=is_package) - seen.keys())
    digest = hashlib.sha256()
    for name in sorted(seen):
        digest.update(name.encode() + b"\0" + seen[name] + b"\0")
    return digest.hexdigest()[:16]


def function_source(spec: str) -> bytes:
    """The source text of the function or method ``"module:qualified.name"``, read from the
    module's text (the module is not imported).

    Raises
    ------
    ModuleNotFoundError
        The module has no source.
    LookupError
        The module defines no such function (it was renamed or moved: update the spec).
    """
    module, _, qualname = spec.partition(":")
    source = _source(module)
    if source is None:
        raise ModuleNotFoundError(f"no source for module {module!r}")
    text = source.decode("utf-8")
    body: list[ast.stmt] = ast.parse(text).body
    node = None
    for part in qualname.split("."):
        node = next((n for n in body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                     and n.name == part), None)
        if node is None:
            raise LookupError(f"{spec}: module {module} defines no {qualname}; update "
                              "bitsound.audio.codeversion.FEATURE_FUNCTIONS")
        body = node.body
    return (ast.get_source_segment(text, node) or "").encode("utf-8")


def library_versions() -> dict[str, str]:
    """The installed versions of :data:`FEATURE_LIBRARIES` and of soundfile's libsndfile."""
    import soundfile

    versions = {name: importlib.metadata.version(name) for name in FEATURE_LIBRARIES}
    versions["libsndfile"] = soundfile.__libsndfile_version__
    return versions


def _digest(parts: dict) -> str:
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def feature_version_parts() -> dict:
    """What :func:`frontend_code_version` hashes: the module digest, a digest per function of
    :data:`FEATURE_FUNCTIONS` and :func:`library_versions`."""
    return {"modules": code_digest(FEATURE_MODULES, prefix=FOLLOW_PREFIX),
            "functions": {spec: hashlib.sha256(function_source(spec)).hexdigest()[:16]
                          for spec in FEATURE_FUNCTIONS},
            "libraries": library_versions()}


@functools.cache
def frontend_code_version() -> str:
    """16 hex digits over :func:`feature_version_parts` (computed once per process)."""
    try:
        return _digest(feature_version_parts())
    except (ImportError, LookupError, SyntaxError) as err:  # an installation without sources
        from bitsound import __version__

        log.warning("cannot hash the feature code (%s); feature cache keys use the bitsound "
                    "version %s and the library versions instead", err, __version__)
        return "version:" + _digest({"bitsound": __version__, "libraries": library_versions()})
