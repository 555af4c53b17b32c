"""The graph ops added for the seed systems, in the C engine: each fast path against its reference
kernel (``isa="reference"``) and both against PyTorch.

Ops: 1-D convolution and pooling, average pooling, grouped and depthwise convolutions (float, f16
weights, 1-bit weights on float inputs, and binary), concatenation, slicing, broadcast addition,
per-frequency affine, normalisation over axes, permutation, SiLU/sigmoid, int8 quantize /
dequantize / conv / dense. Channel counts sweep the 64-bit word boundaries; spatial sizes are odd.

Tolerances: float paths sum in double in a fixed order (fast and reference bit-identical), so
against PyTorch's float32 arithmetic they agree to 1e-5 relative. int8 outputs equal the
reference kernel's exactly; against a float64 model of the same arithmetic an int8 output may sit
one step away where ``x / scale`` lies within float32 rounding of a half-integer.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bitsound import engine
from bitsound.graph.builder import GraphBuilder

ISAS = engine.available_isas() + [
    i for i in ("avx512-emulated", "scalar-bitserial") if engine._lib().isa_available(i)
]
CHANNELS = [1, 31, 32, 33, 63, 64, 65, 127, 128, 129]


def traces(b: GraphBuilder, x: np.ndarray) -> dict[str, list[np.ndarray]]:
    data = b.to_bytes()
    return {isa: [out for _, out in engine.loads(data, isa=isa).trace(x)] for isa in ISAS}


def same_on_every_isa(tr: dict[str, list[np.ndarray]], index: int) -> np.ndarray:
    """The op's output, checked bit-identical on every instruction set (reference included)."""
    ref = tr["reference"][index]
    for isa, outs in tr.items():
        assert outs[index].dtype == ref.dtype, isa
        assert np.array_equal(outs[index], ref, equal_nan=True), f"{isa} differs from the reference"
    return ref


def hwc(t: torch.Tensor) -> np.ndarray:
    """[1, c, h, w] or [1, c, t] -> [h, w, c]."""
    t = t[0]
    if t.dim() == 2:
        t = t[:, None, :]
    return t.permute(1, 2, 0).numpy()


def one_op(shape, add):
    """A graph input -> op -> (output: the input) and the op's index in a trace."""
    b = GraphBuilder()
    i = b.add_input(shape)
    add(b, i)
    b.add_output(i)
    return b


# ---- float convolutions: groups, depthwise, 1-D, f16 and 1-bit weights ---------------------------
GROUPED = (
    [(c, c, c) for c in (1, 33, 64, 129)]
    + [(c, 2 * c, c) for c in (3, 65)]
    + [(32, 64, 2), (66, 33, 3), (128, 128, 4), (129, 43, 43)]
)


