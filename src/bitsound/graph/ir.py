"""The typed graph every back end reads: tensors, ops, shapes and dtypes.

A :class:`Graph` is a list of :class:`Op` in execution order over SSA tensors (each op writes
one new :class:`Tensor`). Tensors are one example's activations, channels last: ``(h, w, c)``
(a 1-D signal is ``h = 1, w = t``), with a dtype of :data:`~bitsound.graph.opcodes.DTYPES`
(``f32``, ``bits`` for packed signs, ``i8``). An op has the params and arrays that its record
layout in :mod:`bitsound.graph.opcodes` lists; arrays are flat numpy arrays in the record's
element order. :meth:`Graph.add` infers and checks the output shape with the same rules as the C
engine's loader, so a graph that builds is a graph the engine accepts.

The ``.bsnn`` writer and reader (:mod:`bitsound.export.bsnn`), the C-code generator
(:mod:`bitsound.deploy`) and the PyTorch reference interpreter (:mod:`bitsound.graph.reference`)
all take this graph. It is built from a PyTorch model by :func:`bitsound.graph.lower.lower`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bitsound.errors import ExportError
from bitsound.graph import opcodes as oc

_NP_DTYPES = {"f32": np.float32, "i32": np.int32, "f16": np.float16, "i8": np.int8, "u64": np.uint64}


@dataclass(frozen=True)
class Tensor:
    """Shape ``(h, w, c)`` of one example's activation and its dtype (``f32`` | ``bits`` | ``i8``)."""

    h: int
    w: int
    c: int
    dtype: str = "f32"

    @property
    def numel(self) -> int:
        return self.h * self.w * self.c

    @property
    def nbytes(self) -> int:
        """Bytes the engine stores it in (bits: whole uint64 words per pixel)."""
        if self.dtype == "bits":
            return self.h * self.w * oc.words(self.c) * 8
        return self.numel * (1 if self.dtype == "i8" else 4)

    def dims(self) -> tuple[int, int, int]:
        return (self.h, self.w, self.c)


@dataclass
class Op:
    """One op: ``kind`` (an op name of :mod:`~bitsound.graph.opcodes`), tensor ids, params, arrays.

    ``source`` is the PyTorch module (or callable) the op came from and ``rank`` the number of
    spatial axes PyTorch saw its output with (not serialised; passes use them to evaluate a layer
    with PyTorch's own arithmetic).
    """

    kind: str
    inputs: list[int]
    output: int
    params: dict[str, Any]
    arrays: dict[str, np.ndarray]
    name: str = ""
    source: Any = field(default=None, repr=False, compare=False)
    rank: int | None = field(default=None, repr=False, compare=False)

    @property
    def spec(self) -> oc.OpDef:
        return oc.BY_NAME[self.kind]


