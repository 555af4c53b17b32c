"""Op-level parity of the C engine: every kernel against its plain reference and against PyTorch.

Each test builds a one-op graph with :class:`bitsound.graph.builder.GraphBuilder`, runs it
through the binding on every instruction set this machine has (plus the AVX-512 kernel's source
on plain C stand-ins, ``avx512-emulated``) and compares:

- binary ops bit-exactly: integer dot products equal PyTorch's ``conv2d(sign(x), sign(w))``
  (zero padding after binarizing), thresholded bits equal the rule ``+1 iff (flip ? -dot : dot)
  >= thr``, ``dot * scale + bias`` equals the same float32 arithmetic in numpy, bit max-pools
  equal PyTorch's max-pool of ±1 values;
- float ops within 1e-5 relative (their summation order differs from PyTorch's).

Channel counts sweep the 64-bit word boundaries (1, 31, 32, 33, 63, 64, 65, 127, 128, 129),
spatial sizes are odd, and strides, paddings (symmetric, asymmetric 'same'), dilations and
kernel shapes vary.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bitsound import engine
from bitsound.graph.bits import pack_signs, unpack_bits
from bitsound.graph.builder import GraphBuilder

# + the AVX-512 kernels' sources on stand-ins for AVX-512 instructions and the bit-serial algorithm
# in portable C
TEST_ONLY = ("avx512-emulated", "scalar-bitserial")
ISAS = engine.available_isas() + [i for i in TEST_ONLY if engine._lib().isa_available(i)]
FAST_ISAS = [i for i in ISAS if i != "reference"]
CHANNELS = [1, 31, 32, 33, 63, 64, 65, 127, 128, 129]
# (kernel, stride, padding (top, left, bottom, right), dilation, H, W)
GEOMETRIES = [
    ((3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 7, 9),
    ((3, 3), (2, 2), (0, 0, 0, 0), (1, 1), 9, 7),
    ((1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 5, 3),
    ((2, 2), (1, 1), (0, 0, 1, 1), (1, 1), 6, 5),  # PyTorch 'same' for an even kernel
    ((5, 5), (3, 2), (2, 2, 2, 2), (1, 1), 11, 13),
    ((3, 3), (1, 1), (2, 2, 2, 2), (2, 2), 9, 9),
    ((1, 3), (1, 1), (0, 1, 0, 1), (1, 1), 1, 15),  # a conv1d
    ((3, 2), (1, 3), (1, 0, 1, 1), (1, 1), 5, 8),
    ((3, 3), (1, 1), (2, 2, 2, 2), (1, 1), 1, 1),  # every output a border output
]


def _signs(rng, shape) -> np.ndarray:
    return np.where(rng.standard_normal(shape) < 0, -1, 1).astype(np.int8)


def _torch_dot(x_signs: np.ndarray, w_signs: np.ndarray, stride, pad, dil) -> np.ndarray:
    """[h, w, cout] integer dot products: zero padding applied to the ±1 input."""
    xt = F.pad(torch.from_numpy(x_signs).double()[None], (pad[1], pad[3], pad[0], pad[2]))
    y = F.conv2d(xt, torch.from_numpy(w_signs).double(), stride=stride, dilation=dil)[0]
    return y.permute(1, 2, 0).numpy().astype(np.int64)


def _bconv_graph(cin, h, w, weight, geom, mode, **kw):
    k, stride, pad, dil = geom
    wr = GraphBuilder()
    x = wr.add_input((cin, h, w))
    b = wr.add_pack(x, name="pack")
    wr.add_bconv2d(b, weight, stride=stride, padding=pad, dilation=dil, out_mode=mode, name="bconv", **kw)
    wr.add_output(x)  # the graph's logits are its input; the tests read the ops through trace()
    return wr.to_bytes()


def _trace(data: bytes, x: np.ndarray, isa: str):
    return engine.loads(data, isa=isa).trace(x)


CASES = [(cin, CHANNELS[(3 * i + 1) % len(CHANNELS)], g) for i, cin in enumerate(CHANNELS)
         for g in range(len(GEOMETRIES))]


@pytest.mark.parametrize("cin,cout,gi", CASES, ids=lambda v: str(v))
def test_binary_conv_matches_torch_on_every_isa(cin, cout, gi):
    k, stride, pad, dil, h, w = GEOMETRIES[gi]
    rng = np.random.default_rng(cin * 1000 + cout * 10 + gi)
    weight = _signs(rng, (cout, cin, *k))
    x = rng.standard_normal((cin, h, w)).astype(np.float32)
    x[rng.random(x.shape) < 0.05] = 0.0  # sign(0) = +1
    xs = np.where(x < 0, -1, 1).astype(np.int8)
    dot = _torch_dot(xs, weight, stride, pad, dil)
    n = cin * k[0] * k[1]
    thr = rng.integers(-n, n + 1, cout)
    flip = rng.integers(0, 2, cout)
    scale = rng.standard_normal(cout).astype(np.float32)
    bias = rng.standard_normal(cout).astype(np.float32)
    geom = (k, stride, pad, dil)
    files = {"dot": _bconv_graph(cin, h, w, weight, geom, "dot"),
             "bits": _bconv_graph(cin, h, w, weight, geom, "bits", thr=thr, flip=flip),
             "float": _bconv_graph(cin, h, w, weight, geom, "float", scale=scale, bias=bias)}
    want_bits = np.where(np.where(flip == 1, -dot, dot) >= thr, 1, -1)
    want_float = dot.astype(np.float32) * scale + bias
    for isa in ISAS:
        trace = _trace(files["dot"], x, isa)
        assert np.array_equal(trace[1][1], xs.transpose(1, 2, 0)), isa  # the packed input
        assert np.array_equal(trace[2][1].astype(np.int64), dot), isa
        assert np.array_equal(_trace(files["bits"], x, isa)[2][1], want_bits), isa
        assert np.array_equal(_trace(files["float"], x, isa)[2][1], want_float), isa


# the bit-serial path runs for kernels of >= 128 bits over blocks of >= 128 output pixels (blocks of
# 256: 20x20 = 256 + 144 pixels, both bit-serial; 17x17 = 256 + 33, the tail word-parallel); with
# 3x3 kernels, cin >= 86 spans several chunks of the plan (768 positions each)
BITSERIAL_CHANNELS = [(15, 3), (57, 1), (64, 31), (65, 33), (127, 64), (128, 65), (129, 129), (256, 8),
                      (300, 40)]
BITSERIAL = [(cin, cout, hw, geom) for cin, cout in BITSERIAL_CHANNELS
             for hw, geom in [((20, 20), 0), ((17, 17), 0), ((25, 23), 1), ((16, 18), 5)]]


@pytest.mark.parametrize("cin,cout,hw,gi", BITSERIAL, ids=lambda v: str(v))
def test_bitserial_blocks_match_torch(cin, cout, hw, gi):
    k, stride, pad, dil, _, _ = GEOMETRIES[gi]
    h, w = hw
    rng = np.random.default_rng(cin * 7 + cout + h)
    weight = _signs(rng, (cout, cin, *k))
    weight[0] = 1  # an all-+1 channel: nothing listed in the bit-serial plan
    x = rng.standard_normal((cin, h, w)).astype(np.float32)
    dot = _torch_dot(np.where(x < 0, -1, 1).astype(np.int8), weight, stride, pad, dil)
    data = _bconv_graph(cin, h, w, weight, (k, stride, pad, dil), "dot")
    for isa in ISAS:
        assert np.array_equal(_trace(data, x, isa)[2][1].astype(np.int64), dot), isa


@pytest.mark.parametrize("all_sparse", [True, False])
def test_bitserial_pairs_share_rows_exactly(all_sparse):
    """Channel pairs that are equal, complementary, nearly constant, and a lone last channel.

    With every channel nearly constant each lists fewer than 32 positions, so the counts need no
    plane of weight 32 or more; otherwise random channels list hundreds."""
    cin, h, w, k = 64, 20, 20, (3, 3)
    rng = np.random.default_rng(5)
    weight = np.ones((7, cin, *k), dtype=np.int8)
    for o in range(7):  # a few flipped taps per channel
        flat = weight[o].reshape(-1)
        flat[rng.choice(flat.size, 3 + 4 * o, replace=False)] = -1
    weight[1] = weight[0]  # a pair listing the same positions
    weight[3] = -weight[2]  # a pair of complements
    weight[5] = -weight[5]  # nearly all -1
    if not all_sparse:
        weight[2] = _signs(rng, weight[2].shape)
        weight[3] = -weight[2]
        weight[6] = _signs(rng, weight[6].shape)  # the lone last channel
    x = rng.standard_normal((cin, h, w)).astype(np.float32)
    pad = (1, 1, 1, 1)
    dot = _torch_dot(np.where(x < 0, -1, 1).astype(np.int8), weight, (1, 1), pad, (1, 1))
    data = _bconv_graph(cin, h, w, weight, (k, (1, 1), pad, (1, 1)), "dot")
    for isa in ISAS:
        assert np.array_equal(_trace(data, x, isa)[2][1].astype(np.int64), dot), isa


@pytest.mark.parametrize("cin,cout,size", [(2600, 5, 3), (1024, 7, 4), (129, 3, 20)])
def test_long_dot_products_do_not_overflow_byte_counters(cin, cout, size):
    """Hundreds of 256-bit vectors per output: the AVX2 byte counters must be widened in time."""
    rng = np.random.default_rng(cin)
    k = (size, size) if size == 20 else (3, 3)
    pad = (0, 0, 0, 0) if size == 20 else (1, 1, 1, 1)
    weight = _signs(rng, (cout, cin, *k))
    x = rng.standard_normal((cin, size, size)).astype(np.float32)
    dot = _torch_dot(np.where(x < 0, -1, 1).astype(np.int8), weight, (1, 1), pad, (1, 1))
    data = _bconv_graph(cin, size, size, weight, (k, (1, 1), pad, (1, 1)), "dot")
    # input all -1 against weights all +1: every bit of every vector counts, the worst case for
    # a byte counter
    minus = np.full((cin, size, size), -1.0, np.float32)
    ones = np.ones_like(weight)
    worst = _torch_dot(-np.ones((cin, size, size), np.int8), ones, (1, 1), pad, (1, 1))
    worst_data = _bconv_graph(cin, size, size, ones, (k, (1, 1), pad, (1, 1)), "dot")
    for isa in ISAS:
        assert np.array_equal(_trace(data, x, isa)[2][1].astype(np.int64), dot), isa
        assert np.array_equal(_trace(worst_data, minus, isa)[2][1].astype(np.int64), worst), isa


@pytest.mark.parametrize("c", CHANNELS + [200, 256])
def test_pack_matches_sign_with_zero_as_plus_one(c):
    rng = np.random.default_rng(c)
    x = rng.standard_normal((c, 3, 5)).astype(np.float32)
    x.flat[:: 7] = 0.0
    x.flat[1:: 11] = -0.0
    x.flat[2:: 13] = -1e-38
    wr = GraphBuilder()
    i = wr.add_input((c, 3, 5))
    wr.add_pack(i, name="pack")
    wr.add_output(i)
    data = wr.to_bytes()
    want = np.where(x < 0, -1, 1).transpose(1, 2, 0)
    want_words = pack_signs(x.transpose(1, 2, 0))
    assert np.array_equal(unpack_bits(want_words, c), want)
    for isa in ISAS:
        got = _trace(data, x, isa)[1][1]
        assert np.array_equal(got, want), isa


def test_pack_maps_nan_to_plus_one():
    """Documented: the engine packs NaN as +1 (bit 0); PyTorch's sign keeps NaN."""
    x = np.full((3, 1, 2), np.nan, np.float32)
    wr = GraphBuilder()
    i = wr.add_input((3, 1, 2))
    wr.add_pack(i, name="pack")
    wr.add_output(i)
    for isa in ISAS:
        assert (_trace(wr.to_bytes(), x, isa)[1][1] == 1).all()


