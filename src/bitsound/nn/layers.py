"""Composable quantized layers, and the XNOR-Net, BinaryNet and 1-bit-per-weight configurations.

:class:`QuantConv1d`, :class:`QuantConv2d` and :class:`QuantLinear` (larq's
``QuantConv2D(input_quantizer, kernel_quantizer)``) subclass the matching ``torch.nn`` layer (so
shapes, ``state_dict`` keys and initialisation are PyTorch's) and keep the float weights as the
*latent* weights that the optimizer updates. The forward pass is, for every configuration,

    ``y = op(input_quantizer(x), values) * scale [* K] + bias``

with ``values, scale = weight_quantizer.quantize_weight(W)`` (:mod:`bitsound.nn.quantizers`:
signs with straight-through gradients, XNOR-Net's and McDonnell's scaled signs, int8 fake-quant
per tensor or per channel, fp16). Nothing branches on a mode: precision is the quantizers' data.

:class:`BinaryConv1d`, :class:`BinaryConv2d` and :class:`BinaryLinear` are the three binary
methods as configurations of those layers; ``mode`` picks the pair of quantizers:

``"xnor"`` -- XNOR-Net (Rastegari et al. 2016)
    ``y = (sign(x) * sign(W)) . alpha [. K] + b``. Inputs and weights are binarized;
    ``alpha[o] = mean(|W[o]|)`` over all axes but the output channel (one float per output
    channel, stored at 32 bits). ``alpha`` stays in the autograd graph, which gives the paper's
    weight gradient ``dC/dW~ (1/n + alpha * d sign/dW)`` (with the subgradient 0 of ``|W|`` at an
    exact zero weight). The optional input scale ``K`` (``input_scale=True``; off by
    default, as most later work drops it in favour of batch-norm) is the paper's
    ``K = A * k``: ``A`` is the mean of ``|x|`` over the input channels, ``k`` a box filter of
    the kernel's size with entries ``1 / prod(kernel_size)``, applied with the layer's stride,
    padding and dilation (padded positions count as 0). For :class:`BinaryLinear`, ``K`` is the
    mean of ``|x|`` over the features of each row. ``K`` is computed from the input at run time
    and stores nothing.
``"binarynet"`` -- BinaryNet (Courbariaux, Hubara et al. 2016)
    ``y = sign(x) * sign(W) + b``: no scales; outputs (before the bias) are integers.
``"onebit"`` -- one bit per weight (McDonnell 2018, seed 002 section 2.1)
    ``y = x * (c . sign(W)) + b`` with full-precision inputs and the constant
    ``c = sqrt(2 / fan_in)``, ``fan_in = in_channels / groups * prod(kernel_size)``: the paper's
    ``sqrt(2 / (F^2 C))`` for an ``F x F`` kernel, read as the He fan-in so that a conv1d of
    width ``F`` uses ``F * C`` and a linear layer ``in_features``. ``c`` depends only on the
    shape, so it is not a stored parameter (``n_scale_params = 0``, as the seed says). As in the
    authors' code, the latent weights receive the gradient of ``c . sign(W)`` *unscaled* by
    ``c`` (the multiplier sits behind a stop-gradient), while inputs receive the exact gradient.

The scales multiply the *output* of the ±1 convolution (``alpha . (sign(x) * sign(W))``, not
``sign(x) * (alpha . sign(W))``) so that the float result is the integer dot product times the
scale, which is exactly what a bit-packed engine computes.

Sign convention: ``sign(0) = +1`` (see :mod:`bitsound.nn.quantizers`), so every binary value is
``+1`` or ``-1``.

Padding semantics (the contract the bit-packed engine reproduces)
-----------------------------------------------------------------
Zero padding is applied **after** binarizing the input: a padded position holds ``0``, not
``sign(0) = +1``, and contributes exactly ``0`` to the dot product. With ``n_valid`` the number
of (input channel, kernel tap) pairs that fall inside the input, every binary output is

    ``dot = n_valid - 2 * popcount((x_bits xor w_bits) & valid_mask)``

(``+1 -> bit 0``, ``-1 -> bit 1``), so ``dot`` has the parity of ``n_valid`` and
``|dot| <= n_valid``; in the interior ``n_valid = in_channels / groups * prod(kernel_size)``.
Only ``padding_mode="zeros"`` is accepted; string paddings (``"same"``, ``"valid"``) follow
PyTorch (for an even kernel "same" puts the extra zero on the right/bottom). The XNOR input scale
``K`` uses the same zero padding on ``|x|``.

First and last layers usually stay full precision; that is the model's choice. The factories
:func:`make_conv1d`, :func:`make_conv2d` and :func:`make_linear` take ``mode="float"`` for a plain
PyTorch layer, so a model can pick the precision of each layer from its configuration.

Precision is data: each layer declares ``weight_bits`` (1), ``input_bits`` (1 for xnor and
binarynet, 32 for onebit) and ``n_scale_params`` (float scales it must store: ``out_channels``
for xnor, 0 for binarynet and onebit), which :func:`bitsound.complexity.complexity_report` reads.

References
----------
- M. Rastegari, V. Ordonez, J. Redmon, A. Farhadi, "XNOR-Net: ImageNet Classification Using
  Binary Convolutional Neural Networks", ECCV 2016.
- M. Courbariaux, I. Hubara, D. Soudry, R. El-Yaniv, Y. Bengio, "Binarized Neural Networks:
  Training Neural Networks with Weights and Activations Constrained to +1 or -1", 2016.
- M. D. McDonnell, "Training wide residual networks for deployment using a single bit for each
  weight", ICLR 2018; seed 002 (DCASE2020 task 1b technical report), eq. (1).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from bitsound.errors import ConfigError
from bitsound.nn.quantizers import ScaledSign, get_quantizer, hard_sign

BINARY_MODES = ("xnor", "binarynet", "onebit")

# mode -> (default input quantizer, weight scale of the ScaledSign weight quantizer)
_MODE_CONFIG = {
    "xnor": ("ste_sign", "mean_abs"),
    "binarynet": ("ste_sign", "none"),
    "onebit": ("none", "he"),
}
_DEFAULT_ESTIMATOR = {"xnor": "ste", "binarynet": "ste", "onebit": "identity"}
# the sign quantizers a binary layer's ``weight_quantizer`` may name: their estimator
_SIGN_ESTIMATORS = {"ste_sign": "ste", "approx_sign": "approx", "identity_sign": "identity"}


def _quantize_weight(q: nn.Module, w: torch.Tensor):
    fn = getattr(q, "quantize_weight", None)
    return fn(w) if fn is not None else (q(w), None)


class _QuantMixin:
    """Shared quantized forward; mixed into a ``torch.nn`` conv or linear layer.

    The host class provides ``weight``, ``bias``, ``_raw(x, w)`` (the op without bias) and
    ``_n_spatial`` (number of spatial axes of the output: 0, 1 or 2).
    """

    _n_spatial: int = 0

    def _init_quant(self, *, input_quantizer, weight_quantizer, input_scale: bool) -> None:
        self.input_quantizer = get_quantizer(input_quantizer)
        self.weight_quantizer = get_quantizer(weight_quantizer)
        xnor_weights = getattr(self.weight_quantizer, "scale", None) == "mean_abs"
        if input_scale and (self.input_bits != 1 or not xnor_weights):
            raise ConfigError(f"input_scale=True is XNOR-Net's K and needs binary inputs and XNOR-scaled "
                              f"weights (mode='xnor'), got {self.input_bits}-bit inputs and "
                              f"{self.weight_quantizer!r}")
        self.input_scale = bool(input_scale)

    # -- precision declared as data -------------------------------------------------------------
    @property
    def weight_bits(self) -> int:
        """Bits per stored weight."""
        return self.weight_quantizer.bits

    @property
    def input_bits(self) -> int:
        """Bits per input activation: 1 for signs, 8 for int8, 32 for float inputs."""
        return self.input_quantizer.bits

    @property
    def n_scale_params(self) -> int:
        """Float scales the deployed layer stores (32 bits each), e.g. XNOR-Net's alpha."""
        fn = getattr(self.weight_quantizer, "n_scales", None)
        return int(fn(self.weight)) if fn is not None else 0

    @property
    def fan_in(self) -> int:
        """Inputs per output: ``in_channels / groups * prod(kernel_size)`` or ``in_features``."""
        return self.weight[0].numel()

    # -- exported values --------------------------------------------------------------------------
    def quantized_weight(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(values [shape of weight], scale [shape=(out,)] or None), no gradient: what is stored."""
        with torch.no_grad():
            values, scale = _quantize_weight(self.weight_quantizer, self.weight)
            if isinstance(scale, (int, float)):
                scale = torch.full((self.weight.shape[0],), float(scale), dtype=self.weight.dtype)
            elif scale is not None and scale.dim() == 0:
                scale = scale.expand(self.weight.shape[0])
            return values.detach(), None if scale is None else scale.detach()

    def binary_weight(self) -> torch.Tensor:
        """The stored 1-bit weights: ``sign(W)`` in {-1, +1}, shape of ``weight``, no gradient."""
        return hard_sign(self.weight.detach())

    def weight_scale(self) -> torch.Tensor | None:
        """The weight scale: per output channel or a 0-d constant; None without one."""
        with torch.no_grad():
            _, scale = _quantize_weight(self.weight_quantizer, self.weight)
            if isinstance(scale, (int, float)):
                return torch.tensor(float(scale), dtype=self.weight.dtype, device=self.weight.device)
            return None if scale is None else scale.detach()

    def _per_channel(self, t: torch.Tensor) -> torch.Tensor:
        # (out,) -> broadcastable against (..., out, *spatial), batched or not
        return t.view(-1, *([1] * self._n_spatial))

    def _input_scale_map(self, x: torch.Tensor) -> torch.Tensor:
        """XNOR-Net's K for convolutions: mean |x| over channels, box-filtered like the conv."""
        a = x.abs().mean(dim=-(self._n_spatial + 1), keepdim=True)  # (batch, 1, *spatial)
        box = torch.full((1, 1, *self.kernel_size), 1.0 / math.prod(self.kernel_size),
                         dtype=x.dtype, device=x.device)
        return self._conv(a, box, None, self.stride, self.padding, self.dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xq = self.input_quantizer(x)
        values, scale = _quantize_weight(self.weight_quantizer, self.weight)
        # zero padding inside the op acts on the already-quantized input: padded taps add 0
        y = self._raw(xq, values)
        if scale is not None:
            constant = isinstance(scale, (int, float)) or scale.dim() == 0
            y = y * (scale if constant else self._per_channel(scale))
        if self.input_scale:
            y = y * self._input_scale_map(x)
        if self.bias is not None:
            y = y + self._per_channel(self.bias)
        return y

    def extra_repr(self) -> str:
        # the quantizers print themselves as child modules
        return super().extra_repr() + (", input_scale=True" if self.input_scale else "")


def _check_padding_mode(padding_mode: str) -> None:
    if padding_mode != "zeros":
        raise ConfigError(f"quantized convolutions support padding_mode='zeros' only (a padded position "
                          f"contributes 0 to the quantized dot product), got {padding_mode!r}")


class QuantConv1d(_QuantMixin, nn.Conv1d):
    """1-D convolution with an input and a weight quantizer (see the module docstring).

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size : int or tuple of int
    input_quantizer, weight_quantizer : str or nn.Module, optional
        Registered names (``bitsound list quantizers``) or modules; None is no quantization.
    input_scale : bool
        XNOR-Net's input scale ``K`` (binary inputs with XNOR-scaled weights only).
    stride, padding, dilation, groups, bias, device, dtype
        As :class:`torch.nn.Conv1d` (``padding_mode`` must stay ``"zeros"``).

    Shapes: x : Tensor [shape=(batch, in_channels, time)] -> [shape=(batch, out_channels, time')].
    """

    _n_spatial = 1
    _conv = staticmethod(F.conv1d)

    def __init__(self, in_channels: int, out_channels: int, kernel_size, *, input_quantizer=None,
                 weight_quantizer=None, input_scale: bool = False, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", device=None, dtype=None):
        _check_padding_mode(padding_mode)
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                         dilation=dilation, groups=groups, bias=bias, device=device, dtype=dtype)
        self._init_quant(input_quantizer=input_quantizer, weight_quantizer=weight_quantizer,
                         input_scale=input_scale)

    def _raw(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.conv1d(x, w, None, self.stride, self.padding, self.dilation, self.groups)


class QuantConv2d(_QuantMixin, nn.Conv2d):
    """2-D convolution with an input and a weight quantizer (see :class:`QuantConv1d`).

    Shapes: x : Tensor [shape=(batch, in_channels, freq, time)]
    -> [shape=(batch, out_channels, freq', time')].
    """

    _n_spatial = 2
    _conv = staticmethod(F.conv2d)

    def __init__(self, in_channels: int, out_channels: int, kernel_size, *, input_quantizer=None,
                 weight_quantizer=None, input_scale: bool = False, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", device=None, dtype=None):
        _check_padding_mode(padding_mode)
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                         dilation=dilation, groups=groups, bias=bias, device=device, dtype=dtype)
        self._init_quant(input_quantizer=input_quantizer, weight_quantizer=weight_quantizer,
                         input_scale=input_scale)

    def _raw(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, w, None, self.stride, self.padding, self.dilation, self.groups)


class QuantLinear(_QuantMixin, nn.Linear):
    """Fully connected layer with an input and a weight quantizer (see :class:`QuantConv1d`).

    ``input_scale`` (XNOR-Net's K) is the mean of ``|x|`` over each row's features.

    Shapes: x : Tensor [shape=(..., in_features)] -> [shape=(..., out_features)].
    """

    _n_spatial = 0

    def __init__(self, in_features: int, out_features: int, *, input_quantizer=None, weight_quantizer=None,
                 input_scale: bool = False, bias: bool = True, device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self._init_quant(input_quantizer=input_quantizer, weight_quantizer=weight_quantizer,
                         input_scale=input_scale)

    def _raw(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.linear(x, w)

    def _input_scale_map(self, x: torch.Tensor) -> torch.Tensor:
        return x.abs().mean(dim=-1, keepdim=True)


def binary_quantizers(mode: str, input_quantizer=None, weight_quantizer=None) -> tuple[nn.Module, nn.Module]:
    """The (input, weight) quantizers of a binary ``mode``, with optional overrides.

    ``weight_quantizer`` may name a sign estimator (``ste_sign``, ``approx_sign``,
    ``identity_sign``): the mode's scale is kept and only the gradient changes.
    """
    if mode not in BINARY_MODES:
        raise ConfigError(f"binary layer mode must be one of {', '.join(BINARY_MODES)}, got {mode!r}")
    default_in, scale = _MODE_CONFIG[mode]
    inq = get_quantizer(default_in if input_quantizer is None else input_quantizer)
    if weight_quantizer is None:
        wq: nn.Module = ScaledSign(_DEFAULT_ESTIMATOR[mode], scale)
    elif isinstance(weight_quantizer, str) and weight_quantizer in _SIGN_ESTIMATORS:
        wq = ScaledSign(_SIGN_ESTIMATORS[weight_quantizer], scale)
    else:
        wq = get_quantizer(weight_quantizer)
        if wq.bits != 1:
            raise ConfigError(f"a binary layer needs a 1-bit weight quantizer, got {wq!r} with {wq.bits} "
                              f"bits; "
                              f"use a plain torch layer (mode='float' in make_conv2d) or QuantConv2d for "
                              f"other precisions")
    if mode == "binarynet" and inq.bits != 1:
        raise ConfigError("mode 'binarynet' binarizes its inputs: input_quantizer must have 1 bit; "
                          "use mode='onebit' for float inputs with binary weights")
    return inq, wq


class _BinaryConfig:
    """The ``mode`` a binary layer was configured with (for its repr and model parameters only)."""

    def _binary_repr(self) -> str:
        return f", mode={self.mode!r}"

    def extra_repr(self) -> str:
        return super().extra_repr() + self._binary_repr()


class BinaryConv1d(_BinaryConfig, QuantConv1d):
    """Binary 1-D convolution: :class:`QuantConv1d` configured by ``mode`` (module docstring).

    Parameters
    ----------
    mode : {"xnor", "binarynet", "onebit"}
    input_quantizer, weight_quantizer : str or nn.Module, optional
        Overrides of the mode's quantizers (a sign name as weight quantizer keeps the mode's
        scale and changes only the gradient estimator).
    Other parameters as :class:`QuantConv1d`.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, *, mode: str = "xnor",
                 input_quantizer=None, weight_quantizer=None, input_scale: bool = False, **kwargs):
        inq, wq = binary_quantizers(mode, input_quantizer, weight_quantizer)
        super().__init__(in_channels, out_channels, kernel_size, input_quantizer=inq, weight_quantizer=wq,
                         input_scale=input_scale, **kwargs)
        self.mode = mode


class BinaryConv2d(_BinaryConfig, QuantConv2d):
    """Binary 2-D convolution: :class:`QuantConv2d` configured by ``mode`` (see :class:`BinaryConv1d`)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, *, mode: str = "xnor",
                 input_quantizer=None, weight_quantizer=None, input_scale: bool = False, **kwargs):
        inq, wq = binary_quantizers(mode, input_quantizer, weight_quantizer)
        super().__init__(in_channels, out_channels, kernel_size, input_quantizer=inq, weight_quantizer=wq,
                         input_scale=input_scale, **kwargs)
        self.mode = mode


class BinaryLinear(_BinaryConfig, QuantLinear):
    """Binary dense layer: :class:`QuantLinear` configured by ``mode`` (see :class:`BinaryConv1d`)."""

    def __init__(self, in_features: int, out_features: int, *, mode: str = "xnor", input_quantizer=None,
                 weight_quantizer=None, input_scale: bool = False, **kwargs):
        inq, wq = binary_quantizers(mode, input_quantizer, weight_quantizer)
        super().__init__(in_features, out_features, input_quantizer=inq, weight_quantizer=wq,
                         input_scale=input_scale, **kwargs)
        self.mode = mode


_BINARY_ONLY_OPTIONS = ("input_quantizer", "weight_quantizer", "input_scale")


def _check_mode(mode: str, kwargs: dict) -> None:
    if mode != "float" and mode not in BINARY_MODES:
        raise ConfigError(f"layer mode must be 'float' or one of {', '.join(BINARY_MODES)}, got {mode!r}")
    extra = [k for k in _BINARY_ONLY_OPTIONS if mode == "float" and k in kwargs]
    if extra:
        raise ConfigError(f"options {extra} apply to binary layers only, but mode='float'; drop them or "
                          f"pick one of {', '.join(BINARY_MODES)}")


def make_conv1d(in_channels: int, out_channels: int, kernel_size, *, mode: str = "float",
                **kwargs) -> nn.Conv1d:
    """A :class:`torch.nn.Conv1d` for ``mode="float"``, else a :class:`BinaryConv1d`.

    ``kwargs`` are keyword options of the chosen class; binary-only options
    (``input_quantizer``, ``weight_quantizer``, ``input_scale``) are an error for float layers.
    """
    _check_mode(mode, kwargs)
    if mode == "float":
        return nn.Conv1d(in_channels, out_channels, kernel_size, **kwargs)
    return BinaryConv1d(in_channels, out_channels, kernel_size, mode=mode, **kwargs)


def make_conv2d(in_channels: int, out_channels: int, kernel_size, *, mode: str = "float",
                **kwargs) -> nn.Conv2d:
    """A :class:`torch.nn.Conv2d` for ``mode="float"``, else a :class:`BinaryConv2d`."""
    _check_mode(mode, kwargs)
    if mode == "float":
        return nn.Conv2d(in_channels, out_channels, kernel_size, **kwargs)
    return BinaryConv2d(in_channels, out_channels, kernel_size, mode=mode, **kwargs)


def make_linear(in_features: int, out_features: int, *, mode: str = "float", **kwargs) -> nn.Linear:
    """A :class:`torch.nn.Linear` for ``mode="float"``, else a :class:`BinaryLinear`."""
    _check_mode(mode, kwargs)
    if mode == "float":
        return nn.Linear(in_features, out_features, **kwargs)
    return BinaryLinear(in_features, out_features, mode=mode, **kwargs)
