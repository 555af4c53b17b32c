"""The fused bit-sliced binary conv (``slice`` form) and the engine's thread pool.

The slice form is checked bit-exactly against PyTorch's ``conv2d(sign(x), sign(w))`` and the
threshold rule on every instruction set that has it (portable C on 64-bit rows, AVX2 on 256-bit
rows, AVX-512 on 512-bit rows, and the AVX-512 source on plain-C stand-ins for its instructions),
sweeping the 64-bit word boundaries of the input and output channels (1, 31, 32, 33, 63, 64, 65,
127, 128, 129), maps that span several blocks of 512 positions and end inside one, every kind of
border (3x3 and 5x5 'same', asymmetric, dilated, valid, 1-D), thresholds outside the reachable
range, flipped channels, and plans whose channels list nothing. Threads must give the same bits
and floats whatever their number, split by example or by pixel block.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bitsound import engine
from bitsound.errors import ConfigError
from bitsound.graph.builder import GraphBuilder

SLICE_ISAS = [i for i in ("scalar", "scalar-bitserial", "avx2", "avx512", "avx512-emulated")
              if engine._lib().isa_available(i)]
CHANNELS = [1, 31, 32, 33, 63, 64, 65, 127, 128, 129]
# (kernel, padding (top, left, bottom, right), dilation, H, W); stride 1 throughout
GEOMETRIES = [
    ((3, 3), (1, 1, 1, 1), (1, 1), 13, 47),  # 611 positions: a whole block of 512 and a partial one
    ((5, 5), (4, 4, 4, 4), (2, 2), 17, 19),  # dilated 'same': wide borders, several classes
    ((2, 2), (0, 0, 1, 1), (1, 1), 12, 23),  # PyTorch 'same' for an even kernel
    ((3, 3), (0, 0, 0, 0), (1, 1), 14, 30),  # valid: output narrower than the input rows
    ((3, 1), (1, 0, 1, 0), (1, 1), 40, 17),
    ((1, 7), (0, 3, 0, 3), (1, 1), 1, 300),  # a conv1d
]


def _signs(rng, shape) -> np.ndarray:
    return np.where(rng.standard_normal(shape) < 0, -1, 1).astype(np.int8)


def _torch_dot(xs: np.ndarray, w: np.ndarray, pad, dil) -> np.ndarray:
    """[h, w, cout] integer dot products, zero padding applied to the ±1 input."""
    xt = F.pad(torch.from_numpy(xs).double()[None], (pad[1], pad[3], pad[0], pad[2]))
    y = F.conv2d(xt, torch.from_numpy(w).double(), dilation=dil)[0]
    return y.permute(1, 2, 0).numpy().astype(np.int64)


def _graph(cin, h, w, weight, pad, dil, thr, flip) -> bytes:
    wr = GraphBuilder()
    x = wr.add_input((cin, h, w))
    b = wr.add_pack(x, name="pack")
    wr.add_bconv2d(b, weight, padding=pad, dilation=dil, out_mode="bits", thr=thr, flip=flip, name="bconv")
    wr.add_output(x)
    return wr.to_bytes()


def _case(cin, cout, gi, seed, *, sparse=False):
    k, pad, dil, h, w = GEOMETRIES[gi]
    rng = np.random.default_rng(seed)
    weight = _signs(rng, (cout, cin, *k))
    weight[0] = 1  # nothing listed for this channel in the plan
    if sparse and cout > 2:  # nearly constant channels: short lists, few count planes
        weight[1:] = 1
        flat = weight.reshape(cout, -1)
        for o in range(1, cout):
            flat[o, rng.choice(flat.shape[1], 1 + o % 5, replace=False)] = -1
    x = rng.standard_normal((cin, h, w)).astype(np.float32)
    x[rng.random(x.shape) < 0.05] = 0.0  # sign(0) = +1
    xs = np.where(x < 0, -1, 1).astype(np.int8)
    dot = _torch_dot(xs, weight, pad, dil)
    n = cin * k[0] * k[1]
    thr = rng.integers(-n // 8, n // 8 + 1, cout)
    thr[-1] = n + 5  # never reached: every output -1
    if cout > 1:
        thr[cout // 2] = -n - 5  # always reached: every output +1
    flip = rng.integers(0, 2, cout)
    want = np.where(np.where(flip == 1, -dot, dot) >= thr, 1, -1)
    return _graph(cin, h, w, weight, pad, dil, thr, flip), x, want, n


SWEEP = [(cin, CHANNELS[(3 * i + 2) % len(CHANNELS)], gi) for i, cin in enumerate(CHANNELS)
         for gi in range(len(GEOMETRIES))]


@pytest.mark.parametrize("cin,forms", [(1024, ("serial", "slice")), (1792, ("serial", "slice")),
                                       (1800, ("word",))])
def test_kernels_up_to_16128_bits_keep_the_fast_forms(cin, forms):
    """A plan's rows are uint16 offsets (BS_ROW_OFFSET): 3x3 kernels of 1024 channels (9216 bits,
    e.g. a ResNet's last stage) and 1792 (16128) still run bit-serial and sliced, 1800 (16200 bits)
    word-parallel; all give torch's bits."""
    rng = np.random.default_rng(cin)
    cout, h, w = 5, 4, 5
    weight = _signs(rng, (cout, cin, 3, 3))
    x = rng.standard_normal((cin, h, w)).astype(np.float32)
    dot = _torch_dot(np.where(x < 0, -1, 1).astype(np.int8), weight, (1, 1, 1, 1), (1, 1))
    thr, flip = rng.integers(-40, 40, cout), rng.integers(0, 2, cout)
    want = np.where(np.where(flip == 1, -dot, dot) >= thr, 1, -1)
    data = _graph(cin, h, w, weight, (1, 1, 1, 1), (1, 1), thr, flip)
    isa = "scalar-bitserial"  # has both forms
    for form in ("serial", "slice"):
        e = engine.loads(data, isa=isa, bconv=form)
        assert e.forms[2] == (form if form in forms else "word"), (cin, form, e.forms)
        assert np.array_equal(e.trace(x)[2][1], want), (cin, form)