@pytest.mark.parametrize("cin,cout,groups", GROUPED, ids=str)
@pytest.mark.parametrize("wdtype", ["f32", "f16", "sign"])
def test_grouped_float_conv2d_matches_torch(cin, cout, groups, wdtype):
    rng = np.random.default_rng(cin * 31 + cout + groups)
    h, w = 7, 9
    weight = rng.standard_normal((cout, cin // groups, 3, 3)).astype(np.float32)
    scale = rng.random(cout).astype(np.float32) + 0.5
    bias = rng.standard_normal(cout).astype(np.float32)
    x = rng.standard_normal((cin, h, w)).astype(np.float32)
    if wdtype == "f16":
        wt = torch.from_numpy(weight.astype(np.float16).astype(np.float32))
    elif wdtype == "sign":
        wt = torch.from_numpy(np.where(weight < 0, -1.0, 1.0).astype(np.float32) * scale[:, None, None, None])
    else:
        wt = torch.from_numpy(weight)
    want = hwc(
        F.conv2d(
            torch.from_numpy(x)[None], wt, torch.from_numpy(bias), stride=(2, 1), padding=1, groups=groups
        )
    )
    b = one_op(
        (cin, h, w),
        lambda b, i: b.add_conv(
            i,
            weight,
            bias,
            stride=(2, 1),
            padding=(1, 1, 1, 1),
            groups=groups,
            wdtype=wdtype,
            weight_scale=scale,
            name="conv",
        ),
    )
    got = same_on_every_isa(traces(b, x), 1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("c", CHANNELS)
def test_conv1d_and_depthwise_conv1d_match_torch(c):
    rng = np.random.default_rng(c)
    t = 37
    x = rng.standard_normal((c, t)).astype(np.float32)
    w_full = rng.standard_normal((5, c, 7)).astype(np.float32)
    w_dw = rng.standard_normal((c, 1, 3)).astype(np.float32)
    want_full = hwc(
        F.conv1d(torch.from_numpy(x)[None], torch.from_numpy(w_full), stride=4, padding=3, dilation=1)
    )
    want_dw = hwc(
        F.conv1d(torch.from_numpy(x)[None], torch.from_numpy(w_dw), padding=2, dilation=2, groups=c)
    )

    def build(b, i):
        b.add_conv(i, w_full, None, stride=4, padding=(3, 3), dilation=1, name="conv1d")
        b.add_conv(i, w_dw, None, stride=1, padding=(2, 2), dilation=2, groups=c, name="dw1d")

    tr = traces(one_op((c, t), build), x)
    np.testing.assert_allclose(same_on_every_isa(tr, 1), want_full, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(same_on_every_isa(tr, 2), want_dw, rtol=1e-5, atol=1e-5)


# ---- binary convolutions with groups, and in 1-D --------------------------------------------------
BINARY_GROUPED = [
    (2, 2, 2),
    (64, 64, 64),
    (66, 132, 2),
    (130, 65, 65),
    (96, 96, 3),
    (129, 129, 3),
    (128, 256, 2),
    (256, 64, 4),
]


def _signs(rng, shape):
    return np.where(rng.standard_normal(shape) < 0, -1, 1).astype(np.int8)


@pytest.mark.parametrize("cin,cout,groups", BINARY_GROUPED, ids=str)
def test_grouped_binary_conv_matches_torch(cin, cout, groups):
    rng = np.random.default_rng(cin + 7 * cout + groups)
    h, w = 9, 11
    weight = _signs(rng, (cout, cin // groups, 3, 3))
    x = rng.standard_normal((cin, h, w)).astype(np.float32)
    xs = torch.from_numpy(np.where(x < 0, -1.0, 1.0))[None].double()
    dot = hwc(F.conv2d(xs, torch.from_numpy(weight).double(), padding=1, groups=groups)).astype(np.int64)
    n = 9 * cin // groups
    thr, flip = rng.integers(-n, n + 1, cout), rng.integers(0, 2, cout)
    scale, bias = rng.standard_normal(cout).astype(np.float32), rng.standard_normal(cout).astype(np.float32)

    def build(b, i):
        p = b.add_pack(i, name="pack")
        common = {"padding": (1, 1, 1, 1), "groups": groups}
        b.add_bconv(p, weight, out_mode="dot", name="dot", **common)
        b.add_bconv(p, weight, out_mode="bits", thr=thr, flip=flip, name="bits", **common)
        b.add_bconv(p, weight, out_mode="float", scale=scale, bias=bias, name="float", **common)

    tr = traces(one_op((cin, h, w), build), x)
    assert np.array_equal(same_on_every_isa(tr, 2).astype(np.int64), dot)
    assert np.array_equal(same_on_every_isa(tr, 3), np.where(np.where(flip == 1, -dot, dot) >= thr, 1, -1))
    assert np.array_equal(same_on_every_isa(tr, 4), dot.astype(np.float32) * scale + bias)


@pytest.mark.parametrize("c", CHANNELS)
def test_binary_conv1d_matches_torch(c):
    rng = np.random.default_rng(c + 1)
    t = 301  # > 128 output pixels: the bit-serial path runs where the kernel is large enough
    weight = _signs(rng, (c + 3, c, 9))
    x = rng.standard_normal((c, t)).astype(np.float32)
    xs = torch.from_numpy(np.where(x < 0, -1.0, 1.0))[None].double()
    dot = hwc(F.conv1d(xs, torch.from_numpy(weight).double(), stride=1, padding=4)).astype(np.int64)
    b = one_op(
        (c, t),
        lambda b, i: b.add_bconv(
            b.add_pack(i, name="pack"), weight, stride=1, padding=(4, 4), out_mode="dot", name="bconv1d"
        ),
    )
    assert np.array_equal(same_on_every_isa(traces(b, x), 2).astype(np.int64), dot)


# ---- pooling ------------------------------------------------------------------------------------
AVGPOOLS = [
    ((2, 2), (2, 2), (0, 0), False, True),
    ((3, 3), (2, 2), (1, 1), False, True),
    ((3, 3), (2, 2), (1, 1), False, False),
    ((3, 3), (2, 2), (1, 1), True, True),
    ((3, 3), (2, 2), (1, 1), True, False),
    ((2, 5), (1, 3), (1, 2), True, False),
    ((7, 1), (1, 1), (0, 0), False, True),
]


@pytest.mark.parametrize("c", [1, 33, 129])
@pytest.mark.parametrize("pi", range(len(AVGPOOLS)))
def test_avgpool2d_matches_torch(c, pi):
    k, s, p, ceil, count_pad = AVGPOOLS[pi]
    rng = np.random.default_rng(c + pi)
    x = rng.standard_normal((c, 7, 10)).astype(np.float32)
    want = hwc(F.avg_pool2d(torch.from_numpy(x)[None], k, s, p, ceil_mode=ceil, count_include_pad=count_pad))
    b = one_op(
        (c, 7, 10),
        lambda b, i: b.add_avgpool(
            i, kernel=k, stride=s, padding=p, ceil_mode=ceil, count_include_pad=count_pad, name="avg"
        ),
    )
    np.testing.assert_allclose(same_on_every_isa(traces(b, x), 1), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("c", [1, 64, 65])
@pytest.mark.parametrize("k,s,p,ceil", [(3, 2, 1, True), (4, 4, 0, False), (5, 3, 2, True)])
def test_pools_1d_match_torch(c, k, s, p, ceil):
    rng = np.random.default_rng(c * k)
    t = 23
    x = rng.standard_normal((c, t)).astype(np.float32)
    xt = torch.from_numpy(x)[None]
    want_avg = hwc(F.avg_pool1d(xt, k, s, p, ceil_mode=ceil, count_include_pad=False))
    want_max = hwc(F.max_pool1d(xt, k, s, p, ceil_mode=ceil))
    want_bits = hwc(F.max_pool1d(torch.where(xt < 0, -1.0, 1.0), k, s, p, ceil_mode=ceil)).astype(np.int8)

    def build(b, i):
        b.add_avgpool(i, kernel=k, stride=s, padding=p, ceil_mode=ceil, count_include_pad=False, name="avg")
        b.add_maxpool(i, kernel=k, stride=s, padding=p, ceil_mode=ceil, name="max")
        b.add_maxpool(
            b.add_pack(i, name="pack"), kernel=k, stride=s, padding=p, ceil_mode=ceil, name="bitmax"
        )

    tr = traces(one_op((c, t), build), x)
    np.testing.assert_allclose(same_on_every_isa(tr, 1), want_avg, rtol=1e-6, atol=1e-6)
    assert np.array_equal(same_on_every_isa(tr, 2), want_max)
    assert np.array_equal(same_on_every_isa(tr, 4), want_bits)


# ---- shape ops, broadcast add, per-frequency affine, normalisation, activations -----------------------
@pytest.mark.parametrize("c", [1, 33, 65])
def test_concat_slice_permute_match_numpy(c):
    rng = np.random.default_rng(c)
    h, w = 5, 7
    x = rng.standard_normal((c, h, w)).astype(np.float32)
    m = x.transpose(1, 2, 0)

    def build(b, i):
        top = b.add_slice(i, axis="h", start=0, stop=2, name="top")
        cols = b.add_slice(i, axis="w", start=3, stop=7, name="cols")
        chans = b.add_slice(i, axis="c", start=c // 2, stop=c, name="chans")
        b.add_concat(i, top, axis="h", name="cat_h")  # op 4
        b.add_concat(i, cols, axis="w", name="cat_w")
        b.add_concat(i, chans, axis="c", name="cat_c")
        b.add_permute(i, ("w", "c", "h"), name="perm")  # op 7
        b.add_permute(i, ("c", "h", "w"), name="perm2")

    tr = traces(one_op((c, h, w), build), x)
    assert np.array_equal(same_on_every_isa(tr, 4), np.concatenate([m, m[:2]], axis=0))
    assert np.array_equal(same_on_every_isa(tr, 5), np.concatenate([m, m[:, 3:7]], axis=1))
    assert np.array_equal(same_on_every_isa(tr, 6), np.concatenate([m, m[:, :, c // 2 :]], axis=2))
    assert np.array_equal(same_on_every_isa(tr, 7), m.transpose(1, 2, 0))
    assert np.array_equal(same_on_every_isa(tr, 8), m.transpose(2, 0, 1))


def test_broadcast_add_freq_affine_and_normalize_match_torch():
    rng = np.random.default_rng(3)
    c, h, w = 10, 8, 13
    x = rng.standard_normal((c, h, w)).astype(np.float32) * 2 + 1
    scale, bias = rng.standard_normal((h, c)), rng.standard_normal((h, c))
    xt = torch.from_numpy(x)[None]

    def build(b, i):
        fmean = b.add_avgpool(i, kernel=(h, 1), stride=(1, 1), padding=(0, 0), name="fmean")  # 1: [1][w][c]
        b.add_add(i, fmean, name="bcast_h")  # 2
        tmean = b.add_avgpool(i, kernel=(1, w), stride=(1, 1), padding=(0, 0), name="tmean")  # 3: [h][1][c]
        b.add_add(i, tmean, name="bcast_w")  # 4
        b.add_freq_affine(i, scale, bias, name="ssn")  # 5
        b.add_normalize(i, axes="wc", eps=1e-5, name="freq_in")  # 6
        b.add_normalize(i, axes="hw", eps=1e-3, name="instance")  # 7
        b.add_act(i, "silu", name="silu")  # 8
        b.add_act(i, "sigmoid", name="sigmoid")  # 9

    tr = traces(one_op((c, h, w), build), x)
    np.testing.assert_allclose(
        same_on_every_isa(tr, 2), hwc(xt + xt.mean(2, keepdim=True)), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        same_on_every_isa(tr, 4), hwc(xt + xt.mean(3, keepdim=True)), rtol=1e-5, atol=1e-5
    )
    st, bt = (
        torch.from_numpy(scale.T.astype(np.float32))[None, :, :, None],
        torch.from_numpy(bias.T.astype(np.float32))[None, :, :, None],
    )
    np.testing.assert_allclose(same_on_every_isa(tr, 5), hwc(xt * st + bt), rtol=1e-6, atol=1e-6)
    mu, var = xt.mean((1, 3), keepdim=True), xt.var((1, 3), unbiased=False, keepdim=True)
    np.testing.assert_allclose(
        same_on_every_isa(tr, 6), hwc((xt - mu) / torch.sqrt(var + 1e-5)), rtol=1e-5, atol=1e-5
    )
    want_in = F.instance_norm(xt, eps=1e-3)
    np.testing.assert_allclose(same_on_every_isa(tr, 7), hwc(want_in), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(same_on_every_isa(tr, 8), hwc(F.silu(xt)), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(same_on_every_isa(tr, 9), hwc(torch.sigmoid(xt)), rtol=1e-6, atol=1e-6)


def test_f16_and_sign_dense_match_numpy():
    rng = np.random.default_rng(5)
    c, h, w = 3, 4, 5
    x = rng.standard_normal((c, h, w)).astype(np.float32)
    flat = x.transpose(1, 2, 0).reshape(-1).astype(np.float64)
    wt = rng.standard_normal((7, c * h * w))
    scale, bias = rng.random(7) + 0.1, rng.standard_normal(7)

    def build(b, i):
        b.add_linear(i, wt, bias, wdtype="f16", name="half")
        b.add_linear(i, wt, bias, wdtype="sign", weight_scale=scale, name="sign")

    tr = traces(one_op((c, h, w), build), x)
    half = wt.astype(np.float16).astype(np.float64)
    np.testing.assert_allclose(same_on_every_isa(tr, 1)[0, 0], half @ flat + bias, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        same_on_every_isa(tr, 2)[0, 0], (np.where(wt < 0, -1, 1) @ flat) * scale + bias, rtol=1e-5, atol=1e-5
    )


# ---- int8 -------------------------------------------------------------------------------------------
def _qref_conv(xq, in_zero, wq, w_scale, in_scale, bias, stride, pad, groups):
    """float64 model of the int8 conv: int32 sums of (x - zero) * w, times in_scale * w_scale, + bias."""
    x = torch.from_numpy(xq.astype(np.float64) - in_zero)[None]
    if x.dim() == 3:
        acc = F.conv1d(F.pad(x, pad), torch.from_numpy(wq.astype(np.float64)), stride=stride, groups=groups)
    else:
        acc = F.conv2d(F.pad(x, pad), torch.from_numpy(wq.astype(np.float64)), stride=stride, groups=groups)
    mult = (np.float32(in_scale) * w_scale.astype(np.float32)).astype(np.float64)
    return hwc(acc), hwc(
        acc * torch.from_numpy(mult).view(1, -1, *[1] * (acc.dim() - 2))
        + torch.from_numpy(bias).view(1, -1, *[1] * (acc.dim() - 2))
    )


@pytest.mark.parametrize(
    "cin,cout,groups", [(1, 8, 1), (33, 17, 1), (64, 64, 64), (65, 130, 5), (129, 3, 1)], ids=str
)
def test_int8_conv_matches_its_reference_and_the_integer_model(cin, cout, groups):
    rng = np.random.default_rng(cin * 3 + cout)
    h, w = 6, 9
    in_scale, in_zero, out_scale, out_zero = 0.05, 3, 0.2, -5
    x = (rng.standard_normal((cin, h, w)) * 2).astype(np.float32)
    wq = rng.integers(-127, 128, (cout, cin // groups, 3, 3)).astype(np.int8)
    w_scale = (rng.random(cout) * 0.01 + 1e-3).astype(np.float32)
    bias = rng.standard_normal(cout).astype(np.float32)

    def build(b, i):
        q = b.add_quantize(i, scale=in_scale, zero=in_zero, name="quant")  # 1
        common = {
            "in_scale": in_scale,
            "in_zero": in_zero,
            "stride": (1, 2),
            "padding": (1, 1, 1, 1),
            "groups": groups,
        }
        b.add_qconv(q, wq, w_scale, bias, name="qconv_float", **common)  # 2
        y = b.add_qconv(
            q,
            wq,
            w_scale,
            bias,
            out_scale=out_scale,
            out_zero=out_zero,
            relu=True,
            name="qconv_int8",
            **common,
        )  # 3
        b.add_dequantize(y, scale=out_scale, zero=out_zero, name="dequant")  # 4

    tr = traces(one_op((cin, h, w), build), x)
    xq = same_on_every_isa(tr, 1)
    want_q = torch.clamp(torch.round(torch.from_numpy(x) / in_scale) + in_zero, -128, 127).numpy()
    assert np.array_equal(xq, want_q.transpose(1, 2, 0).astype(np.int8))
    fq = torch.fake_quantize_per_tensor_affine(torch.from_numpy(x), in_scale, in_zero, -128, 127)
    assert np.abs(np.round(fq.numpy() / in_scale + in_zero) - want_q).max() <= 1  # torch's own rounding
    _, want = _qref_conv(
        xq.transpose(2, 0, 1),
        in_zero,
        wq,
        w_scale,
        in_scale,
        bias.astype(np.float64),
        (1, 2),
        (1, 1, 1, 1),
        groups,
    )
    np.testing.assert_allclose(same_on_every_isa(tr, 2), want, rtol=1e-5, atol=1e-4)
    want_out = np.clip(np.round(np.maximum(want, 0) / out_scale) + out_zero, -128, 127)
    got_out = same_on_every_isa(tr, 3)
    assert np.abs(got_out.astype(int) - want_out).max() <= 1
    assert np.mean(got_out == want_out) > 0.99
    np.testing.assert_allclose(same_on_every_isa(tr, 4), (got_out.astype(np.float32) - out_zero) * out_scale)


@pytest.mark.parametrize("c", [1, 64, 65])
def test_int8_conv1d_and_dense_match_the_integer_model(c):
    rng = np.random.default_rng(c + 11)
    t = 29
    x = rng.standard_normal((c, t)).astype(np.float32)
    wq = rng.integers(-127, 128, (6, c, 5)).astype(np.int8)
    w_scale = (rng.random(6) * 0.02 + 1e-3).astype(np.float32)
    lw = rng.integers(-127, 128, (4, 6 * 8)).astype(np.int8)  # 8 = (29 + 4 - 5) // 4 + 1
    l_scale = (rng.random(4) * 0.02 + 1e-3).astype(np.float32)

    def build(b, i):
        q = b.add_quantize(i, scale=0.02, zero=0, name="quant")  # 1
        y = b.add_qconv(
            q,
            wq,
            w_scale,
            None,
            in_scale=0.02,
            in_zero=0,
            out_scale=0.1,
            out_zero=0,
            stride=4,
            padding=(2, 2),
            name="qconv1d",
        )  # 2
        b.add_qlinear(y, lw, l_scale, np.zeros(4, np.float32), in_scale=0.1, in_zero=0, name="qdense")  # 3

    tr = traces(one_op((c, t), build), x)
    xq = same_on_every_isa(tr, 1)
    acc, want = _qref_conv(xq[0].T, 0, wq, w_scale, 0.02, np.zeros(6), 4, (2, 2), 1)
    yq = same_on_every_isa(tr, 2)
    assert np.abs(yq.astype(int) - np.clip(np.round(want / 0.1), -128, 127)).max() <= 1
    flat = yq.reshape(-1).astype(np.float64)
    mult = (np.float32(0.1) * l_scale).astype(np.float64)
    np.testing.assert_allclose(
        same_on_every_isa(tr, 3)[0, 0], (lw.astype(np.float64) @ flat) * mult, rtol=1e-5
    )


def test_int8_ops_refuse_bad_parameters():
    b = GraphBuilder()
    i = b.add_input((3, 4, 4))
    q = b.add_quantize(i, scale=0.1, zero=0, name="quant")
    b.add_output(b.add_dequantize(q, scale=0.1, zero=0, name="deq"))
    recs = b.records
    import struct

    from bitsound.export import bsnn

    rec = bytearray(recs[1])
    struct.pack_into("<f", rec, 8 + 16 + 8, -1.0)  # the quantize scale, after "quant" padded to 8
    recs[1] = bytes(rec)
    with pytest.raises(engine.EngineFileError, match="scale"):
        engine.loads(bsnn.assemble(recs, len(b.graph.tensors)))
