"""Quantizers: sign functions with straight-through gradient estimators, found by name.

Every quantizer is an ``nn.Module`` that declares its output precision in a ``bits`` attribute
(1 for the sign quantizers, 32 for the ``"none"`` passthrough); layers and the complexity report
read that attribute instead of hard-coding precision ("precision is data").

Value convention
----------------
The sign quantizers map ``x >= 0`` to ``+1`` and ``x < 0`` to ``-1``; in particular
``sign(0) = sign(-0.0) = +1``. A binary value is therefore always exactly ``+1`` or ``-1`` and
fits in one bit (the intended packing is ``+1 -> bit 0``, ``-1 -> bit 1``, so that a product
of two binary values is ``+1`` exactly when their bits are equal; the packed format defines it).
NaN stays NaN, so a diverging network is not hidden behind valid-looking ±1 values.

Gradients (straight-through estimators)
---------------------------------------
The forward pass is always the hard sign above; the variants differ only in the gradient used
in its place during backpropagation (``g`` is the incoming gradient):

- ``"ste_sign"``: ``g * 1[|x| <= 1]``, the hard-tanh derivative (BinaryNet, Courbariaux,
  Hubara et al. 2016);
- ``"approx_sign"``: ``g * (2 - 2|x|)`` for ``|x| < 1``, else 0 (Bi-Real Net, Liu et al. 2018);
- ``"identity_sign"``: ``g`` unchanged (McDonnell 2018's one-bit weights, seed 002);
- ``"none"``: no quantization, forward and backward are the identity (``bits = 32``).

At exactly ``|x| = 1`` the clipped STE passes the gradient (the interval is closed, as in
BinaryNet's ``1_{|r| <= 1}`` and larq's ``ste_sign``); the Bi-Real polynomial is ``0`` there, so
its boundary convention does not matter. At ``x = 0`` the gradients are ``1``, ``2`` and ``1``.

References
----------
- M. Courbariaux, I. Hubara, D. Soudry, R. El-Yaniv, Y. Bengio, "Binarized Neural Networks:
  Training Neural Networks with Weights and Activations Constrained to +1 or -1", 2016.
- Z. Liu, B. Wu, W. Luo, X. Yang, W. Liu, K.-T. Cheng, "Bi-Real Net: Enhancing the Performance
  of 1-bit CNNs with Improved Representational Capability and Advanced Training Algorithm",
  ECCV 2018.
- M. D. McDonnell, "Training wide residual networks for deployment using a single bit for each
  weight", ICLR 2018.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from bitsound.errors import ConfigError
from bitsound.registry import Registry

QUANTIZERS: Registry = Registry("quantizer")


def hard_sign(x: torch.Tensor) -> torch.Tensor:
    """Sign with ``sign(0) = +1``: every finite value becomes exactly ``+1`` or ``-1``.

    Parameters
    ----------
    x : Tensor [shape=(...)]

    Returns
    -------
    Tensor [shape=(...), same dtype as ``x``]
        ``+1`` where ``x >= 0`` (including ``-0.0``), ``-1`` where ``x < 0``, NaN where ``x`` is
        NaN. No gradient is defined; use a quantizer for training.
    """
    one = torch.ones_like(x)
    # x >= 0 is False for NaN, so NaN falls through to x itself
    return torch.where(x < 0, -one, torch.where(x >= 0, one, x))


def _surrogate_grad(kind: str, x: torch.Tensor) -> torch.Tensor:
    """d sign(x)/dx as each straight-through estimator defines it."""
    if kind == "ste":
        return (x.abs() <= 1).to(x.dtype)
    if kind == "approx":
        # Bi-Real: derivative of the piecewise quadratic 2x + x^2 sign(-x) on [-1, 1]
        return torch.clamp(2 - 2 * x.abs(), min=0)
    return torch.ones_like(x)


class _SignSTE(torch.autograd.Function):
    """Hard sign forward, ``_surrogate_grad(kind)`` backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, kind: str) -> torch.Tensor:
        ctx.kind = kind
        if kind != "identity":  # the identity estimator needs nothing saved
            ctx.save_for_backward(x)
        return hard_sign(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        if ctx.kind == "identity":
            return grad, None
        (x,) = ctx.saved_tensors
        return grad * _surrogate_grad(ctx.kind, x), None


def ste_sign(x: torch.Tensor) -> torch.Tensor:
    """Sign with the clipped straight-through estimator (BinaryNet, Courbariaux et al. 2016).

    x : Tensor [shape=(...)] -> Tensor [shape=(...)] of ±1; gradient ``1[|x| <= 1]``.
    """
    return _SignSTE.apply(x, "ste")


def approx_sign(x: torch.Tensor) -> torch.Tensor:
    """Sign with Bi-Real Net's piecewise-polynomial gradient (Liu et al. 2018).

    x : Tensor [shape=(...)] -> Tensor [shape=(...)] of ±1; gradient ``max(2 - 2|x|, 0)``.
    """
    return _SignSTE.apply(x, "approx")


def identity_sign(x: torch.Tensor) -> torch.Tensor:
    """Sign whose gradient passes unchanged (McDonnell 2018's 1-bit weights, seed 002).

    x : Tensor [shape=(...)] -> Tensor [shape=(...)] of ±1; gradient ``1``.
    """
    return _SignSTE.apply(x, "identity")


class _Quantizer(nn.Module):
    """Base class: a quantizer module declares its output precision in ``bits``.

    As a *weight* quantizer it is used through :meth:`quantize_weight`, which returns the values
    the layer computes with and an optional scale that multiplies the layer's *output*
    (``y = op(x, values) * scale + bias``): the integer or ±1 dot product times a scale is what the
    engine computes, so the float result is the same. ``n_scales(weight)`` is the number of float
    scales a deployed layer stores (read by the complexity report).
    """

    bits: int = 32
    name: str = ""

    def quantize_weight(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | float | None]:
        """(values [shape of w], scale: None, a float, or a tensor [shape=(out,)])."""
        return self(w), None

    def n_scales(self, w: torch.Tensor) -> int:
        return 0

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


@QUANTIZERS.register("ste_sign", description="sign, clipped STE gradient 1[|x|<=1] (BinaryNet)")
class SteSign(_Quantizer):
    """Module form of :func:`ste_sign`. x : Tensor [shape=(...)] -> ±1 [shape=(...)]."""

    bits = 1
    name = "ste_sign"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ste_sign(x)


@QUANTIZERS.register("approx_sign", description="sign, Bi-Real polynomial gradient 2-2|x| on |x|<1")
class ApproxSign(_Quantizer):
    """Module form of :func:`approx_sign`. x : Tensor [shape=(...)] -> ±1 [shape=(...)]."""

    bits = 1
    name = "approx_sign"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return approx_sign(x)


@QUANTIZERS.register("identity_sign", description="sign, gradient passed unchanged (McDonnell 1-bit weights)")
class IdentitySign(_Quantizer):
    """Module form of :func:`identity_sign`. x : Tensor [shape=(...)] -> ±1 [shape=(...)]."""

    bits = 1
    name = "identity_sign"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return identity_sign(x)


@QUANTIZERS.register("none", description="no quantization: float passthrough (32 bits)")
class NoQuantizer(_Quantizer):
    """Identity: keeps full precision. x : Tensor [shape=(...)] -> x."""

    bits = 32
    name = "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


_ESTIMATORS = {"ste": ste_sign, "approx": approx_sign, "identity": identity_sign}
_SCALES = ("mean_abs", "he", "none")


class ScaledSign(_Quantizer):
    """1-bit weights with a scale: ``values = sign(W)``, ``scale`` per output channel or constant.

    Parameters
    ----------
    estimator : {"ste", "approx", "identity"}
        The straight-through gradient of the sign (see the module docstring).
    scale : {"mean_abs", "he", "none"}
        ``"mean_abs"``: XNOR-Net's ``alpha[o] = mean(|W[o]|)`` over all axes but the output channel,
        kept in the autograd graph (the paper's weight gradient ``1/n + alpha * d sign/dW``), one
        float stored per output channel. ``"he"``: McDonnell's constant ``c = sqrt(2 / fan_in)``
        (seed 002, eq. 1; ``fan_in = W[0].numel()``, the He fan-in), which follows from the shape
        and stores nothing; as in the authors' code the latent weights receive the gradient of
        ``c sign(W)`` unscaled by ``c`` (the multiplier sits behind a stop-gradient).
        ``"none"``: plain ±1 weights (BinaryNet).

    W : Tensor [shape=(out, ...)] -> values ±1 [shape=(out, ...)], scale.
    """

    bits = 1

    def __init__(self, estimator: str = "ste", scale: str = "mean_abs"):
        super().__init__()
        if estimator not in _ESTIMATORS:
            raise ConfigError(f"sign estimator must be one of {sorted(_ESTIMATORS)}, got {estimator!r}")
        if scale not in _SCALES:
            raise ConfigError(f"weight scale must be one of {_SCALES}, got {scale!r}")
        self.estimator = estimator
        self.scale = scale

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        values, scale = self.quantize_weight(w)
        if scale is None:
            return values
        return values * (scale if isinstance(scale, float) else scale.view(-1, *([1] * (w.dim() - 1))))

    def quantize_weight(self, w: torch.Tensor):
        values = _ESTIMATORS[self.estimator](w)
        if self.scale == "mean_abs":
            return values, w.abs().mean(dim=tuple(range(1, w.dim())))
        if self.scale == "he":
            c = math.sqrt(2.0 / w[0].numel())
            # forward value sign(W); weight gradient / c, so that with the output * c the latent
            # weights get dL/d(c sign W) unscaled
            return values.detach() + (values - values.detach()) / c, c
        return values, None

    def n_scales(self, w: torch.Tensor) -> int:
        return w.shape[0] if self.scale == "mean_abs" else 0

    def extra_repr(self) -> str:
        return f"bits=1, estimator={self.estimator!r}, scale={self.scale!r}"


QUANTIZERS.add("xnor_sign", lambda: ScaledSign("ste", "mean_abs"),
               description="weights: sign, clipped STE, alpha = mean|W| per output channel (XNOR-Net)")
QUANTIZERS.add("mcdonnell_sign", lambda: ScaledSign("identity", "he"),
               description="weights: sign times the fixed sqrt(2/fan_in), identity gradient (seed 002)")


class _FakeQuantSTE(torch.autograd.Function):
    """round(x / s) + z clamped to [lo, hi], minus z; gradient 1 inside the range, 0 outside."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, lo: int, hi: int):
        q = torch.round(x / scale) + zero  # torch.round: half to even, as quantize_per_tensor
        inside = (q >= lo) & (q <= hi)
        ctx.save_for_backward(inside)
        return q.clamp(lo, hi) - zero

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        (inside,) = ctx.saved_tensors
        return grad * inside.to(grad.dtype), None, None, None, None


class Int8Weight(_Quantizer):
    """Symmetric int8 weights: ``values = clamp(round(W / s), -127, 127)`` (integers), ``scale = s``.

    ``per_channel=True``: one ``s[o] = max|W[o]| / 127`` per output channel (what PyTorch's
    per-channel weight observers give with a symmetric range); otherwise one for the tensor.
    Straight-through gradient inside the range. The scales are float32 values the deployed
    layer stores.
    """

    bits = 8

    def __init__(self, per_channel: bool = True):
        super().__init__()
        self.per_channel = bool(per_channel)

    def _scale(self, w: torch.Tensor) -> torch.Tensor:
        a = w.detach().abs()
        amax = a.amax(dim=tuple(range(1, w.dim()))) if self.per_channel else a.max()
        return torch.clamp(amax / 127.0, min=torch.finfo(torch.float32).tiny)

    def quantize_weight(self, w: torch.Tensor):
        s = self._scale(w)
        sv = s.view(-1, *([1] * (w.dim() - 1))) if self.per_channel else s
        return _FakeQuantSTE.apply(w, sv, torch.zeros((), dtype=w.dtype), -127, 127), s

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        values, s = self.quantize_weight(w)
        return values * (s.view(-1, *([1] * (w.dim() - 1))) if self.per_channel else s)

    def n_scales(self, w: torch.Tensor) -> int:
        return w.shape[0] if self.per_channel else 1

    def extra_repr(self) -> str:
        return f"bits=8, per_channel={self.per_channel}"


class Int8Activation(_Quantizer):
    """Per-tensor affine int8 fake quantization of activations, range observed while training.

    In training mode the running min/max (an exponential moving average, ``momentum``; the first
    batch sets them) are updated from each batch; in eval mode they are frozen. ``scale =
    (max - min) / 255``, ``zero = round(-128 - min / scale)`` (the range always contains 0), and
    ``y = (clamp(round(x / scale) + zero, -128, 127) - zero) * scale`` with a straight-through
    gradient inside the range. Before any batch was observed it passes values through.
    """

    bits = 8

    def __init__(self, momentum: float = 0.1):
        super().__init__()
        self.momentum = float(momentum)
        self.register_buffer("min_val", torch.tensor(0.0))
        self.register_buffer("max_val", torch.tensor(0.0))
        self.register_buffer("observed", torch.tensor(0, dtype=torch.int64))

    def qparams(self) -> tuple[float, int]:
        """(scale, zero point) of the observed range."""
        lo, hi = min(float(self.min_val), 0.0), max(float(self.max_val), 0.0)
        scale = max((hi - lo) / 255.0, 1e-8)
        zero = int(min(127, max(-128, round(-128 - lo / scale))))
        return float(torch.tensor(scale, dtype=torch.float32)), zero

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            with torch.no_grad():
                lo, hi = x.detach().min().float(), x.detach().max().float()
                if int(self.observed) == 0:
                    self.min_val.copy_(lo)
                    self.max_val.copy_(hi)
                else:
                    self.min_val.lerp_(lo, self.momentum)
                    self.max_val.lerp_(hi, self.momentum)
                self.observed += 1
        if int(self.observed) == 0:
            return x
        scale, zero = self.qparams()
        s = torch.tensor(scale, dtype=x.dtype, device=x.device)
        z = torch.tensor(float(zero), dtype=x.dtype, device=x.device)
        return _FakeQuantSTE.apply(x, s, z, -128, 127) * s

    def extra_repr(self) -> str:
        return f"bits=8, momentum={self.momentum}"


class Fp16(_Quantizer):
    """Values rounded to IEEE half precision and back (storage in fp16), identity gradient."""

    bits = 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + (x.half().to(x.dtype) - x).detach()


QUANTIZERS.add("int8_weight", lambda: Int8Weight(per_channel=True),
               description="weights: symmetric int8, one scale per output channel, STE")
QUANTIZERS.add("int8_weight_tensor", lambda: Int8Weight(per_channel=False),
               description="weights: symmetric int8, one scale per tensor, STE")
QUANTIZERS.add("int8", Int8Activation,
               description="activations: per-tensor affine int8, range observed in training, STE")
QUANTIZERS.add("fp16", Fp16, description="values rounded to IEEE half precision, identity gradient")


def get_quantizer(quantizer: str | nn.Module | None) -> nn.Module:
    """Resolve a quantizer given by name or as an object.

    Parameters
    ----------
    quantizer : str, nn.Module or None
        A registered name (``bitsound list quantizers``), a module that declares an integer
        ``bits`` attribute (returned as is), or None for ``"none"`` (no quantization).

    Returns
    -------
    nn.Module
        A quantizer module with a ``bits`` attribute.

    Raises
    ------
    RegistryError
        For an unknown name (the message lists the valid names).
    ConfigError
        For an object that is neither a name nor a module with an integer ``bits`` attribute.
    """
    if quantizer is None:
        return NoQuantizer()
    if isinstance(quantizer, str):
        return QUANTIZERS.get(quantizer)()
    if isinstance(quantizer, nn.Module) and isinstance(getattr(quantizer, "bits", None), int):
        return quantizer
    valid = ", ".join(QUANTIZERS)
    raise ConfigError(f"quantizer must be a registered name or an nn.Module with an integer `bits` "
                      f"attribute, got {quantizer!r}; valid names: {valid}")