POOLS = [((2, 2), (2, 2), (0, 0), False), ((2, 2), (2, 2), (0, 0), True), ((3, 3), (2, 2), (1, 1), False),
         ((3, 3), (1, 1), (1, 1), True), ((2, 3), (1, 2), (0, 1), True)]


@pytest.mark.parametrize("c", [1, 33, 64, 129])
@pytest.mark.parametrize("pi", range(len(POOLS)))
def test_bit_maxpool_matches_torch(c, pi):
    k, s, p, ceil = POOLS[pi]
    rng = np.random.default_rng(c + pi)
    x = rng.standard_normal((c, 7, 9)).astype(np.float32)
    signs = np.where(x < 0, -1.0, 1.0)
    want = F.max_pool2d(torch.from_numpy(signs)[None], k, s, p, ceil_mode=ceil)[0].permute(1, 2, 0).numpy()
    want_f = F.max_pool2d(torch.from_numpy(x)[None], k, s, p, ceil_mode=ceil)[0].permute(1, 2, 0).numpy()
    wr = GraphBuilder()
    i = wr.add_input((c, 7, 9))
    b = wr.add_pack(i, name="pack")
    wr.add_maxpool(b, kernel=k, stride=s, padding=p, ceil_mode=ceil, name="bitpool")
    wr.add_maxpool(i, kernel=k, stride=s, padding=p, ceil_mode=ceil, name="floatpool")
    wr.add_output(i)
    for isa in ISAS:
        trace = _trace(wr.to_bytes(), x, isa)
        assert np.array_equal(trace[2][1], want.astype(np.int8)), isa
        assert np.array_equal(trace[3][1], want_f), isa


