"""int8 (QDQ) and fp16 layers for the ONNX exporter: export twins built from declared precision.

:func:`bitsound.export.onnx.lower_for_onnx` replaces every layer by the twin its declared
precision calls for (``weight_bits`` and ``input_bits``, the attributes the complexity report
reads), never by its class:

int8 (``weight_bits == 8``), the QDQ form onnxruntime and other runtimes recognise:

- the weights are an ``int8`` initializer ``q = clamp(round(W / s), -127, 127)`` (the layer's
  ``quantized_weight()``) followed by ``DequantizeLinear(q, s, 0, axis=0)``: one float32 scale per
  output channel (a per-tensor scale is written as equal per-channel ones);
- an int8 input (``input_bits == 8``) is ``QuantizeLinear`` then ``DequantizeLinear`` with the
  per-tensor scale and zero point of the layer's input quantizer (``qparams()``, e.g.
  :class:`~bitsound.nn.quantizers.Int8Activation`); ONNX rounds half to even and saturates to
  ``[-128, 127]``, as the quantizer does. The exporter checks the quantizer really is that map on
  probe values across its range, and refuses one whose range was never observed (it passes values
  through until calibrated);
- ``Conv`` / ``Gemm`` on the dequantized values with the layer's geometry, then the float bias,
  which stays float as in the model and the engine (no int32 bias).

A runtime may fuse the pattern into integer kernels (onnxruntime makes ``QLinearConv`` of a
``DequantizeLinear -> Conv -> Relu -> QuantizeLinear`` chain): it then requantizes an output in
integer arithmetic where PyTorch rounds a float product, so a value within rounding of a
half-integer takes the neighbouring code, and that one-step difference moves the logits a little.
Hence the int8 tolerance of the export check (:data:`INT8_RTOL`), relative to the logits' size.

fp16 (``weight_bits == 16``): the weights are a ``FLOAT16`` initializer followed by a ``Cast`` to
float32; the layer then computes in float32, as PyTorch's fp16-stored layers and the engine do,
so the answers match to float rounding. (The whole graph in fp16 would change every sum's
rounding for no size gain beyond the weights.) The exporter keeps those casts from the graph
optimizer's constant folding (:func:`keep_half_casts`), which would otherwise store float32
weights again.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.conv import _ConvNd

from bitsound.errors import ExportError

#: int8 networks: the largest |onnxruntime - PyTorch| logit difference allowed per example, as a
#: fraction of that example's largest |logit|. One-code-step differences where the runtime
#: requantizes in integer arithmetic (module docstring) flip further codes of later, coarser
#: quantizers (a global average quantized in steps of ~1e-2): measured 0.3 % (random weights)
#: to 4.5 % (a small trained digits CNN) on FSDD clips. A wrong scale, zero point or axis moves
#: the logits by far more, which is what this check is for.
INT8_RTOL = 0.1
INT8_MIN, INT8_MAX = -128, 127
WEIGHT_MAX = 127  # symmetric int8 weights (bitsound.nn.quantizers.Int8Weight)


def _qdq_ops():
    """``torch.ops.quantized_decomposed``: PyTorch's Q/DQ ops, which the ONNX exporter writes as
    QuantizeLinear / DequantizeLinear."""
    try:
        import torch.ao.quantization.fx._decomposed  # noqa: F401  (registers the ops)
    except ImportError as err:  # pragma: no cover - present in every supported torch
        raise ExportError(f"int8 ONNX export needs torch's quantized_decomposed ops ({err}); "
                          f"use torch >= 2.1") from None
    return torch.ops.quantized_decomposed


def declared_bits(module: nn.Module) -> tuple[int | None, int | None]:
    """(weight bits, input bits) a layer declares; None where it declares nothing."""
    wb = getattr(module, "weight_bits", None)
    ib = getattr(module, "input_bits", None)
    return (int(wb) if isinstance(wb, int) else None, int(ib) if isinstance(ib, int) else None)


def model_precision(net: nn.Module) -> str:
    """The precision the network's non-binary layers are stored at: ``"int8"``, ``"fp16"`` or ``"float"``.

    ``"int8"`` when any layer declares 8-bit weights or inputs (other layers may be fp16 or float
    and export so), else ``"fp16"`` when any declares 16-bit weights, else ``"float"``. Binary
    layers (1 bit) do not count: they export as ±1 values at every precision.
    """
    bits = set()
    for m in net.modules():
        wb, ib = declared_bits(m)
        bits.update(b for b in (wb, ib) if b is not None)
        if wb is None and ib is None and isinstance(getattr(m, "bits", None), int) \
                and next(m.parameters(), None) is None:
            bits.add(int(m.bits))  # a stand-alone quantizer
    if 8 in bits:
        return "int8"
    return "fp16" if 16 in bits else "float"


def _geometry(layer: nn.Module, name: str) -> tuple[str, int, dict]:
    if isinstance(layer, _ConvNd):
        if layer.padding_mode != "zeros":
            raise ExportError(f"layer '{name}': padding_mode {layer.padding_mode!r} is not exported; "
                              f"quantized convolutions use zero padding")
        n = len(layer.kernel_size)
        return f"conv{n}d", n, {"stride": layer.stride, "padding": layer.padding,
                                "dilation": layer.dilation, "groups": layer.groups}
    if isinstance(layer, nn.Linear):
        return "linear", 0, {}
    raise ExportError(f"layer '{name}' ({type(layer).__name__}) declares quantized weights but is neither "
                      f"a convolution nor a linear layer; the ONNX exporter lowers only those")


def _apply(kind: str, x: torch.Tensor, w: torch.Tensor, bias, geometry: dict) -> torch.Tensor:
    if kind == "linear":
        return F.linear(x, w, bias)
    conv = {"conv1d": F.conv1d, "conv2d": F.conv2d, "conv3d": F.conv3d}[kind]
    return conv(x, w, bias, **geometry)


def activation_qparams(quantizer: nn.Module, *, name: str) -> tuple[float, int]:
    """(scale, zero point) of an int8 activation quantizer, checked on probe values.

    Raises
    ------
    ExportError
        The quantizer has no ``qparams()``, was never calibrated, or is not
        ``(clamp(round(x / scale) + zero, -128, 127) - zero) * scale`` on probes across its range.
    """
    if not hasattr(quantizer, "qparams"):
        raise ExportError(f"'{name}' declares 8 bits but has no qparams() (scale, zero point); the "
                          f"ONNX exporter lowers bitsound.nn.quantizers.Int8Activation-like quantizers")
    observed = getattr(quantizer, "observed", None)
    if observed is not None and int(observed) == 0:
        raise ExportError(f"'{name}' is an int8 input quantizer whose range was never observed (it "
                          f"passes values through until calibrated); calibrate the model first: "
                          f"bitsound compress --model DIR/model.pt --recipe int8-ptq")
    scale, zero = quantizer.qparams()
    scale, zero = float(torch.tensor(scale, dtype=torch.float32)), int(zero)
    if not scale > 0 or not INT8_MIN <= zero <= INT8_MAX:
        raise ExportError(f"'{name}': qparams() gave scale {scale} and zero point {zero}; ONNX needs a "
                          f"positive scale and an int8 zero point")
    lo, hi = (INT8_MIN - zero) * scale, (INT8_MAX - zero) * scale
    probe = torch.cat([torch.linspace(lo * 1.1 - scale, hi * 1.1 + scale, 1001),
                       torch.tensor([0.0, -0.0, scale / 2, -scale / 2, 1.5 * scale])])
    with torch.no_grad():
        got = quantizer(probe)
        s = torch.tensor(scale, dtype=torch.float32)
        want = (torch.clamp(torch.round(probe / s) + zero, INT8_MIN, INT8_MAX) - zero) * s
    if not torch.equal(got, want):
        worst = int((got - want).abs().argmax())
        raise ExportError(f"'{name}' declares 8 bits but is not per-tensor affine int8 quantization with "
                          f"its qparams() (scale {scale:g}, zero {zero}) at probe value "
                          f"{float(probe[worst]):g}: got {float(got[worst]):g}, QDQ gives "
                          f"{float(want[worst]):g}; the ONNX exporter cannot lower it")
    return scale, zero


class OnnxQdq(nn.Module):
    """QuantizeLinear + DequantizeLinear of a per-tensor int8 quantizer (scale, zero point).

    x : Tensor [shape=(...)] float32 -> Tensor [shape=(...)] float32 on the int8 grid.
    """

    def __init__(self, scale: float, zero: int):
        super().__init__()
        _qdq_ops()  # registered before the export starts: the exporter's op table is built then
        self.scale, self.zero = float(scale), int(zero)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qd = _qdq_ops()
        q = qd.quantize_per_tensor(x, self.scale, self.zero, INT8_MIN, INT8_MAX, torch.int8)
        return qd.dequantize_per_tensor(q, self.scale, self.zero, INT8_MIN, INT8_MAX, torch.int8)

    def extra_repr(self) -> str:
        return f"scale={self.scale:g}, zero={self.zero}"


class OnnxHalfRound(nn.Module):
    """A stand-alone fp16 quantizer: values rounded to half and back (Cast, Cast)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.half().float()