@pytest.mark.parametrize("cin,cout,gi", SWEEP, ids=lambda v: str(v))
def test_slice_form_matches_torch_on_every_isa(cin, cout, gi):
    data, x, want, n = _case(cin, cout, gi, cin * 100 + cout + gi)
    for isa in SLICE_ISAS:
        e = engine.loads(data, isa=isa, bconv="slice")
        assert e.forms[2] == "slice", (isa, e.forms)
        got = e.trace(x)[2][1]
        assert np.array_equal(got, want), (isa, int((got != want).sum()))


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("cin,cout", [(1, 33), (96, 65), (129, 3), (300, 9)])
def test_slice_form_long_kernels_and_sparse_plans(cin, cout, sparse):
    """1-D kernels of 131 taps on one input channel (43 border classes: 21 on each side), plans
    of several chunks (96 x 9 = 864 and 300 x 9 rows: more than 768), nearly constant channels
    (counts below 32)."""
    cases = []
    if cin == 1:
        rng = np.random.default_rng(cout)
        weight = _signs(rng, (cout, 1, 1, 131))
        x = rng.standard_normal((1, 1, 700)).astype(np.float32)
        # 20 taps of padding: sliced; 65 (131 border classes, more than the form takes): not
        for pad, form in (((0, 20, 0, 20), "slice"), ((0, 65, 0, 65), "word")):
            dot = _torch_dot(np.where(x < 0, -1, 1).astype(np.int8), weight, pad, (1, 1))
            thr, flip = rng.integers(-20, 20, cout), rng.integers(0, 2, cout)
            want = np.where(np.where(flip == 1, -dot, dot) >= thr, 1, -1)
            cases.append((_graph(1, 1, 700, weight, pad, (1, 1), thr, flip), x, want, form))
    else:
        data, x, want, _ = _case(cin, cout, 0, cin + cout, sparse=sparse)
        cases.append((data, x, want, "slice"))
    for data, x, want, form in cases:
        for isa in SLICE_ISAS:
            e = engine.loads(data, isa=isa, bconv="slice")
            assert e.forms[2] in ((form,) if form == "slice" else ("word", "serial")), (isa, e.forms)
            assert np.array_equal(e.trace(x)[2][1], want), isa


@pytest.mark.parametrize("cin", [8, 64])
def test_every_form_agrees_and_auto_picks_slice_for_stride_one_bit_layers(cin):
    data, x, want, _ = _case(cin, 64, 0, 3)  # 8 x 9 = 72 kernel bits: the plan exists for any K
    for isa in SLICE_ISAS:
        for form in ("word", "serial", "slice", "auto"):
            e = engine.loads(data, isa=isa, bconv=form)
            assert np.array_equal(e.trace(x)[2][1], want), (isa, form)
        assert engine.loads(data, isa=isa).forms[2] == "slice", isa
    assert engine.loads(data, isa="reference").forms[2] == "reference"


def test_auto_keeps_word_parallel_where_blocks_would_be_mostly_empty():
    """512 -> 512 on 8 x 16: 128 positions fill a quarter of a 512-position block; the cost model
    picks the word-parallel kernel on AVX-512 (measured 2.4x faster there), slice on AVX2."""
    if "avx512" not in engine.available_isas():
        pytest.skip("needs AVX-512")
    rng = np.random.default_rng(0)
    data = _graph(512, 8, 16, _signs(rng, (512, 512, 3, 3)), (1, 1, 1, 1), (1, 1), np.zeros(512, int),
                  np.zeros(512, int))
    assert engine.loads(data, isa="avx512").forms[2] == "word"
    assert engine.loads(data, isa="avx2").forms[2] == "slice"


