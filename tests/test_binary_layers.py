"""Binary layers against slow obvious references: a popcount loop (the engine's formula) and an
explicit sign + zero pad + float convolution, across channel counts that straddle 32/64-bit words.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bitsound.errors import ConfigError
from bitsound.nn import (
    BinaryConv1d,
    BinaryConv2d,
    BinaryLinear,
    hard_sign,
    make_conv1d,
    make_conv2d,
    make_linear,
)

CHANNELS = [1, 31, 32, 33, 63, 64, 65, 127, 128, 129]

# (kernel, stride, padding, dilation, input size): borders, strides, odd sizes, dilation
CONV2D_CASES = [
    ((3, 3), (1, 1), (1, 1), (1, 1), (4, 5)),
    ((3, 2), (2, 1), (1, 0), (1, 1), (5, 3)),
    ((2, 2), (1, 2), (2, 1), (2, 1), (3, 4)),
]


def _sign_np(t):
    return np.where(t.detach().numpy() >= 0, 1, -1)


def popcount_conv2d(x, w, *, stride, padding, dilation):
    """Engine reference: dot = n_valid - 2 * popcount((x_bits xor w_bits) & valid), -1 -> bit 1."""
    xb, wb = _sign_np(x) < 0, _sign_np(w) < 0
    (b_, c_, h, w_), (o_, _, kh, kw) = xb.shape, wb.shape
    ho = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (w_ + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    out = np.zeros((b_, o_, ho, wo), dtype=np.int64)
    for b in range(b_):
        for i in range(ho):
            for j in range(wo):
                rows = i * stride[0] - padding[0] + dilation[0] * np.arange(kh)
                cols = j * stride[1] - padding[1] + dilation[1] * np.arange(kw)
                valid = ((rows >= 0) & (rows < h))[:, None] & ((cols >= 0) & (cols < w_))[None, :]
                patch = xb[b][:, np.clip(rows, 0, h - 1)][:, :, np.clip(cols, 0, w_ - 1)]  # (C, kh, kw)
                mask = np.broadcast_to(valid, (c_, kh, kw))
                mismatches = ((patch[None] ^ wb) & mask[None]).sum(axis=(1, 2, 3))
                out[b, :, i, j] = mask.sum() - 2 * mismatches
    return torch.from_numpy(out).float()


def valid_counts(shape, kernel, *, stride, padding, dilation, channels):
    """n_valid of every output position: taps that fall inside the input, times channels."""
    ones = torch.ones(1, 1, *shape)
    box = torch.ones(1, 1, *kernel)
    return channels * F.conv2d(ones, box, stride=stride, padding=padding, dilation=dilation)


def padded_conv2d(xs, ws, *, stride, padding, dilation, groups=1):
    """Explicit zero padding of an already-binarized input, then a float convolution."""
    xp = F.pad(xs, (padding[1], padding[1], padding[0], padding[0]))
    return F.conv2d(xp, ws, stride=stride, dilation=dilation, groups=groups)


def with_zeros(t):
    """Put exact zeros (sign(0) = +1) into a tensor."""
    t = t.clone()
    t.view(-1)[::7] = 0.0
    return t


def binary_conv2d(c_in, c_out, kernel, *, mode, stride=1, padding=0, dilation=1, groups=1, bias=False,
                  **kwargs):
    torch.manual_seed(c_in * 1000 + c_out)
    layer = BinaryConv2d(c_in, c_out, kernel, mode=mode, stride=stride, padding=padding,
                         dilation=dilation, groups=groups, bias=bias, **kwargs)
    with torch.no_grad():
        layer.weight.copy_(with_zeros(torch.randn_like(layer.weight)))
        if bias:
            layer.bias.copy_(torch.randn_like(layer.bias))
    return layer


@pytest.mark.parametrize("c_in", CHANNELS)
@pytest.mark.parametrize("kernel,stride,padding,dilation,size", CONV2D_CASES)
def test_binarynet_conv2d_equals_popcount_loop(c_in, kernel, stride, padding, dilation, size):
    layer = binary_conv2d(c_in, 3, kernel, mode="binarynet", stride=stride, padding=padding,
                          dilation=dilation)
    x = with_zeros(torch.randn(2, c_in, *size))
    with torch.no_grad():
        y = layer(x)
    ref = popcount_conv2d(x, layer.weight, stride=stride, padding=padding, dilation=dilation)
    assert torch.equal(y, ref)
    # integers with the parity of n_valid and |dot| <= n_valid (interior: c_in * kh * kw)
    n_valid = valid_counts(size, kernel, stride=stride, padding=padding, dilation=dilation, channels=c_in)
    assert torch.equal(y, y.round())
    assert torch.all((y - n_valid) % 2 == 0) and torch.all(y.abs() <= n_valid)
    assert n_valid.max() <= c_in * math.prod(kernel)


@pytest.mark.parametrize("c_in", CHANNELS)
def test_binarynet_conv1d_equals_popcount_loop(c_in):
    torch.manual_seed(c_in)
    layer = BinaryConv1d(c_in, 2, 3, mode="binarynet", stride=2, padding=2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(with_zeros(torch.randn_like(layer.weight)))
    x = with_zeros(torch.randn(2, c_in, 7))
    with torch.no_grad():
        y = layer(x)
    ref = popcount_conv2d(x[:, :, None], layer.weight[:, :, None], stride=(1, 2), padding=(0, 2),
                          dilation=(1, 1))[:, :, 0]
    assert torch.equal(y, ref)


@pytest.mark.parametrize("c_in", CHANNELS)
def test_binarynet_linear_equals_popcount(c_in):
    torch.manual_seed(c_in)
    layer = BinaryLinear(c_in, 5, mode="binarynet", bias=False)
    x = with_zeros(torch.randn(3, c_in))
    with torch.no_grad():
        y = layer(x)
    xb, wb = _sign_np(x) < 0, _sign_np(layer.weight) < 0
    ref = c_in - 2 * (xb[:, None, :] ^ wb[None]).sum(-1)
    assert torch.equal(y, torch.from_numpy(ref).float())


def test_padded_positions_contribute_zero_not_plus_one():
    layer = BinaryConv2d(1, 1, 3, mode="binarynet", padding=1, bias=False)
    with torch.no_grad():
        layer.weight.fill_(0.5)  # sign +1
        y = layer(-torch.ones(1, 1, 3, 3))
    # -(number of valid taps): a padded tap is 0, whereas sign(0) = +1 would give -4 + 5 = 1 at a corner
    assert y[0, 0].tolist() == [[-4.0, -6.0, -4.0], [-6.0, -9.0, -6.0], [-4.0, -6.0, -4.0]]


def xnor_input_scale_loop(x, kernel, *, stride, padding):
    """XNOR-Net's K: mean |x| over channels, averaged over each window (padded taps are 0)."""
    a = F.pad(x.abs().mean(dim=1), (padding[1], padding[1], padding[0], padding[0]))  # (B, H', W')
    b_, hp, wp = a.shape
    ho, wo = (hp - kernel[0]) // stride[0] + 1, (wp - kernel[1]) // stride[1] + 1
    k = torch.zeros(b_, 1, ho, wo)
    for i in range(ho):
        for j in range(wo):
            window = a[:, i * stride[0]:i * stride[0] + kernel[0], j * stride[1]:j * stride[1] + kernel[1]]
            k[:, 0, i, j] = window.sum(dim=(1, 2)) / math.prod(kernel)
    return k


