"""Fuzz targets for the readers of untrusted input, and hypothesis strategies that feed them.

Every file a user hands bitsound may be damaged or hostile: model files and checkpoints, packed
``.bsnn`` models, recipes and ``--set`` overrides, manifests, annotation files and the feature
cache's arrays. The contract of each reader is the same: it returns a result, or raises one
:class:`~bitsound.errors.BitsoundError` whose message names the file; any other exception (a
traceback) is a bug. :data:`TARGETS` holds one function per reader that takes the fuzzed input,
writes it where the reader expects a file, and checks that contract (:func:`check`).

``tests/test_fuzz.py`` runs every target for a bounded number of examples on each test run;
``benchmarks/fuzz_readers.py`` runs a longer campaign. This module needs ``hypothesis`` (a
development extra), so it lives with the tests and ships in no package.
"""

from __future__ import annotations

import atexit
import io
import json
import re
import secrets
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from hypothesis import strategies as st

from bitsound.errors import BitsoundError, ConfigError


class ContractViolation(AssertionError):
    """A reader broke its contract: an error that does not name the file (or the override)."""


@cache
def workdir() -> Path:
    """A scratch folder for this process, with a real WAV file that manifests may name; removed
    when the process ends."""
    import soundfile as sf

    root = Path(tempfile.mkdtemp(prefix="bitsound-fuzz-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    sf.write(root / "a.wav", np.zeros(800, dtype=np.float32), 8000)
    return root


#: Part of every fuzzed file's name, so that an error naming the file is not matched by chance.
_TOKEN = secrets.token_hex(4)


def check(fn: Callable[[], Any], path: Path) -> None:
    """Call ``fn``: it may return or raise a BitsoundError that names ``path`` in full (the
    folder too: a bare file name does not say which file); nothing else."""
    try:
        fn()
    except BitsoundError as err:
        if str(path) not in str(err):
            raise ContractViolation(f"error does not name the file '{path}': {err}") from err


# ------------------------------------------------------------------ seeds: valid inputs
@cache
def _model_recipe():
    from bitsound.recipes import load_recipe

    return load_recipe("quickstart", overrides=["model.params.channels=[4]"])


@cache
def seed_model_file() -> bytes:
    """A valid, tiny ``model.pt``."""
    from bitsound.modelfile import build_net, save_model

    recipe = _model_recipe()
    torch.manual_seed(0)
    path = workdir() / "seed-model.pt"
    save_model(path, recipe=recipe, labels=["a", "b"], net=build_net(recipe, 2), metrics={"n": 1})
    return path.read_bytes()


@cache
def seed_model_dict() -> dict:
    return torch.load(io.BytesIO(seed_model_file()), weights_only=True)


@cache
def seed_checkpoint() -> bytes:
    """A valid ``checkpoints/last.pt`` of a one-epoch run of :func:`checkpoint_model`."""
    from bitsound.config import TrainConfig
    from bitsound.train import ClassificationTask, fit

    out = workdir() / "seed-run"
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 4, generator=g), torch.arange(16) % 2
    fit(model=checkpoint_model(), task=ClassificationTask(), train_x=x, train_y=y,
        cfg=TrainConfig(epochs=1, batch_size=8, device="cpu"), out_dir=out, fingerprint="fuzz",
        show_progress=False)
    return (out / "checkpoints" / "last.pt").read_bytes()


def checkpoint_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))


@cache
def seed_bsnn() -> bytes:
    """A valid packed model: a tiny binary network exported for the engine."""
    from bitsound.export import export_packed
    from bitsound.models import build_model

    torch.manual_seed(0)
    net = build_model("bcnn2d", input_shape=(1, 16, 16), n_classes=2,
                      params={"channels": [8], "convs_per_stage": 1}).eval()
    path = export_packed(net, workdir() / "seed.bsnn", input_shape=(1, 16, 16))
    return Path(path).read_bytes()


def seed_recipe() -> str:
    from bitsound.recipes import _shipped

    return _shipped()["quickstart"].read_text()


