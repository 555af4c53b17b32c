"""Lowering a PyTorch network to the typed graph: a registry keyed by module class, and a trace.

:func:`lower` traces the network with ``torch.fx`` and maps every node through two tables:

- **module lowerings**, keyed by module class (:func:`register_lowering`), as Torch-Pruning's
  ``register_customized_layer``: a module whose class has one is a leaf of the trace and becomes
  the ops its lowering adds; a container without one is traced through (its ``forward`` is
  followed op by op);
- **function lowerings** (:func:`register_function`), keyed by the function or ``Tensor`` method
  name that appears in a ``forward`` (``operator.add``, ``torch.cat``, ``"permute"`` ...).

A lowering takes a :class:`LowerContext`, the module (or nothing, for functions), its qualified
name and the node's arguments (:class:`Value` for tensors, plain Python values otherwise) and
returns a :class:`Value`. A module with no lowering and no children, or a function with none,
stops the export with an error naming it and the way to register one. Export code names no model
class: a new model family needs lowerings only for genuinely new layer types.

Example: a layer ``Scale`` computing ``x * self.gain`` (a per-channel parameter)::

    from bitsound.graph.lower import register_lowering

    @register_lowering(Scale)
    def _lower_scale(ctx, m, name, x):
        gain = m.gain.detach().double().numpy().reshape(-1)
        return ctx.affine(x, gain, 0.0, name=name, source=m)

After the trace, :mod:`bitsound.graph.passes` folds what the engine computes better fused
(batch-norm into binary convolutions, sign thresholds, exact affine merges).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from bitsound.errors import ExportError
from bitsound.graph import opcodes as oc
from bitsound.graph.ir import Graph, Tensor

_MODULE_LOWERINGS: dict[type, tuple[Callable, bool]] = {}
_FUNCTION_LOWERINGS: dict[Any, Callable] = {}


def register_lowering(cls: type, *, inherit: bool = False):
    """Register ``fn(ctx, module, name, *args, **kwargs) -> Value`` as the lowering of ``cls``.

    ``inherit=True`` also covers subclasses that do not override ``forward`` (they compute the
    same thing); a subclass with its own ``forward`` needs its own lowering. A class registered
    twice is an error.
    """

    def decorator(fn: Callable) -> Callable:
        if cls in _MODULE_LOWERINGS:
            raise ExportError(f"{cls.__name__} already has a lowering ({_MODULE_LOWERINGS[cls][0].__name__})")
        _MODULE_LOWERINGS[cls] = (fn, inherit)
        return fn

    return decorator


def register_function(*targets: Any):
    """Register ``fn(ctx, name, *args, **kwargs) -> Value`` for functions or Tensor method names."""

    def decorator(fn: Callable) -> Callable:
        for t in targets:
            if t in _FUNCTION_LOWERINGS:
                raise ExportError(f"function {t!r} already has a lowering")
            _FUNCTION_LOWERINGS[t] = fn
        return fn

    return decorator


def find_lowering(module: nn.Module) -> Callable | None:
    """The lowering of ``module``'s class, or of a base registered with ``inherit=True``."""
    cls = type(module)
    if cls in _MODULE_LOWERINGS:
        return _MODULE_LOWERINGS[cls][0]
    for base in cls.__mro__[1:]:
        entry = _MODULE_LOWERINGS.get(base)
        if entry is not None and entry[1] and cls.forward is base.forward:
            return entry[0]
    return None


@dataclass(frozen=True)
class Value:
    """A PyTorch tensor of one example as the graph holds it.

    ``t`` is the graph tensor; ``rank`` the number of spatial axes PyTorch sees (2: ``(N, C, H,
    W)``, 1: ``(N, C, L)`` held as ``h = 1``, 0: ``(N, F)`` held as ``1 x 1 x F``). ``flat_from``
    is set when a Flatten collapsed a ``(c, h, w)`` map bigger than 1x1: PyTorch's order is then
    ``(c, h, w)`` while the graph keeps the map, so only a dense layer may read it (its weights
    are permuted). ``shortcut`` marks a channel shortcut (``("pad" | "group_mean", value)``) that
    only an addition may consume.
    """

    t: int
    rank: int
    flat_from: tuple[int, int, int] | None = None
    shortcut: tuple[str, Value] | None = None


