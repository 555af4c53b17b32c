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
    """Base class: a quantizer module declares its output precision in ``bits``."""

    bits: int = 32
    name: str = ""

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