@pytest.mark.parametrize("cin,cout", [(1, 16), (3, 33), (16, 32)])
@pytest.mark.parametrize("gi", [0, 1, 3, 4, 5, 7])
def test_float_conv_matches_torch(cin, cout, gi):
    k, stride, pad, dil, h, w = GEOMETRIES[gi]
    rng = np.random.default_rng(cin + gi)
    weight = rng.standard_normal((cout, cin, *k)).astype(np.float32)
    bias = rng.standard_normal(cout).astype(np.float32)
    x = rng.standard_normal((cin, h, w)).astype(np.float32)
    xt = F.pad(torch.from_numpy(x)[None], (pad[1], pad[3], pad[0], pad[2]))
    want = F.conv2d(xt, torch.from_numpy(weight), torch.from_numpy(bias), stride=stride, dilation=dil)
    want = want[0].permute(1, 2, 0).numpy()
    wr = GraphBuilder()
    i = wr.add_input((cin, h, w))
    wr.add_conv2d(i, weight, bias, stride=stride, padding=pad, dilation=dil, name="conv")
    wr.add_output(i)
    got = _trace(wr.to_bytes(), x, "scalar")[1][1]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_float_ops_match_torch():
    rng = np.random.default_rng(7)
    c, h, w = 6, 5, 7
    x = (rng.standard_normal((c, h, w)) * 3).astype(np.float32)
    scale, shift = rng.standard_normal(c), rng.standard_normal(c)
    lw, lb = rng.standard_normal((4, c * h * w)), rng.standard_normal(4)
    wr = GraphBuilder()
    i = wr.add_input((c, h, w))
    a = wr.add_affine(i, scale, shift, name="affine")
    r = wr.add_act(a, "relu", name="relu")
    t = wr.add_act(a, "tanh", name="tanh")
    g = wr.add_gap(a, name="gap")
    lin = wr.add_linear(i, lw.reshape(4, c, h, w).transpose(0, 2, 3, 1).reshape(4, -1), lb, name="linear")
    wr.add_output(lin)
    trace = _trace(wr.to_bytes(), x, "scalar")
    xt = torch.from_numpy(x).double()
    aff = xt * torch.from_numpy(scale)[:, None, None] + torch.from_numpy(shift)[:, None, None]
    hwc = lambda v: v.permute(1, 2, 0).numpy()  # noqa: E731
    tol = {"rtol": 1e-5, "atol": 1e-5}
    np.testing.assert_allclose(trace[a][1], hwc(aff), **tol)
    np.testing.assert_allclose(trace[r][1], hwc(aff.clamp(min=0)), **tol)
    np.testing.assert_allclose(trace[t][1], hwc(aff.tanh()), **tol)
    np.testing.assert_allclose(trace[g][1].reshape(-1), aff.mean(dim=(1, 2)).numpy(), **tol)
    want_lin = torch.from_numpy(lw) @ xt.reshape(-1) + torch.from_numpy(lb)
    np.testing.assert_allclose(trace[lin][1].reshape(-1), want_lin.numpy(), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("mode", ["band", "example", "none"])
@pytest.mark.parametrize("floor_db", [None, 20.0])
def test_feature_norm_matches_torch(mode, floor_db):
    from bitsound.models.cnn import FeatureNorm

    rng = np.random.default_rng(3)
    x = (rng.standard_normal((2, 9, 11)) * 4 - 10).astype(np.float32)
    want = FeatureNorm(mode, floor_db=floor_db)(torch.from_numpy(x)[None])[0].permute(1, 2, 0).numpy()
    wr = GraphBuilder()
    i = wr.add_input((2, 9, 11))
    n = wr.add_feature_norm(i, mode=mode, floor_db=floor_db, eps=1e-5, name="norm")
    wr.add_output(n)
    got = engine.loads(wr.to_bytes()).predict(x[None])[0].reshape(9, 11, 2)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("ca,cb,mode,fn", [
    (8, 8, 0, lambda b: b),
    (8, 3, 1, lambda b: F.pad(b, (0, 0, 0, 0, 0, 5))),
    (4, 12, 2, lambda b: b.unflatten(0, (4, 3)).mean(dim=1)),
])
def test_add_shortcuts_match_torch(ca, cb, mode, fn):
    rng = np.random.default_rng(ca + cb)
    x = rng.standard_normal((ca + cb, 3, 5)).astype(np.float32)
    wr = GraphBuilder()
    i = wr.add_input((ca + cb, 3, 5))
    # split the input into a (first ca channels) and b (last cb) with 1x1 selection convs
    sel_a = np.eye(ca + cb)[:ca].reshape(ca, ca + cb, 1, 1)
    sel_b = np.eye(ca + cb)[ca:].reshape(cb, ca + cb, 1, 1)
    a = wr.add_conv2d(i, sel_a, None, name="a")
    b = wr.add_conv2d(i, sel_b, None, name="b")
    s = wr.add_add(a, b, mode=mode, name="add")
    wr.add_output(s)
    got = engine.loads(wr.to_bytes()).predict(x[None])[0].reshape(3, 5, ca)
    xt = torch.from_numpy(x)
    want = (xt[:ca] + fn(xt[ca:])).permute(1, 2, 0).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_rank1_input_and_conv1d_match_torch():
    rng = np.random.default_rng(5)
    cin, cout, t = 33, 65, 50
    w = _signs(rng, (cout, cin, 1, 7))
    x = rng.standard_normal((cin, t)).astype(np.float32)
    wr = GraphBuilder()
    i = wr.add_input((cin, t))
    b = wr.add_pack(i, name="pack")
    c = wr.add_bconv2d(b, w, stride=(1, 2), padding=(0, 3, 0, 3), out_mode="dot", name="bconv1d")
    wr.add_output(c)
    want = F.conv1d(torch.from_numpy(np.where(x < 0, -1.0, 1.0))[None], torch.from_numpy(w[:, :, 0]).double(),
                    stride=2, padding=3)[0].T.numpy()
    for isa in ISAS:
        e = engine.loads(wr.to_bytes(), isa=isa)
        assert e.feature_shape == (cin, t)
        assert np.array_equal(e.predict(x[None])[0].reshape(-1, cout), want), isa


def test_binary_dense_is_a_whole_map_kernel():
    """BinaryLinear over a flattened (c, h, w) map == a binary conv whose kernel is the map."""
    rng = np.random.default_rng(9)
    c, h, w, n = 65, 5, 3, 17
    weight = _signs(rng, (n, c * h * w))
    x = rng.standard_normal((c, h, w)).astype(np.float32)
    want = weight.astype(np.int64) @ np.where(x < 0, -1, 1).reshape(-1)
    wr = GraphBuilder()
    i = wr.add_input((c, h, w))
    b = wr.add_pack(i, name="pack")
    d = wr.add_bconv2d(b, weight.reshape(n, c, h, w), out_mode="dot", name="dense")
    wr.add_output(d)
    for isa in ISAS:
        assert np.array_equal(engine.loads(wr.to_bytes(), isa=isa).predict(x[None])[0].astype(np.int64), want)


def test_fast_paths_agree_with_reference_on_a_batch():
    rng = np.random.default_rng(11)
    cin, cout = 96, 70
    weight = _signs(rng, (cout, cin, 3, 3))
    thr, flip = rng.integers(-50, 50, cout), rng.integers(0, 2, cout)
    wr = GraphBuilder()
    i = wr.add_input((cin, 9, 10))
    b = wr.add_pack(i, name="pack")
    t = wr.add_bconv2d(b, weight, padding=(1, 1, 1, 1), out_mode="bits", thr=thr, flip=flip, name="t")
    p = wr.add_maxpool(t, kernel=(2, 2), stride=(2, 2), ceil_mode=True, name="pool")
    d = wr.add_bconv2d(p, _signs(rng, (5, cout, 5, 5)), out_mode="dot", name="dense")
    wr.add_output(d)
    x = rng.standard_normal((6, cin, 9, 10)).astype(np.float32)
    want = engine.loads(wr.to_bytes(), isa="reference").predict(x)
    for isa in FAST_ISAS:
        assert np.array_equal(engine.loads(wr.to_bytes(), isa=isa).predict(x), want), isa


def test_isa_choice():
    assert "reference" in engine.available_isas() and "scalar" in engine.available_isas()
    assert engine.auto_isa() in engine.available_isas()
    wr = GraphBuilder()
    wr.add_output(wr.add_input((1, 2, 2)))
    assert engine.loads(wr.to_bytes()).isa == engine.auto_isa()
    for isa in ("avx2", "avx512"):
        if isa not in engine.available_isas():
            with pytest.raises(engine.EngineFileError, match="not available"):
                engine.loads(wr.to_bytes(), isa=isa)
    from bitsound.errors import ConfigError
    with pytest.raises(ConfigError, match="isa must be one of"):
        engine.loads(wr.to_bytes(), isa="neon")