class LowerContext:
    """The graph being built and helpers that lowerings call (each adds one op)."""

    def __init__(self, graph: Graph):
        self.g = graph

    # -- access --------------------------------------------------------------------------------
    def shape(self, v: Value) -> Tensor:
        return self.g.tensors[v.t]

    def plain(self, v: Any, name: str, what: str = "") -> Value:
        """``v`` as an ordinary tensor value: no pending shortcut, no flattened map."""
        if not isinstance(v, Value):
            raise ExportError(
                f"'{name}' takes a tensor computed from the input, got {type(v).__name__} {v!r}"
            )
        if v.shortcut is not None:
            raise ExportError(
                f"'{name}' reads a channel shortcut ({v.shortcut[0]}); only an addition may consume one"
            )
        if v.flat_from is not None:
            raise ExportError(
                f"'{name}'{' (' + what + ')' if what else ''} acts on a flattened {v.flat_from} "
                f"map; only linear layers may follow a Flatten of a map larger than 1x1"
            )
        return v

    def floats(self, v: Any, name: str, what: str = "") -> Value:
        v = self.plain(v, name, what)
        if self.shape(v).dtype != "f32":
            raise ExportError(f"'{name}' needs float inputs, but its input holds {self.shape(v).dtype}")
        return v

    def add(
        self,
        kind: str,
        inputs: list[Value],
        params: dict,
        arrays: dict | None = None,
        *,
        name: str,
        rank: int,
        source: Any = None,
    ) -> Value:
        t = self.g.add(kind, [v.t for v in inputs], params, arrays or {}, name=name, source=source, rank=rank)
        return Value(t, rank)

    # -- common ops ----------------------------------------------------------------------------
    def affine(self, x: Value, scale, bias, *, name: str, source: Any = None) -> Value:
        x = self.floats(x, name)
        c = self.shape(x).c
        s = np.broadcast_to(np.asarray(scale, np.float64).reshape(-1), (c,))
        b = np.broadcast_to(np.asarray(bias, np.float64).reshape(-1), (c,))
        return self.add(
            "affine", [x], {"c": c}, {"scale": s, "bias": b}, name=name, rank=x.rank, source=source
        )

    def activation(self, x: Value, kind: str, *, name: str, slope=None, source: Any = None) -> Value:
        x = self.floats(x, name)
        c = self.shape(x).c
        arrays = {}
        if kind == "prelu":
            s = np.asarray(slope, np.float64).reshape(-1)
            if s.size not in (1, c):
                raise ExportError(
                    f"'{name}' (PReLU) has {s.size} slopes for {c} channels; use one slope or one per channel"
                )
            arrays["slope"] = np.broadcast_to(s, (c,))
        return self.add(
            "activation",
            [x],
            {"kind": oc.ACT_KINDS[kind], "c": c},
            arrays,
            name=name,
            rank=x.rank,
            source=source,
        )

    def pack(self, x: Value, *, name: str, source: Any = None) -> Value:
        x = self.plain(x, name)
        if self.shape(x).dtype == "bits":
            return x
        x = self.floats(x, name)
        return self.add("pack", [x], {"c": self.shape(x).c}, name=name, rank=x.rank, source=source)


# ---------------------------------------------------------------------------------------------
# the trace
# ---------------------------------------------------------------------------------------------


class _Tracer(fx.Tracer):
    """Every submodule but a plain Sequential is a leaf: each is lowered (or traced) on its own, so
    that an error names the innermost module at fault."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return not isinstance(m, nn.Sequential)


def _is_torch_layer(m: nn.Module) -> bool:
    """A torch.nn layer (not a container): lowered by the registry or not at all, never traced."""
    return type(m).__module__.startswith("torch.nn") and not isinstance(
        m, (nn.Sequential, nn.ModuleList, nn.ModuleDict)
    )


def _no_lowering(name: str, m: nn.Module) -> ExportError:
    cls = type(m)
    return ExportError(
        f"module '{name}' ({cls.__module__}.{cls.__name__}) has no lowering to the model graph; "
        f"register one with @bitsound.graph.lower.register_lowering({cls.__name__}) (a function "
        f"(ctx, module, name, *inputs) -> Value adding its ops), or build the layer from "
        f"modules that have one"
    )


def lower_module(ctx: LowerContext, module: nn.Module, prefix: str, *args: Any) -> Any:
    """Lower ``module`` applied to ``args`` (Values), inline into ``ctx``'s graph."""
    fn = find_lowering(module)
    if fn is not None:
        return fn(ctx, module, prefix, *args)
    if _is_torch_layer(module):
        raise _no_lowering(prefix or type(module).__name__, module)
    try:
        traced = _Tracer().trace(module)
    except Exception as err:  # noqa: BLE001 - any tracing failure becomes one clear export error
        raise ExportError(
            f"module '{prefix or type(module).__name__}' ({type(module).__name__}) cannot be traced "
            f"({type(err).__name__}: {err}); its forward has Python control flow on tensor "
            f"values: register a lowering for it with "
            f"@bitsound.graph.lower.register_lowering({type(module).__name__})"
        ) from None
    env: dict[str, Any] = {}
    placeholders = iter(args)
    result = None

    def arg(a: Any) -> Any:
        return fx.node.map_arg(a, lambda n: env[n.name])

    for node in traced.nodes:
        where = f"{prefix}.{node.target}" if prefix and isinstance(node.target, str) else str(node.target)
        if node.op == "placeholder":
            env[node.name] = next(placeholders)
        elif node.op == "get_attr":
            obj = module
            for part in str(node.target).split("."):
                obj = getattr(obj, part)
            env[node.name] = obj.detach() if isinstance(obj, torch.Tensor) else obj
        elif node.op == "call_module":
            sub = module.get_submodule(str(node.target))
            env[node.name] = lower_module(ctx, sub, where, *arg(node.args), **arg(node.kwargs))
        elif node.op in ("call_function", "call_method"):
            fn = _FUNCTION_LOWERINGS.get(node.target)
            label = (
                node.target if isinstance(node.target, str) else getattr(node.target, "__name__", node.target)
            )
            in_module = prefix or type(module).__name__
            args_, kwargs_ = arg(node.args), arg(node.kwargs)
            if not _has_value(args_) and not _has_value(kwargs_):
                env[node.name] = _eval_constant(node, args_, kwargs_)
                continue
            if fn is None:
                raise ExportError(
                    f"'{label}' in the forward of '{in_module}' has no lowering to the model "
                    f"graph; register one with @bitsound.graph.lower.register_function(...) or "
                    f"wrap the computation in a module with its own lowering"
                )
            stack = list(node.meta.get("nn_module_stack") or {})
            owner = ".".join(p for p in (prefix, stack[-1] if stack else "") if p)
            env[node.name] = fn(ctx, f"{owner}.{node.name}" if owner else node.name, *args_, **kwargs_)
        elif node.op == "output":
            result = arg(node.args[0])
    return result


