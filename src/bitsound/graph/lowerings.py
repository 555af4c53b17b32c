"""The built-in lowerings: ``torch.nn`` layers, bitsound's quantized layers, and functions.

Each entry maps one layer type (or function) to graph ops (:mod:`bitsound.graph.opcodes`); see
:mod:`bitsound.graph.lower` for the registry and how to add one. Axes: PyTorch's ``(N, C, H, W)``
is the graph's ``(h, w, c)``; ``(N, C, L)`` is ``h = 1, w = L``; ``(N, F)`` is ``1 x 1 x F``.
"""

from __future__ import annotations

import math
import operator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bitsound.errors import ExportError
from bitsound.graph import opcodes as oc
from bitsound.graph.bits import pack_signs
from bitsound.graph.lower import LowerContext, Value, lower_module, register_function, register_lowering
from bitsound.models.binary_cnn import ChannelShortcut
from bitsound.models.cnn import FeatureNorm
from bitsound.nn.layers import QuantConv1d, QuantConv2d, QuantLinear

# PyTorch dim (of a value of spatial rank r) -> graph axis (0 h, 1 w, 2 c)
_DIM_TO_AXIS = {2: {1: 2, 2: 0, 3: 1}, 1: {1: 2, 2: 1}, 0: {1: 2}}


def _axis(v: Value, dim: int, name: str) -> int:
    ndim = v.rank + 2
    d = dim + ndim if dim < 0 else dim
    table = _DIM_TO_AXIS[v.rank]
    if d not in table:
        raise ExportError(
            f"'{name}': dimension {dim} of a {ndim}-d tensor is the batch axis or out of range; "
            f"the graph holds one example"
        )
    return table[d]


def _pair(v) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def _one(v) -> int:
    return int(v[0]) if isinstance(v, (tuple, list)) else int(v)