SEED_MANIFEST = ("path,label,fold,group,device,start,end\n"
                 "a.wav,dog,1,g1,A,0,0.05\n"
                 "a.wav,cat,2,g2,B,,\n")
SEED_ANNOTATIONS = {
    "dcase": "filename\tonset\toffset\tevent_label\na.wav\t0.5\t1.0\tdog\na.wav\t\t\t\nb.wav\t1\t2\tcat\n",
    "audacity": "0.5\t1.0\tdog\n1.5\t2.25\tcat\n",
    "raven": ("Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tAnnotation\n"
              "1\tSpectrogram 1\t1\t0.5\t1.0\tdog\n"),
    "ann": "a.wav\toffice\t0.5\t1.0\tdog\na.wav\toffice\t2\t3\tcat\n",
}


def seed_cache_file() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.arange(24, dtype=np.float32).reshape(2, 3, 4), allow_pickle=False)
    return buf.getvalue()


# ------------------------------------------------------------------ strategies
_POSITION = st.integers(min_value=0, max_value=2**20)


def _apply(seed: bytes, ops: list[tuple]) -> bytes:
    data = bytearray(seed)
    for op in ops:
        at = op[1] % (len(data) + 1)
        if op[0] == "flip" and data:
            data[at % len(data)] ^= op[2]
        elif op[0] == "truncate":
            del data[at:]
        elif op[0] == "insert":
            data[at:at] = op[2]
        elif op[0] == "delete":
            del data[at:at + op[2]]
        elif op[0] == "overwrite":
            data[at:at + len(op[2])] = op[2]
    return bytes(data)


def mutated(seed: bytes) -> st.SearchStrategy[bytes]:
    """``seed`` with up to four byte-level edits: flips, cuts, insertions, deletions."""
    op = st.one_of(
        st.tuples(st.just("flip"), _POSITION, st.integers(1, 255)),
        st.tuples(st.just("truncate"), _POSITION),
        st.tuples(st.just("insert"), _POSITION, st.binary(min_size=1, max_size=16)),
        st.tuples(st.just("delete"), _POSITION, st.integers(1, 64)),
        st.tuples(st.just("overwrite"), _POSITION, st.binary(min_size=1, max_size=8)),
    )
    return st.lists(op, min_size=1, max_size=4).map(lambda ops: _apply(seed, ops))


def _values(leaves: st.SearchStrategy) -> st.SearchStrategy:
    return st.recursive(leaves, lambda children: st.lists(children, max_size=3)
                        | st.dictionaries(st.text(max_size=6), children, max_size=3), max_leaves=8)


_JSON_LEAVES = (st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.floats()
                | st.text(max_size=12))