def test_slice_needs_stride_one_and_bit_output():
    rng = np.random.default_rng(2)
    wr = GraphBuilder()
    x = wr.add_input((64, 20, 20))
    b = wr.add_pack(x, name="pack")
    wr.add_bconv2d(b, _signs(rng, (32, 64, 3, 3)), stride=(2, 2), padding=(1, 1, 1, 1), out_mode="bits",
                   thr=np.zeros(32, int), flip=np.zeros(32, int), name="strided")
    wr.add_bconv2d(b, _signs(rng, (32, 64, 3, 3)), padding=(1, 1, 1, 1), out_mode="float",
                   scale=np.ones(32), bias=np.zeros(32), name="float_out")
    wr.add_output(x)
    e = engine.loads(wr.to_bytes(), isa="scalar", bconv="slice")
    assert e.forms[2:4] == ["word", "word"]  # no slice form: the next one down the kernel table has
    if "avx2" in engine.available_isas():
        assert engine.loads(wr.to_bytes(), isa="avx2", bconv="slice").forms[3] == "serial"


def _model_graph(rng) -> bytes:
    """pack -> bits conv -> bit max-pool -> bits conv -> float conv -> float dense: a small binary
    audio-like model whose layers take every form."""
    wr = GraphBuilder()
    x = wr.add_input((24, 20, 70))
    b = wr.add_pack(x, name="pack")
    c1 = wr.add_bconv2d(b, _signs(rng, (48, 24, 3, 3)), padding=(1, 1, 1, 1), out_mode="bits",
                        thr=rng.integers(-9, 9, 48), flip=rng.integers(0, 2, 48), name="c1")
    p1 = wr.add_maxpool(c1, kernel=(2, 2), stride=(2, 2), name="p1")
    c2 = wr.add_bconv2d(p1, _signs(rng, (65, 48, 3, 3)), padding=(1, 1, 1, 1), out_mode="bits",
                        thr=rng.integers(-9, 9, 65), flip=rng.integers(0, 2, 65), name="c2")
    c3 = wr.add_bconv2d(c2, _signs(rng, (33, 65, 3, 3)), stride=(2, 2), out_mode="float",
                        scale=rng.standard_normal(33), bias=rng.standard_normal(33), name="c3")
    g = wr.add_gap(c3, name="gap")
    wr.add_output(wr.add_linear(g, rng.standard_normal((5, 33)), rng.standard_normal(5), name="head"))
    return wr.to_bytes()


@pytest.mark.parametrize("isa", [i for i in ("scalar", "avx2", "avx512") if i in engine.available_isas()])
def test_threads_give_identical_results(isa):
    rng = np.random.default_rng(4)
    data = _model_graph(rng)
    xs = rng.standard_normal((7, 24, 20, 70)).astype(np.float32)
    one = engine.loads(data, isa=isa, threads=1)
    want, want1 = one.predict(xs), one.predict(xs[:1])
    assert np.array_equal(want, engine.loads(data, isa="reference").predict(xs))
    trace = [v for _, v in one.trace(xs[0])]
    for threads in (2, 3, 8):
        e = engine.loads(data, isa=isa, threads=threads)
        assert e.threads == threads and e.forms == one.forms
        assert np.array_equal(e.predict(xs), want), threads  # 7 >= threads: split by example
        assert np.array_equal(e.predict(xs[:1]), want1), threads  # one example: by pixel block
        for a, (_, b) in zip(trace, e.trace(xs[0]), strict=True):  # every op, blocks over threads
            assert np.array_equal(a, b), threads
        assert len(e.time_op(xs[0], 2, repeats=2)) == 2


def test_threads_and_forms_are_validated():
    data = _model_graph(np.random.default_rng(1))
    for bad in (0, -1, 257, 1.5, True):
        with pytest.raises(ConfigError, match="threads must be an integer"):
            engine.loads(data, threads=bad)
    with pytest.raises(ConfigError, match="bconv must be one of"):
        engine.loads(data, bconv="fast")
    e = engine.loads(data, threads=2)
    assert "threads=2" in repr(e)
    from bitsound.engine.bench import bench_layer

    for bad in (0, 1.5):  # the engine's own check, before torch is handed the threads
        with pytest.raises(ConfigError, match="threads must be an integer"):
            bench_layer(8, 8, 4, 3, threads=bad, budget=0.01)


def test_cli_threads_and_forms(capsys, tmp_path):
    import json

    from bitsound.cli import main

    assert main(["bench", "layer", "--cin", "64", "--cout", "64", "--size", "16x20", "--threads", "2",
                 "--bconv", "slice", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["threads"] == 2 and result["form"] == ("slice" if SLICE_ISAS else "word")
    assert result["engine_ms"] > 0 and result["speedup"] > 0
    for bad in ("0", "x", "300"):
        with pytest.raises(SystemExit):
            main(["bench", "layer", "--threads", bad])
        assert "threads must be an integer" in capsys.readouterr().err
    # --threads is the engine's: refused for the PyTorch model
    model = str(tmp_path / "model.pt")
    assert main(["predict", "--model", model, "--threads", "2", str(tmp_path / "a.wav")]) == 2
    assert "--engine" in capsys.readouterr().err


@pytest.mark.parametrize("threads", [2, 3])
def test_pool_threads_run_at_the_same_time(threads):
    """One task per thread, each waiting until all have started: only a pool whose threads really
    run concurrently completes them all (a serial one times out after the first)."""
    assert engine._lib()._pool_check(threads, 20.0) == threads
    assert engine._lib()._pool_check(1, 0.0) == 1