def _f64(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().double().cpu().numpy()


# ---------------------------------------------------------------------------------------------
# convolutions and dense layers
# ---------------------------------------------------------------------------------------------


def _conv_geometry(m: nn.Module, name: str) -> dict:
    """Window params of a Conv1d/Conv2d: GEOM2 keys for 2-D, GEOM1 keys for 1-D."""
    if getattr(m, "padding_mode", "zeros") != "zeros":
        raise ExportError(
            f"layer '{name}' ({type(m).__name__}) uses padding_mode={m.padding_mode!r}; the "
            f"graph has zero padding only"
        )
    one_d = isinstance(m, nn.Conv1d)
    k = (1, m.kernel_size[0]) if one_d else _pair(m.kernel_size)
    s = (1, m.stride[0]) if one_d else _pair(m.stride)
    d = (1, m.dilation[0]) if one_d else _pair(m.dilation)
    if isinstance(m.padding, str):
        if m.padding == "valid":
            pad = (0, 0, 0, 0)
        else:  # 'same': PyTorch puts the extra zero of an even kernel at the end
            tot = [dd * (kk - 1) for kk, dd in zip(k, d, strict=True)]
            pad = (tot[0] // 2, tot[1] // 2, tot[0] - tot[0] // 2, tot[1] - tot[1] // 2)
    else:
        p = (0, m.padding[0]) if one_d else _pair(m.padding)
        pad = (p[0], p[1], p[0], p[1])
    if one_d:
        return {"k": k[1], "s": s[1], "p0": pad[1], "p1": pad[3], "d": d[1]}
    return dict(zip(oc.GEOM2, (*k, *s, *pad, *d), strict=True))


def _weight_taps_last(w: np.ndarray) -> np.ndarray:
    """PyTorch [cout, cin/g, *k] -> the graph's [cout, *k, cin/g]."""
    return np.moveaxis(w, 1, -1)


def _check_input(ctx: LowerContext, x: Value, m: nn.Module, name: str) -> Value:
    x = ctx.plain(x, name, type(m).__name__)
    one_d = isinstance(m, nn.Conv1d)
    if one_d and (x.rank != 1 or ctx.shape(x).h != 1):
        raise ExportError(f"layer '{name}' (Conv1d) needs a (N, C, L) input, got rank {x.rank}")
    if not one_d and x.rank != 2:
        raise ExportError(f"layer '{name}' (Conv2d) needs a (N, C, H, W) input, got rank {x.rank}")
    return x


def _float_conv(
    ctx: LowerContext,
    x: Value,
    m: nn.Module,
    name: str,
    weight: np.ndarray,
    bias,
    *,
    wdtype: str = "f32",
    weight_scale=None,
    source=None,
) -> Value:
    """A float-activation conv with weights [cout, cin/g, *k] in PyTorch order (values as stored)."""
    x = ctx.floats(x, name)
    kind = "conv1d" if isinstance(m, nn.Conv1d) else "conv2d"
    params = {
        "cin": m.in_channels,
        "cout": m.out_channels,
        "groups": m.groups,
        **_conv_geometry(m, name),
        "has_bias": int(bias is not None),
        "wdtype": oc.WDTYPES[wdtype],
    }
    w = _weight_taps_last(weight)
    arrays = {}
    if wdtype == "f32":
        arrays["weight"] = w
    elif wdtype == "f16":
        arrays["weight_f16"] = w
    else:
        arrays["weight_sign"] = pack_signs(w)
        arrays["weight_scale"] = weight_scale
    if bias is not None:
        arrays["bias"] = bias
    return ctx.add(kind, [x], params, arrays, name=name, rank=x.rank, source=source or m)


@register_lowering(nn.Conv1d)
@register_lowering(nn.Conv2d)
def _conv(ctx, m, name, x):
    x = _check_input(ctx, x, m, name)
    return _float_conv(ctx, x, m, name, _f64(m.weight), _f64(m.bias))


def _dense_weights(ctx: LowerContext, x: Value, w: np.ndarray, name: str) -> np.ndarray:
    """[nout, nin] in PyTorch's flatten order -> the graph's hwc order of the input."""
    s = ctx.shape(x)
    if w.shape[1] != s.numel:
        raise ExportError(f"layer '{name}' takes {w.shape[1]} features, its input has {s.numel}")
    if x.flat_from is None:
        if s.h * s.w != 1:
            raise ExportError(f"layer '{name}' acts on a {s.h}x{s.w} map without a Flatten")
        return w
    c, h, ww = x.flat_from
    return w.reshape(w.shape[0], c, h, ww).transpose(0, 2, 3, 1).reshape(w.shape[0], -1)


@register_lowering(nn.Linear)
def _linear(ctx, m, name, x):
    if ctx.shape(x).dtype != "f32":
        raise ExportError(f"layer '{name}' (Linear) needs float inputs")
    w = _dense_weights(ctx, x, _f64(m.weight), name)
    arrays = {"weight": w} | ({"bias": _f64(m.bias)} if m.bias is not None else {})
    return ctx.add(
        "linear",
        [Value(x.t, 0)],
        {"nin": w.shape[1], "nout": w.shape[0], "has_bias": int(m.bias is not None), "wdtype": 1},
        arrays,
        name=name,
        rank=0,
        source=m,
    )


def _binary_conv(
    ctx: LowerContext,
    xb: Value,
    m: nn.Module,
    name: str,
    signs: np.ndarray,
    geometry: dict,
    kind: str,
    scale: np.ndarray,
    bias: np.ndarray,
    rank: int,
) -> Value:
    cout = signs.shape[0]
    groups = getattr(m, "groups", 1)
    params = {
        "cin": ctx.shape(xb).c,
        "cout": cout,
        "groups": groups,
        **geometry,
        "out_mode": oc.BOUT_MODES["float"],
    }
    arrays = {"weight": pack_signs(_weight_taps_last(signs)), "scale": scale, "bias": bias}
    return ctx.add(kind, [xb], params, arrays, name=name, rank=rank, source=m)


@register_lowering(QuantConv1d, inherit=True)
@register_lowering(QuantConv2d, inherit=True)
@register_lowering(QuantLinear, inherit=True)
def _quant_layer(ctx, m, name, x):
    """Every precision of the quantized layers (see :mod:`bitsound.nn.layers`)."""
    if m.input_scale:
        raise ExportError(
            f"layer '{name}' uses XNOR-Net's input scale K (input_scale=True), which is computed "
            f"from the float input at run time; the graph has no op for it. Train with "
            f"input_scale=False (batch-norm absorbs the scale)"
        )
    ib, wb = m.input_bits, m.weight_bits
    values, scale = m.quantized_weight()
    values, scale = _f64(values), _f64(scale)
    if not np.isfinite(values).all() or (scale is not None and not np.isfinite(scale).all()):
        raise ExportError(f"layer '{name}' has non-finite weights or scales")
    bias = _f64(m.bias)
    is_linear = isinstance(m, nn.Linear)
    if ib == 1:
        if wb != 1:
            raise ExportError(
                f"layer '{name}' binarizes its inputs but has {wb}-bit weights; the graph's binary "
                f"convolution needs 1-bit weights"
            )
        return _lower_binary(ctx, m, name, x, values, scale, bias, is_linear)
    if ib == 8:
        return _lower_int8(ctx, m, name, x, values, scale, bias, is_linear)
    if ib != 32:
        raise ExportError(f"layer '{name}' has {ib}-bit inputs; the graph runs 1-, 8- or 32-bit activations")
    # float inputs
    if is_linear:
        if wb == 1:
            w = _dense_weights(ctx, x, values, name)
            sc = np.ones(values.shape[0]) if scale is None else scale
            arrays = {"weight_sign": pack_signs(w), "weight_scale": sc}
            wdtype = oc.WDTYPES["sign"]
        else:
            full = values if scale is None else values * scale.reshape(-1, 1)
            w = _dense_weights(ctx, x, full, name)
            arrays = {"weight_f16" if wb == 16 else "weight": w}
            wdtype = oc.WDTYPES["f16" if wb == 16 else "f32"]
        if bias is not None:
            arrays["bias"] = bias
        x = Value(x.t, 0)
        return ctx.add(
            "linear",
            [x],
            {"nin": w.shape[1], "nout": w.shape[0], "has_bias": int(bias is not None), "wdtype": wdtype},
            arrays,
            name=name,
            rank=0,
            source=m,
        )
    x = _check_input(ctx, x, m, name)
    if wb == 1:  # 1-bit weights on float inputs: sign-select and add
        sc = np.ones(values.shape[0]) if scale is None else scale
        return _float_conv(ctx, x, m, name, values, bias, wdtype="sign", weight_scale=sc)
    full = values if scale is None else values * scale.reshape(-1, *([1] * (values.ndim - 1)))
    # weight-only int8 runs as float weights equal to the dequantized values
    return _float_conv(ctx, x, m, name, full, bias, wdtype="f16" if wb == 16 else "f32")


def _lower_binary(ctx, m, name, x, signs, scale, bias, is_linear):
    cout = signs.shape[0]
    sc = np.ones(cout) if scale is None else scale
    b = np.zeros(cout) if bias is None else bias
    if is_linear:
        s = ctx.shape(x)
        if signs.shape[1] != s.numel:
            raise ExportError(f"layer '{name}' takes {signs.shape[1]} features, its input has {s.numel}")
        if x.flat_from is not None:
            c, h, w = x.flat_from
            signs4 = signs.reshape(cout, c, h, w)
        elif s.h * s.w == 1:
            signs4 = signs.reshape(cout, s.c, 1, 1)
        else:
            raise ExportError(f"layer '{name}' acts on a {s.h}x{s.w} map without a Flatten")
        xb = ctx.pack(Value(x.t, 2), name=f"{name}.sign", source=m.input_quantizer)
        kh, kw = signs4.shape[2:]
        geometry = dict(zip(oc.GEOM2, (kh, kw, 1, 1, 0, 0, 0, 0, 1, 1), strict=True))
        y = _binary_conv(ctx, xb, m, name, signs4, geometry, "binary_conv2d", sc, b, rank=0)
        return Value(y.t, 0)
    x = _check_input(ctx, x, m, name)
    xb = ctx.pack(x, name=f"{name}.sign", source=m.input_quantizer)
    kind = "binary_conv1d" if isinstance(m, nn.Conv1d) else "binary_conv2d"
    return _binary_conv(ctx, xb, m, name, signs, _conv_geometry(m, name), kind, sc, b, rank=x.rank)


def _lower_int8(ctx, m, name, x, values, scale, bias, is_linear):
    q = m.input_quantizer
    if not hasattr(q, "qparams") or m.weight_bits != 8 or scale is None:
        raise ExportError(
            f"layer '{name}': int8 inputs need int8 weights with scales and an input quantizer "
            f"with qparams() (bitsound.nn.quantizers.Int8Activation)"
        )
    in_scale, in_zero = q.qparams()
    x = ctx.floats(x, name) if x.flat_from is None else x
    xq = ctx.add(
        "quantize",
        [Value(x.t, x.rank)],
        {"scale": in_scale, "zero": in_zero},
        name=f"{name}.quantize",
        rank=x.rank,
        source=q,
    )
    qp = {
        "in_scale": in_scale,
        "in_zero": in_zero,
        "out_mode": oc.QOUT_MODES["float"],
        "out_scale": 1.0,
        "out_zero": 0,
        "relu": 0,
        "has_bias": int(bias is not None),
    }
    arrays = {"weight_scale": scale} | ({"bias": bias} if bias is not None else {})
    if is_linear:
        w = _dense_weights(ctx, x, values, name)
        arrays["weight"] = w
        return ctx.add(
            "qlinear",
            [xq],
            {"nin": w.shape[1], "nout": w.shape[0], **qp},
            arrays,
            name=name,
            rank=0,
            source=m,
        )
    kind = "qconv1d" if isinstance(m, nn.Conv1d) else "qconv2d"
    arrays["weight"] = _weight_taps_last(values)
    params = {
        "cin": m.in_channels,
        "cout": m.out_channels,
        "groups": m.groups,
        **_conv_geometry(m, name),
        **qp,
    }
    return ctx.add(kind, [xq], params, arrays, name=name, rank=x.rank, source=m)


# ---------------------------------------------------------------------------------------------
# normalisation, activations, pooling, shape
# ---------------------------------------------------------------------------------------------


def bn_affine(bn: nn.Module, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Eval-mode batch-norm as ``y = x * scale + bias`` (float64)."""
    if bn.running_mean is None or bn.running_var is None:
        raise ExportError(
            f"layer '{name}' (batch-norm without running statistics) normalises with batch "
            f"statistics at inference; the graph needs track_running_stats=True"
        )
    scale = 1.0 / np.sqrt(_f64(bn.running_var) + bn.eps)
    if bn.weight is not None:
        scale = scale * _f64(bn.weight)
    bias = -_f64(bn.running_mean) * scale + (_f64(bn.bias) if bn.bias is not None else 0.0)
    if not (np.isfinite(scale).all() and np.isfinite(bias).all()):
        raise ExportError(f"layer '{name}' has non-finite batch-norm parameters")
    return scale, bias


@register_lowering(nn.BatchNorm1d)
@register_lowering(nn.BatchNorm2d)
def _batchnorm(ctx, m, name, x):
    x = ctx.floats(x, name, type(m).__name__)
    scale, bias = bn_affine(m, name)
    if len(scale) != ctx.shape(x).c:
        raise ExportError(f"layer '{name}' normalises {len(scale)} channels, its input has {ctx.shape(x).c}")
    return ctx.affine(x, scale, bias, name=name, source=m)


@register_lowering(FeatureNorm)
def _feature_norm(ctx, m, name, x):
    x = ctx.floats(x, name)
    if x.rank != 2:
        raise ExportError(f"layer '{name}' (FeatureNorm) needs 2-D features (c, h, w)")
    floor = 0.0 if m.floor_db is None else m.floor_db * math.log(10) / 10
    return ctx.add(
        "feature_norm",
        [x],
        {
            "mode": oc.NORM_MODES[m.mode],
            "has_floor": int(m.floor_db is not None),
            "floor": floor,
            "eps": m.eps,
        },
        name=name,
        rank=2,
        source=m,
    )


for _cls, _kind in ((nn.ReLU, "relu"), (nn.Tanh, "tanh"), (nn.SiLU, "silu"), (nn.Sigmoid, "sigmoid")):
    register_lowering(_cls)(lambda ctx, m, name, x, _k=_kind: ctx.activation(x, _k, name=name, source=m))


@register_lowering(nn.PReLU)
def _prelu(ctx, m, name, x):
    return ctx.activation(x, "prelu", slope=_f64(m.weight), name=name, source=m)


@register_lowering(nn.Identity)
@register_lowering(nn.Dropout)
@register_lowering(nn.Dropout1d)
@register_lowering(nn.Dropout2d)
def _identity(ctx, m, name, x, *args, **kwargs):
    return x


def _pool(
    ctx,
    x: Value,
    name: str,
    *,
    avg: bool,
    kernel,
    stride,
    padding,
    ceil_mode: bool,
    count_include_pad: bool = True,
    source=None,
) -> Value:
    x = ctx.plain(x, name)
    if x.rank == 1:
        params = {"k": _one(kernel), "s": _one(stride), "p": _one(padding), "ceil_mode": int(ceil_mode)}
        kind = "avgpool1d" if avg else "maxpool1d"
    elif x.rank == 2:
        (kh, kw), (sh, sw), (ph, pw) = _pair(kernel), _pair(stride), _pair(padding)
        params = {"kh": kh, "kw": kw, "sh": sh, "sw": sw, "ph": ph, "pw": pw, "ceil_mode": int(ceil_mode)}
        kind = "avgpool2d" if avg else "maxpool2d"
    else:
        raise ExportError(f"'{name}': pooling needs a (N, C, L) or (N, C, H, W) input")
    if avg:
        params["count_include_pad"] = int(count_include_pad)
    return ctx.add(kind, [x], params, name=name, rank=x.rank, source=source)


@register_lowering(nn.MaxPool1d)
@register_lowering(nn.MaxPool2d)
def _maxpool(ctx, m, name, x):
    if (
        any(v != 1 for v in ((m.dilation,) if isinstance(m.dilation, int) else m.dilation))
        or m.return_indices
    ):
        raise ExportError(
            f"layer '{name}' ({type(m).__name__}) uses dilation or return_indices; not supported"
        )
    stride = m.stride if m.stride is not None else m.kernel_size
    return _pool(
        ctx,
        x,
        name,
        avg=False,
        kernel=m.kernel_size,
        stride=stride,
        padding=m.padding,
        ceil_mode=m.ceil_mode,
        source=m,
    )


@register_lowering(nn.AvgPool1d)
@register_lowering(nn.AvgPool2d)
def _avgpool(ctx, m, name, x):
    if getattr(m, "divisor_override", None) is not None:
        raise ExportError(f"layer '{name}' ({type(m).__name__}) uses divisor_override; not supported")
    stride = m.stride if m.stride is not None else m.kernel_size
    return _pool(
        ctx,
        x,
        name,
        avg=True,
        kernel=m.kernel_size,
        stride=stride,
        padding=m.padding,
        ceil_mode=m.ceil_mode,
        count_include_pad=m.count_include_pad,
        source=m,
    )


def _gap(ctx, x: Value, name: str, source=None) -> Value:
    x = ctx.floats(x, name)
    return ctx.add("global_avg_pool", [x], {}, name=name, rank=x.rank, source=source)


@register_lowering(nn.AdaptiveAvgPool1d)
@register_lowering(nn.AdaptiveAvgPool2d)
def _adaptive_avg(ctx, m, name, x):
    size = m.output_size if isinstance(m.output_size, (tuple, list)) else (m.output_size,)
    if any(v != 1 for v in size):
        raise ExportError(
            f"layer '{name}' ({type(m).__name__}) has output size {m.output_size}; the graph "
            f"implements global average pooling (output size 1) only"
        )
    return _gap(ctx, x, name, source=m)


def _flatten(ctx: LowerContext, x: Value, name: str, start: int, end: int) -> Value:
    x = ctx.plain(x, name)
    nd = x.rank + 2
    if (start, end if end >= 0 else end + nd) != (1, nd - 1):
        raise ExportError(
            f"'{name}' flattens dims {start}..{end}; only flattening everything but the batch "
            f"(start_dim=1) is supported"
        )
    s = ctx.shape(x)
    if x.rank == 0:
        return x
    if s.h * s.w == 1:
        return Value(x.t, 0)
    # PyTorch's order is (c, h, w); the graph keeps the map and permutes the next dense layer's weights
    return Value(x.t, 0, flat_from=(s.c, s.h, s.w) if x.rank == 2 else (s.c, 1, s.w))


@register_lowering(nn.Flatten)
def _flatten_module(ctx, m, name, x):
    return _flatten(ctx, x, name, m.start_dim, m.end_dim)


@register_lowering(ChannelShortcut)
def _channel_shortcut(ctx, m, name, x):
    if m.kind == "identity":
        return x
    if m.kind in ("pad", "group_mean"):
        return Value(x.t, x.rank, shortcut=(m.kind, ctx.floats(x, name)))
    return lower_module(ctx, m.proj, f"{name}.proj", x)


# ---------------------------------------------------------------------------------------------
# functions and Tensor methods in forward()
# ---------------------------------------------------------------------------------------------


def _channel_constant(ctx: LowerContext, x: Value, c, name: str) -> np.ndarray:
    """A Python number or a tensor broadcastable as one value per channel -> [c] float64."""
    channels = ctx.shape(x).c
    if isinstance(c, (int, float)):
        return np.full(channels, float(c))
    if isinstance(c, torch.Tensor):
        t = c.detach().double()
        if t.numel() == 1:
            return np.full(channels, float(t.reshape(-1)[0]))
        shape = list(t.shape)
        # (C,), (C, 1, 1), (1, C, 1, 1), ... : one value per channel
        if t.numel() == channels and (t.dim() == 1 or shape[-(x.rank + 1)] == channels):
            return t.reshape(-1).numpy()
    raise ExportError(
        f"'{name}': a tensor operand must be a number or one value per channel, got "
        f"{type(c).__name__} {getattr(c, 'shape', '')}"
    )


@register_function(operator.add, torch.add, "add", "__add__", "__radd__")
def _add(ctx, name, a, b, *, alpha=1):
    if alpha != 1:
        raise ExportError(f"'{name}': add with alpha={alpha} is not supported")
    if not isinstance(a, Value):
        a, b = b, a
    if not isinstance(b, Value):
        c = _channel_constant(ctx, a, b, name)
        return ctx.affine(a, 1.0, c, name=name, source=lambda y, _b=b: y + _b)
    if a.shortcut is not None and b.shortcut is None:
        a, b = b, a
    a = ctx.floats(a, name)
    if b.shortcut is not None:
        mode, src = b.shortcut
        return ctx.add("add", [a, src], {"mode": oc.ADD_MODES[mode]}, name=name, rank=a.rank)
    b = ctx.floats(b, name)
    sa, sb = ctx.shape(a), ctx.shape(b)
    if (sb.h, sb.w) != (sa.h, sa.w) and (sa.h in (1, sb.h) and sa.w in (1, sb.w)):
        a, b = b, a  # the broadcast operand goes second (addition is commutative)
    return ctx.add("add", [a, b], {"mode": oc.ADD_MODES["same"]}, name=name, rank=a.rank)


@register_function(operator.sub, torch.sub, "sub", "__sub__")
def _sub(ctx, name, a, b):
    if isinstance(a, Value) and not isinstance(b, Value):
        c = _channel_constant(ctx, a, b, name)
        return ctx.affine(a, 1.0, -c, name=name, source=lambda y, _b=b: y - _b)
    raise ExportError(f"'{name}': only tensor - constant subtraction is supported")


@register_function(operator.mul, torch.mul, "mul", "__mul__", "__rmul__")
def _mul(ctx, name, a, b):
    if not isinstance(a, Value):
        a, b = b, a
    if isinstance(b, Value):
        raise ExportError(f"'{name}': the product of two computed tensors has no graph op")
    c = _channel_constant(ctx, a, b, name)
    return ctx.affine(a, c, 0.0, name=name, source=lambda y, _b=b: y * _b)


@register_function(operator.truediv, torch.div, "div", "__truediv__")
def _div(ctx, name, a, b):
    if isinstance(a, Value) and isinstance(b, (int, float)):
        return ctx.affine(a, 1.0 / b, 0.0, name=name, source=lambda y, _b=b: y / _b)
    raise ExportError(f"'{name}': only division by a number is supported")


@register_function(F.relu, torch.relu, "relu")
def _relu_fn(ctx, name, x, inplace=False):
    return ctx.activation(x, "relu", name=name, source=F.relu)


@register_function(torch.tanh, "tanh")
def _tanh_fn(ctx, name, x):
    return ctx.activation(x, "tanh", name=name, source=torch.tanh)


@register_function(F.silu, "silu")
def _silu_fn(ctx, name, x, inplace=False):
    return ctx.activation(x, "silu", name=name, source=F.silu)


@register_function(torch.sigmoid, "sigmoid")
def _sigmoid_fn(ctx, name, x):
    return ctx.activation(x, "sigmoid", name=name, source=torch.sigmoid)


@register_function(F.dropout, "contiguous")
def _identity_fn(ctx, name, x, *args, **kwargs):
    return x


@register_function(torch.flatten, "flatten")
def _flatten_fn(ctx, name, x, start_dim=0, end_dim=-1):
    return _flatten(ctx, x, name, start_dim, end_dim)


@register_function(torch.cat, torch.concat, torch.concatenate)
def _cat(ctx, name, tensors, dim=0):
    vals = [ctx.floats(v, name) for v in tensors]
    axis = _axis(vals[0], dim, name)
    out = vals[0]
    for v in vals[1:]:
        out = ctx.add("concat", [out, v], {"axis": axis}, name=name, rank=out.rank)
    return out


@register_function(operator.getitem)
def _getitem(ctx, name, x, index):
    x = ctx.floats(x, name)
    idx = index if isinstance(index, tuple) else (index,)
    if idx and idx[0] is not Ellipsis and not (isinstance(idx[0], slice) and idx[0] == slice(None)):
        raise ExportError(f"'{name}': indexing must keep the batch axis (x[:, ...]), got {index!r}")
    if Ellipsis in idx:
        e = idx.index(Ellipsis)
        idx = idx[:e] + (slice(None),) * (x.rank + 2 - len(idx) + 1) + idx[e + 1 :]
    out = x
    for dim, s in enumerate(idx):
        if dim == 0 or s == slice(None):
            continue
        if not isinstance(s, slice) or s.step not in (None, 1):
            raise ExportError(f"'{name}': only contiguous slices along an axis are supported, got {index!r}")
        axis = _axis(x, dim, name)
        n = ctx.shape(out).dims()[axis]
        start, stop, _ = s.indices(n)
        out = ctx.add("slice", [out], {"axis": axis, "start": start, "stop": stop}, name=name, rank=x.rank)
    return out


def _permute(ctx, name, x: Value, dims: list[int]) -> Value:
    x = ctx.floats(x, name)
    nd = x.rank + 2
    dims = [d + nd if d < 0 else d for d in dims]
    if len(dims) != nd or dims[0] != 0 or sorted(dims) != list(range(nd)):
        raise ExportError(f"'{name}': a permutation must keep the batch axis first, got {dims}")
    if x.rank != 2:
        raise ExportError(f"'{name}': permute is supported on (N, C, H, W) tensors")
    # output dim i holds input dim dims[i]; graph axis of output dim i -> graph axis of input dim dims[i]
    table = _DIM_TO_AXIS[2]
    perm = [0, 0, 0]
    for i in range(1, 4):
        perm[table[i]] = table[dims[i]]
    if perm == [0, 1, 2]:
        return x
    return ctx.add("permute", [x], {"p0": perm[0], "p1": perm[1], "p2": perm[2]}, name=name, rank=2)


@register_function("permute", torch.permute)
def _permute_fn(ctx, name, x, *dims):
    dims = list(dims[0]) if len(dims) == 1 and isinstance(dims[0], (list, tuple)) else list(dims)
    return _permute(ctx, name, x, dims)


@register_function("transpose", torch.transpose)
def _transpose_fn(ctx, name, x, d0, d1):
    nd = x.rank + 2
    dims = list(range(nd))
    d0, d1 = d0 % nd, d1 % nd
    dims[d0], dims[d1] = dims[d1], dims[d0]
    return _permute(ctx, name, x, dims)


@register_function("unsqueeze", torch.unsqueeze)
def _unsqueeze(ctx, name, x, dim):
    x = ctx.plain(x, name)
    if x.rank == 1 and dim in (2, -2):  # (N, C, L) -> (N, C, 1, L): the graph already holds h = 1
        return Value(x.t, 2)
    if x.rank == 1 and dim in (1, -3) and ctx.shape(x).c == 1:  # (N, 1, L) -> (N, 1, 1, L)
        return Value(x.t, 2)
    raise ExportError(f"'{name}': unsqueeze({dim}) of a rank-{x.rank} value is not supported")


@register_function("squeeze", torch.squeeze)
def _squeeze(ctx, name, x, dim=None):
    x = ctx.plain(x, name)
    s = ctx.shape(x)
    if x.rank == 2 and dim in (2, -2) and s.h == 1:
        return Value(x.t, 1)
    if x.rank == 2 and dim in ((2, 3), (-2, -1)) and s.h == s.w == 1:
        return Value(x.t, 0)
    if x.rank == 1 and dim in (2, -1) and s.w == 1:
        return Value(x.t, 0)
    raise ExportError(f"'{name}': squeeze({dim}) of a rank-{x.rank} {s.dims()} value is not supported")


@register_function("mean", torch.mean)
def _mean(ctx, name, x, dim=None, keepdim=False):
    x = ctx.floats(x, name)
    dims = [dim] if isinstance(dim, int) else list(dim or [])
    axes = sorted(_axis(x, d, name) for d in dims)
    s = ctx.shape(x)
    if axes == [0, 1] or (x.rank == 1 and axes == [1]):
        y = _gap(ctx, x, name)
        return y if keepdim else Value(y.t, 0)
    if x.rank == 2 and axes == [0] and keepdim:  # mean over frequency, kept as [c][1][w]
        return _pool(ctx, x, name, avg=True, kernel=(s.h, 1), stride=(1, 1), padding=0, ceil_mode=False)
    if x.rank == 2 and axes == [1] and keepdim:
        return _pool(ctx, x, name, avg=True, kernel=(1, s.w), stride=(1, 1), padding=0, ceil_mode=False)
    raise ExportError(f"'{name}': mean over dims {dim} (keepdim={keepdim}) is not supported")


@register_function(F.pad)
def _pad(ctx, name, x, pad, mode="constant", value=0.0):
    x = ctx.floats(x, name)
    pad = list(pad)
    spatial = 2 * x.rank
    if (
        mode == "constant"
        and value in (None, 0)  # F.pad's default value is None (zeros)
        and len(pad) == spatial + 2
        and not any(pad[:spatial])
        and pad[-2] == 0
    ):
        return Value(x.t, x.rank, shortcut=("pad", x))
    raise ExportError(
        f"'{name}': F.pad{tuple(pad)} is supported only as zero channels appended to a shortcut"
    )


@register_function(F.avg_pool1d, F.avg_pool2d)
def _avg_pool_fn(ctx, name, x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
    return _pool(
        ctx,
        x,
        name,
        avg=True,
        kernel=kernel_size,
        stride=stride or kernel_size,
        padding=padding,
        ceil_mode=ceil_mode,
        count_include_pad=count_include_pad,
    )


@register_function(F.max_pool1d, F.max_pool2d)
def _max_pool_fn(
    ctx, name, x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False
):
    return _pool(
        ctx,
        x,
        name,
        avg=False,
        kernel=kernel_size,
        stride=stride or kernel_size,
        padding=padding,
        ceil_mode=ceil_mode,
    )


@register_function(F.adaptive_avg_pool1d, F.adaptive_avg_pool2d)
def _adaptive_fn(ctx, name, x, output_size):
    size = output_size if isinstance(output_size, (tuple, list)) else (output_size,)
    if any(v != 1 for v in size):
        raise ExportError(f"'{name}': adaptive average pooling to {output_size} is not supported (only 1)")
    return _gap(ctx, x, name)


# lowerings kept in their own modules (one per family of layer types) register on import
from bitsound.graph import lowerings_freqnorm  # noqa: E402, F401
