"""int8 and fp16 networks from float ones: batch-norm folding, conversion, calibration, engine parity.

Static int8 quantization here is the quantizer registry's fake quantization, which the graph
lowers to the engine's integer ops (:func:`bitsound.graph.lowerings._lower_int8`):

- weights: symmetric int8 per output channel, ``q = clamp(round(W / s), -127, 127)``,
  ``s[o] = max|W[o]| / 127`` (``int8_weight``);
- activations: per-tensor affine int8 at the input of every quantized layer,
  ``q = clamp(round(x / scale) + zero, -128, 127)`` (``int8``), with the range calibrated on
  training clips (post-training, :func:`calibrate`) or tracked while fine-tuning
  (quantization-aware training: the same layers in training mode, straight-through gradients);
- the layer computes ``acc = sum (q_x - zero) * q_w`` exactly in int32 and outputs
  ``acc * scale * s[o] + bias`` in float, which the next layer quantizes again.

The PyTorch model after :func:`quantize_int8` *is* the quantized reference: its forward computes
the same integers (``torch.round`` rounds half to even, as the engine's ``nearbyintf``) and the
same float products. :func:`int8_agreement` compares the engine's int8 tensors with the codes
PyTorch computes at the same points, two ways. Layer by layer (PyTorch's int8 layers fed the
engine's own codes): equal, except where ``x / scale`` lies within float32 rounding of a
half-integer (the engine sums in a different order, so its float inputs to a quantize op differ
from PyTorch's in the last bits); such a code is one step away. End to end (each side on its own
codes): such a one-step tie then travels on, and a deep network with high-gain layers can turn it
into codes several steps apart further down (BC-ResNet-ASC-8 with 30 quantize points: up to 39
steps on 0.26 % of the codes, while layer by layer all but 63 of 85 million codes were equal,
those one step apart).

Batch-norm after a float convolution or dense layer is folded into it first
(:func:`fold_batchnorm`), as TFLite and PyTorch's ``fuse_modules`` do, so per-channel weight
scales cover the normalised filters and the deployed network has no separate normalisation.

fp16 (:func:`to_fp16`): weights rounded to IEEE half (stored as f16 in the ``.bsnn``, 2 bytes
each in the complexity report), computed in float32, as the engine computes them. Biases stay
float32 in the engine and are counted so.

References
----------
- B. Jacob et al., "Quantization and Training of Neural Networks for Efficient
  Integer-Arithmetic-Only Inference", CVPR 2018.
- R. Krishnamoorthi, "Quantizing deep convolutional networks for efficient inference: A
  whitepaper", 2018 (per-channel symmetric weights, per-tensor affine activations, BN folding).
- Seed 001 (8-bit post-training quantization of Micro-ACDNet), seed 003 (QAT: 8-bit convs,
  16-bit rest), seed 004 (fp16).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils import prune as torch_prune

from bitsound.compress.prune import select_layers
from bitsound.errors import ConfigError
from bitsound.nn.layers import QuantConv1d, QuantConv2d, QuantLinear, _QuantMixin
from bitsound.nn.quantizers import Fp16, Int8Activation, Int8Weight

log = logging.getLogger("bitsound.compress")

CALIBRATIONS = ("minmax", "percentile")


# ---------------------------------------------------------------------------------------------
# batch-norm folding
# ---------------------------------------------------------------------------------------------
class _ChildTracer(fx.Tracer):
    """Every submodule but a plain Sequential is a leaf (as the graph lowering traces)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return not isinstance(m, nn.Sequential)


def _is_float_layer(m: nn.Module) -> bool:
    return getattr(m, "weight_bits", 32) == 32 and getattr(m, "input_bits", 32) == 32


def _foldable(layer: nn.Module, bn: nn.Module) -> bool:
    return (isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Linear)) and isinstance(bn, _BatchNorm)
            and _is_float_layer(layer) and bn.running_var is not None
            and layer.weight.shape[0] == bn.num_features)


