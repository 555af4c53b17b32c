"""The packed model format (``.bsnn``) read by the C engine (:mod:`bitsound.engine`), and the exporter.

:func:`export_packed` turns a trained model (``DIR/model.pt`` or a :class:`SoundClassifier`)
into a ``.bsnn`` file; :class:`PackedWriter` writes one op record at a time (used by the exporter
and by the tests to build single-op graphs).

File layout (version 1.0; all integers little-endian, floats IEEE-754 binary32 little-endian)
------------------------------------------------------------------------------------------
::

    header, 40 bytes
      0   magic            b"BSNN\\r\\n\\x1a\\n"
      8   u16 major = 1, u16 minor = 0   (a reader accepts any minor of its major)
      12  u32 flags = 0                  (no optional features defined; nonzero is rejected)
      16  u32 header_bytes = 40
      20  u32 n_records
      24  u32 n_slots                    tensor slots the ops read and write
      28  u32 reserved = 0
      32  u64 file_bytes                 total size including the checksum
    n_records records:  u32 type, u32 record_bytes (incl. these 8 bytes, multiple of 4), body
    trailer:            u32 CRC-32 (zlib.crc32) of every preceding byte

A record is either metadata (type 100: u32 length + UTF-8 JSON with the labels, the feature
shape and the recipe, padded to 4 bytes) or an op. An op body starts with ``i32 in0, i32 in1,
i32 out, u32 name_len, name`` (the PyTorch module path, zero-padded to 4 bytes) followed by:

====  ==============  ========================================================================
type  op              parameters, then arrays
====  ==============  ========================================================================
1     input           i32 rank (1: features [c, t]; 2: [c, h, w]), c, h, w
2     feature_norm    i32 mode (0 none, 1 band, 2 example), i32 has_floor, f32 floor, f32 eps
3     affine          i32 c; f32 scale[c], f32 bias[c]  (y = x * scale + bias)
4     activation      i32 kind (1 relu, 2 tanh, 3 prelu); prelu: i32 c; f32 slope[c]
                      (y = x if x >= 0 else slope * x)
5     conv2d          i32 cin, cout, geometry, has_bias; f32 w[cout][kh][kw][cin], f32 b[cout]
6     pack            i32 c  (float -> bits: sign, sign(0) = +1)
7     binary_conv2d   i32 cin, cout, geometry, out_mode; u64 w[cout][kh][kw][nw];
                      out_mode 1 (float): f32 scale[cout], f32 bias[cout];
                      out_mode 2 (bits): i32 thr[cout], i32 flip[cout]; out_mode 0: raw dot
8     maxpool         i32 kh, kw, sh, sw, ph, pw, ceil_mode  (float, or bits: AND)
9     global_avg_pool (nothing)
10    linear          i32 nin, nout, has_bias; f32 w[nout][nin], f32 b[nout]
11    add             i32 mode (0 identity, 1 zero-pad channels, 2 mean of channel groups);
                      y = in0 + shortcut(in1)
12    output          (in0 = out = the logits slot; the last record)
====  ==============  ========================================================================

geometry = i32 kh, kw, sh, sw, pad_top, pad_left, pad_bottom, pad_right, dilation_h, dilation_w.

Tensors live channels-last: floats ``[h][w][c]``; bits ``[h][w][nw]`` uint64 words with
``nw = ceil(c / 64)``. **Bit order**: channel ``j`` is bit ``j % 64`` (least significant first)
of word ``j // 64``; ``+1 -> 0``, ``-1 -> 1``, so a product of two binary values is ``+1``
exactly when the bits are equal; the unused high bits of a pixel's last word are 0 (a weight
file with a padding bit set is rejected). Binary weights are packed the same way along the
input channels, ``[cout][kh][kw][nw]``. A binary dense layer is a binary conv whose kernel is
the whole input map; flattening follows PyTorch's ``(c, h, w)`` order, so the exporter permutes
dense weights into the engine's ``(h, w, c)`` order.

Folding
-------
- Scales: an XNOR layer's ``alpha[o]`` (and a bias) multiply the integer dot product; with a
  float output they fold with the following batch-norm into one ``scale[o], bias[o]``.
- Batch-norm followed by sign becomes a per-channel integer threshold: the chain ``dot ->
  alpha * dot (+ b) -> activations -> batch-norm`` is monotone in ``dot`` for each channel, so
  the exporter evaluates it *with PyTorch* on every integer dot in ``[-fan_in, fan_in]`` and
  reads off where the sign changes: ``+1`` iff ``dot >= thr``. A negative batch-norm scale (or
  any decreasing chain) flips the channel: ``+1`` iff ``dot <= u``, stored as ``flip = 1`` and
  ``thr = -u`` (the engine tests ``-dot >= thr``). Because the threshold comes from PyTorch's
  own float32 arithmetic, the engine's bits equal the PyTorch model's sign bits exactly. A
  max-pool between the batch-norm and the sign moves after the sign (``sign`` is monotone, so
  ``sign(max(y)) = max(sign(y))``) and runs on bits.

Unsupported layers raise :class:`~bitsound.errors.ExportError` naming the layer and why
(XNOR's input scale ``K``, grouped convolutions, non-zero padding modes, unknown modules).
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bitsound.errors import ExportError

MAGIC = b"BSNN\r\n\x1a\n"
VERSION = (1, 0)
HEADER_BYTES = 40

OP_INPUT, OP_FEATURE_NORM, OP_AFFINE, OP_ACT, OP_CONV2D, OP_PACK, OP_BCONV2D = 1, 2, 3, 4, 5, 6, 7
OP_MAXPOOL, OP_GAP, OP_LINEAR, OP_ADD, OP_OUTPUT = 8, 9, 10, 11, 12
REC_META = 100
OP_NAMES = {OP_INPUT: "input", OP_FEATURE_NORM: "feature_norm", OP_AFFINE: "affine", OP_ACT: "activation",
            OP_CONV2D: "conv2d", OP_PACK: "pack", OP_BCONV2D: "binary_conv2d", OP_MAXPOOL: "maxpool",
            OP_GAP: "global_avg_pool", OP_LINEAR: "linear", OP_ADD: "add", OP_OUTPUT: "output"}

NORM_MODES = {"none": 0, "band": 1, "example": 2}
ACT_KINDS = {"relu": 1, "tanh": 2, "prelu": 3}
BOUT_DOT, BOUT_FLOAT, BOUT_BITS = 0, 1, 2
ADD_IDENTITY, ADD_PAD, ADD_GROUP_MEAN = 0, 1, 2
F32, BITS = 1, 2


def pack_signs(values: np.ndarray) -> np.ndarray:
    """Pack ±1 values (or any numbers: bit 1 where ``v < 0``) along the last axis into uint64 words.

    Parameters
    ----------
    values : ndarray [shape=(..., c)]

    Returns
    -------
    ndarray [shape=(..., ceil(c / 64)), dtype=uint64]
        Channel ``j`` in bit ``j % 64`` of word ``j // 64``; unused high bits are 0.
    """
    v = np.asarray(values)
    c = v.shape[-1]
    nw = (c + 63) // 64
    neg = np.zeros((*v.shape[:-1], nw * 64), dtype=np.uint8)
    neg[..., :c] = v < 0
    as_bytes = np.packbits(neg.reshape(*v.shape[:-1], nw * 8, 8), axis=-1, bitorder="little")
    return np.ascontiguousarray(as_bytes.reshape(*v.shape[:-1], nw * 8)).view("<u8")


def unpack_bits(words: np.ndarray, c: int) -> np.ndarray:
    """Inverse of :func:`pack_signs`: uint64 words [..., nw] -> ±1 int8 values [..., c]."""
    w = np.ascontiguousarray(words).astype("<u8")
    bits = np.unpackbits(w.view(np.uint8).reshape(*w.shape[:-1], -1), axis=-1, bitorder="little")
    return (1 - 2 * bits[..., :c].astype(np.int8)).astype(np.int8)


@dataclass(frozen=True)
class Shape:
    """Shape of an engine tensor: ``(h, w, c)`` channels last, and its type (floats or bits)."""

    h: int
    w: int
    c: int
    dtype: int = F32


def _i32(*values: int) -> bytes:
    return struct.pack(f"<{len(values)}i", *[int(v) for v in values])


def _f32(a) -> bytes:
    return np.ascontiguousarray(np.asarray(a, dtype=np.float64).astype("<f4")).tobytes()


def _pad4(b: bytes) -> bytes:
    return b + b"\0" * (-len(b) % 4)


def _conv_size(n: int, k: int, s: int, p0: int, p1: int, d: int) -> int:
    return (n + p0 + p1 - d * (k - 1) - 1) // s + 1


class PackedWriter:
    """Builds a ``.bsnn`` file op by op, tracking slot shapes the way the C reader checks them.

    Each ``add_*`` method writes one op and returns the slot of its output (a fresh slot per op).
    """

    def __init__(self) -> None:
        self.records: list[bytes] = []
        self.shapes: list[Shape] = []
        self.names: list[str] = []
        self.meta: dict[str, Any] | None = None
        self.has_input = False
        self.closed = False

    # -- plumbing ----------------------------------------------------------------------------
    def _op(self, op_type: int, name: str, in0: int, in1: int, params: bytes, arrays: bytes,
            shape: Shape, out: int | None = None) -> int:
        if self.closed:
            raise ExportError("the output op was already written; no op may follow it")
        if out is None:
            out = len(self.shapes)
            self.shapes.append(shape)
        else:
            self.shapes[out] = shape
        name_b = name.encode("utf-8")[:255]
        body = _i32(in0, in1, out) + struct.pack("<I", len(name_b)) + _pad4(name_b) + params + arrays
        self.records.append(struct.pack("<II", op_type, 8 + len(body)) + body)
        self.names.append(name)
        return out

    def shape(self, slot: int) -> Shape:
        return self.shapes[slot]

    def _need(self, slot: int, dtype: int, what: str) -> Shape:
        s = self.shapes[slot]
        if s.dtype != dtype:
            raise ExportError(f"{what} needs {'bits' if dtype == BITS else 'floats'}, but its input holds "
                              f"{'bits' if s.dtype == BITS else 'floats'}")
        return s

    # -- ops ---------------------------------------------------------------------------------
    def add_input(self, shape: tuple[int, ...], name: str = "input") -> int:
        """Features of one example: (c, t) for rank 1 or (c, h, w) for rank 2."""
        if self.has_input:
            raise ExportError("a graph has exactly one input")
        self.has_input = True
        if len(shape) == 2:
            rank, (c, h, w) = 1, (shape[0], 1, shape[1])
        elif len(shape) == 3:
            rank, (c, h, w) = 2, shape
        else:
            raise ExportError(f"the engine takes features of shape (c, t) or (c, h, w), got {tuple(shape)}")
        return self._op(OP_INPUT, name, -1, -1, _i32(rank, c, h, w), b"", Shape(h, w, c))

    def add_feature_norm(self, x: int, *, mode: str, floor_db: float | None, eps: float, name: str) -> int:
        s = self._need(x, F32, name)
        floor = 0.0 if floor_db is None else floor_db * math.log(10) / 10
        params = _i32(NORM_MODES[mode], floor_db is not None) + _f32([floor, eps])
        return self._op(OP_FEATURE_NORM, name, x, -1, params, b"", s)

    def add_affine(self, x: int, scale, bias, *, name: str) -> int:
        s = self._need(x, F32, name)
        scale, bias = np.broadcast_to(np.asarray(scale, np.float64), (s.c,)), np.asarray(bias, np.float64)
        bias = np.broadcast_to(bias, (s.c,))
        return self._op(OP_AFFINE, name, x, -1, _i32(s.c), _f32(scale) + _f32(bias), s)

    def add_act(self, x: int, kind: str, *, name: str, slope=None) -> int:
        """relu | tanh | prelu (``slope``: one per channel, or one for all)."""
        s = self._need(x, F32, name)
        if kind != "prelu":
            return self._op(OP_ACT, name, x, -1, _i32(ACT_KINDS[kind]), b"", s)
        slope = np.broadcast_to(np.asarray(slope, np.float64).reshape(-1), (s.c,))
        return self._op(OP_ACT, name, x, -1, _i32(ACT_KINDS[kind], s.c), _f32(slope), s)

    def add_conv2d(self, x: int, weight, bias, *, stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1),
                   name: str) -> int:
        """Float conv; weight [cout, cin, kh, kw] (PyTorch order); padding (top, left, bottom, right)."""
        s = self._need(x, F32, name)
        w = np.asarray(weight, np.float64)
        cout, cin, kh, kw = w.shape
        if cin != s.c:
            raise ExportError(f"{name}: conv expects {cin} input channels, its input has {s.c}")
        oh = _conv_size(s.h, kh, stride[0], padding[0], padding[2], dilation[0])
        ow = _conv_size(s.w, kw, stride[1], padding[1], padding[3], dilation[1])
        params = _i32(cin, cout, kh, kw, *stride, *padding, *dilation, bias is not None)
        arrays = _f32(w.transpose(0, 2, 3, 1)) + (b"" if bias is None else _f32(bias))
        return self._op(OP_CONV2D, name, x, -1, params, arrays, Shape(oh, ow, cout))

    def add_pack(self, x: int, *, name: str) -> int:
        s = self._need(x, F32, name)
        return self._op(OP_PACK, name, x, -1, _i32(s.c), b"", Shape(s.h, s.w, s.c, BITS))

    def add_bconv2d(self, x: int, weight_signs, *, stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1),
                    out_mode: int = BOUT_FLOAT, scale=None, bias=None, thr=None, flip=None, name: str) -> int:
        """Binary conv; weight_signs [cout, cin, kh, kw] of ±1 (PyTorch order).

        out_mode BOUT_FLOAT: ``dot * scale + bias`` (floats); BOUT_BITS: ``+1 iff (flip ? -dot :
        dot) >= thr`` (bits); BOUT_DOT: the integer dot product (as floats).
        """
        s = self._need(x, BITS, name)
        w = np.asarray(weight_signs)
        cout, cin, kh, kw = w.shape
        if cin != s.c:
            raise ExportError(f"{name}: binary conv expects {cin} input channels, its input has {s.c}")
        oh = _conv_size(s.h, kh, stride[0], padding[0], padding[2], dilation[0])
        ow = _conv_size(s.w, kw, stride[1], padding[1], padding[3], dilation[1])
        params = _i32(cin, cout, kh, kw, *stride, *padding, *dilation, out_mode)
        arrays = pack_signs(w.transpose(0, 2, 3, 1)).tobytes()
        if out_mode == BOUT_FLOAT:
            arrays += _f32(np.broadcast_to(np.asarray(scale, np.float64), (cout,)))
            arrays += _f32(np.broadcast_to(np.asarray(0.0 if bias is None else bias, np.float64), (cout,)))
            dtype = F32
        elif out_mode == BOUT_BITS:
            arrays += _i32(*np.asarray(thr).reshape(-1)) + _i32(*np.asarray(flip).reshape(-1))
            dtype = BITS
        else:
            dtype = F32
        return self._op(OP_BCONV2D, name, x, -1, params, arrays, Shape(oh, ow, cout, dtype))

    def add_maxpool(self, x: int, *, kernel=(2, 2), stride=(2, 2), padding=(0, 0), ceil_mode=False,
                    name: str) -> int:
        s = self.shapes[x]
        dims = []
        for n, k, st, p in zip((s.h, s.w), kernel, stride, padding, strict=True):
            out = (n + 2 * p - k + (st - 1 if ceil_mode else 0)) // st + 1
            if ceil_mode and (out - 1) * st >= n + p:
                out -= 1
            dims.append(out)
        params = _i32(*kernel, *stride, *padding, ceil_mode)
        return self._op(OP_MAXPOOL, name, x, -1, params, b"", Shape(dims[0], dims[1], s.c, s.dtype))

    def add_gap(self, x: int, *, name: str) -> int:
        s = self._need(x, F32, name)
        return self._op(OP_GAP, name, x, -1, b"", b"", Shape(1, 1, s.c))

    def add_linear(self, x: int, weight, bias, *, name: str) -> int:
        """Float dense over the (h, w, c)-flattened input; weight [nout, nin] in that order."""
        s = self._need(x, F32, name)
        w = np.asarray(weight, np.float64)
        nout, nin = w.shape
        if nin != s.h * s.w * s.c:
            raise ExportError(f"{name}: linear expects {nin} inputs, its input has {s.h * s.w * s.c}")
        params = _i32(nin, nout, bias is not None)
        return self._op(OP_LINEAR, name, x, -1, params, _f32(w) + (b"" if bias is None else _f32(bias)),
                        Shape(1, 1, nout))

    def add_add(self, a: int, b: int, *, mode: int = ADD_IDENTITY, name: str) -> int:
        s = self._need(a, F32, name)
        self._need(b, F32, name)
        return self._op(OP_ADD, name, a, b, _i32(mode), b"", s)

    def add_output(self, x: int, *, name: str = "output") -> int:
        s = self._need(x, F32, name)
        out = self._op(OP_OUTPUT, name, x, -1, b"", b"", s, out=x)
        self.closed = True
        return out

    # -- file --------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        if not self.closed:
            raise ExportError("the graph has no output op")
        records = list(self.records)
        if self.meta is not None:
            text = json.dumps(self.meta, sort_keys=True).encode("utf-8")
            body = struct.pack("<I", len(text)) + _pad4(text)
            records.insert(1, struct.pack("<II", REC_META, 8 + len(body)) + body)
        payload = b"".join(records)
        total = HEADER_BYTES + len(payload) + 4
        header = MAGIC + struct.pack("<HHIIIIIQ", VERSION[0], VERSION[1], 0, HEADER_BYTES, len(records),
                                     len(self.shapes), 0, total)
        data = header + payload
        return data + struct.pack("<I", zlib.crc32(data) & 0xFFFFFFFF)


# ---------------------------------------------------------------------------------------------
# export of PyTorch models
# ---------------------------------------------------------------------------------------------

def _pair(v) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def _bn_affine(bn: nn.Module, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Eval-mode batch-norm as ``y = x * scale + bias`` (float64)."""
    if bn.running_mean is None or bn.running_var is None:
        raise ExportError(f"layer '{name}' (batch-norm without running statistics) normalises with batch "
                          f"statistics at inference; the engine needs track_running_stats=True")
    mean = bn.running_mean.detach().double().numpy()
    var = bn.running_var.detach().double().numpy()
    scale = 1.0 / np.sqrt(var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.detach().double().numpy()
    bias = -mean * scale + (bn.bias.detach().double().numpy() if bn.bias is not None else 0.0)
    if not (np.isfinite(scale).all() and np.isfinite(bias).all()):
        raise ExportError(f"layer '{name}' has non-finite batch-norm parameters")
    return scale, bias


class _Lowering:
    """Walks a model's modules in forward order and writes engine ops (see the module docstring)."""

    ELEMENTWISE = (nn.ReLU, nn.Tanh, nn.PReLU, nn.BatchNorm1d, nn.BatchNorm2d, nn.Identity, nn.Dropout)
    PASSTHROUGH = (nn.Identity, nn.Dropout)

    def __init__(self, writer: PackedWriter, x: int, rank: int):
        self.w = writer
        self.x = x
        self.rank = rank
        self.flat_from: tuple[int, int, int] | None = None  # (c, h, w) a Flatten collapsed

    @property
    def shape(self) -> Shape:
        return self.w.shape(self.x)

    # -- module classification -----------------------------------------------------------------
    @staticmethod
    def _is_binary(m: nn.Module) -> bool:
        from bitsound.nn.layers import BinaryConv1d, BinaryConv2d, BinaryLinear
        return isinstance(m, (BinaryConv1d, BinaryConv2d, BinaryLinear))

    def _sign_input(self, m: nn.Module) -> bool:
        return self._is_binary(m) and m.mode in ("xnor", "binarynet") and m.input_bits == 1

    def _consumer_is_sign(self, items: list[tuple[str, nn.Module]], j: int) -> bool:
        """Does the value after items[:j] only feed a sign (skipping pools, flatten, no-ops)?"""
        while j < len(items):
            m = items[j][1]
            if isinstance(m, (nn.MaxPool1d, nn.MaxPool2d, nn.Flatten, *self.PASSTHROUGH)):
                j += 1
                continue
            return self._sign_input(m)
        return False

    # -- walking -------------------------------------------------------------------------------
    def run(self, items: list[tuple[str, nn.Module]]) -> None:
        i = 0
        while i < len(items):
            i = self.step(items, i)

    def step(self, items: list[tuple[str, nn.Module]], i: int) -> int:
        from bitsound.models.binary_cnn import BinaryBlock
        from bitsound.models.cnn import FeatureNorm
        from bitsound.models.thesis import PlusMinusOne

        name, m = items[i]
        if isinstance(m, self.PASSTHROUGH):
            return i + 1
        if isinstance(m, PlusMinusOne):
            self.x = self.w.add_affine(self._float(name), 2.0, -1.0, name=name)
        elif isinstance(m, FeatureNorm):
            if self.rank != 2:
                raise ExportError(f"layer '{name}' (FeatureNorm) needs 2-D features (c, h, w)")
            self.x = self.w.add_feature_norm(self._float(name), mode=m.mode, floor_db=m.floor_db, eps=m.eps,
                                             name=name)
        elif isinstance(m, BinaryBlock):
            self._binary_block(name, m)
        elif self._is_binary(m):
            return self._binary_layer(items, i)
        elif isinstance(m, (nn.Conv1d, nn.Conv2d)):
            self._float_conv(name, m, m.weight.detach(), m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            self._affine_bn(name, m)
        elif isinstance(m, nn.ReLU):
            self.x = self.w.add_act(self._float(name), "relu", name=name)
        elif isinstance(m, nn.Tanh):
            self.x = self.w.add_act(self._float(name), "tanh", name=name)
        elif isinstance(m, nn.PReLU):
            self._prelu(name, m)
        elif isinstance(m, (nn.MaxPool1d, nn.MaxPool2d)):
            self._maxpool(name, m)
        elif isinstance(m, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)):
            size = m.output_size
            if any(v != 1 for v in (size if isinstance(size, (tuple, list)) else [size])):
                raise ExportError(f"layer '{name}' (AdaptiveAvgPool2d) has output size {size}; the engine "
                                  f"implements global average pooling (output size 1) only")
            self.x = self.w.add_gap(self._float(name), name=name)
        elif isinstance(m, nn.Flatten):
            s = self.shape
            if (m.start_dim, m.end_dim) != (1, -1):
                raise ExportError(f"layer '{name}' (Flatten) flattens dims {m.start_dim}..{m.end_dim}; only "
                                  f"the default (1, -1) is supported")
            if s.h * s.w > 1:
                self.flat_from = (s.c, s.h, s.w)
        elif isinstance(m, nn.Linear):
            self._float_linear(name, m)
        else:
            raise ExportError(f"layer '{name}' ({type(m).__name__}) has no engine op; supported: conv, "
                              f"binary conv/linear (xnor, binarynet, onebit), batch-norm, ReLU, Tanh, PReLU, "
                              f"max-pool, global average pool, flatten, linear, FeatureNorm, binary blocks")
        return i + 1

    def _float(self, name: str) -> int:
        if self.shape.dtype != F32:
            raise ExportError(f"layer '{name}' needs float inputs, but the preceding layer produces signs "
                              f"(bits); the engine has no bits -> float op")
        return self.x

    def _prelu(self, name: str, m: nn.PReLU) -> None:
        slope = m.weight.detach().double().numpy()
        x = self._float(name)
        channels = self.w.shape(x).c
        if slope.size not in (1, channels):
            raise ExportError(f"layer '{name}' (PReLU) has {slope.size} slopes for {channels} channels; "
                              f"use one slope or one per channel")
        self.x = self.w.add_act(x, "prelu", slope=slope, name=name)

    def _no_flat(self, name: str, what: str) -> None:
        if self.flat_from is not None:
            raise ExportError(f"layer '{name}' ({what}) acts on a flattened spatial map; only linear layers "
                              f"may follow a Flatten of a map larger than 1x1")

    def _affine_bn(self, name: str, bn: nn.Module) -> None:
        self._no_flat(name, type(bn).__name__)
        scale, bias = _bn_affine(bn, name)
        if len(scale) != self.shape.c:
            raise ExportError(f"layer '{name}' normalises {len(scale)} channels, its input has "
                              f"{self.shape.c}")
        self.x = self.w.add_affine(self._float(name), scale, bias, name=name)

    def _maxpool(self, name: str, m: nn.Module) -> None:
        self._no_flat(name, type(m).__name__)
        stride = m.stride if m.stride is not None else m.kernel_size
        if isinstance(m, nn.MaxPool1d):
            if self.shape.h != 1:
                raise ExportError(f"layer '{name}' (MaxPool1d) needs 1-D features (c, t)")
            one = lambda v: int(v[0]) if isinstance(v, (tuple, list)) else int(v)  # noqa: E731
            k, s, p, d = (1, one(m.kernel_size)), (1, one(stride)), (0, one(m.padding)), (1, one(m.dilation))
        else:
            k, s, p, d = _pair(m.kernel_size), _pair(stride), _pair(m.padding), _pair(m.dilation)
        if d != (1, 1) or m.return_indices:
            raise ExportError(f"layer '{name}' ({type(m).__name__}) uses dilation or return_indices; not "
                              f"supported")
        self.x = self.w.add_maxpool(self.x, kernel=k, stride=s, padding=p, ceil_mode=bool(m.ceil_mode),
                                    name=name)

    def _conv_geometry(self, name: str, m: nn.Module):
        """kernel, stride, (top, left, bottom, right) padding, dilation of a Conv1d/Conv2d."""
        if m.groups != 1:
            raise ExportError(f"layer '{name}' ({type(m).__name__}) has groups={m.groups}; the engine "
                              f"implements groups=1 only")
        if isinstance(m, nn.Conv1d):
            if self.shape.h != 1:
                raise ExportError(f"layer '{name}' (Conv1d) needs 1-D features (c, t)")
            k, s, d = (1, m.kernel_size[0]), (1, m.stride[0]), (1, m.dilation[0])
        else:
            k, s, d = _pair(m.kernel_size), _pair(m.stride), _pair(m.dilation)
        if getattr(m, "padding_mode", "zeros") != "zeros":
            raise ExportError(f"layer '{name}' ({type(m).__name__}) uses padding_mode={m.padding_mode!r}; "
                              f"the engine implements zero padding only")
        if isinstance(m.padding, str):
            if m.padding == "valid":
                return k, s, (0, 0, 0, 0), d
            total = [dd * (kk - 1) for kk, dd in zip(k, d, strict=True)]  # 'same': PyTorch puts the extra
            return k, s, (total[0] // 2, total[1] // 2, total[0] - total[0] // 2, total[1] - total[1] // 2), d
        p = (0, m.padding[0]) if isinstance(m, nn.Conv1d) else _pair(m.padding)
        return k, s, (p[0], p[1], p[0], p[1]), d

    def _float_conv(self, name: str, m: nn.Module, weight: torch.Tensor, bias) -> None:
        self._no_flat(name, type(m).__name__)
        k, s, pad, d = self._conv_geometry(name, m)
        w = weight.double().numpy().reshape(m.out_channels, m.in_channels, *k)
        b = None if bias is None else bias.detach().double().numpy()
        self.x = self.w.add_conv2d(self._float(name), w, b, stride=s, padding=pad, dilation=d, name=name)

    def _permuted_dense(self, w: np.ndarray) -> np.ndarray:
        """[nout, c*h*w] in PyTorch's (c, h, w) flatten order -> the engine's (h, w, c) order."""
        if self.flat_from is None:
            return w
        c, h, ww = self.flat_from
        return w.reshape(w.shape[0], c, h, ww).transpose(0, 2, 3, 1).reshape(w.shape[0], -1)

    def _float_linear(self, name: str, m: nn.Linear) -> None:
        s = self.shape
        if m.in_features != s.h * s.w * s.c:
            raise ExportError(f"layer '{name}' (Linear) takes {m.in_features} features, its input has "
                              f"{s.h * s.w * s.c}")
        w = self._permuted_dense(m.weight.detach().double().numpy())
        b = None if m.bias is None else m.bias.detach().double().numpy()
        self.x = self.w.add_linear(self._float(name), w, b, name=name)
        self.flat_from = None

    # -- binary layers -------------------------------------------------------------------------
    def _check_binary(self, name: str, m: nn.Module) -> None:
        if getattr(m, "input_scale", False):
            raise ExportError(f"layer '{name}' uses XNOR-Net's input scale K (input_scale=True), which is "
                              f"computed from the float input at run time; the engine has no op for it. "
                              f"Train with input_scale=False (batch-norm absorbs the scale)")
        if m.weight_bits != 1:
            raise ExportError(f"layer '{name}' has {m.weight_bits}-bit weights; the engine packs 1-bit "
                              f"weights")

    def _binary_weights(self, name: str, m: nn.Module):
        """Signs [cout, cin, kh, kw] (int8 ±1) and geometry of a binary conv or dense layer."""
        from bitsound.nn.layers import BinaryLinear
        signs = m.binary_weight().numpy()
        if not np.isfinite(signs).all():
            raise ExportError(f"layer '{name}' has non-finite weights")
        signs = signs.astype(np.int8)
        if isinstance(m, BinaryLinear):
            s = self.shape
            if m.in_features != s.h * s.w * s.c:
                raise ExportError(f"layer '{name}' (BinaryLinear) takes {m.in_features} features, its input "
                                  f"has {s.h * s.w * s.c}")
            if self.flat_from is not None:
                c, h, ww = self.flat_from
                signs = signs.reshape(m.out_features, c, h, ww)
            else:
                signs = signs.reshape(m.out_features, s.c, 1, 1) if s.h * s.w == 1 else None
                if signs is None:
                    raise ExportError(f"layer '{name}' (BinaryLinear) acts on a {s.h}x{s.w} map without a "
                                      f"Flatten")
            self.flat_from = None
            kh, kw = signs.shape[2:]
            return signs, (1, 1), (0, 0, 0, 0), (1, 1), (kh, kw)
        self._no_flat(name, type(m).__name__)
        k, s, pad, d = self._conv_geometry(name, m)
        return signs.reshape(m.out_channels, m.in_channels, *k), s, pad, d, k

    def _chain(self, items, j):
        chain = []
        while j < len(items) and isinstance(items[j][1], self.ELEMENTWISE):
            chain.append(items[j])
            j += 1
        return chain, j

    def _binary_layer(self, items, i) -> int:
        name, m = items[i]
        self._check_binary(name, m)
        if m.mode == "onebit":  # float inputs, weights c * sign(W): a float conv / linear
            return self._onebit(items, i)
        x = self.x
        if self.shape.dtype == F32:
            x = self.w.add_pack(x, name=f"{name}.sign")
        signs, stride, pad, dil, k = self._binary_weights(name, m)
        chain, j = self._chain(items, i + 1)
        fused = [n for n, c in chain if not isinstance(c, self.PASSTHROUGH)]
        alpha = m.weight_scale() if m.mode == "xnor" else None
        if self._consumer_is_sign(items, j):
            thr, flip = _thresholds(m, [c for _, c in chain], name)
            self.x = self.w.add_bconv2d(x, signs, stride=stride, padding=pad, dilation=dil,
                                        out_mode=BOUT_BITS, thr=thr, flip=flip,
                                        name="+".join([name, *fused, "sign"]))
            return j
        scale = np.ones(m.weight.shape[0]) if alpha is None else alpha.double().numpy()
        bias = np.zeros_like(scale) if m.bias is None else m.bias.detach().double().numpy()
        rest = [c for c in chain if not isinstance(c[1], self.PASSTHROUGH)]
        parts = [name]
        if rest and isinstance(rest[0][1], (nn.BatchNorm1d, nn.BatchNorm2d)):
            bn_s, bn_b = _bn_affine(rest[0][1], rest[0][0])
            scale, bias = scale * bn_s, bias * bn_s + bn_b
            parts.append(rest[0][0])
            rest = rest[1:]
        self.x = self.w.add_bconv2d(x, signs, stride=stride, padding=pad, dilation=dil, out_mode=BOUT_FLOAT,
                                    scale=scale, bias=bias, name="+".join(parts))
        for n, c in rest:
            self.step([(n, c)], 0)
        return j

    def _onebit(self, items, i) -> int:
        name, m = items[i]
        from bitsound.nn.layers import BinaryLinear
        weight = m.binary_weight() * m.weight_scale()
        if isinstance(m, BinaryLinear):
            fake = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
            with torch.no_grad():
                fake.weight.copy_(weight)
                if m.bias is not None:
                    fake.bias.copy_(m.bias)
            self._float_linear(name, fake)
        else:
            self._float_conv(name, m, weight, m.bias)
        return i + 1

    def _binary_block(self, name: str, blk: nn.Module) -> None:
        """bcnn2d's ``BN(binconv(pre(x))) [+ shortcut(x)]``."""
        items = [(f"{name}.pre", blk.pre), (f"{name}.conv", blk.conv), (f"{name}.bn", blk.bn)]
        stream = self.x
        if blk.move is not None:  # the learned sign threshold: x + move, then the sign
            move = blk.move.detach().double().reshape(-1).numpy()
            self.x = self.w.add_affine(self.x, np.ones_like(move), move, name=f"{name}.move")
        self.run(items)  # the float output: a sum follows, so no threshold
        sc, sc_name = blk.shortcut, f"{name}.shortcut"
        if sc.kind == "conv":
            main, self.x = self.x, stream
            self.run([(f"{sc_name}.proj.0", sc.proj[0]), (f"{sc_name}.proj.1", sc.proj[1])])
            stream, self.x, mode = self.x, main, ADD_IDENTITY
        else:
            mode = {"identity": ADD_IDENTITY, "pad": ADD_PAD, "group_mean": ADD_GROUP_MEAN}[sc.kind]
        self.x = self.w.add_add(self.x, stream, mode=mode, name=f"{name}.add")
        if blk.act is not None:
            self._prelu(f"{name}.act", blk.act)


def _thresholds(layer: nn.Module, chain: list[nn.Module], name: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel integer thresholds of ``sign(chain(scale * dot + bias))``, found by PyTorch itself.

    Every integer dot in ``[-fan_in, fan_in]`` goes through the layer's own output arithmetic
    (``dot * alpha + bias``) and the chain (activations, batch-norms) in float32 eval mode; the
    sign pattern must change at most once per channel. Returns ``thr`` and ``flip`` with
    ``+1 iff (flip ? -dot : dot) >= thr``.
    """
    from bitsound.nn.layers import BinaryConv1d, BinaryConv2d
    n = layer.fan_in
    cout = layer.weight.shape[0]
    dots = torch.arange(-n, n + 1, dtype=layer.weight.dtype)
    if isinstance(layer, BinaryConv2d):
        y = dots.view(1, 1, 1, -1).expand(1, cout, 1, 2 * n + 1).contiguous()
    elif isinstance(layer, BinaryConv1d):
        y = dots.view(1, 1, -1).expand(1, cout, 2 * n + 1).contiguous()
    else:
        y = dots.view(-1, 1).expand(2 * n + 1, cout).contiguous()
    with torch.no_grad():
        if layer.mode == "xnor":
            y = y * layer._per_channel(layer.weight_scale())
        if layer.bias is not None:
            y = y + layer._per_channel(layer.bias)
        for m in chain:
            was = m.training
            m.eval()
            y = m(y)
            m.train(was)
    y = y.reshape(-1, 2 * n + 1) if y.dim() > 2 else y.T
    y = y.double().numpy()
    if not np.isfinite(y).all():
        raise ExportError(f"layer '{name}': its output chain gives non-finite values; cannot fold it into "
                          f"thresholds")
    pos = y >= 0
    thr = np.zeros(cout, dtype=np.int64)
    flip = np.zeros(cout, dtype=np.int64)
    d = np.arange(-n, n + 1)
    for c in range(cout):
        p = pos[c]
        if p.all():
            thr[c] = -n
        elif not p.any():
            thr[c] = n + 1
        elif (np.diff(p.astype(np.int8)) >= 0).all():  # -1 ... -1 +1 ... +1
            thr[c] = d[np.argmax(p)]
        elif (np.diff(p.astype(np.int8)) <= 0).all():  # +1 ... +1 -1 ... -1: flipped channel
            flip[c] = 1
            thr[c] = -d[len(p) - 1 - np.argmax(p[::-1])]
        else:
            raise ExportError(f"layer '{name}', channel {c}: sign of its output chain is not monotone in the "
                              f"dot product, so it cannot become a threshold")
    return thr, flip


def _items(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Leaf modules of a supported model in forward order, (path, module); blocks stay whole."""
    from bitsound.models.binary_cnn import BinaryBlock, BinaryCNN2d
    from bitsound.models.cnn import CNN2d
    from bitsound.models.thesis import ThesisNet

    order = {ThesisNet: ("input_map", "first", "binary", "head"), BinaryCNN2d: ("features", "head"),
             CNN2d: ("features", "head")}

    def walk(prefix: str, m: nn.Module) -> list[tuple[str, nn.Module]]:
        if isinstance(m, nn.Sequential):
            return [it for k, c in m.named_children() for it in walk(f"{prefix}{k}.", c)]
        if type(m) in order:
            return [it for k in order[type(m)] for it in walk(f"{prefix}{k}.", getattr(m, k))]
        if isinstance(m, BinaryBlock) and m.shortcut is None:  # a plain sequence: lets signs fuse
            return [(f"{prefix}pre", m.pre), (f"{prefix}conv", m.conv), (f"{prefix}bn", m.bn)]
        if isinstance(m, BinaryBlock) or not list(m.children()) or _Lowering._is_binary(m):
            return [(prefix.rstrip("."), m)]
        raise ExportError(f"module '{prefix.rstrip('.') or type(m).__name__}' ({type(m).__name__}) is not a "
                          f"sequence the exporter knows how to follow; exportable models: thesis*, bcnn2d, "
                          f"cnn2d (and nn.Sequential of supported layers)")

    return walk("", model)


def build_graph(net: nn.Module, input_shape: tuple[int, ...], *, meta: dict | None = None) -> PackedWriter:
    """Lower ``net`` (eval mode) for features of ``input_shape`` to a :class:`PackedWriter`."""
    was = net.training
    net.eval()
    try:
        w = PackedWriter()
        x = w.add_input(tuple(input_shape))
        low = _Lowering(w, x, rank=len(input_shape) - 1)
        with torch.no_grad():
            low.run(_items(net))
        s = low.shape
        if s.dtype != F32:
            raise ExportError("the model ends in signs (bits); its last layer must produce float logits")
        w.add_output(low.x)
        w.meta = meta
        return w
    finally:
        net.train(was)


def export_packed(model, out_path: str | Path, *, input_shape: tuple[int, ...] | None = None) -> Path:
    """Export a trained model to the packed engine format.

    Parameters
    ----------
    model : str, Path, SoundClassifier or nn.Module
        ``DIR/model.pt`` written by ``bitsound train``, a loaded classifier, or a bare network
        (then ``input_shape`` is required).
    out_path : str or Path
        The ``.bsnn`` file to write (atomically).
    input_shape : tuple of int, optional
        Feature shape of one example, ``(c, h, w)`` or ``(c, t)``; read from the recipe otherwise.

    Returns
    -------
    Path
        ``out_path``.

    Raises
    ------
    ExportError
        For a layer the engine cannot run, naming it and the reason.
    """
    from bitsound.modelfile import SoundClassifier, feature_shape, load_model

    if isinstance(model, (str, Path)):
        model = load_model(model)
    meta: dict[str, Any] = {"format": "bitsound.bsnn", "bitsound": _version()}
    if isinstance(model, SoundClassifier):
        net = model.net
        shape = tuple(feature_shape(model.recipe)) if input_shape is None else tuple(input_shape)
        meta.update(labels=list(model.labels), recipe=model.recipe.model_dump(mode="json"),
                    model=model.recipe.model.name)
    elif isinstance(model, nn.Module):
        if input_shape is None:
            raise ExportError("exporting a bare network needs input_shape=(c, h, w) or (c, t)")
        net, shape = model, tuple(input_shape)
    else:
        raise ExportError(f"export_packed takes a model path, a SoundClassifier or an nn.Module, got "
                          f"{type(model).__name__}")
    meta["feature_shape"] = list(shape)
    data = build_graph(net, shape, meta=meta).to_bytes()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(out)
    return out


def _version() -> str:
    from bitsound import __version__
    return __version__
