"""Sign quantizers: forward values (sign(0) = +1), STE gradients against hand-written formulas."""

import math

import pytest
import torch
from torch import nn

from bitsound.errors import ConfigError, RegistryError
from bitsound.nn.quantizers import (
    QUANTIZERS,
    ApproxSign,
    IdentitySign,
    NoQuantizer,
    SteSign,
    get_quantizer,
    hard_sign,
)

# exact zeros (both signs), the |x| = 1 boundaries and points just inside/outside them
POINTS = [-2.0, -1.0001, -1.0, -0.9999, -0.5, -0.0, 0.0, 0.25, 0.9999, 1.0, 1.0001, 3.0]

# d sign(x) / dx as each estimator defines it, written out per element
GRADIENTS = {
    "ste_sign": lambda x: 1.0 if abs(x) <= 1 else 0.0,
    "approx_sign": lambda x: 2 - 2 * abs(x) if abs(x) < 1 else 0.0,
    "identity_sign": lambda x: 1.0,
}


@pytest.mark.parametrize("name", ["ste_sign", "approx_sign", "identity_sign"])
def test_sign_forward_is_plus_minus_one_with_sign_of_zero_plus_one(name):
    q = get_quantizer(name)
    x = torch.tensor(POINTS, dtype=torch.float64)
    y = q(x)
    assert y.dtype == torch.float64
    assert y.tolist() == [-1.0 if v < 0 else 1.0 for v in POINTS]  # -0.0 and 0.0 both give +1
    assert q.bits == 1


@pytest.mark.parametrize("name", ["ste_sign", "approx_sign", "identity_sign"])
def test_sign_gradient_matches_hand_written_formula(name):
    x = torch.tensor(POINTS, dtype=torch.float64, requires_grad=True)
    upstream = torch.linspace(-1.5, 2.5, len(POINTS), dtype=torch.float64)
    (get_quantizer(name)(x) * upstream).sum().backward()
    expected = [g * GRADIENTS[name](v) for g, v in zip(upstream.tolist(), POINTS, strict=True)]
    assert x.grad.tolist() == pytest.approx(expected, abs=1e-12)


def test_boundary_conventions():
    x = torch.tensor([-1.0, 0.0, 1.0], requires_grad=True)
    SteSign()(x).sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 1.0]  # the clipped STE's interval is closed at |x| = 1
    x.grad = None
    ApproxSign()(x).sum().backward()
    assert x.grad.tolist() == [0.0, 2.0, 0.0]  # Bi-Real: 2 at zero, 0 at the boundary
    x.grad = None
    IdentitySign()(x).sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 1.0]


def test_nan_is_not_hidden_behind_a_valid_sign():
    y = hard_sign(torch.tensor([math.nan, -3.0, 0.0]))
    assert math.isnan(y[0]) and y[1:].tolist() == [-1.0, 1.0]


def test_none_is_a_float_passthrough():
    q = get_quantizer("none")
    assert isinstance(q, NoQuantizer) and q.bits == 32
    x = torch.tensor(POINTS, requires_grad=True)
    y = q(x)
    assert torch.equal(y, x)
    y.sum().backward()
    assert x.grad.tolist() == [1.0] * len(POINTS)
    assert isinstance(get_quantizer(None), NoQuantizer)


def test_registry_lists_every_quantizer_with_a_description():
    listed = dict(QUANTIZERS.describe())
    assert set(listed) == {"ste_sign", "approx_sign", "identity_sign", "none", "xnor_sign", "mcdonnell_sign",
                           "int8_weight", "int8_weight_tensor", "int8", "fp16"}
    assert all(listed.values())


def test_get_quantizer_returns_objects_unchanged():
    q = ApproxSign()
    assert get_quantizer(q) is q
    assert isinstance(get_quantizer("identity_sign"), IdentitySign)
    assert get_quantizer("ste_sign") is not get_quantizer("ste_sign")  # a fresh module per name


def test_unknown_name_quotes_it_and_the_valid_names():
    with pytest.raises(RegistryError) as info:
        get_quantizer("sgn")
    message = str(info.value)
    assert "'sgn'" in message
    assert all(name in message for name in ("ste_sign", "approx_sign", "identity_sign", "none"))


@pytest.mark.parametrize("bad", [3, nn.ReLU(), torch.sign])
def test_objects_without_a_bits_attribute_are_rejected(bad):
    with pytest.raises(ConfigError) as info:
        get_quantizer(bad)
    message = str(info.value)
    assert repr(bad) in message and "ste_sign" in message and "bits" in message


def test_name_clash_is_an_error():
    with pytest.raises(RegistryError, match="twice"):
        QUANTIZERS.add("ste_sign", SteSign)