def fold_batchnorm(net: nn.Module) -> list[str]:
    """Fold every batch-norm whose input is a float conv/linear layer used only by it.

    ``W' = W * g``, ``b' = (b - mean) * g + beta`` with ``g = gamma / sqrt(var + eps)``; the
    batch-norm becomes ``nn.Identity`` (the network's outputs are unchanged up to float
    rounding). Each module's forward is traced on its own (torch.fx, its children as leaves);
    a module whose forward cannot be traced keeps the pairs it wires itself, its children are
    still searched. Binary layers are left alone (their ±1 weights cannot absorb a scale; the
    graph folds their batch-norms into sign thresholds instead). Returns the folded batch-norms.
    """
    folded: list[str] = []

    def visit(module: nn.Module, prefix: str) -> None:
        if type(module).__module__.startswith("torch.nn") and not isinstance(module, nn.Sequential):
            return
        if isinstance(module, _QuantMixin):
            return
        try:
            graph = _ChildTracer().trace(module)
        except Exception:  # noqa: BLE001 - control flow on tensors: no pairs from this forward
            graph = None
        if graph is not None:
            calls: dict[str, int] = {}
            for node in graph.nodes:
                if node.op == "call_module":
                    calls[node.target] = calls.get(node.target, 0) + 1
            for node in graph.nodes:
                src = node.args[0] if node.op == "call_module" and node.args else None
                if not isinstance(src, fx.Node) or src.op != "call_module" or len(src.users) != 1:
                    continue
                layer, bn = module.get_submodule(src.target), module.get_submodule(node.target)
                if not _foldable(layer, bn) or calls[src.target] != 1 or calls[node.target] != 1:
                    continue
                _fold_into(layer, bn)
                module.set_submodule(node.target, nn.Identity())
                folded.append(f"{prefix}.{node.target}" if prefix else node.target)
        descend(module, prefix)

    def descend(module: nn.Module, prefix: str) -> None:
        for name, child in module.named_children():
            path = f"{prefix}.{name}" if prefix else name
            if isinstance(child, nn.Sequential):  # inlined in the graph above: look inside only
                descend(child, path)
            else:
                visit(child, path)

    visit(net, "")
    return folded


def _latent_weight(layer: nn.Module) -> torch.Tensor:
    """The weight parameter itself: ``weight_orig`` while a pruning mask is in force."""
    return getattr(layer, "weight_orig", layer.weight)


@torch.no_grad()
def _fold_into(layer: nn.Module, bn: _BatchNorm) -> None:
    g = torch.rsqrt(bn.running_var.double() + bn.eps)
    if bn.weight is not None:
        g = g * bn.weight.double()
    beta = bn.bias.double() if bn.bias is not None else 0.0
    w = _latent_weight(layer)  # a per-channel scale keeps masked zeros at zero
    b = (layer.bias.double() if layer.bias is not None
         else torch.zeros(w.shape[0], dtype=torch.float64, device=w.device))
    w.copy_((w.double() * g.view(-1, *([1] * (w.dim() - 1)))).to(w.dtype))
    new_bias = ((b - bn.running_mean.double()) * g + beta).to(w.dtype)
    if layer.bias is None:
        layer.bias = nn.Parameter(new_bias)
    else:
        layer.bias.copy_(new_bias)


# ---------------------------------------------------------------------------------------------
# conversion
# ---------------------------------------------------------------------------------------------
_QUANT_CLASS = {nn.Conv1d: QuantConv1d, nn.Conv2d: QuantConv2d, nn.Linear: QuantLinear}