class Graph:
    """Ops in execution order over SSA tensors; ``meta`` is JSON metadata (labels, recipe).

    Build with :meth:`add` (or the ``input`` / ``output`` helpers); ``tensors[i]`` is the shape of
    tensor ``i``; ``output`` is the logits tensor once the output op is added.
    """

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self.tensors: list[Tensor] = []
        self.meta: dict[str, Any] | None = None

    # -- building ------------------------------------------------------------------------------
    def add(
        self,
        kind: str,
        inputs: list[int],
        params: dict[str, Any] | None = None,
        arrays: dict[str, Any] | None = None,
        *,
        name: str = "",
        source: Any = None,
        rank: int | None = None,
    ) -> int:
        """Append an op; returns its output tensor id (the same id for ``output``).

        ``params`` must give every scalar of the op's record layout (``opcodes.OPS``);
        ``arrays`` the non-empty arrays, any shape, in the record's element order once flattened.
        """
        if kind not in oc.BY_NAME:
            raise ExportError(f"unknown op {kind!r}; ops: {', '.join(oc.BY_NAME)}")
        spec = oc.BY_NAME[kind]
        if self.ops and self.ops[-1].kind == "output":
            raise ExportError("the output op was already added; no op may follow it")
        if len(inputs) != spec.n_inputs:
            raise ExportError(f"{name or kind}: op {kind} takes {spec.n_inputs} inputs, got {len(inputs)}")
        for t in inputs:
            if not 0 <= t < len(self.tensors):
                raise ExportError(f"{name or kind}: input tensor {t} does not exist")
        if kind == "input" and any(op.kind == "input" for op in self.ops):
            raise ExportError("a graph has exactly one input")
        if kind != "input" and not self.ops:
            raise ExportError("the first op must be the input")
        p = {k: v for k, v in (params or {}).items()}
        missing = [n for n in spec.param_names if n not in p]
        extra = [n for n in p if n not in spec.param_names]
        if missing or extra:
            raise ExportError(
                f"{name or kind}: op {kind} params {list(spec.param_names)}; "
                f"missing {missing}, unknown {extra}"
            )
        for n, t in spec.params:
            p[n] = float(np.float32(p[n])) if t == "f32" else int(p[n])
        arrs = {}
        given = dict(arrays or {})
        for a in spec.arrays:
            n = a.length(p)
            if n == 0:
                if a.name in given and np.size(given[a.name]):
                    raise ExportError(f"{name or kind}: array {a.name} must be absent for these params")
                given.pop(a.name, None)
                continue
            if a.name not in given:
                raise ExportError(f"{name or kind}: array {a.name} of {n} values is missing")
            v = np.asarray(given.pop(a.name))
            if a.dtype == "u64":
                v = v.astype(np.uint64)
            elif a.dtype in ("i32", "i8"):
                out_of_range = a.dtype == "i8" and (v.min() < -128 or v.max() > 127)
                if not np.array_equal(v, np.round(v)) or out_of_range:
                    raise ExportError(f"{name or kind}: array {a.name} must hold {a.dtype} integers")
                v = v.astype(_NP_DTYPES[a.dtype])
            else:
                v = v.astype(_NP_DTYPES[a.dtype])
            v = np.ascontiguousarray(v.reshape(-1))
            if v.size != n:
                raise ExportError(f"{name or kind}: array {a.name} has {v.size} values, the op needs {n}")
            arrs[a.name] = v
        if given:
            raise ExportError(f"{name or kind}: unknown arrays {sorted(given)} for op {kind}")
        shape = infer(kind, [self.tensors[t] for t in inputs], p, arrs, name or kind)
        op = Op(kind, list(inputs), -1, p, arrs, name=name, source=source, rank=rank)
        if kind == "output":
            op.output = inputs[0]
        else:
            op.output = len(self.tensors)
            self.tensors.append(shape)
        self.ops.append(op)
        return op.output

    # -- reading -------------------------------------------------------------------------------
    @property
    def input(self) -> int:
        return self.ops[0].output

    @property
    def output(self) -> int:
        if not self.ops or self.ops[-1].kind != "output":
            raise ExportError("the graph has no output op")
        return self.ops[-1].output

    def producer(self, t: int) -> Op | None:
        for op in self.ops:
            if op.kind != "output" and op.output == t:
                return op
        return None

    def consumers(self, t: int) -> list[Op]:
        return [op for op in self.ops if t in op.inputs]

    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for op in self.ops:
            counts[op.kind] = counts.get(op.kind, 0) + 1
        return counts

    def equals(self, other: Graph) -> bool:
        """Same ops, params, arrays, shapes and metadata (what a file round trip must keep)."""
        if len(self.ops) != len(other.ops) or self.tensors != other.tensors or self.meta != other.meta:
            return False
        for a, b in zip(self.ops, other.ops, strict=True):
            key = lambda o: (o.kind, o.inputs, o.output, o.params, o.name)  # noqa: E731
            if key(a) != key(b):
                return False
            if a.arrays.keys() != b.arrays.keys():
                return False
            for k in a.arrays:
                x, y = a.arrays[k], b.arrays[k]
                if x.dtype != y.dtype or not np.array_equal(x, y, equal_nan=x.dtype.kind == "f"):
                    return False
        return True

    def compact(self) -> Graph:
        """A copy without ops whose outputs nothing reads, tensors renumbered in order."""
        live = {self.output}
        keep = []
        for op in reversed(self.ops):
            if op.kind == "output" or op.output in live:
                keep.append(op)
                live.update(op.inputs)
        keep.reverse()
        g = Graph()
        g.meta = self.meta
        remap: dict[int, int] = {}
        for op in keep:
            out = g.add(
                op.kind,
                [remap[t] for t in op.inputs],
                op.params,
                op.arrays,
                name=op.name,
                source=op.source,
                rank=op.rank,
            )
            if op.kind != "output":
                remap[op.output] = out
        return g

    def summary(self) -> str:
        rows = []
        for op in self.ops:
            t = self.tensors[op.output]
            rows.append(f"{op.kind:16s} {op.name:40s} {t.h}x{t.w}x{t.c} {t.dtype}")
        return "\n".join(rows)


