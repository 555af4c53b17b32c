"""Quantizers and binary layers (XNOR-Net, BinaryNet, 1-bit-per-weight)."""

from bitsound.nn.layers import (
    BINARY_MODES,
    BinaryConv1d,
    BinaryConv2d,
    BinaryLinear,
    make_conv1d,
    make_conv2d,
    make_linear,
)
from bitsound.nn.quantizers import (
    QUANTIZERS,
    approx_sign,
    get_quantizer,
    hard_sign,
    identity_sign,
    ste_sign,
)

__all__ = [
    "BINARY_MODES",
    "QUANTIZERS",
    "BinaryConv1d",
    "BinaryConv2d",
    "BinaryLinear",
    "approx_sign",
    "get_quantizer",
    "hard_sign",
    "identity_sign",
    "make_conv1d",
    "make_conv2d",
    "make_linear",
    "ste_sign",
]