class OnnxInt8Layer(nn.Module):
    """Export twin of an int8 conv / linear layer: ``op(QDQ(x), DQ(q_w, s, axis=0)) + bias``.

    ``QDQ`` only for 8-bit inputs (``input_bits == 8``); float inputs (weight-only int8) pass
    unchanged. Shapes as the layer it replaces.
    """

    def __init__(self, layer: nn.Module, *, name: str):
        super().__init__()
        _qdq_ops()  # registered before the export starts: the exporter's op table is built then
        _, in_bits = declared_bits(layer)
        in_bits = 32 if in_bits is None else in_bits
        if in_bits not in (8, 32):
            raise ExportError(f"layer '{name}' has int8 weights and {in_bits}-bit inputs; the ONNX exporter "
                              f"lowers int8 weights with int8 or float inputs")
        if getattr(layer, "input_scale", False):
            raise ExportError(f"layer '{name}' uses an input scale map, which int8 layers do not have")
        if not hasattr(layer, "quantized_weight"):
            raise ExportError(f"layer '{name}' declares 8-bit weights but has no quantized_weight() "
                              f"(stored integers and scales); the ONNX exporter cannot lower it")
        self.kind, self.n_spatial, self.geometry = _geometry(layer, name)
        with torch.no_grad():
            values, scale = layer.quantized_weight()
        if scale is None or scale.numel() != values.shape[0]:
            raise ExportError(f"layer '{name}': int8 weights need one scale per output channel "
                              f"(or one for the tensor), got {None if scale is None else scale.numel()}")
        if not torch.equal(values, values.round()) or values.abs().max() > WEIGHT_MAX:
            raise ExportError(f"layer '{name}' declares 8-bit weights but its stored values are not "
                              f"integers in [-{WEIGHT_MAX}, {WEIGHT_MAX}]; the ONNX exporter cannot lower it")
        self.register_buffer("weight_q", values.to(torch.int8).clone())
        self.register_buffer("weight_scale", scale.detach().float().reshape(-1).clone())
        self.register_buffer("weight_zero", torch.zeros(values.shape[0], dtype=torch.int64))
        self.register_buffer("bias", None if layer.bias is None else layer.bias.detach().float().clone())
        if in_bits == 8:
            qparams = activation_qparams(layer.input_quantizer, name=f"{name}.input_quantizer")
            self.quantize = OnnxQdq(*qparams)
        else:
            from bitsound.export.onnx import _check_quantizer

            _check_quantizer(layer.input_quantizer, bits=32, name=f"{name}.input_quantizer")
            self.quantize = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qd = _qdq_ops()
        w = qd.dequantize_per_channel(self.weight_q, self.weight_scale, self.weight_zero, 0, -WEIGHT_MAX,
                                      WEIGHT_MAX, torch.int8)
        return _apply(self.kind, self.quantize(x), w, self.bias, self.geometry)


