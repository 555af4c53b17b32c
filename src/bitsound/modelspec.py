"""Module specs: a network's exact architecture as plain data, so a model file rebuilds it as trained.

:func:`module_spec` describes a module tree -- each module's class, its plain attributes
(``in_channels``, ``kernel_size``, ``mode`` ...), the names, shapes and dtypes of its parameters and
buffers, and its children -- as nested dicts, lists, strings and numbers that
``torch.load(weights_only=True)`` accepts. :func:`build_from_spec` rebuilds the tree without
calling the classes' ``__init__`` (so a network whose channels were removed after it was built,
by pruning or by hand, comes back with its real shapes) and the state dict then fills the
tensors.

Classes are looked up by module and name, never executed from the file: a class from ``torch.nn``
or ``bitsound`` is imported if needed; any other class (a plugin's own layer) must come from a
module the process has already imported (import the package that defines it before loading), so
a file cannot make bitsound import an arbitrary module. Attributes must be plain values. A module holding
something else (a tensor that is not a parameter or buffer, a function) cannot be described, and
:func:`module_spec` says which attribute of which module.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import torch
from torch import nn

from bitsound.errors import CheckpointError

SPEC_VERSION = 1
_ALLOWED_PREFIXES = ("torch.nn.", "bitsound.")
_DTYPES = {
    str(d): d
    for d in (
        torch.float32,
        torch.float64,
        torch.float16,
        torch.bfloat16,
        torch.int64,
        torch.int32,
        torch.int16,
        torch.int8,
        torch.uint8,
        torch.bool,
    )
}
# attributes every nn.Module has after nn.Module.__init__ (internals; rebuilt by calling it)
_MODULE_INTERNALS = frozenset(nn.Module().__dict__)


def _encode(value: Any, where: str) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, where) for v in value]}
    if isinstance(value, list):
        return [_encode(v, where) for v in value]
    if isinstance(value, (set, frozenset)):
        return {"__set__": sorted(_encode(v, where) for v in value)}
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"__dict__": {k: _encode(v, where) for k, v in value.items()}}
    raise CheckpointError(
        f"{where} holds a {type(value).__name__}, which a model file cannot describe; keep "
        f"only numbers, strings, tuples, lists and dicts as module attributes (tensors as "
        f"parameters or buffers)"
    )


def _decode(value: Any) -> Any:
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if isinstance(value, dict):
        if "__tuple__" in value:
            return tuple(_decode(v) for v in value["__tuple__"])
        if "__set__" in value:
            return set(_decode(v) for v in value["__set__"])
        if "__dict__" in value:
            return {k: _decode(v) for k, v in value["__dict__"].items()}
    return value


def module_spec(module: nn.Module, *, path: str = "") -> dict:
    """Describe ``module`` (recursively) as plain data; see the module docstring."""
    cls = type(module)
    qual = f"{cls.__module__}.{cls.__qualname__}"
    if "<locals>" in cls.__qualname__ or cls.__module__ == "__main__":
        raise CheckpointError(
            f"module '{path or 'the network'}' is a {qual}, defined inside a function or in __main__; a "
            f"model file can only name classes of importable modules: move it to a module"
        )
    attrs = {}
    for k, v in module.__dict__.items():
        if k in _MODULE_INTERNALS or k in ("_parameters", "_buffers", "_modules"):
            continue
        attrs[k] = _encode(v, f"attribute '{k}' of module '{path or 'the network'}' ({cls.__name__})")
    params = {
        k: None
        if p is None
        else {"shape": list(p.shape), "dtype": str(p.dtype), "requires_grad": bool(p.requires_grad)}
        for k, p in module._parameters.items()
    }
    buffers = {
        k: None
        if b is None
        else {
            "shape": list(b.shape),
            "dtype": str(b.dtype),
            "persistent": k not in module._non_persistent_buffers_set,
        }
        for k, b in module._buffers.items()
    }
    children = {
        k: None if c is None else module_spec(c, path=f"{path}.{k}" if path else k)
        for k, c in module._modules.items()
    }
    return {"class": qual, "attrs": attrs, "params": params, "buffers": buffers, "children": children}


def _resolve(qual: str, where: str) -> type:
    parts = qual.split(".")
    trusted = qual.startswith(_ALLOWED_PREFIXES)
    obj: Any = None
    for i in range(len(parts) - 1, 0, -1):  # the longest prefix that is a module
        mod_name = ".".join(parts[:i])
        if mod_name not in sys.modules and not trusted:
            continue
        try:
            obj = importlib.import_module(mod_name)
            for part in parts[i:]:
                obj = getattr(obj, part)
            break
        except (ImportError, AttributeError):
            obj = None
    if obj is None and not trusted:
        raise CheckpointError(
            f"{where}: class {qual!r} is neither a torch.nn or bitsound class nor from a module this "
            f"process has imported; import the package that defines it before loading the model"
        )
    if obj is None:
        raise CheckpointError(
            f"{where}: class {qual!r} does not exist in this version of bitsound/torch; load the model "
            f"with the version that wrote it"
        )
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise CheckpointError(f"{where}: {qual!r} is not an nn.Module class")
    return obj


def _empty(desc: dict) -> torch.Tensor:
    """An uninitialised tensor of a description's shape and dtype; a shape that is not a list of
    sizes is a ValueError (torch would read nested lists as an index, with a warning)."""
    if not isinstance(desc, dict):
        raise ValueError(f"a tensor description is a {type(desc).__name__}, not a mapping")
    shape = desc["shape"]
    if not (isinstance(shape, (list, tuple))
            and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)):
        raise ValueError(f"tensor shape {shape!r} is not a list of sizes")
    return torch.empty(shape, dtype=_DTYPES[desc["dtype"]])


def build_from_spec(spec: dict, *, path: str = "") -> nn.Module:
    """Rebuild the module tree :func:`module_spec` described (tensors uninitialised: load a state dict)."""
    where = f"module '{path or 'the network'}'"
    try:
        if not isinstance(spec, dict):
            raise ValueError(f"a module description is a {type(spec).__name__}, not a mapping")
        cls = _resolve(spec["class"], where)
        obj = cls.__new__(cls)
        nn.Module.__init__(obj)
        for k, v in spec["attrs"].items():
            object.__setattr__(obj, k, _decode(v))
        for k, p in spec["params"].items():
            t = (
                None
                if p is None
                else nn.Parameter(_empty(p), requires_grad=p["requires_grad"])
            )
            obj.register_parameter(k, t)
        for k, b in spec["buffers"].items():
            t = None if b is None else _empty(b)
            obj.register_buffer(k, t, persistent=True if b is None else b["persistent"])
        for k, c in spec["children"].items():
            obj.add_module(k, None if c is None else build_from_spec(c, path=f"{path}.{k}" if path else k))
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as err:
        raise CheckpointError(
            f"{where}: the model file's architecture description is malformed ({type(err).__name__}: {err})"
        ) from None
    return obj