@pytest.mark.parametrize("c_in", CHANNELS)
def test_xnor_conv2d_equals_sign_pad_conv_times_alpha(c_in):
    kernel, stride, padding = (3, 2), (2, 1), (1, 1)
    layer = binary_conv2d(c_in, 4, kernel, mode="xnor", stride=stride, padding=padding, bias=True)
    x = with_zeros(torch.randn(2, c_in, 5, 4))
    with torch.no_grad():
        y = layer(x)
        ws = torch.from_numpy(_sign_np(layer.weight)).float()
        dot = padded_conv2d(torch.from_numpy(_sign_np(x)).float(), ws, stride=stride, padding=padding,
                            dilation=(1, 1))
    alpha = torch.from_numpy(np.abs(layer.weight.detach().numpy()).mean(axis=(1, 2, 3))).float()
    torch.testing.assert_close(y, dot * alpha.view(1, -1, 1, 1) + layer.bias.detach().view(1, -1, 1, 1))
    torch.testing.assert_close(layer.weight_scale(), alpha)


@pytest.mark.parametrize("c_in", [1, 33, 65])
def test_xnor_input_scale_k_equals_window_mean_loop(c_in):
    kernel, stride, padding = (3, 3), (2, 1), (1, 1)
    layer = binary_conv2d(c_in, 2, kernel, mode="xnor", stride=stride, padding=padding, input_scale=True)
    plain = binary_conv2d(c_in, 2, kernel, mode="xnor", stride=stride, padding=padding)
    x = torch.randn(2, c_in, 5, 6)
    with torch.no_grad():
        k = xnor_input_scale_loop(x, kernel, stride=stride, padding=padding)
        torch.testing.assert_close(layer(x), plain(x) * k)


