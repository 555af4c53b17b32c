"""The execution plan of a generated project: fused steps, their buffers and one static arena.

:func:`plan` turns a typed graph (and optionally its C front end) into a list of :class:`Step`
(each one call of a kernel of ``templates/bsmcu.c``) and places every buffer in one arena:

1. **Fusion.** A float convolution absorbs the ops that follow it on a single-consumer chain:
   per-channel affine maps and activations (applied to each output as it is finished), one
   max-pool (each pooled output computes its window's convolution outputs) and a ``pack`` (the
   pooled outputs' signs). The float maps in between never exist: in seed 000's network the
   32x32x16 float map (64 KB) becomes 16x16 words of sign bits (1 KB).
2. **Aliases.** A one-channel input is the front end's output itself (``[c][h][w]`` and
   ``[h][w][c]`` agree); elementwise ops (affine, activations, norms, add) write over an input
   that dies with them; the binary image front end writes its 32x32 output over the start of
   its own log-mel image (:attr:`FrontEndSpec.ints` ``out_in_work``).
3. **Liveness and placement.** Each buffer lives from the step that writes it to the last step
   that reads it (scratch: its step only). Buffers are placed greedily, largest first, at the
   lowest offset where they overlap no placed buffer of overlapping lifetime (the greedy-by-size
   planner of TFLite Micro); buffers that must share an offset are placed together.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bitsound.errors import ExportError
from bitsound.graph import opcodes as oc
from bitsound.graph.ir import Graph, Op, Tensor

ELEMENTWISE = {"affine", "activation", "feature_norm", "freq_affine"}


def a8(n: int) -> int:
    return (n + 7) // 8 * 8


def words32(c: int) -> int:
    return (c + 31) // 32


def tensor_bytes(t: Tensor) -> int:
    """Bytes the generated code stores a tensor in: floats, 32-bit words of signs, or int8."""
    if t.dtype == "bits":
        return t.h * t.w * words32(t.c) * 4
    return t.numel * (1 if t.dtype == "i8" else 4)


@dataclass
class Buffer:
    """A region of the arena: ``size`` bytes live from step ``first`` to step ``last``."""

    name: str
    size: int
    first: int
    last: int
    group: str = ""  # buffers of one group share their offset
    offset: int = -1
    external: str = ""  # not in the arena: "audio" (the caller's input) or "features"


@dataclass
class Step:
    """One kernel call: ``kind``, the graph ops it runs, its input / output buffers and scratch."""

    kind: str
    ops: list[Op]
    inputs: list[str]
    output: str
    scratch: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return "+".join(op.name or op.kind for op in self.ops) or self.kind


@dataclass
class Plan:
    """Steps (step 0 is the front end, or the copy of the features in), buffers and the arena."""

    graph: Graph
    steps: list[Step]
    buffers: dict[str, Buffer]
    tensor_buffer: dict[int, str]
    arena_bytes: int
    peak_live_bytes: int

    def offset(self, name: str) -> int:
        return self.buffers[name].offset


def _fuse(g: Graph) -> list[list[Op]]:
    """Groups of consecutive ops that run as one step."""
    consumers: dict[int, int] = {}
    for op in g.ops:
        for t in op.inputs:
            consumers[t] = consumers.get(t, 0) + 1
    ops = [op for op in g.ops if op.kind not in ("input", "output")]
    groups: list[list[Op]] = []
    i = 0
    while i < len(ops):
        group = [ops[i]]
        if ops[i].kind in ("conv2d", "conv1d"):
            pooled = packed = False
            while i + 1 < len(ops) and not packed:
                nxt, cur = ops[i + 1], group[-1].output
                if nxt.inputs != [cur] or consumers.get(cur, 0) != 1 or cur == g.output:
                    break
                per_channel = nxt.kind == "activation" or (
                    nxt.kind == "affine" and nxt.params["c"] == g.tensors[cur].c
                )
                if per_channel and not pooled:
                    group.append(nxt)
                elif nxt.kind in ("maxpool2d", "maxpool1d") and not pooled:
                    group.append(nxt)
                    pooled = True
                elif nxt.kind == "pack":
                    group.append(nxt)
                    packed = True
                else:
                    break
                i += 1
        groups.append(group)
        i += 1
    return groups


def plan(g: Graph, frontend=None) -> Plan:
    """Steps, buffers and arena offsets for graph ``g`` fed by ``frontend`` (a FrontEndSpec) or by
    features given by the caller (``frontend=None``)."""
    g.output  # noqa: B018 - raises without an output op
    inp = g.ops[0]
    c, h, w = inp.params["c"], inp.params["h"], inp.params["w"]
    feat_bytes = c * h * w * 4
    buffers: dict[str, Buffer] = {}
    steps: list[Step] = []
    tensor_buffer: dict[int, str] = {}

    def add(name: str, size: int, first: int, *, group: str = "", external: str = "") -> str:
        buffers[name] = Buffer(name, a8(size), first, first, group, external=external)
        return name

    # step 0: audio -> features (front end), or the caller's features
    if frontend is not None:
        if tuple(frontend.feature_shape) != ((c, w) if inp.params["rank"] == 1 else (c, h, w)):
            raise ExportError(
                f"the front end gives features of shape {frontend.feature_shape}, the graph's "
                f"input is {(c, h, w)}: export the model with its own recipe"
            )
        if frontend.kind == "raw":
            feats = add("features", feat_bytes, 0, external="audio")
            steps.append(Step("frontend", [], ["audio"], feats))
        else:
            work = frontend.work_bytes()
            in_work = frontend.ints["out_in_work"] == 1
            feats = add("features", feat_bytes, 0, group="fe" if in_work else "")
            ws = add("fe_work", work, 0, group="fe" if in_work else "")
            steps.append(Step("frontend", [], ["audio"], feats, scratch=ws))
    else:
        feats = add("features", feat_bytes, 0, external="features")
        steps.append(Step("features", [], ["features"], feats))
    # the graph's input tensor: the features themselves when one channel, else transposed
    if c == 1:
        tensor_buffer[inp.output] = feats
    else:
        tensor_buffer[inp.output] = add(f"t{inp.output}", tensor_bytes(g.tensors[inp.output]), 1)
        steps.append(Step("input", [inp], [feats], tensor_buffer[inp.output]))

    for group in _fuse(g):
        k = len(steps)
        head, last = group[0], group[-1]
        ins = [tensor_buffer[t] for t in head.inputs]
        for b in ins:
            buffers[b].last = max(buffers[b].last, k)
        kind = head.kind
        out_t = g.tensors[last.output]
        reuse = (
            (kind in ELEMENTWISE or (kind == "add" and head.inputs[0] != head.inputs[1]))
            and not buffers[ins[0]].external
            and buffers[ins[0]].last == k
            and sum(1 for op in g.ops if head.inputs[0] in op.inputs) == 1
            and tensor_bytes(g.tensors[head.inputs[0]]) == tensor_bytes(out_t)
        )
        out = ins[0] if reuse else add(f"t{last.output}", tensor_bytes(out_t), k)
        tensor_buffer[last.output] = out
        step = Step(kind, group, ins, out)
        scratch = _scratch_bytes(g, group)
        if scratch:
            step.scratch = add(f"s{k}", scratch, k)
        steps.append(step)
    # the logits are read after the last step
    out_buf = tensor_buffer[g.output]
    buffers[out_buf].last = len(steps)
    arena, peak = _place(buffers, len(steps) + 1)
    return Plan(g, steps, buffers, tensor_buffer, arena, peak)


def _scratch_bytes(g: Graph, group: list[Op]) -> int:
    """Working memory of a step's kernel (bsm_*_scratch in bsmcu.c)."""
    op = group[0]
    p = op.params
    if op.kind in ("conv2d", "conv1d"):
        taps = p["kh"] * p["kw"] if op.kind == "conv2d" else p["k"]
        pool = next((o for o in group if o.kind in ("maxpool2d", "maxpool1d")), None)
        window = (
            1
            if pool is None
            else (pool.params["k"] if pool.kind == "maxpool1d" else pool.params["kh"] * pool.params["kw"])
        )
        # the patches of one pool window's conv pixels, then one output pixel
        return a8(window * taps * (p["cin"] // p["groups"]) * 4) + a8(p["cout"] * 4)
    if op.kind in ("binary_conv2d", "binary_conv1d"):
        taps = p["kh"] * p["kw"] if op.kind == "binary_conv2d" else p["k"]
        return 2 * a8(words32(taps * (p["cin"] // p["groups"])) * 4)
    if op.kind in ("qconv2d", "qconv1d"):
        taps = p["kh"] * p["kw"] if op.kind == "qconv2d" else p["k"]
        return a8(taps * (p["cin"] // p["groups"]) * 2)
    if op.kind == "qlinear":
        return a8(p["nin"] * 2)
    if op.kind == "feature_norm":
        t = g.tensors[op.output]
        return a8(t.h * t.c * 8)
    if op.kind == "normalize":
        t = g.tensors[op.output]
        ax = p["axes"]
        ng = (1 if ax & 1 else t.h) * (1 if ax & 2 else t.w) * (1 if ax & 4 else t.c)
        return a8(2 * ng * 8)
    return 0


def _place(buffers: dict[str, Buffer], n_steps: int) -> tuple[int, int]:
    """Greedy by size: the arena size and the largest sum of sizes live at one step."""
    arena = [b for b in buffers.values() if not b.external]
    groups: dict[str, list[Buffer]] = {}
    for b in arena:
        groups.setdefault(b.group or f"_{b.name}", []).append(b)
    placed: list[Buffer] = []

    def conflicts(b: Buffer, off: int) -> bool:
        return any(
            p.first <= b.last and b.first <= p.last and p.offset < off + b.size and off < p.offset + p.size
            for p in placed
        )

    for members in sorted(groups.values(), key=lambda m: (-max(b.size for b in m), min(b.first for b in m))):
        candidates = sorted({0, *(p.offset + p.size for p in placed)})
        for off in candidates:
            if not any(conflicts(b, off) for b in members):
                for b in members:
                    b.offset = off
                placed.extend(members)
                break
    total = max((b.offset + b.size for b in arena), default=0)

    def live(s: int) -> int:  # a group's members share their bytes
        return sum(max((b.size for b in m if b.first <= s <= b.last), default=0) for m in groups.values())

    peak = max((live(s) for s in range(n_steps)), default=0)
    return total, peak


__all__ = ["Buffer", "Plan", "Step", "oc", "plan", "tensor_bytes", "words32"]