#: Values a YAML or JSON file may hold where bitsound expects something else.
json_values = _values(_JSON_LEAVES)
#: Values a damaged or hostile file may hold where bitsound expects something else.
plain_values = _values(_JSON_LEAVES | st.binary(max_size=8))
tensor_values = st.builds(
    lambda shape, dtype: torch.zeros(shape, dtype=dtype),
    st.lists(st.integers(0, 4), max_size=3),
    st.sampled_from([torch.float32, torch.float64, torch.int64, torch.uint8, torch.bool]))


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path into nested dicts and lists (the places a structured edit may hit)."""
    out = [prefix] if prefix else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:4]):
            out += _paths(v, (*prefix, i))
    return out


def _edit(obj: Any, edits: list[tuple]) -> Any:
    import copy

    obj = copy.deepcopy(obj)
    for path, action, value in edits:
        parent = obj
        for key in path[:-1]:
            parent = _child(parent, key)
        if isinstance(parent, dict) and action == "delete":
            parent.pop(path[-1], None)
        elif isinstance(parent, dict) or (isinstance(parent, list) and isinstance(path[-1], int)
                                          and path[-1] < len(parent)):
            parent[path[-1]] = value
        # else: an earlier edit removed or replaced this path
    return obj


def _child(parent: Any, key: Any) -> Any:
    if isinstance(parent, dict):
        return parent.get(key)
    if isinstance(parent, list) and isinstance(key, int) and key < len(parent):
        return parent[key]
    return None


def edited(seed: dict, values: st.SearchStrategy | None = None) -> st.SearchStrategy[dict]:
    """``seed`` (nested dicts) with up to three fields replaced by odd ``values`` (default:
    plain values and tensors) or deleted."""
    paths = _paths(seed)
    edit = st.tuples(st.sampled_from(paths), st.sampled_from(["replace", "delete"]),
                     plain_values | tensor_values if values is None else values)
    return st.lists(edit, min_size=1, max_size=3).map(lambda edits: _edit(seed, edits))


def _saved(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


_FIELD = st.sampled_from(["", " ", "0", "-1", "1e309", "nan", "inf", "-0", "0.5", "1.0", "2",
                          "a.wav", "b.wav", "../a.wav", "/", "~", "dog", "cat", "\x00", "é",
                          '"', '""', "'", ",", ";", "\\t", "1e-320", "99999999999999999999"])
_LINE = st.lists(_FIELD | st.text(max_size=8), max_size=7)


def table_text(separator: str, header: list[str] | None = None) -> st.SearchStrategy[str]:
    """Lines of ``separator``-separated fields drawn from odd and ordinary values."""
    def join(rows: list[list[str]], with_header: bool) -> str:
        lines = [separator.join(header)] if header and with_header else []
        return "\n".join(lines + [separator.join(r) for r in rows]) + "\n"

    return st.builds(join, st.lists(_LINE, max_size=6), st.booleans())


# ------------------------------------------------------------------ targets
def _write(name: str, data: bytes | str) -> Path:
    stem, dot, suffix = name.partition(".")
    path = workdir() / f"fuzzed-{stem}-{_TOKEN}{dot}{suffix}"
    path.write_bytes(data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data)
    return path


def model_file(data: bytes) -> None:
    from bitsound.modelfile import load_model

    path = _write("model.pt", data)
    check(lambda: load_model(path), path)


def model_file_fields(obj: dict) -> None:
    model_file(_saved(obj))


def checkpoint(data: bytes) -> None:
    from bitsound.config import TrainConfig
    from bitsound.train.loop import _Monitor, _restore, _resume_state, make_optimizer
    from bitsound.train.schedules import EpochScheduler

    path = _write("last.pt", data)

    def resume():
        state = _resume_state(path, "fuzz")
        if state is None:
            return
        model = checkpoint_model()
        cfg = TrainConfig(epochs=1, batch_size=8)
        optimizer = make_optimizer(model, cfg)
        scheduler = EpochScheduler(optimizer, cfg.schedule, epochs=1, steps_per_epoch=2, mode="max")
        _restore(state, path, model=model, optimizer=optimizer, scheduler=scheduler,
                 generator=torch.Generator(), monitor=_Monitor("", "max"))

    rng = torch.get_rng_state()
    try:
        check(resume, path)
    finally:
        torch.set_rng_state(rng)


def checkpoint_fields(obj: dict) -> None:
    checkpoint(_saved(obj))


def bsnn(data: bytes) -> None:
    from bitsound.export.bsnn import read

    path = _write("model.bsnn", data)
    check(lambda: read(path), path)


def recipe(text: str | bytes) -> None:
    from bitsound.recipes import load_recipe

    path = _write("recipe.yaml", text)
    check(lambda: load_recipe(str(path)), path)


def recipe_overrides(overrides: list[str]) -> None:
    """``--set`` values: a recipe, or one ConfigError that names an override."""
    from bitsound.recipes import load_recipe

    try:
        load_recipe("quickstart", overrides=overrides)
    except ConfigError as err:
        if not names_an_override(str(err), overrides):
            raise ContractViolation(f"error names none of the overrides {overrides}: {err}") from err


def names_an_override(message: str, overrides: list[str]) -> bool:
    """``message`` quotes an override whole (``--set 'KEY=VALUE'``) or names the section its key
    path starts with as a key path (``audio.crop.source_seconds: Field required`` for
    ``audio.crop.pad=1``: the error is in the section the override made)."""
    for override in overrides:
        if f"--set '{override}'" in message:
            return True
        key, equals, _ = override.partition("=")
        first = key.split(".")[0].strip()
        if equals and first and re.search(rf"(^|\s|'){re.escape(first)}[.:']", message):
            return True
    return False


def manifest(text: str | bytes) -> None:
    from bitsound.data import open_dataset

    path = _write("manifest.csv", text)
    check(lambda: open_dataset(f"manifest:{path}"), path)


def annotations(fmt: str, text: str | bytes) -> None:
    from bitsound.data.events import read_annotations

    path = _write("events.ann" if fmt == "ann" else "events.txt", text)
    check(lambda: read_annotations(path, format=fmt), path)


def cache_file(data: bytes) -> None:
    """A damaged cache file is recomputed, never an error: ``get`` returns an array or None."""
    from bitsound.data import FeatureCache

    cache = FeatureCache(workdir() / "cache")
    key = "ab" + "0" * 62
    path = cache.path_for(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    array = cache.get(key)
    if array is not None:
        expected = int(getattr(array, "offset", 0)) + array.nbytes
        if expected != len(data):
            raise ContractViolation(f"a cache file of {len(data)} bytes was served as {array.shape}")


@dataclass(frozen=True)
class Target:
    """A reader, and the strategy of inputs for it."""

    name: str
    run: Callable[..., None]
    inputs: Callable[[], st.SearchStrategy]


def _annotation_inputs() -> st.SearchStrategy:
    def per_format(fmt: str):
        seed = SEED_ANNOTATIONS[fmt]
        sep_header = {"dcase": ["filename", "onset", "offset", "event_label"],
                      "raven": ["Selection", "Begin Time (s)", "End Time (s)", "Annotation"]}
        text = table_text("\t", sep_header.get(fmt)) | mutated(seed.encode())
        return st.tuples(st.just(fmt), text)

    return st.one_of(*(per_format(f) for f in SEED_ANNOTATIONS))


TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("model-file-bytes", model_file, lambda: mutated(seed_model_file()) | st.binary(max_size=64)),
    Target("model-file-fields", model_file_fields, lambda: edited(seed_model_dict())),
    Target("checkpoint-bytes", checkpoint, lambda: mutated(seed_checkpoint())),
    Target("checkpoint-fields", checkpoint_fields,
           lambda: edited(torch.load(io.BytesIO(seed_checkpoint()), weights_only=True))),
    Target("bsnn", bsnn, lambda: mutated(seed_bsnn()) | st.binary(max_size=64)),
    Target("recipe", recipe, lambda: mutated(seed_recipe().encode())
           | edited(yaml.safe_load(seed_recipe()), json_values).map(yaml.safe_dump)
           | json_values.map(json.dumps)),
    Target("recipe-overrides", recipe_overrides,
           lambda: st.lists(st.builds(lambda k, v: f"{k}={v}",
                                      st.sampled_from(["train.epochs", "model.params", "audio",
                                                       "data.split.kind", "frontend.n_mels",
                                                       "train", "x.y", "", "audio.crop.pad"]),
                                      _FIELD | st.text(max_size=10)), max_size=3)),
    Target("manifest", manifest, lambda: mutated(SEED_MANIFEST.encode())
           | table_text(",", ["path", "label", "fold", "group", "device", "start", "end"])),
    Target("annotations", annotations, _annotation_inputs),
    Target("cache-file", cache_file, lambda: mutated(seed_cache_file()) | st.binary(max_size=256)),
)}


def run_target(target: Target, value: Any) -> None:
    """Feed one input to a target (tuples are spread as arguments)."""
    if isinstance(value, tuple):
        target.run(*value)
    else:
        target.run(value)