def test_xnor_input_scale_conv1d_and_linear():
    torch.manual_seed(0)
    conv = BinaryConv1d(5, 2, 3, mode="xnor", padding=1, bias=False, input_scale=True)
    x = torch.randn(2, 5, 6)
    with torch.no_grad():
        k = xnor_input_scale_loop(x[:, :, None], (1, 3), stride=(1, 1), padding=(0, 1))[:, :, 0]
        base = F.conv1d(hard_sign(x), hard_sign(conv.weight), padding=1) * conv.weight_scale().view(1, -1, 1)
        torch.testing.assert_close(conv(x), base * k)
    lin = BinaryLinear(7, 3, mode="xnor", bias=False, input_scale=True)
    x = torch.randn(4, 7)
    with torch.no_grad():
        beta = x.abs().mean(dim=1, keepdim=True)
        torch.testing.assert_close(lin(x), hard_sign(x) @ hard_sign(lin.weight).T * lin.weight_scale() * beta)


@pytest.mark.parametrize("c_in", CHANNELS)
def test_onebit_conv2d_uses_float_inputs_and_he_constant(c_in):
    layer = binary_conv2d(c_in, 3, 3, mode="onebit", stride=1, padding=1)
    x = torch.randn(2, c_in, 4, 3)
    c = math.sqrt(2 / (9 * c_in))  # seed 002 eq. (1): sqrt(2 / (F^2 C))
    with torch.no_grad():
        ws = torch.from_numpy(_sign_np(layer.weight)).float()
        ref = padded_conv2d(x, c * ws, stride=(1, 1), padding=(1, 1), dilation=(1, 1))
        torch.testing.assert_close(layer(x), ref)
    assert layer.weight_scale().item() == pytest.approx(c)


def test_onebit_conv1d_and_linear_use_the_fan_in():
    conv = BinaryConv1d(6, 2, 5, mode="onebit", padding=2, bias=False)
    lin = BinaryLinear(10, 3, mode="onebit", bias=False)
    assert conv.weight_scale().item() == pytest.approx(math.sqrt(2 / (5 * 6)))
    assert lin.weight_scale().item() == pytest.approx(math.sqrt(2 / 10))
    x = torch.randn(2, 6, 9)
    with torch.no_grad():
        ref = F.conv1d(F.pad(x, (2, 2)), hard_sign(conv.weight) * math.sqrt(2 / 30))
        torch.testing.assert_close(conv(x), ref)


@pytest.mark.parametrize("mode", ["binarynet", "xnor"])
def test_grouped_binary_conv_matches_reference(mode):
    layer = binary_conv2d(8, 4, 3, mode=mode, padding=1, groups=2)
    x = with_zeros(torch.randn(1, 8, 4, 4))
    with torch.no_grad():
        dot = padded_conv2d(hard_sign(x), hard_sign(layer.weight), stride=(1, 1), padding=(1, 1),
                            dilation=(1, 1), groups=2)
        scale = layer.weight_scale().view(1, -1, 1, 1) if mode == "xnor" else 1.0
        torch.testing.assert_close(layer(x), dot * scale)


