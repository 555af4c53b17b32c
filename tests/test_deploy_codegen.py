"""The C code generator (bitsound.deploy): every op of the graph, built with the host compiler,
against the x86 engine bit for bit; the memory plan's fusion, aliases and arena placement."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from bitsound.deploy import plan as planmod
from bitsound.deploy import qemu
from bitsound.deploy.codegen import binary_kernel, c_float, generate, sign_rows
from bitsound.engine import loads
from bitsound.errors import ConfigError, DeployError, ExportError
from bitsound.graph import opcodes as oc
from bitsound.graph.bits import pack_signs
from bitsound.graph.builder import GraphBuilder

HAVE_CC = shutil.which("make") is not None and (shutil.which("cc") or shutil.which("gcc")) is not None
needs_cc = pytest.mark.skipif(
    not HAVE_CC, reason="needs make and a host C compiler (cc) to build the project"
)


def signs(rng, shape):
    return np.where(rng.random(shape) < 0.5, -1.0, 1.0)


def graph_2d(rng) -> GraphBuilder:
    """Float and binary 2-D ops across 32-bit word boundaries, grouped, every activation and dense form."""
    b = GraphBuilder()
    x = b.add_input((3, 9, 11))
    x = b.add_feature_norm(x, mode="band", floor_db=40.0, eps=1e-5, name="fnorm")
    # a fused chain: conv + affine + relu + max-pool + pack (40 channels: two words)
    y = b.add_conv(x, rng.normal(size=(40, 3, 3, 3)), rng.normal(size=40), padding=(1, 1, 1, 1), name="conv")
    y = b.add_affine(y, rng.uniform(0.5, 1.5, 40), rng.normal(size=40) * 0.1, name="bn")
    y = b.add_act(y, "relu", name="relu")
    y = b.add_act(y, "prelu", slope=rng.uniform(0.1, 0.3, 40), name="prelu0")
    y = b.add_maxpool(y, kernel=(2, 2), stride=(2, 2), padding=(1, 1), ceil_mode=True, name="pool")
    y = b.add_affine(y, rng.uniform(0.5, 1.5, 40), rng.normal(size=40), name="shift")
    y = b.add_pack(y, name="sign")
    # binary convs: threshold bits with flips, dilation, asymmetric padding, 33 -> 64 grouped
    y = b.add_bconv(
        y,
        signs(rng, (33, 40, 3, 3)),
        padding=(2, 1, 2, 0),
        dilation=(2, 1),
        out_mode="bits",
        thr=rng.integers(-20, 20, 33),
        flip=rng.integers(0, 2, 33),
        name="bconv_bits",
    )
    y = b.add_maxpool(y, kernel=(2, 2), stride=(1, 1), padding=(1, 1), name="pool_bits")
    z = b.add_bconv(y, signs(rng, (64, 33, 3, 3)), padding=(1, 1, 1, 1), out_mode="dot", name="bconv_dot")
    w = b.add_bconv(
        y,
        signs(rng, (33, 11, 3, 1)),
        groups=3,
        padding=(1, 0, 1, 0),
        out_mode="float",
        scale=rng.uniform(0.01, 0.1, 33),
        bias=rng.normal(size=33),
        name="bconv_grouped",
    )
    z = b.add_act(z, "tanh", name="tanh")
    w = b.add_act(w, "silu", name="silu")
    w = b.add_act(w, "sigmoid", name="sigmoid")
    z = b.add_avgpool(z, kernel=(3, 3), stride=(2, 2), padding=(1, 1), count_include_pad=False, name="avg")
    w = b.add_avgpool(w, kernel=(2, 2), stride=(2, 2), padding=(1, 1), ceil_mode=True, name="avg_pad")
    z = b.add_gap(z, name="gap")
    w = b.add_gap(w, name="gap2")
    v = b.add_linear(z, rng.normal(size=(12, 64)) * 0.1, rng.normal(size=12), name="fc")
    u = b.add_linear(w, rng.normal(size=(12, 33)), None, wdtype="f16", name="fc16")
    v = b.add_add(v, u, name="sum")
    v = b.add_linear(
        v,
        signs(rng, (5, 12)),
        rng.normal(size=5),
        wdtype="sign",
        weight_scale=rng.uniform(0.1, 1, 5),
        name="fc_sign",
    )
    b.add_output(v)
    return b


def graph_plumbing(rng) -> GraphBuilder:
    """f16 and 1-bit float convs, depthwise, adds of every mode, concat, slice, permute, norms, int8."""
    b = GraphBuilder()
    x = b.add_input((4, 6, 8))
    a = b.add_conv(
        x, rng.normal(size=(8, 2, 3, 3)), None, padding=(1, 1, 1, 1), groups=2, wdtype="f16", name="c16"
    )
    d = b.add_conv(
        a,
        signs(rng, (8, 1, 3, 3)),
        rng.normal(size=8),
        padding=(1, 1, 1, 1),
        groups=8,
        wdtype="sign",
        weight_scale=rng.uniform(0.1, 1.0, 8),
        name="dw_sign",
    )
    a = b.add_add(a, d, name="add_same")
    # an ungrouped 1-bit conv (McDonnell's layers): the engine sums it in float, not double
    s = b.add_conv(
        a,
        signs(rng, (8, 8, 3, 3)),
        rng.normal(size=8),
        padding=(1, 1, 1, 1),
        wdtype="sign",
        weight_scale=rng.uniform(0.1, 1.0, 8),
        name="conv_sign",
    )
    row = b.add_slice(d, axis="h", start=2, stop=3, name="row")  # 1 x 8 x 8: broadcast along h
    a = b.add_add(a, row, name="add_bcast")
    narrow = b.add_slice(x, axis="c", start=1, stop=3, name="narrow")
    a = b.add_add(
        a, b.add_conv(narrow, rng.normal(size=(6, 2, 1, 1)), None, name="c1x1"), mode="pad", name="add_pad"
    )
    wide = b.add_concat(a, d, axis="c", name="cat_c")  # 16 channels
    a = b.add_add(a, wide, mode="group_mean", name="add_gmean")
    a = b.add_concat(a, b.add_slice(a, axis="w", start=0, stop=3, name="left"), axis="w", name="cat_w")
    a = b.add_freq_affine(a, rng.uniform(0.5, 1.5, (6, 8)), rng.normal(size=(6, 8)), name="ssn")
    a = b.add_normalize(a, axes="hw", eps=1e-5, name="inorm")
    a = b.add_permute(a, ("w", "h", "c"), name="swap")
    a = b.add_normalize(a, axes="c", eps=1e-3, name="lnorm")
    q = b.add_quantize(a, scale=0.05, zero=3, name="q")
    q = b.add_qconv(
        q,
        rng.integers(-127, 128, (10, 8, 3, 3)),
        rng.uniform(0.001, 0.01, 10),
        rng.normal(size=10),
        in_scale=0.05,
        in_zero=3,
        out_scale=0.1,
        out_zero=-2,
        relu=True,
        padding=(1, 1, 0, 1),
        name="qconv_int8",
    )
    f = b.add_qconv(
        q,
        rng.integers(-127, 128, (6, 5, 1, 3)),
        rng.uniform(0.01, 0.1, 6),
        None,
        in_scale=0.1,
        in_zero=-2,
        groups=2,
        name="qconv_float",
    )
    q2 = b.add_quantize(b.add_gap(f, name="gap"), scale=0.02, zero=0, name="q2")
    o = b.add_qlinear(
        q2,
        rng.integers(-127, 128, (4, 6)),
        rng.uniform(0.01, 0.1, 4),
        rng.normal(size=4),
        in_scale=0.02,
        in_zero=0,
        out_scale=0.05,
        out_zero=1,
        name="qfc",
    )
    o = b.add_dequantize(o, scale=0.05, zero=1, name="dq")
    # the 1-bit conv's sums reach the logits unquantized
    s = b.add_linear(b.add_gap(s, name="gap_sign"), rng.normal(size=(4, 8)), None, name="fc_sign")
    b.add_output(b.add_add(o, s, name="sum"))
    return b


def graph_1d(rng) -> GraphBuilder:
    """A raw-waveform style 1-D stack: strided conv1d fused with its norm, pool and sign, binary conv1d."""
    b = GraphBuilder()
    x = b.add_input((2, 400))
    y = b.add_conv(x, rng.normal(size=(16, 2, 9)), None, stride=4, padding=(4, 4), name="conv1d")
    y = b.add_affine(y, rng.uniform(0.5, 1.5, 16), rng.normal(size=16), name="bn")
    y = b.add_maxpool(y, kernel=3, stride=2, padding=1, name="pool")
    y = b.add_pack(y, name="sign")
    y = b.add_bconv(
        y,
        signs(rng, (70, 16, 5)),
        padding=(2, 2),
        out_mode="bits",
        thr=rng.integers(-10, 10, 70),
        flip=np.zeros(70, int),
        name="bconv1d",
    )
    y = b.add_maxpool(y, kernel=2, stride=2, padding=0, name="pool_bits")
    y = b.add_bconv(
        y,
        signs(rng, (24, 70, 3)),
        stride=2,
        dilation=2,
        out_mode="float",
        scale=rng.uniform(0.01, 0.1, 24),
        bias=rng.normal(size=24),
        name="bconv1d_float",
    )
    y = b.add_act(y, "relu", name="relu")
    y = b.add_avgpool(y, kernel=4, stride=3, padding=1, name="avg1d")
    q = b.add_quantize(y, scale=0.1, zero=-5, name="q")
    q = b.add_qconv(
        q,
        rng.integers(-127, 128, (8, 24, 3)),
        rng.uniform(0.001, 0.01, 8),
        rng.normal(size=8),
        in_scale=0.1,
        in_zero=-5,
        padding=(1, 0),
        name="qconv1d",
    )
    y = b.add_gap(y, name="gap")
    q = b.add_gap(q, name="qgap")
    out = b.add_linear(y, rng.normal(size=(3, 24)), rng.normal(size=3), name="fc")
    b.add_output(b.add_add(out, b.add_linear(q, rng.normal(size=(3, 8)), None, name="qfc"), name="sum"))
    return b


GRAPHS = {"2d": (graph_2d, (3, 9, 11)), "plumbing": (graph_plumbing, (4, 6, 8)), "1d": (graph_1d, (2, 400))}


def test_graphs_cover_every_op():
    rng = np.random.default_rng(0)
    used = set()
    for make, _ in GRAPHS.values():
        used |= set(make(rng).graph.op_counts())
    assert used == set(oc.BY_NAME), f"not covered: {sorted(set(oc.BY_NAME) - used)}"


def _run_host(tmp_path, g, x):
    project = generate(g, tmp_path / "proj")
    exe = qemu.build(project.out, "host")
    res = qemu.run(
        project.out,
        "host",
        x.reshape(len(x), -1),
        kind=qemu.INPUT_FEATURES,
        n_classes=project.n_classes,
        executable=exe,
    )
    return project, res


@needs_cc
@pytest.mark.slow
@pytest.mark.parametrize("name", list(GRAPHS))
def test_host_build_equals_engine_bit_for_bit(tmp_path, name):
    make, shape = GRAPHS[name]
    rng = np.random.default_rng(7)
    b = make(rng)
    x = rng.normal(size=(3, *shape)).astype(np.float32) * 2
    _, res = _run_host(tmp_path, b.graph, x)
    for isa in ("reference", "auto"):
        ref = loads(b.to_bytes(), isa=isa).predict(x)
        assert res.logits.shape == ref.shape
        same = res.logits.view(np.uint32) == ref.view(np.uint32)
        assert same.all(), f"{name} on {isa}: {res.logits[~same][:4]} vs {ref[~same][:4]}"
    assert np.isfinite(res.logits).all() and np.ptp(res.logits) > 0


@needs_cc
def test_host_build_float_sums_differ_only_by_rounding(tmp_path):
    """ACC=float (the Cortex-M4 default) rounds the float convolutions' sums in float32."""
    rng = np.random.default_rng(3)
    b = graph_1d(rng)
    x = rng.normal(size=(2, 2, 400)).astype(np.float32)
    project = generate(b.graph, tmp_path / "proj")
    exe = qemu.build(project.out, "host", acc="float", build_dir="build-float")
    res = qemu.run(
        project.out, "host", x.reshape(2, -1), kind=qemu.INPUT_FEATURES, n_classes=3, executable=exe
    )
    ref = loads(b.to_bytes()).predict(x)
    assert np.abs(res.logits - ref).max() <= 1e-3 * np.abs(ref).max()