class OnnxFp16Layer(nn.Module):
    """Export twin of a layer with fp16-stored weights: ``op(x, float(W_half)) + bias``.

    ``store_half=False`` writes the (half-exact) weights as float32 instead (``precision="float"``
    of an fp16 model: a lossless widening). Shapes as the layer it replaces.
    """

    def __init__(self, layer: nn.Module, *, name: str, store_half: bool = True):
        super().__init__()
        _, in_bits = declared_bits(layer)
        if in_bits not in (None, 32):
            raise ExportError(f"layer '{name}' has fp16 weights and {in_bits}-bit inputs; the ONNX "
                              f"exporter lowers fp16 weights on float inputs")
        if hasattr(layer, "input_quantizer"):
            from bitsound.export.onnx import _check_quantizer

            _check_quantizer(layer.input_quantizer, bits=32, name=f"{name}.input_quantizer")
        self.kind, self.n_spatial, self.geometry = _geometry(layer, name)
        with torch.no_grad():
            if hasattr(layer, "quantized_weight"):
                values, scale = layer.quantized_weight()
                if scale is not None:
                    values = values * scale.reshape(-1, *([1] * (values.dim() - 1)))
            else:
                values = layer.weight.detach()
        half = values.half()
        if not torch.equal(half.float(), values.float()):
            raise ExportError(f"layer '{name}' declares 16-bit weights but they are not half-precision "
                              f"values; the ONNX exporter cannot lower it")
        self.register_buffer("weight", half.clone() if store_half else values.float().clone())
        self.register_buffer("bias", None if layer.bias is None else layer.bias.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _apply(self.kind, x, self.weight.float(), self.bias, self.geometry)


def keep_half_casts(node) -> bool | None:
    """``should_fold`` for onnxscript's optimizer: never fold the ``Cast`` of a FLOAT16 value
    (folding would store the fp16 weights as float32 again); default rules elsewhere."""
    from onnxscript import ir

    if node.op_type == "Cast" and node.inputs and node.inputs[0] is not None \
            and node.inputs[0].dtype == ir.DataType.FLOAT16:
        return False
    return None


__all__ = ["INT8_RTOL", "OnnxFp16Layer", "OnnxHalfRound", "OnnxInt8Layer", "OnnxQdq", "activation_qparams",
           "declared_bits", "keep_half_casts", "model_precision"]
