"""Build a graph op by op from PyTorch-layout arrays: for tests, benchmarks and hand-made models.

:class:`GraphBuilder` wraps :class:`~bitsound.graph.ir.Graph` with one method per op that takes
weights in PyTorch's layout (``[cout, cin/groups, kh, kw]`` for 2-D convolutions, ``[cout,
cin/groups, k]`` for 1-D ones, ``[nout, nin]`` for dense layers over the channels-last flattened
input) and padding as ``(top, left, bottom, right)`` (2-D) or ``(left, right)`` (1-D). Each method
returns the id of the op's output tensor.

>>> b = GraphBuilder()
>>> x = b.add_input((3, 8, 8))
>>> y = b.add_conv(x, np.ones((4, 3, 3, 3)), None, padding=(1, 1, 1, 1), name="conv")
>>> b.add_output(b.add_gap(y, name="gap"))
>>> data = b.to_bytes()
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from bitsound.export import bsnn
from bitsound.graph import opcodes as oc
from bitsound.graph.bits import pack_signs
from bitsound.graph.ir import Graph


def _mode(table: dict[str, int], v: str | int) -> int:
    return table[v] if isinstance(v, str) else int(v)


class GraphBuilder:
    """A graph built op by op; ``meta`` is its JSON metadata, ``graph`` the :class:`Graph`."""

    def __init__(self) -> None:
        self.graph = Graph()

    @property
    def meta(self) -> dict[str, Any] | None:
        return self.graph.meta

    @meta.setter
    def meta(self, value: dict[str, Any] | None) -> None:
        self.graph.meta = value

    def shape(self, t: int):
        return self.graph.tensors[t]

    def _add(
        self, kind: str, inputs: list[int], params: dict, arrays: dict | None = None, *, name: str
    ) -> int:
        return self.graph.add(kind, inputs, params, arrays or {}, name=name)

    # -- ops -----------------------------------------------------------------------------------
    def add_input(self, shape: tuple[int, ...], name: str = "input") -> int:
        """Features of one example: ``(c, t)`` (rank 1) or ``(c, h, w)`` (rank 2)."""
        if len(shape) == 2:
            p = {"rank": 1, "c": shape[0], "h": 1, "w": shape[1]}
        else:
            c, h, w = shape
            p = {"rank": 2, "c": c, "h": h, "w": w}
        return self._add("input", [], p, name=name)

    def add_feature_norm(self, x: int, *, mode: str, floor_db: float | None, eps: float, name: str) -> int:
        floor = 0.0 if floor_db is None else floor_db * math.log(10) / 10
        p = {"mode": oc.NORM_MODES[mode], "has_floor": int(floor_db is not None), "floor": floor, "eps": eps}
        return self._add("feature_norm", [x], p, name=name)

    def add_affine(self, x: int, scale, bias, *, name: str) -> int:
        c = self.shape(x).c
        s = np.broadcast_to(np.asarray(scale, np.float64).reshape(-1), (c,))
        b = np.broadcast_to(np.asarray(bias, np.float64).reshape(-1), (c,))
        return self._add("affine", [x], {"c": c}, {"scale": s, "bias": b}, name=name)

    def add_act(self, x: int, kind: str, *, name: str, slope=None) -> int:
        """relu | tanh | silu | sigmoid | prelu (``slope``: one per channel, or one for all)."""
        c = self.shape(x).c
        arrays = {}
        if kind == "prelu":
            arrays["slope"] = np.broadcast_to(np.asarray(slope, np.float64).reshape(-1), (c,))
        return self._add("activation", [x], {"kind": oc.ACT_KINDS[kind], "c": c}, arrays, name=name)

    @staticmethod
    def _window(weight: np.ndarray, stride, padding, dilation) -> tuple[str, dict]:
        """("2d" | "1d", geometry params) from a PyTorch-layout weight."""
        if weight.ndim == 3:
            k = weight.shape[2]
            s = stride[-1] if isinstance(stride, (tuple, list)) else stride
            d = dilation[-1] if isinstance(dilation, (tuple, list)) else dilation
            p = tuple(padding) if isinstance(padding, (tuple, list)) else (padding, padding)
            return "1d", {"k": k, "s": s, "p0": p[-2], "p1": p[-1], "d": d}
        kh, kw = weight.shape[2:]
        return "2d", dict(zip(oc.GEOM2, (kh, kw, *stride, *padding, *dilation), strict=True))

    def add_conv(
        self,
        x: int,
        weight,
        bias,
        *,
        stride=(1, 1),
        padding=(0, 0, 0, 0),
        dilation=(1, 1),
        groups: int = 1,
        wdtype: str = "f32",
        weight_scale=None,
        name: str,
    ) -> int:
        """Float-activation conv. ``wdtype`` f32 | f16 | sign (``weight``'s signs times ``weight_scale``)."""
        w = np.asarray(weight, np.float64)
        rank, geom = self._window(w, stride, padding, dilation)
        cout = w.shape[0]
        taps_last = np.moveaxis(w, 1, -1)
        arrays: dict[str, Any] = {}
        if wdtype == "sign":
            arrays["weight_sign"] = pack_signs(taps_last)
            arrays["weight_scale"] = np.broadcast_to(
                np.asarray(weight_scale, np.float64).reshape(-1), (cout,)
            )
        else:
            arrays["weight_f16" if wdtype == "f16" else "weight"] = taps_last
        if bias is not None:
            arrays["bias"] = np.asarray(bias, np.float64)
        p = {
            "cin": self.shape(x).c,
            "cout": cout,
            "groups": groups,
            **geom,
            "has_bias": int(bias is not None),
            "wdtype": oc.WDTYPES[wdtype],
        }
        return self._add("conv1d" if rank == "1d" else "conv2d", [x], p, arrays, name=name)

    add_conv2d = add_conv

    def add_pack(self, x: int, *, name: str) -> int:
        return self._add("pack", [x], {"c": self.shape(x).c}, name=name)

    def add_bconv(
        self,
        x: int,
        weight_signs,
        *,
        stride=(1, 1),
        padding=(0, 0, 0, 0),
        dilation=(1, 1),
        groups: int = 1,
        out_mode: str | int = "float",
        scale=None,
        bias=None,
        thr=None,
        flip=None,
        name: str,
    ) -> int:
        """Binary conv; ``weight_signs`` of ±1 in PyTorch's layout.

        out_mode ``float``: ``dot * scale + bias``; ``bits``: ``+1 iff (flip ? -dot : dot) >= thr``;
        ``dot``: the integer dot product (as floats).
        """
        w = np.asarray(weight_signs)
        rank, geom = self._window(w, stride, padding, dilation)
        cout = w.shape[0]
        mode = _mode(oc.BOUT_MODES, out_mode)
        arrays: dict[str, Any] = {"weight": pack_signs(np.moveaxis(w, 1, -1))}
        if mode == oc.BOUT_MODES["float"]:
            arrays["scale"] = np.broadcast_to(np.asarray(scale, np.float64).reshape(-1), (cout,))
            arrays["bias"] = np.broadcast_to(
                np.asarray(0.0 if bias is None else bias, np.float64).reshape(-1), (cout,)
            )
        elif mode == oc.BOUT_MODES["bits"]:
            arrays["thr"] = np.asarray(thr).reshape(-1)
            arrays["flip"] = np.asarray(flip).reshape(-1)
        p = {"cin": self.shape(x).c, "cout": cout, "groups": groups, **geom, "out_mode": mode}
        return self._add("binary_conv1d" if rank == "1d" else "binary_conv2d", [x], p, arrays, name=name)

    add_bconv2d = add_bconv

    def _pool(self, kind: str, x: int, kernel, stride, padding, ceil_mode, extra: dict, name: str) -> int:
        if self.shape(x).h == 1 and not isinstance(kernel, (tuple, list)):
            p = {"k": kernel, "s": stride, "p": padding, "ceil_mode": int(ceil_mode)}
            return self._add(f"{kind}1d", [x], p | extra, name=name)
        (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
        p = {"kh": kh, "kw": kw, "sh": sh, "sw": sw, "ph": ph, "pw": pw, "ceil_mode": int(ceil_mode)}
        return self._add(f"{kind}2d", [x], p | extra, name=name)

    def add_maxpool(
        self, x: int, *, kernel=(2, 2), stride=(2, 2), padding=(0, 0), ceil_mode=False, name: str
    ) -> int:
        """2-D max-pool (tuples), or 1-D on a height-1 map (ints)."""
        return self._pool("maxpool", x, kernel, stride, padding, ceil_mode, {}, name)

    def add_avgpool(
        self,
        x: int,
        *,
        kernel=(2, 2),
        stride=(2, 2),
        padding=(0, 0),
        ceil_mode=False,
        count_include_pad=True,
        name: str,
    ) -> int:
        return self._pool(
            "avgpool",
            x,
            kernel,
            stride,
            padding,
            ceil_mode,
            {"count_include_pad": int(count_include_pad)},
            name,
        )

    def add_gap(self, x: int, *, name: str) -> int:
        return self._add("global_avg_pool", [x], {}, name=name)

    def add_linear(self, x: int, weight, bias, *, wdtype: str = "f32", weight_scale=None, name: str) -> int:
        """Float dense over the channels-last flattened input; weight [nout, nin] in that order."""
        w = np.asarray(weight, np.float64)
        nout, nin = w.shape
        arrays: dict[str, Any] = {}
        if wdtype == "sign":
            arrays["weight_sign"] = pack_signs(w)
            arrays["weight_scale"] = np.broadcast_to(
                np.asarray(weight_scale, np.float64).reshape(-1), (nout,)
            )
        else:
            arrays["weight_f16" if wdtype == "f16" else "weight"] = w
        if bias is not None:
            arrays["bias"] = np.asarray(bias, np.float64)
        p = {"nin": nin, "nout": nout, "has_bias": int(bias is not None), "wdtype": oc.WDTYPES[wdtype]}
        return self._add("linear", [x], p, arrays, name=name)

    def add_add(self, a: int, b: int, *, mode: str | int = "same", name: str) -> int:
        return self._add("add", [a, b], {"mode": _mode(oc.ADD_MODES, mode)}, name=name)

    def add_concat(self, a: int, b: int, *, axis: str, name: str) -> int:
        return self._add("concat", [a, b], {"axis": oc.AXES[axis]}, name=name)

    def add_slice(self, x: int, *, axis: str, start: int, stop: int, name: str) -> int:
        return self._add("slice", [x], {"axis": oc.AXES[axis], "start": start, "stop": stop}, name=name)

    def add_freq_affine(self, x: int, scale, bias, *, name: str) -> int:
        """``scale``, ``bias`` of shape [h, c]."""
        s = self.shape(x)
        return self._add("freq_affine", [x], {"h": s.h, "c": s.c}, {"scale": scale, "bias": bias}, name=name)

    def add_normalize(self, x: int, *, axes: str, eps: float, name: str) -> int:
        """Normalise over the named axes (a string of h, w, c)."""
        mask = sum({"h": 1, "w": 2, "c": 4}[a] for a in axes)
        return self._add("normalize", [x], {"axes": mask, "eps": eps}, name=name)

    def add_permute(self, x: int, perm: tuple[str, str, str], *, name: str) -> int:
        """Output axis i is input axis ``perm[i]`` (names h, w, c)."""
        p0, p1, p2 = (oc.AXES[a] for a in perm)
        return self._add("permute", [x], {"p0": p0, "p1": p1, "p2": p2}, name=name)

    def add_quantize(self, x: int, *, scale: float, zero: int, name: str) -> int:
        return self._add("quantize", [x], {"scale": scale, "zero": zero}, name=name)

    def add_dequantize(self, x: int, *, scale: float, zero: int, name: str) -> int:
        return self._add("dequantize", [x], {"scale": scale, "zero": zero}, name=name)

    @staticmethod
    def _qparams(in_scale, in_zero, out_scale, out_zero, relu, has_bias) -> dict:
        out_int8 = out_scale is not None
        return {
            "has_bias": int(has_bias),
            "in_scale": in_scale,
            "in_zero": in_zero,
            "out_mode": oc.QOUT_MODES["int8" if out_int8 else "float"],
            "out_scale": out_scale if out_int8 else 1.0,
            "out_zero": out_zero if out_int8 else 0,
            "relu": int(relu),
        }

    def add_qconv(
        self,
        x: int,
        weight_q,
        weight_scale,
        bias,
        *,
        in_scale: float,
        in_zero: int,
        out_scale: float | None = None,
        out_zero: int = 0,
        relu: bool = False,
        stride=(1, 1),
        padding=(0, 0, 0, 0),
        dilation=(1, 1),
        groups: int = 1,
        name: str,
    ) -> int:
        """int8 conv: weights int8 in PyTorch's layout, one scale per output channel; float output,
        or int8 requantised to ``out_scale``, ``out_zero`` when ``out_scale`` is given."""
        w = np.asarray(weight_q)
        rank, geom = self._window(w, stride, padding, dilation)
        arrays: dict[str, Any] = {"weight": np.moveaxis(w, 1, -1), "weight_scale": weight_scale}
        if bias is not None:
            arrays["bias"] = bias
        p = {
            "cin": self.shape(x).c,
            "cout": w.shape[0],
            "groups": groups,
            **geom,
            **self._qparams(in_scale, in_zero, out_scale, out_zero, relu, bias is not None),
        }
        return self._add("qconv1d" if rank == "1d" else "qconv2d", [x], p, arrays, name=name)

    def add_qlinear(
        self,
        x: int,
        weight_q,
        weight_scale,
        bias,
        *,
        in_scale: float,
        in_zero: int,
        out_scale: float | None = None,
        out_zero: int = 0,
        relu: bool = False,
        name: str,
    ) -> int:
        w = np.asarray(weight_q)
        arrays: dict[str, Any] = {"weight": w, "weight_scale": weight_scale}
        if bias is not None:
            arrays["bias"] = bias
        p = {
            "nin": w.shape[1],
            "nout": w.shape[0],
            **self._qparams(in_scale, in_zero, out_scale, out_zero, relu, bias is not None),
        }
        return self._add("qlinear", [x], p, arrays, name=name)

    def add_output(self, x: int, *, name: str = "output") -> int:
        return self._add("output", [x], {}, name=name)

    # -- file ----------------------------------------------------------------------------------
    @property
    def records(self) -> list[bytes]:
        """The file's records (a fresh list each time)."""
        return bsnn.records(self.graph)

    def to_bytes(self) -> bytes:
        return bsnn.to_bytes(self.graph)