# ---- weights in the generated layouts ----------------------------------------------------------


@pytest.mark.parametrize("c", [1, 31, 32, 33, 63, 64, 65, 127, 128, 129])
def test_sign_rows_keep_every_bit(c):
    rng = np.random.default_rng(c)
    s = signs(rng, (5, c))
    words = sign_rows(pack_signs(s), 5, c)
    assert words.shape == (5, (c + 31) // 32) and words.dtype == np.uint32
    bits = np.unpackbits(words.astype("<u4").view(np.uint8).reshape(5, -1), axis=1, bitorder="little")
    assert np.array_equal(bits[:, :c], (s < 0).astype(np.uint8))
    assert not bits[:, c:].any()  # padding bits are zero


@pytest.mark.parametrize("cg,taps", [(1, 9), (16, 9), (33, 3), (64, 1), (65, 2)])
def test_binary_kernel_packs_taps_densely(cg, taps):
    rng = np.random.default_rng(cg)
    s = signs(rng, (4, taps, cg))
    k = binary_kernel(pack_signs(s), 4, taps, cg)
    assert k.shape == (4, (taps * cg + 31) // 32)
    bits = np.unpackbits(k.astype("<u4").view(np.uint8).reshape(4, -1), axis=1, bitorder="little")
    assert np.array_equal(bits[:, : taps * cg], (s.reshape(4, -1) < 0).astype(np.uint8))


@pytest.mark.parametrize("v", [0.0, -0.0, 1.0, -2.5, 1e-38, 3.4028235e38, 0.1, 1 / 3, 1e-45])
def test_c_float_literals_read_back_exactly(v):
    s = c_float(v)
    assert s.endswith("f")
    assert np.float32(float(s[:-1])).tobytes() == np.float32(v).tobytes()


def test_c_float_refuses_non_finite():
    with pytest.raises(ExportError, match="finite"):
        c_float(float("inf"))


# ---- the memory plan -----------------------------------------------------------------------------


def _check_placement(p):
    bufs = [b for b in p.buffers.values() if not b.external]
    for i, a in enumerate(bufs):
        assert a.offset >= 0 and a.offset % 8 == 0 and a.offset + a.size <= p.arena_bytes
        for b in bufs[i + 1 :]:
            live = a.first <= b.last and b.first <= a.last
            space = a.offset < b.offset + b.size and b.offset < a.offset + a.size
            assert not (live and space) or (a.group and a.group == b.group), (a, b)


@pytest.mark.parametrize("name", list(GRAPHS))
def test_plan_places_live_buffers_apart(name):
    make, _ = GRAPHS[name]
    p = planmod.plan(make(np.random.default_rng(1)).graph)
    _check_placement(p)
    assert p.peak_live_bytes <= p.arena_bytes
    # the logits' buffer lives to the end
    assert p.buffers[p.tensor_buffer[p.graph.output]].last == len(p.steps)


def test_plan_fuses_conv_chain_and_reuses_elementwise_inputs():
    p = planmod.plan(graph_2d(np.random.default_rng(2)).graph)
    conv = next(s for s in p.steps if s.kind == "conv2d")
    assert [op.kind for op in conv.ops] == ["conv2d", "affine", "activation", "activation", "maxpool2d"]
    # the affine after the pool is elementwise and writes over its input
    shift = next(s for s in p.steps if s.ops and s.ops[0].name == "shift")
    assert shift.output == shift.inputs[0]
    assert p.steps[1].kind == "input"  # three channels: [c][h][w] -> [h][w][c]
    fnorm = next(s for s in p.steps if s.kind == "feature_norm")
    assert fnorm.output == fnorm.inputs[0]


def test_thesis_network_plan_fits_in_32_kb():
    """Seed 000's network with its binary-image front end: the fused first conv keeps 1 KB of sign
    bits instead of a 64 KB float map, and the front end writes its 32x32 output over its own image."""
    from bitsound.engine.frontend import frontend_spec
    from bitsound.export.packed import model_graph
    from bitsound.modelfile import SoundClassifier, build_net
    from bitsound.recipes import load_recipe

    r = load_recipe("thesis-xnor")
    g = model_graph(SoundClassifier(r, ["bird", "no_bird"], build_net(r, 2).eval()))
    spec = frontend_spec(r)
    p = planmod.plan(g, spec)
    _check_placement(p)
    conv = next(s for s in p.steps if s.kind == "conv2d")
    assert [op.kind for op in conv.ops] == ["conv2d", "affine", "maxpool2d", "pack"]
    assert p.buffers[conv.output].size == 16 * 16 * 4
    assert spec.ints["out_in_work"] == 1 and p.offset("features") == p.offset("fe_work")
    assert p.arena_bytes == spec.work_bytes() < 32 * 1024


def test_plan_rejects_a_front_end_of_another_shape():
    from bitsound.engine.frontend import frontend_spec
    from bitsound.recipes import load_recipe

    with pytest.raises(ExportError, match="front end gives features of shape"):
        planmod.plan(graph_2d(np.random.default_rng(0)).graph, frontend_spec(load_recipe("thesis-xnor")))


def test_generate_writes_a_self_contained_project(tmp_path):
    project = generate(graph_1d(np.random.default_rng(0)).graph, tmp_path / "p", labels=["a", "b", "c"])
    names = {f.name for f in project.out.iterdir()}
    for f in (
        "model.c",
        "bitsound_model.h",
        "bsmcu.c",
        "bsmcu.h",
        "bsmcu_impl.h",
        "frontend.c",
        "frontend.h",
        "harness.c",
        "platform_m4.c",
        "platform_host.c",
        "link_m4.ld",
        "Makefile",
        "README.md",
        "bsm_config.h",
    ):
        assert f in names
    model_c = (project.out / "model.c").read_text()
    assert "malloc(" not in model_c and "static uint64_t bsm_arena[" in model_c
    assert '"a", "b", "c"' in model_c
    readme = (project.out / "README.md").read_text()
    assert "bitsound_model_run" in readme and str(project.plan.arena_bytes) in readme
    with pytest.raises(ExportError, match="2 labels for a graph of 3 outputs"):
        generate(graph_1d(np.random.default_rng(0)).graph, tmp_path / "q", labels=["a", "b"])


def test_build_refuses_unknown_options(tmp_path):
    project = generate(graph_1d(np.random.default_rng(0)).graph, tmp_path / "p")
    with pytest.raises(DeployError, match="popcount must be one of"):
        qemu.build(project.out, "host", popcount="fast")
    with pytest.raises(DeployError, match="acc must be"):
        qemu.build(project.out, "host", acc="half")


def test_missing_cross_compiler_names_the_fix():
    tc = qemu.Toolchain(make="/usr/bin/make", cc="/usr/bin/cc", arm_cc=None, qemu=None, newlib=False)
    with pytest.raises(DeployError, match="make mcu-deps.*gcc-arm-none-eabi"):
        qemu.require("cortex-m4", tc)
    qemu.require("host", tc)


def test_harness_errors_are_reported(tmp_path):
    with pytest.raises(DeployError, match="records have the wrong length"):
        qemu.parse_output("E the records have the wrong length for this model\n", "host", 3)
    with pytest.raises(DeployError, match="ended before its last line"):
        qemu.parse_output("R 0 1 2 3f800000 3f800000 3f800000\n", "host", 3)


ONE = "3f800000"


@pytest.mark.parametrize(
    "text,words",
    [
        (f"R 0 1 2 {ONE} {ONE}\nX\n", "line 1.*2 logits where the model has 3"),  # a logit lost
        (f"R 0 1 2 {ONE} {ONE} {ONE}\nR 0 1 2 {ONE} {ONE} {ONE}\nX\n", "line 2.*record 0 where record 1"),
        (f"R 0 1 2 {ONE} {ONE} 3f80zz00\nX\n", "line 1"),  # not hex
        (f"R 0 1 2 {ONE} {ONE} 3f8\nX\n", "line 1.*8 hex digits"),
        (f"R 0 1 2 {ONE} {ONE} {ONE}\nP 1\nX\n", "line 2.*not a harness line"),
        (f"R 0 1 2 {ONE} {ONE} {ONE}\nS 12 kB\nX\n", "line 2"),
        (f"R 0 1 2 {ONE} {ONE} {ONE}\nhello\nX\n", "line 2.*'hello'"),
        (f"R 0 1 2 {ONE} {ONE} {ONE}\nX\nR 1 1 2 {ONE} {ONE} {ONE}\n", "line 3.*after the last one"),
    ],
)
def test_malformed_harness_lines_are_errors(text, words):
    with pytest.raises(DeployError, match=words):
        qemu.parse_output(text, "host", 3)


def test_logit_rows_must_match_the_records():
    text = f"R 0 1 2 {ONE} {ONE} {ONE}\nP 1 5\nS 100\nX\n"
    res = qemu.parse_output(text, "host", 3, records=1)
    assert res.logits.shape == (1, 3) and res.step_ticks == {1: 5} and res.stack_bytes == 100
    with pytest.raises(DeployError, match="logits for 1 records of the 2 in input.bin"):
        qemu.parse_output(text, "host", 3, records=2)


def test_run_summary_explains_differences_by_the_builds_sums():
    """Rounding explains differences only where the build summed in float32."""
    from bitsound.deploy.workflow import FileRun

    a = np.array([[1.0, 2.0]], np.float32)
    b = np.array([[1.0, 2.0000002]], np.float32)
    res = qemu.RunResult("cortex-m4", a, np.zeros(1), np.zeros(1))

    def summary(target, acc, logits=a):
        return FileRun(target, [("f.wav", 0)], np.zeros((1, 1, 4)), logits, b, ["x", "y"], res, acc).summary()

    assert "sum in float32 here" in summary("cortex-m4", None)
    assert "sum in float32 here" in summary("host", "float")
    for target, acc in (("cortex-m4", "double"), ("host", None)):
        assert "defect of the generated code" in summary(target, acc)
    assert "bit-identical logits on 1/1" in summary("host", None, b) and "(" not in summary("host", None, b)


@needs_cc
def test_harness_refuses_input_of_the_wrong_length(tmp_path):
    project = generate(graph_1d(np.random.default_rng(0)).graph, tmp_path / "p")
    exe = qemu.build(project.out, "host")
    with pytest.raises(DeployError, match="wrong length"):
        qemu.run(
            project.out,
            "host",
            np.zeros((1, 10), np.float32),
            kind=qemu.INPUT_FEATURES,
            n_classes=3,
            executable=exe,
        )
    with pytest.raises(DeployError, match="unknown record kind"):
        qemu.run(
            project.out,
            "host",
            np.zeros((1, 800), np.float32),
            kind=qemu.INPUT_AUDIO,
            n_classes=3,
            executable=exe,
        )


def test_deploy_without_recipe_needs_no_frontend(tmp_path):
    from bitsound.deploy.workflow import Loaded, deploy

    m = Loaded(graph_1d(np.random.default_rng(0)).graph, None, "bare")
    with pytest.raises(ConfigError, match="no recipe"):
        deploy(m, tmp_path / "p", target="host", build=False)
    project, exe = deploy(m, tmp_path / "p", target="host", frontend=False, build=False)
    assert exe is None and project.frontend is None


def test_c_sources_compile_cleanly(tmp_path):
    """-Wall -Wextra -Werror on the generated project (host compiler)."""
    if not HAVE_CC:
        pytest.skip("needs a host C compiler")
    project = generate(graph_plumbing(np.random.default_rng(0)).graph, tmp_path / "p")
    cc = shutil.which("cc") or shutil.which("gcc")
    for src in ("model.c", "bsmcu.c", "frontend.c", "harness.c", "platform_host.c"):
        r = subprocess.run(
            [
                cc,
                "-std=c99",
                "-O1",
                "-Wall",
                "-Wextra",
                "-Wno-unused-parameter",
                "-Werror",
                "-DBSM_CONFIG",
                "-D_POSIX_C_SOURCE=200809L",
                "-c",
                src,
                "-o",
                "/dev/null",
            ],
            cwd=project.out,
            capture_output=True,
            text=True,
        )
        assert r.returncode == 0, r.stderr


@needs_cc
def test_selfcheck_catches_a_plan_smaller_than_a_kernel_needs(tmp_path):
    """bitsound_selfcheck() compares each kernel's own scratch size with the plan's (the generator's
    Python mirror of it); the harness refuses to run when they disagree."""
    project = generate(graph_1d(np.random.default_rng(0)).graph, tmp_path / "p")
    model_c = project.out / "model.c"
    text = model_c.read_text()
    planned = next(b.size for b in project.plan.buffers.values() if b.name.startswith("s"))
    assert f"<= {planned}u" in text
    model_c.write_text(text.replace(f"<= {planned}u", "<= 1u", 1))
    exe = qemu.build(project.out, "host")
    with pytest.raises(DeployError, match="more working memory than the generated plan"):
        qemu.run(
            project.out,
            "host",
            np.zeros((1, 800), np.float32),
            kind=qemu.INPUT_FEATURES,
            n_classes=3,
            executable=exe,
        )