def _converted(m: nn.Module, input_quantizer: nn.Module, weight_quantizer: nn.Module) -> nn.Module:
    cls = _QUANT_CLASS[type(m)]
    if cls is QuantLinear:
        new = QuantLinear(m.in_features, m.out_features, bias=m.bias is not None,
                          input_quantizer=input_quantizer, weight_quantizer=weight_quantizer)
    else:
        new = cls(m.in_channels, m.out_channels, m.kernel_size, stride=m.stride, padding=m.padding,
                  dilation=m.dilation, groups=m.groups, bias=m.bias is not None,
                  padding_mode=m.padding_mode, input_quantizer=input_quantizer,
                  weight_quantizer=weight_quantizer)
    new.to(device=m.weight.device, dtype=m.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(_latent_weight(m))
        if m.bias is not None:
            new.bias.copy_(m.bias)
    mask = getattr(m, "weight_mask", None)
    if mask is not None:  # an unstructured pruning mask stays in force (seed 003: prune, then QAT)
        torch_prune.custom_from_mask(new, "weight", mask.clone())
    new.train(m.training)
    return new


def _convert(net: nn.Module, which: str, exclude: Iterable[str], make) -> list[str]:
    """Give every float layer of ``which`` the quantizers ``make()`` returns; names converted."""
    skip = set(exclude)
    done = []
    for name, m in select_layers(net, which):
        if name in skip or not _is_float_layer(m):
            continue
        inq, wq = make()
        if isinstance(m, _QuantMixin):  # a float-configured quantized layer: swap its quantizers
            m.input_quantizer, m.weight_quantizer = inq, wq
        elif type(m) in _QUANT_CLASS:
            net.set_submodule(name, _converted(m, inq, wq))
        else:
            raise ConfigError(f"layer '{name}' is a {type(m).__name__}, a subclass of a torch layer "
                              f"the converter does not know; exclude it or convert it by hand")
        done.append(name)
    return done


def quantize_int8(net: nn.Module, *, layers: str = "all", activations: str = "int8",
                  per_channel: bool = True, exclude: Iterable[str] = ()) -> list[str]:
    """Make the float conv/linear layers of ``net`` int8 layers (in place); returns their names.

    Parameters
    ----------
    layers : {"all", "conv", "linear"}
    activations : {"int8", "float"}
        ``"int8"``: inputs quantized too (the engine runs integer convolutions; calibrate
        before use); ``"float"``: int8 weights only (computed as float on dequantized values).
    per_channel : bool
        One weight scale per output channel (else one per tensor).
    exclude : layer names kept float.
    """
    if activations not in ("int8", "float"):
        raise ConfigError(f"activations must be 'int8' or 'float', got {activations!r}")
    def make():
        inq = Int8Activation() if activations == "int8" else _none()
        return inq, Int8Weight(per_channel=per_channel)

    return _convert(net, layers, exclude, make)


def _none() -> nn.Module:
    from bitsound.nn.quantizers import NoQuantizer

    return NoQuantizer()


def to_fp16(net: nn.Module, *, layers: str = "all", exclude: Iterable[str] = ()) -> list[str]:
    """Store the float conv/linear weights of ``net`` in half precision (in place).

    The latent weights are rounded to half values too, so the saved model holds exactly what is
    deployed. Layers already at lower precision (int8, binary) are left as they are.
    """
    done = _convert(net, layers, exclude, lambda: (_none(), Fp16()))
    modules = dict(net.named_modules())
    with torch.no_grad():
        for name in done:
            w = _latent_weight(modules[name])
            w.copy_(w.half().to(w.dtype))
    return done


# ---------------------------------------------------------------------------------------------
# calibration
# ---------------------------------------------------------------------------------------------
def activation_quantizers(net: nn.Module) -> list[tuple[str, Int8Activation]]:
    return [(n, m) for n, m in net.named_modules() if isinstance(m, Int8Activation)]


@torch.no_grad()
def calibrate(net: nn.Module, batches: Iterable[torch.Tensor], *, method: str = "minmax",
              percentile: float = 99.99, samples_per_batch: int = 65536, seed: int = 0) -> dict:
    """Set each int8 activation range from ``batches`` of training features (post-training).

    The network runs in eval mode with every activation quantizer passing values through (as
    in float), so each range is that of the float network's activations. ``"minmax"``: the
    observed minimum and maximum; ``"percentile"``: the ``100 - percentile`` and
    ``percentile`` percentiles of a random sample of values (ignores rare outliers that would
    waste codes). Returns ``{quantizer name: (low, high)}``.
    """
    if method not in CALIBRATIONS:
        raise ConfigError(f"calibration must be one of {CALIBRATIONS}, got {method!r}")
    if not 50 < percentile <= 100:
        raise ConfigError(f"calibration percentile must be in (50, 100], got {percentile}")
    quantizers = activation_quantizers(net)
    if not quantizers:
        return {}
    rng = torch.Generator().manual_seed(seed)
    stats: dict[str, dict] = {name: {"lo": np.inf, "hi": -np.inf, "sample": []} for name, _ in quantizers}

    def observe(name):
        def hook(module, inputs):
            x = inputs[0].detach().float().flatten()
            s = stats[name]
            s["lo"], s["hi"] = min(s["lo"], float(x.min())), max(s["hi"], float(x.max()))
            if method == "percentile":
                idx = torch.randint(len(x), (min(len(x), samples_per_batch),), generator=rng)
                s["sample"].append(x.cpu()[idx])
        return hook

    for _, q in quantizers:
        q.observed.zero_()  # pass values through while observing
    hooks = [q.register_forward_pre_hook(observe(name)) for name, q in quantizers]
    was = net.training
    net.eval()
    n = 0
    try:
        for x in batches:
            net(x)
            n += 1
    finally:
        for h in hooks:
            h.remove()
        net.train(was)
    if n == 0:
        raise ConfigError("calibration got no batches of training features")
    ranges = {}
    for name, q in quantizers:
        s = stats[name]
        if not np.isfinite(s["lo"]):
            raise ConfigError(f"int8 layer input '{name}' was never reached while calibrating")
        lo, hi = s["lo"], s["hi"]
        if method == "percentile":
            values = torch.cat(s["sample"]).double().numpy()
            lo, hi = np.percentile(values, [100 - percentile, percentile])
        q.min_val.fill_(float(lo))
        q.max_val.fill_(float(hi))
        q.observed.fill_(1)
        ranges[name] = (float(lo), float(hi))
    return ranges


# ---------------------------------------------------------------------------------------------
# engine against the PyTorch reference
# ---------------------------------------------------------------------------------------------
@dataclass
class Int8Agreement:
    """The engine's int8 tensors and logits against PyTorch's quantized reference.

    ``codes``: int8 values compared (every quantize point of every example); ``equal``: how
    many are identical; ``max_step``: the largest difference in codes; ``logit_max_abs`` /
    ``logit_max_rel``: the largest difference of the logits (absolute, and relative to the
    largest logit magnitude of the example); ``labels_equal``: examples with the same label.
    All end to end; ``layer_equal`` / ``layer_max_step``: the same codes when every PyTorch
    int8 layer is fed the engine's codes of its input, so that one layer's tie cannot travel on.
    """

    examples: int
    codes: int
    equal: int
    max_step: int
    logit_max_abs: float
    logit_max_rel: float
    labels_equal: int
    layer_equal: int
    layer_max_step: int

    @property
    def equal_fraction(self) -> float:
        return self.equal / self.codes if self.codes else 1.0


@torch.no_grad()
def int8_codes(net: nn.Module, x: torch.Tensor, feed: dict[str, torch.Tensor] | None = None
               ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """PyTorch's int8 codes at the input of every int8 layer, and the logits.

    Returns ``({layer name: codes [shape=(batch, ...)] int}, logits [shape=(batch, n)])`` with
    ``codes = clamp(round(x / scale) + zero, -128, 127)``, the values the engine's quantize op
    stores for that layer, computed in the input's dtype as the layer's forward computes them
    (float32: a float64 division would round some ``x / scale`` near a half-integer the other
    way than the layer does). ``feed``: ``{layer name: codes}`` that the named layers compute
    with instead of their own (their own codes are still returned).
    """
    codes: dict[str, torch.Tensor] = {}
    layers = {m.input_quantizer: n for n, m in net.named_modules()
              if isinstance(m, _QuantMixin) and isinstance(m.input_quantizer, Int8Activation)}

    def hook(q, inputs, output):
        scale, zero = q.qparams()
        x = inputs[0]
        s = torch.tensor(scale, dtype=x.dtype, device=x.device)
        name = layers[q]
        codes[name] = (torch.round(x / s) + zero).clamp(-128, 127).to(torch.int64)
        if feed is not None and name in feed:
            return (feed[name].to(x.dtype) - zero) * s
        return output

    hooks = [q.register_forward_hook(hook) for q in layers]
    was = net.training
    net.eval()
    try:
        logits = net(x)
    finally:
        for h in hooks:
            h.remove()
        net.train(was)
    return codes, logits


def int8_agreement(net: nn.Module, engine, features: torch.Tensor) -> Int8Agreement:
    """Compare the engine (a loaded ``.bsnn`` of ``net``) with ``net`` on ``features``
    [shape=(n, *feature_shape)], one example at a time, at every quantize op and at the logits."""
    n_codes = n_equal = max_step = labels_equal = layer_equal = layer_max_step = 0
    worst_abs = worst_rel = 0.0
    for i in range(len(features)):
        x = features[i:i + 1].float()
        codes, logits = int8_codes(net, x)
        engine_codes = _engine_codes(engine, x[0], codes)
        fed, _ = int8_codes(net, x, feed={k: torch.from_numpy(_from_hwc(v, codes[k].dim() - 1))[None]
                                          for k, v in engine_codes.items()})
        for layer, got in engine_codes.items():
            diff = np.abs(got - _to_hwc(codes[layer][0]))
            n_codes += diff.size
            n_equal += int((diff == 0).sum())
            max_step = max(max_step, int(diff.max()))
            diff = np.abs(got - _to_hwc(fed[layer][0]))
            layer_equal += int((diff == 0).sum())
            layer_max_step = max(layer_max_step, int(diff.max()))
        got_logits = engine.predict(x.numpy())[0].astype(np.float64)
        want_logits = logits[0].double().numpy()
        d = float(np.abs(got_logits - want_logits).max())
        worst_abs = max(worst_abs, d)
        worst_rel = max(worst_rel, d / max(float(np.abs(want_logits).max()), 1e-12))
        labels_equal += int(got_logits.argmax() == want_logits.argmax())
    return Int8Agreement(len(features), n_codes, n_equal, max_step, worst_abs, worst_rel, labels_equal,
                         layer_equal, layer_max_step)


def _engine_codes(engine, x: torch.Tensor, codes: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """The engine's int8 tensor [h, w, c] at the input of each int8 layer of ``codes`` for one
    example ``x``, checked against PyTorch's layers (same names, same shapes)."""
    found: dict[str, np.ndarray] = {}
    for info, out in engine.trace(x.numpy()):
        if info.type != "quantize" or not info.name.endswith(".quantize"):
            continue
        layer = info.name[: -len(".quantize")]
        if layer not in codes:
            raise ConfigError(f"the engine quantizes at '{layer}', which has no int8 input in the "
                              f"PyTorch model; export the same network")
        want = _to_hwc(codes[layer][0]).shape
        if out.shape != want:
            raise ConfigError(f"int8 tensor at '{layer}': engine {out.shape}, PyTorch {want}")
        found[layer] = out.astype(np.int64)
    missing = set(codes) - set(found)
    if missing:
        raise ConfigError(f"the engine has no quantize op for the int8 layers {sorted(missing)}")
    return found


def _to_hwc(t: torch.Tensor) -> np.ndarray:
    """One example's tensor (c, h, w) / (c, t) / (f,) as the engine's [h, w, c]."""
    a = t.numpy()
    if a.ndim == 3:
        return a.transpose(1, 2, 0)
    if a.ndim == 2:
        return a.T[None]
    return a[None, None]


def _from_hwc(a: np.ndarray, ndim: int) -> np.ndarray:
    """The inverse of :func:`_to_hwc` for a tensor of ``ndim`` dimensions."""
    if ndim == 3:
        return a.transpose(2, 0, 1)
    if ndim == 2:
        return a[0].T
    return a[0, 0]


__all__ = ["CALIBRATIONS", "Int8Agreement", "activation_quantizers", "calibrate", "fold_batchnorm",
           "int8_agreement", "int8_codes", "quantize_int8", "to_fp16"]
