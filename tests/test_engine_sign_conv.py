"""The engine's 1-bit-weight float-activation convolution (sign-select and add) against references.

Seed 002's layers keep float activations and store one bit per weight; the engine runs them
without multiplications (``conv_sign`` in ``engine/model.c``: the input's sign bit flipped where
the weight is -1, then added, in float, tap by tap and channel by channel, 16 outputs of 6
pixels at a time from masks built at each call). Its obvious twin is the ``reference``
instruction set: one output at a time, a plain loop adding ``w < 0 ? -x : x`` in the same order,
so every instruction set gives the same bits. Both are checked against a float64 PyTorch
convolution: a float sum of ``n`` terms is within ``n * 2**-24 * sum |terms|`` of the exact one
(recursive summation). Channels are swept across the 16-output blocks and the 64-bit words of the
packed signs; grouped 1-bit convs keep the double-accumulating path.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bitsound import engine
from bitsound.graph.builder import GraphBuilder

ISAS = engine.available_isas()
U32 = 2.0 ** -24

CASES = [  # cin, cout, (h, w), kernel, stride, padding (top, left, bottom, right), dilation
    (1, 1, (5, 7), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
    (2, 26, (9, 23), (3, 3), (1, 2), (1, 1, 1, 1), (1, 1)),  # mcdonnell-asc's first layer
    (17, 15, (6, 9), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
    (31, 16, (5, 8), (3, 3), (2, 2), (0, 1, 1, 0), (1, 1)),
    (33, 17, (7, 6), (2, 3), (1, 1), (0, 0, 1, 2), (1, 1)),
    (64, 33, (4, 13), (3, 3), (1, 1), (2, 2, 2, 2), (2, 2)),
    (65, 63, (3, 5), (1, 1), (1, 1), (0, 0, 0, 0), (1, 1)),
    (129, 65, (2, 3), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
    (26, 52, (8, 10), (3, 3), (1, 2), (1, 1, 1, 1), (1, 1)),
]


def _graph(cin, cout, size, kernel, stride, padding, dilation, *, groups=1, bias=True, seed=0):
    rng = np.random.default_rng(seed)
    signs = np.where(rng.standard_normal((cout, cin // groups, *kernel)) < 0, -1.0, 1.0)
    scale = rng.uniform(0.05, 0.5, cout)
    b = rng.standard_normal(cout) if bias else None
    g = GraphBuilder()
    x = g.add_input((cin, *size))
    g.add_conv(x, signs, b, stride=stride, padding=padding, dilation=dilation, groups=groups,
               wdtype="sign", weight_scale=scale, name="conv")
    g.add_output(x)
    return g.to_bytes(), signs, scale, b


def _torch_reference(x, signs, scale, bias, stride, padding, dilation, groups=1):
    t, left, bottom, right = padding
    xp = F.pad(torch.from_numpy(x).double()[None], (left, right, t, bottom))
    w = torch.from_numpy(signs).double()
    out = F.conv2d(xp, w, None, stride, 0, dilation, groups)[0]
    absum = F.conv2d(xp.abs(), w.abs(), None, stride, 0, dilation, groups)[0]
    s = torch.from_numpy(scale).view(-1, 1, 1)
    y = out * s + (0 if bias is None else torch.from_numpy(bias).view(-1, 1, 1))
    return y.permute(1, 2, 0).numpy(), (absum * s).permute(1, 2, 0).numpy()


def _conv_output(data: bytes, x: np.ndarray, isa: str) -> np.ndarray:
    trace = engine.loads(data, isa=isa).trace(x)
    return next(value for info, value in trace if info.type == "conv2d")


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}to{c[1]}-k{c[3]}-s{c[4]}-d{c[6]}")
def test_sign_select_and_add_within_float_summation_error(case):
    cin, cout, size, kernel, stride, padding, dilation = case
    data, signs, scale, bias = _graph(*case)
    x = np.random.default_rng(1).standard_normal((cin, *size)).astype(np.float32) * 3
    x[0, 0, 0] = 0.0  # exact zeros select a signed zero: adds nothing
    x[-1, -1, -1] = -0.0
    ref, absum = _torch_reference(x, signs, scale, bias, stride, padding, dilation)
    n_terms = cin * kernel[0] * kernel[1]
    bound = (n_terms + 2) * U32 * absum + 4 * U32 * np.abs(ref)
    outs = {isa: _conv_output(data, x, isa) for isa in ISAS}
    for isa, out in outs.items():
        assert out.shape == ref.shape, isa
        assert (np.abs(out - ref) <= bound).all(), f"{isa}: error {np.abs(out - ref).max():.3g}"
    assert all(np.array_equal(outs[isa], outs["reference"]) for isa in ISAS)


def test_grouped_and_unbiased_sign_convs_still_run():
    for groups, bias in ((2, False), (4, True)):
        data, signs, scale, b = _graph(8, 12, (5, 6), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), groups=groups,
                                       bias=bias)
        x = np.random.default_rng(2).standard_normal((8, 5, 6)).astype(np.float32)
        ref, _ = _torch_reference(x, signs, scale, b, (1, 1), (1, 1, 1, 1), (1, 1), groups)
        for isa in ISAS:
            assert np.allclose(_conv_output(data, x, isa), ref, atol=1e-5), (groups, isa)


def test_one_dimensional_sign_conv():
    rng = np.random.default_rng(3)
    signs = np.where(rng.standard_normal((19, 5, 7)) < 0, -1.0, 1.0)
    g = GraphBuilder()
    x = g.add_input((5, 40))
    g.add_conv(x, signs, None, stride=2, padding=(3, 3), wdtype="sign", weight_scale=np.full(19, 0.25),
               name="conv")
    g.add_output(x)
    feats = rng.standard_normal((5, 40)).astype(np.float32)
    want = F.conv1d(torch.from_numpy(feats).double()[None], torch.from_numpy(signs).double(), None, 2, 3)
    want = (want[0] * 0.25).t().numpy()
    for isa in ISAS:
        trace = engine.loads(g.to_bytes(), isa=isa).trace(feats)
        out = next(value for info, value in trace if info.type == "conv1d").reshape(want.shape)
        assert np.allclose(out, want, atol=1e-5), isa