def _ref_grads(x, weight, g, *, scale_w=1.0):
    """Gradients of sum(g * conv(xs, scale_w * ws)) w.r.t. the binarized xs and w_hat = scale_w * ws."""
    xs = hard_sign(x).requires_grad_()
    w_hat = (scale_w * hard_sign(weight)).requires_grad_()
    (padded_conv2d(xs, w_hat, stride=(1, 1), padding=(1, 1), dilation=(1, 1)) * g).sum().backward()
    return xs.grad, w_hat.grad


def _grad_inputs(mode):
    torch.manual_seed(1)
    layer = binary_conv2d(4, 3, 3, mode=mode, padding=1)
    with torch.no_grad():  # latent weights beyond the clip range and exactly on it
        layer.weight[0, 0, 0, 0], layer.weight[1, 1, 1, 1], layer.weight[2, 0, 0, 0] = 1.5, -2.0, 1.0
    x = 1.5 * torch.randn(2, 4, 5, 5)
    x[0, 0, 0, :3] = torch.tensor([1.0, -1.0, 0.0])
    x.requires_grad_()
    g = torch.randn(2, 3, 5, 5)
    (layer(x) * g).sum().backward()
    return layer, x, g


def test_binarynet_gradients_are_clipped_ste_on_inputs_and_latent_weights():
    layer, x, g = _grad_inputs("binarynet")
    gx, gw = _ref_grads(x.detach(), layer.weight.detach(), g)
    w = layer.weight.detach()
    torch.testing.assert_close(layer.weight.grad, gw * (w.abs() <= 1))
    torch.testing.assert_close(x.grad, gx * (x.detach().abs() <= 1))
    assert layer.weight.grad[0, 0, 0, 0] == 0 and layer.weight.grad[1, 1, 1, 1] == 0


def test_xnor_weight_gradient_follows_the_xnor_net_formula():
    # Rastegari et al. 2016: dC/dW_i = dC/dW~_i * (1/n + alpha * d sign(W_i)/dW_i), per channel
    layer, x, g = _grad_inputs("xnor")
    w = layer.weight.detach()
    n = w[0].numel()
    alpha = w.abs().mean(dim=(1, 2, 3))
    xs = hard_sign(x.detach())
    dot = padded_conv2d(xs, hard_sign(w), stride=(1, 1), padding=(1, 1), dilation=(1, 1))
    d_alpha = (g * dot).sum(dim=(0, 2, 3))  # dC/d alpha_o
    gx, d_ws = _ref_grads(x.detach(), w, g * alpha.view(1, -1, 1, 1))  # dC/d sign(W) with alpha applied
    # d|W|/dW at an exact zero weight is the subgradient 0 (torch.sign), not sign(0) = +1
    assert (w == 0).any()
    expected = d_alpha.view(-1, 1, 1, 1) * torch.sign(w) / n + d_ws * (w.abs() <= 1)
    torch.testing.assert_close(layer.weight.grad, expected)
    torch.testing.assert_close(x.grad, gx * (x.detach().abs() <= 1))


def test_onebit_weight_gradient_is_unscaled_and_input_gradient_exact():
    # McDonnell's code puts the multiplier behind a stop-gradient: dC/dW = dC/dW_hat
    layer, x, g = _grad_inputs("onebit")
    c = layer.weight_scale().item()
    w_hat = (c * hard_sign(layer.weight.detach())).requires_grad_()
    xr = x.detach().clone().requires_grad_()
    (F.conv2d(xr, w_hat, padding=1) * g).sum().backward()
    torch.testing.assert_close(layer.weight.grad, w_hat.grad)
    torch.testing.assert_close(x.grad, xr.grad)