# ---------------------------------------------------------------------------------------------
# shape inference (the same rules as the engine's loader, engine/format.c)
# ---------------------------------------------------------------------------------------------


def conv_size(n: int, k: int, s: int, p0: int, p1: int, d: int) -> int:
    """Output length of a convolution window (PyTorch's rule)."""
    return (n + p0 + p1 - d * (k - 1) - 1) // s + 1


def pool_size(n: int, k: int, s: int, p: int, ceil_mode: bool) -> int:
    """PyTorch's pooling output length, with ceil_mode's rule that the last window starts inside."""
    out = (n + 2 * p - k + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= n + p:
        out -= 1
    return out


def _need(cond: bool, name: str, msg: str) -> None:
    if not cond:
        raise ExportError(f"{name}: {msg}")


def _geom2(p: dict) -> tuple:
    return tuple(p[k] for k in oc.GEOM2)


def _conv_out(x: Tensor, p: dict, name: str, one_d: bool) -> tuple[int, int]:
    if one_d:
        _need(x.h == 1, name, f"a 1-D op needs a [1][t][c] input, got height {x.h}")
        k, s, p0, p1, d = (p[n] for n in oc.GEOM1)
        _need(min(k, s, d) >= 1 and min(p0, p1) >= 0, name, "bad window geometry")
        ow = conv_size(x.w, k, s, p0, p1, d)
        _need(ow >= 1, name, f"kernel {k} (dilation {d}) does not fit the padded length {x.w + p0 + p1}")
        return 1, ow
    kh, kw, sh, sw, pt, pl, pb, pr, dh, dw = _geom2(p)
    _need(min(kh, kw, sh, sw, dh, dw) >= 1 and min(pt, pl, pb, pr) >= 0, name, "bad window geometry")
    oh, ow = conv_size(x.h, kh, sh, pt, pb, dh), conv_size(x.w, kw, sw, pl, pr, dw)
    _need(oh >= 1 and ow >= 1, name, f"kernel {kh}x{kw} does not fit the padded {x.h}x{x.w} input")
    return oh, ow


def _groups(p: dict, name: str, cin_actual: int) -> None:
    g = p["groups"]
    _need(
        g >= 1 and p["cin"] % g == 0 and p["cout"] % g == 0,
        name,
        f"groups={g} must divide cin={p['cin']} and cout={p['cout']}",
    )
    _need(cin_actual == p["cin"], name, f"expects {p['cin']} input channels, its input has {cin_actual}")


def infer(kind: str, ins: list[Tensor], p: dict, arrays: dict, name: str) -> Tensor:
    """Output tensor of op ``kind`` on inputs ``ins``; raises ExportError for what the engine rejects."""
    x = ins[0] if ins else None

    def dtype_in(*ok: str) -> None:
        _need(x.dtype in ok, name, f"op {kind} needs {' or '.join(ok)} input, got {x.dtype}")

    if kind == "input":
        _need(p["rank"] in (1, 2), name, f"input rank {p['rank']} is not 1 or 2")
        _need(min(p["c"], p["h"], p["w"]) >= 1, name, "input dimensions must be >= 1")
        _need(p["rank"] == 2 or p["h"] == 1, name, "a rank-1 input has height 1")
        return Tensor(p["h"], p["w"], p["c"])
    if kind in ("feature_norm", "normalize"):
        dtype_in("f32")
        if kind == "normalize":
            _need(1 <= p["axes"] <= 7, name, f"axes mask {p['axes']} must be 1..7")
        return x
    if kind == "affine":
        dtype_in("f32")
        _need(p["c"] == x.c, name, f"affine over {p['c']} channels, input has {x.c}")
        return x
    if kind == "freq_affine":
        dtype_in("f32")
        _need((p["h"], p["c"]) == (x.h, x.c), name, f"freq_affine over {p['h']}x{p['c']}, input {x.h}x{x.c}")
        return x
    if kind == "activation":
        dtype_in("f32")
        _need(p["kind"] in oc.ACT_KINDS.values(), name, f"activation kind {p['kind']}")
        _need(p["c"] == x.c, name, f"activation over {p['c']} channels, input has {x.c}")
        return x
    if kind in ("conv2d", "conv1d"):
        dtype_in("f32")
        _groups(p, name, x.c)
        _need(p["wdtype"] in oc.WDTYPES.values(), name, f"weight dtype {p['wdtype']}")
        oh, ow = _conv_out(x, p, name, kind == "conv1d")
        return Tensor(oh, ow, p["cout"])
    if kind in ("binary_conv2d", "binary_conv1d"):
        dtype_in("bits")
        _groups(p, name, x.c)
        _need(p["out_mode"] in oc.BOUT_MODES.values(), name, f"binary conv output mode {p['out_mode']}")
        oh, ow = _conv_out(x, p, name, kind == "binary_conv1d")
        cg = p["cin"] // p["groups"]
        if cg % 64:
            pad_mask = np.uint64(~((1 << (cg % 64)) - 1) & 0xFFFFFFFFFFFFFFFF)
            last = arrays["weight"].reshape(-1, oc.words(cg))[:, -1]
            _need(not np.any(last & pad_mask), name, "weight bits set beyond the input channels")
        if p["out_mode"] == oc.BOUT_MODES["bits"]:
            _need(np.isin(arrays["flip"], (0, 1)).all(), name, "flip must be 0 or 1")
        return Tensor(oh, ow, p["cout"], "bits" if p["out_mode"] == oc.BOUT_MODES["bits"] else "f32")
    if kind in ("qconv2d", "qconv1d"):
        dtype_in("i8")
        _groups(p, name, x.c)
        _quant_params(p, name)
        oh, ow = _conv_out(x, p, name, kind == "qconv1d")
        return Tensor(oh, ow, p["cout"], "i8" if p["out_mode"] == oc.QOUT_MODES["int8"] else "f32")
    if kind == "pack":
        dtype_in("f32")
        _need(p["c"] == x.c, name, f"pack of {p['c']} channels, input has {x.c}")
        return Tensor(x.h, x.w, x.c, "bits")
    if kind in ("maxpool2d", "avgpool2d", "maxpool1d", "avgpool1d"):
        if kind.startswith("avg"):
            dtype_in("f32")
        else:
            dtype_in("f32", "bits")
        if kind.endswith("1d"):
            _need(x.h == 1, name, "a 1-D pool needs a [1][t][c] input")
            ks, ss, ps = (p["k"],), (p["s"],), (p["p"],)
            dims = (x.w,)
        else:
            ks, ss, ps = (p["kh"], p["kw"]), (p["sh"], p["sw"]), (p["ph"], p["pw"])
            dims = (x.h, x.w)
        _need(min(ks + ss) >= 1 and min(ps) >= 0 and p["ceil_mode"] in (0, 1), name, "bad pool geometry")
        _need(
            all(2 * pp <= k for pp, k in zip(ps, ks, strict=True)),
            name,
            "pool padding must be at most half the pool size",
        )
        _need(
            all(n + 2 * pp >= k for n, k, pp in zip(dims, ks, ps, strict=True)),
            name,
            "pool window larger than the padded input",
        )
        out = [
            pool_size(n, k, s, pp, bool(p["ceil_mode"])) for n, k, s, pp in zip(dims, ks, ss, ps, strict=True)
        ]
        oh, ow = (1, out[0]) if kind.endswith("1d") else out
        return Tensor(oh, ow, x.c, x.dtype)
    if kind == "global_avg_pool":
        dtype_in("f32")
        return Tensor(1, 1, x.c)
    if kind == "linear":
        dtype_in("f32")
        _need(p["nin"] == x.numel, name, f"linear expects {p['nin']} inputs, its input has {x.numel}")
        _need(p["wdtype"] in oc.WDTYPES.values(), name, f"weight dtype {p['wdtype']}")
        return Tensor(1, 1, p["nout"])
    if kind == "qlinear":
        dtype_in("i8")
        _quant_params(p, name)
        _need(p["nin"] == x.numel, name, f"qlinear expects {p['nin']} inputs, its input has {x.numel}")
        return Tensor(1, 1, p["nout"], "i8" if p["out_mode"] == oc.QOUT_MODES["int8"] else "f32")
    if kind == "add":
        y = ins[1]
        _need(x.dtype == "f32" and y.dtype == "f32", name, "add needs floats")
        mode = p["mode"]
        if mode == oc.ADD_MODES["same"]:
            ok = y.c == x.c and y.h in (1, x.h) and y.w in (1, x.w)
            _need(
                ok,
                name,
                f"cannot add a {y.h}x{y.w}x{y.c} tensor to {x.h}x{x.w}x{x.c} (h and w may broadcast from 1)",
            )
        else:
            _need((y.h, y.w) == (x.h, x.w), name, f"add of {x.h}x{x.w} and {y.h}x{y.w} maps")
            if mode == oc.ADD_MODES["pad"]:
                _need(y.c <= x.c, name, f"pad shortcut of {y.c} channels onto {x.c}")
            elif mode == oc.ADD_MODES["group_mean"]:
                _need(y.c % x.c == 0, name, f"group-mean shortcut of {y.c} channels onto {x.c}")
            else:
                raise ExportError(f"{name}: add mode {mode}")
        return x
    if kind == "concat":
        y = ins[1]
        _need(x.dtype == y.dtype == "f32", name, "concat needs floats")
        a = p["axis"]
        _need(a in (0, 1, 2), name, f"axis {a}")
        dx, dy = list(x.dims()), list(y.dims())
        _need(
            all(dx[i] == dy[i] for i in range(3) if i != a),
            name,
            f"concat of {x.dims()} and {y.dims()} along axis {a}",
        )
        dx[a] += dy[a]
        return Tensor(*dx)
    if kind == "slice":
        dtype_in("f32")
        a = p["axis"]
        _need(a in (0, 1, 2), name, f"axis {a}")
        n = x.dims()[a]
        _need(0 <= p["start"] < p["stop"] <= n, name, f"slice {p['start']}:{p['stop']} of an axis of {n}")
        d = list(x.dims())
        d[a] = p["stop"] - p["start"]
        return Tensor(*d)
    if kind == "permute":
        dtype_in("f32")
        perm = (p["p0"], p["p1"], p["p2"])
        _need(sorted(perm) == [0, 1, 2], name, f"permutation {perm}")
        d = x.dims()
        return Tensor(*(d[i] for i in perm))
    if kind == "quantize":
        dtype_in("f32")
        _need(
            p["scale"] > 0 and np.isfinite(p["scale"]) and -128 <= p["zero"] <= 127,
            name,
            "quantize needs scale > 0 and zero in [-128, 127]",
        )
        return Tensor(x.h, x.w, x.c, "i8")
    if kind == "dequantize":
        dtype_in("i8")
        _need(
            p["scale"] > 0 and np.isfinite(p["scale"]) and -128 <= p["zero"] <= 127,
            name,
            "dequantize needs scale > 0 and zero in [-128, 127]",
        )
        return Tensor(x.h, x.w, x.c, "f32")
    if kind == "output":
        dtype_in("f32")
        return x
    raise ExportError(f"{name}: no shape rule for op {kind}")


def _quant_params(p: dict, name: str) -> None:
    _need(p["in_scale"] > 0 and -128 <= p["in_zero"] <= 127, name, "bad input quantization")
    _need(p["out_mode"] in oc.QOUT_MODES.values() and p["relu"] in (0, 1), name, "bad output mode")
    if p["out_mode"] == oc.QOUT_MODES["int8"]:
        _need(p["out_scale"] > 0 and -128 <= p["out_zero"] <= 127, name, "bad output quantization")