def _has_value(a: Any) -> bool:
    if isinstance(a, Value):
        return True
    if isinstance(a, (list, tuple)):
        return any(_has_value(x) for x in a)
    if isinstance(a, dict):
        return any(_has_value(x) for x in a.values())
    return False


def _eval_constant(node: fx.Node, args, kwargs):
    """A node computed from constants only (parameters, numbers): evaluate it with PyTorch."""
    if node.op == "call_method":
        self_, *rest = args
        return getattr(self_, node.target)(*rest, **kwargs)
    return node.target(*args, **kwargs)


def lower(
    net: nn.Module, input_shape: tuple[int, ...], *, meta: dict | None = None, optimize: bool = True
) -> Graph:
    """Lower ``net`` (in eval mode, without gradients) for one example of ``input_shape``.

    Parameters
    ----------
    net : nn.Module
        Maps features [shape=(batch, *input_shape)] to logits [shape=(batch, n_classes)].
    input_shape : tuple of int
        ``(c, t)`` for 1-D features or ``(c, h, w)`` for 2-D ones.
    meta : dict, optional
        JSON metadata kept in the graph (labels, recipe).
    optimize : bool
        Run the fusion passes of :mod:`bitsound.graph.passes` (the engine's form); False keeps
        the plain op-by-op graph.

    Returns
    -------
    Graph

    Raises
    ------
    ExportError
        For a module or function with no lowering, or a layer the graph cannot express, naming it.
    """
    import bitsound.graph.lowerings  # noqa: F401 - registers the built-in lowerings
    from bitsound.graph import passes

    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 2:
        params, rank = {"rank": 1, "c": shape[0], "h": 1, "w": shape[1]}, 1
    elif len(shape) == 3:
        params, rank = {"rank": 2, "c": shape[0], "h": shape[1], "w": shape[2]}, 2
    else:
        raise ExportError(f"the graph takes features of shape (c, t) or (c, h, w), got {shape}")
    g = Graph()
    ctx = LowerContext(g)
    was = net.training
    net.eval()
    try:
        with torch.no_grad():
            x = ctx.add("input", [], params, name="input", rank=rank)
            y = lower_module(ctx, net, "", x)
            if not isinstance(y, Value):
                raise ExportError(f"the network returns {type(y).__name__}; it must return one logits tensor")
            y = ctx.floats(y, "output")
            if ctx.shape(y).h * ctx.shape(y).w != 1:
                raise ExportError(
                    f"the network's output is a {ctx.shape(y).h}x{ctx.shape(y).w} map; it must "
                    f"end in logits [batch, n_classes] (pool and flatten first)"
                )
            g.add("output", [y.t], name="output")
    finally:
        net.train(was)
    g.meta = meta
    if optimize:
        g = passes.optimize(g)
    return g.compact()


__all__ = [
    "LowerContext",
    "Value",
    "find_lowering",
    "lower",
    "lower_module",
    "register_function",
    "register_lowering",
    "operator",
]
