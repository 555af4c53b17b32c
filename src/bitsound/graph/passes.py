"""Graph passes: what the engine computes better fused, with PyTorch's numbers kept.

:func:`optimize` runs, in order:

1. :func:`fold_sign_thresholds` -- a binary convolution whose float output only feeds a sign,
   through batch-norms, activations and max-pools, becomes a convolution with *bits* output:
   the chain ``dot -> dot * scale + bias -> elementwise ops`` is monotone in ``dot`` for each
   channel, so it is evaluated **with PyTorch's own modules** (the ``source`` of each op) on every
   integer dot in ``[-fan_in, fan_in]`` and the sign change read off: ``+1`` iff ``dot >= thr``,
   or, for a decreasing chain (a negative batch-norm scale), ``+1`` iff ``-dot >= thr`` (``flip``).
   The engine's bits therefore equal PyTorch's sign bits exactly. Max-pools at the end of the
   chain move after the sign (``sign(max(y)) = max(sign(y))``) and run on bits. A chain whose
   sign is not monotone in the dot stays in floats.
2. :func:`fold_affine_into_binary` -- a batch-norm (affine) right after a binary convolution
   with float output folds into its ``scale, bias`` (computed in float64 from the batch-norm
   module itself).
3. :func:`merge_exact_affines` -- two consecutive affines merge where the result is exactly
   the same (``(x * a + 0) * 1 + b`` is ``x * a + b``).
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from torch import nn

from bitsound.graph import opcodes as oc
from bitsound.graph.ir import Graph, Op

_fresh = itertools.count(1 << 40)


def _rebuild(g: Graph, ops: list[Op], alias: dict[int, int]) -> Graph:
    """A new graph of ``ops`` (old tensor ids; ``alias`` maps ids to the ids that replace them)."""

    def resolve(t: int) -> int:
        while t in alias:
            t = alias[t]
        return t

    new = Graph()
    new.meta = g.meta
    remap: dict[int, int] = {}
    for op in ops:
        out = new.add(
            op.kind,
            [remap[resolve(t)] for t in op.inputs],
            op.params,
            op.arrays,
            name=op.name,
            source=op.source,
            rank=op.rank,
        )
        if op.kind != "output":
            remap[op.output] = out
    return new


def _single_consumer(g: Graph, t: int) -> Op | None:
    cons = g.consumers(t)
    return cons[0] if len(cons) == 1 else None


def _is_bconv_float(op: Op) -> bool:
    return op.kind in ("binary_conv2d", "binary_conv1d") and op.params["out_mode"] == oc.BOUT_MODES["float"]


# -- 1. sign thresholds --------------------------------------------------------------------------


def _apply_torch(op: Op, y: torch.Tensor) -> torch.Tensor:
    """One elementwise op on a float32 tensor, with its PyTorch source where it has one."""
    src = op.source
    if isinstance(src, nn.Module):
        was = src.training
        src.eval()
        try:
            return src(y)
        finally:
            src.train(was)
    if callable(src):
        return src(y)
    shape = [1] * y.dim()
    shape[1 if y.dim() > 2 else -1] = -1
    if op.kind == "affine":
        s = torch.from_numpy(op.arrays["scale"]).view(shape)
        return y * s + torch.from_numpy(op.arrays["bias"]).view(shape)
    kind = {v: k for k, v in oc.ACT_KINDS.items()}[op.params["kind"]]
    if kind == "prelu":
        return torch.where(y >= 0, y, y * torch.from_numpy(op.arrays["slope"]).view(shape))
    return {
        "relu": torch.relu,
        "tanh": torch.tanh,
        "silu": torch.nn.functional.silu,
        "sigmoid": torch.sigmoid,
    }[kind](y)


def _conv_output_arithmetic(op: Op, dots: torch.Tensor) -> torch.Tensor:
    """``dot * scale + bias`` as the quantized layer computes it (its forward's float32 ops)."""
    layer = op.source
    y = dots
    scale = layer.weight_scale() if layer is not None else torch.from_numpy(op.arrays["scale"])
    shape = [1] * y.dim()
    shape[1 if y.dim() > 2 else -1] = -1
    if scale is not None:
        y = y * (scale if scale.dim() == 0 else scale.view(shape))
    bias = layer.bias if layer is not None else torch.from_numpy(op.arrays["bias"])
    if bias is not None:
        y = y + bias.detach().view(shape)
    return y


def _fan_in(op: Op) -> int:
    p = op.params
    taps = p["kh"] * p["kw"] if op.kind == "binary_conv2d" else p["k"]
    return taps * (p["cin"] // p["groups"])


def thresholds(op: Op, chain: list[Op]) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-channel ``(thr, flip)`` of ``sign(chain(dot * scale + bias))``, or None if not monotone."""
    n = _fan_in(op)
    cout = op.params["cout"]
    dots = torch.arange(-n, n + 1, dtype=torch.float32)
    rank = op.rank if op.rank is not None else 2
    if rank == 2:
        y = dots.view(1, 1, 1, -1).expand(1, cout, 1, 2 * n + 1).contiguous()
    elif rank == 1:
        y = dots.view(1, 1, -1).expand(1, cout, 2 * n + 1).contiguous()
    else:
        y = dots.view(-1, 1).expand(2 * n + 1, cout).contiguous()
    with torch.no_grad():
        y = _conv_output_arithmetic(op, y)
        for c in chain:
            y = _apply_torch(c, y)
    y = (y.reshape(cout, 2 * n + 1) if y.dim() > 2 else y.T).double().numpy()
    if not np.isfinite(y).all():
        return None
    pos = y >= 0
    thr = np.zeros(cout, dtype=np.int64)
    flip = np.zeros(cout, dtype=np.int64)
    d = np.arange(-n, n + 1)
    for ch in range(cout):
        p = pos[ch]
        steps = np.diff(p.astype(np.int8))
        if p.all():
            thr[ch] = -n
        elif not p.any():
            thr[ch] = n + 1
        elif (steps >= 0).all():  # -1 ... -1 +1 ... +1
            thr[ch] = d[np.argmax(p)]
        elif (steps <= 0).all():  # +1 ... +1 -1 ... -1: flipped channel
            flip[ch] = 1
            thr[ch] = -d[len(p) - 1 - np.argmax(p[::-1])]
        else:
            return None
    return thr, flip


def fold_sign_thresholds(g: Graph) -> Graph:
    ops = list(g.ops)
    alias: dict[int, int] = {}
    drop: set[int] = set()
    replace: dict[int, list[Op]] = {}
    for i, op in enumerate(g.ops):
        if not _is_bconv_float(op):
            continue
        chain, pools, t = [], [], op.output
        pack = None
        while (c := _single_consumer(g, t)) is not None:
            if c.kind in ("affine", "activation") and not pools:
                chain.append(c)
            elif c.kind in ("maxpool2d", "maxpool1d"):
                pools.append(c)
            elif c.kind == "pack":
                pack = c
                break
            else:
                break
            t = c.output
        if pack is None:
            continue
        found = thresholds(op, chain)
        if found is None:
            continue
        thr, flip = found
        fused = Op(
            op.kind,
            op.inputs,
            next(_fresh),
            {**op.params, "out_mode": oc.BOUT_MODES["bits"]},
            {"weight": op.arrays["weight"], "thr": thr, "flip": flip},
            name="+".join([op.name, *[c.name for c in chain], "sign"]),
            source=op.source,
            rank=op.rank,
        )
        new_ops, last = [fused], fused.output
        for p in pools:
            q = Op(
                p.kind, [last], next(_fresh), p.params, p.arrays, name=p.name, source=p.source, rank=p.rank
            )
            new_ops.append(q)
            last = q.output
        replace[i] = new_ops
        alias[pack.output] = last
        drop.update(id(c) for c in (*chain, *pools, pack))
    if not replace:
        return g
    out: list[Op] = []
    for i, op in enumerate(ops):
        if i in replace:
            out.extend(replace[i])
        elif id(op) not in drop:
            out.append(op)
    return _rebuild(g, out, alias)


# -- 2. batch-norm into binary convolutions ------------------------------------------------------


def fold_affine_into_binary(g: Graph) -> Graph:
    from bitsound.graph.lowerings import bn_affine

    alias: dict[int, int] = {}
    out: list[Op] = []
    skip: set[int] = set()
    for op in g.ops:
        if id(op) in skip:
            continue
        nxt = _single_consumer(g, op.output) if op.kind != "output" else None
        if _is_bconv_float(op) and nxt is not None and nxt.kind == "affine":
            if isinstance(nxt.source, nn.modules.batchnorm._BatchNorm):
                s, b = bn_affine(nxt.source, nxt.name)
            else:
                s, b = nxt.arrays["scale"].astype(np.float64), nxt.arrays["bias"].astype(np.float64)
            scale = op.arrays["scale"].astype(np.float64)
            if (
                op.source is not None and op.source.weight_scale() is not None
            ):  # the layer's own float64 alpha
                scale = np.broadcast_to(op.source.weight_scale().double().numpy(), scale.shape)
            bias = op.arrays["bias"].astype(np.float64)
            if op.source is not None and op.source.bias is not None:
                bias = op.source.bias.detach().double().numpy()
            fused = Op(
                op.kind,
                op.inputs,
                op.output,
                op.params,
                {"weight": op.arrays["weight"], "scale": scale * s, "bias": bias * s + b},
                name=f"{op.name}+{nxt.name}",
                source=None,
                rank=op.rank,
            )
            out.append(fused)
            alias[nxt.output] = op.output
            skip.add(id(nxt))
        else:
            out.append(op)
    return _rebuild(g, out, alias) if alias else g


# -- 3. exact affine merges ------------------------------------------------------------------------


def merge_exact_affines(g: Graph) -> Graph:
    alias: dict[int, int] = {}
    out: list[Op] = []
    skip: set[int] = set()
    for op in g.ops:
        if id(op) in skip:
            continue
        nxt = _single_consumer(g, op.output) if op.kind == "affine" else None
        if (
            nxt is not None
            and nxt.kind == "affine"
            and not op.arrays["bias"].any()
            and (nxt.arrays["scale"] == 1).all()
        ):
            merged = Op(
                "affine",
                op.inputs,
                op.output,
                op.params,
                {"scale": op.arrays["scale"], "bias": nxt.arrays["bias"]},
                name=f"{op.name}+{nxt.name}",
                rank=op.rank,
            )
            out.append(merged)
            alias[nxt.output] = op.output
            skip.add(id(nxt))
        else:
            out.append(op)
    return _rebuild(g, out, alias) if alias else g


def optimize(g: Graph) -> Graph:
    """The engine's form of a freshly lowered graph (see the module docstring)."""
    g = fold_sign_thresholds(g)
    g = fold_affine_into_binary(g)
    return merge_exact_affines(g)