@pytest.mark.parametrize("cls,args,shape", [
    (BinaryConv1d, (3, 4, 3), (2, 3, 8)),
    (BinaryConv2d, (3, 4, 3), (2, 3, 6, 5)),
    (BinaryLinear, (3, 4), (2, 3)),
])
@pytest.mark.parametrize("mode", ["xnor", "binarynet", "onebit"])
def test_every_layer_trains_its_latent_weights(cls, args, shape, mode):
    torch.manual_seed(0)
    layer = cls(*args, mode=mode)
    before = layer.weight.detach().clone()
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    layer(torch.randn(shape)).square().mean().backward()
    assert layer.weight.grad.abs().sum() > 0 and layer.bias.grad.abs().sum() > 0
    opt.step()
    assert not torch.equal(layer.weight, before)
    assert not torch.all(layer.weight.abs() == 1)  # the latent weights stay float


@pytest.mark.parametrize("mode,input_bits,scales", [("xnor", 1, 8), ("binarynet", 1, 0), ("onebit", 32, 0)])
@pytest.mark.parametrize("cls,args", [(BinaryConv1d, (5, 8, 3)), (BinaryConv2d, (5, 8, 3)),
                                      (BinaryLinear, (5, 8))])
def test_precision_is_declared_as_data(cls, args, mode, input_bits, scales):
    layer = cls(*args, mode=mode)
    assert (layer.weight_bits, layer.input_bits, layer.n_scale_params) == (1, input_bits, scales)
    assert set(layer.binary_weight().unique().tolist()) <= {-1.0, 1.0}
    assert (layer.weight_scale() is None) == (mode == "binarynet")


def test_xnor_with_float_inputs_is_a_binary_weight_network():
    layer = BinaryConv2d(3, 4, 3, mode="xnor", input_quantizer="none")
    assert (layer.weight_bits, layer.input_bits, layer.n_scale_params) == (1, 32, 4)
    x = torch.randn(1, 3, 5, 5)
    with torch.no_grad():
        ref = F.conv2d(x, hard_sign(layer.weight)) * layer.weight_scale().view(1, -1, 1, 1)
        torch.testing.assert_close(layer(x), ref + layer.bias.view(1, -1, 1, 1))


def test_unbatched_input_matches_batched():
    layer = binary_conv2d(3, 4, 3, mode="xnor", padding=1, bias=True, input_scale=True)
    x = torch.randn(3, 5, 4)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), layer(x[None])[0])


@pytest.mark.parametrize("kwargs,words", [
    (dict(mode="xnr"), "xnor"),
    (dict(mode="binarynet", weight_quantizer="none"), "1-bit weight quantizer"),
    (dict(mode="binarynet", input_quantizer="none"), "onebit"),
    (dict(mode="binarynet", input_scale=True), "input_scale"),
    (dict(mode="xnor", padding_mode="reflect"), "zeros"),
    (dict(mode="xnor", weight_quantizer="sgn"), "ste_sign"),
])
def test_bad_options_are_config_errors(kwargs, words):
    with pytest.raises(ConfigError, match=words):
        BinaryConv2d(3, 4, 3, **kwargs)


def test_factories_make_float_or_binary_layers():
    assert type(make_conv2d(3, 4, 3, padding=1)) is nn.Conv2d
    assert type(make_conv1d(3, 4, 3)) is nn.Conv1d
    assert type(make_linear(3, 4, bias=False)) is nn.Linear
    conv = make_conv2d(3, 4, 3, mode="onebit", padding=1, bias=False)
    assert isinstance(conv, BinaryConv2d) and conv.mode == "onebit" and conv.bias is None
    assert isinstance(make_conv1d(3, 4, 3, mode="xnor"), BinaryConv1d)
    assert isinstance(make_linear(3, 4, mode="binarynet"), BinaryLinear)
    with pytest.raises(ConfigError, match="binary layers only"):
        make_linear(3, 4, input_scale=True)
    with pytest.raises(ConfigError, match="'float'"):
        make_conv2d(3, 4, 3, mode="int8")
