"""Generated projects on the Cortex-M4F, run in QEMU (mps2-an386, semihosting), against the host engine.

Skipped, saying why, only when the toolchain is not installed (``make mcu-deps`` installs it:
gcc-arm-none-eabi, libnewlib-arm-none-eabi, qemu-system-arm). With the float convolutions' sums in
double (M4_ACC=double) the image computes exactly what the host engine does, so its logits are
bit-identical; with the default float32 sums they differ by rounding only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bitsound.deploy import qemu
from bitsound.deploy.report import image_size, map_attribution
from bitsound.deploy.workflow import Loaded, deploy, file_windows, host_engine_logits
from bitsound.export.packed import model_graph
from bitsound.modelfile import SoundClassifier, build_net
from bitsound.recipes import load_recipe

_MISSING = qemu.toolchain().missing("cortex-m4")
pytestmark = pytest.mark.skipif(
    bool(_MISSING),
    reason=f"the Cortex-M4 toolchain is not installed ({', '.join(_MISSING)}): run `make mcu-deps`",
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _model(name: str, labels: list[str]) -> Loaded:
    r = load_recipe(name)
    torch.manual_seed(0)
    net = build_net(r, len(labels)).eval()
    for m in net.modules():  # batch-norm statistics away from the identity, so every unit matters
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            with torch.no_grad():
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return Loaded(model_graph(SoundClassifier(r, labels, net).eval()), r, name)


def _windows(model: Loaded, files, n: int) -> np.ndarray:
    if not files:
        pytest.skip(f"no clips under {DATA}")
    w, _ = file_windows(model.recipe, [str(f) for f in files])
    return w[:n]


@pytest.mark.slow
def test_thesis_xnor_on_the_cortex_m4(tmp_path):
    model = _model("thesis-xnor", ["bird", "no_bird"])
    windows = _windows(
        model,
        sorted((DATA / "esc10").glob("*/*.ogg"))[::80]
        + sorted((DATA / "xeno-canto-acrocephalus" / "mp3").glob("*.mp3"))[:1],
        6,
    )
    project, elf = deploy(model, tmp_path / "thesis", target="cortex-m4")
    records = windows.reshape(len(windows), -1)
    res = qemu.run(project.out, "cortex-m4", records, kind=qemu.INPUT_AUDIO, n_classes=2, executable=elf)
    ref, _, _ = host_engine_logits(model, windows)
    assert (res.logits.argmax(1) == ref.argmax(1)).all()
    assert np.abs(res.logits - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())  # float32 sums
    # double sums: the image computes what the engine computes, binary and float parts alike
    elf_d = qemu.build(project.out, "cortex-m4", acc="double", build_dir="build-double")
    exact = qemu.run(
        project.out, "cortex-m4", records[:2], kind=qemu.INPUT_AUDIO, n_classes=2, executable=elf_d
    )
    assert np.array_equal(exact.logits.view(np.uint32), ref[:2].view(np.uint32))
    # instructions are counted, not timed: the same in every run
    again = qemu.run(
        project.out, "cortex-m4", records[:1], kind=qemu.INPUT_AUDIO, n_classes=2, executable=elf
    )
    assert again.frontend_ticks[0] == res.frontend_ticks[0] and again.network_ticks[0] == res.network_ticks[0]
    fe, net = res.instructions(res.frontend_ticks), res.instructions(res.network_ticks)
    assert (fe > 1e6).all() and (net > 1e5).all()
    assert sum(res.step_ticks.values()) <= res.network_ticks[0]
    # the image of seed 000's detector fits a 64 KB / 32 KB part (the issue's budget)
    size = image_size(elf, arena=project.plan.arena_bytes, map_file=elf.with_suffix(".map"))
    assert 10_000 < size.flash < 64 * 1024
    assert project.plan.arena_bytes <= size.ram_static and 0 < res.stack_bytes < 4096
    assert size.ram_static + res.stack_bytes < 32 * 1024
    attr = map_attribution(elf.with_suffix(".map"))
    assert attr[(".text", "harness.o")] > 0 and size.harness_flash > 0
    assert (fe + net < 10_000_000).all()


@pytest.mark.slow
def test_digits_xnor_kd_on_the_cortex_m4(tmp_path):
    """log-mel front end, feature norm, PReLU, residual adds, binary convs: bit-identical with double sums."""
    model = _model("digits-xnor-kd", [str(d) for d in range(10)])
    windows = _windows(model, sorted((DATA / "fsdd" / "recordings").glob("*.wav"))[::500], 3)
    project, _ = deploy(model, tmp_path / "digits", target="cortex-m4", build=False)
    elf = qemu.build(project.out, "cortex-m4", acc="double")
    res = qemu.run(
        project.out,
        "cortex-m4",
        windows.reshape(len(windows), -1),
        kind=qemu.INPUT_AUDIO,
        n_classes=10,
        executable=elf,
    )
    ref, _, _ = host_engine_logits(model, windows)
    assert np.array_equal(res.logits.view(np.uint32), ref.view(np.uint32))


@pytest.mark.slow
def test_raw_waveform_acdnet_on_the_cortex_m4(tmp_path):
    """A binary ACDNet on the raw waveform (1-D convs, permute, 2-D binary stack): the network reads the
    caller's audio directly."""
    model = _model("esc10-xmicro-acdnet", [f"c{i}" for i in range(10)])
    rng = np.random.default_rng(0)
    n = round(model.recipe.audio.clip_seconds * model.recipe.audio.sample_rate)
    windows = (rng.normal(size=(2, 1, n)) * 0.1).astype(np.float32)
    project, _ = deploy(model, tmp_path / "acdnet", target="cortex-m4", build=False)
    assert project.plan.buffers["features"].external == "audio"
    elf = qemu.build(project.out, "cortex-m4", acc="double")
    res = qemu.run(
        project.out, "cortex-m4", windows.reshape(2, -1), kind=qemu.INPUT_AUDIO, n_classes=10, executable=elf
    )
    ref, _, _ = host_engine_logits(model, windows)
    assert np.array_equal(res.logits.view(np.uint32), ref.view(np.uint32))
    assert res.frontend_ticks.max() < 50  # no front end: the marks only


@pytest.mark.slow
def test_every_popcount_method_counts_the_same_bits(tmp_path):
    """The M4 has no popcount instruction: the four ways of counting give the same logits, and SWAR byte
    counts summed by USADA8 (the default) take the fewest instructions."""
    model = _model("thesis-xnor", ["bird", "no_bird"])
    project, _ = deploy(model, tmp_path / "p", target="cortex-m4", build=False)
    x = np.random.default_rng(0).normal(size=(1, 32 * 32)).astype(np.float32)  # features: the network only
    results = {}
    for name in qemu.POPCOUNTS:
        elf = qemu.build(project.out, "cortex-m4", popcount=name)
        results[name] = qemu.run(
            project.out, "cortex-m4", x, kind=qemu.INPUT_FEATURES, n_classes=2, executable=elf
        )
    logits = {name: r.logits.view(np.uint32).tolist() for name, r in results.items()}
    assert len({str(v) for v in logits.values()}) == 1
    cost = {name: int(r.network_ticks[0]) for name, r in results.items()}
    assert min(cost, key=cost.get) == "usada8", cost


@pytest.mark.slow
def test_report_measures_every_target(tmp_path):
    from bitsound.deploy.report import render
    from bitsound.deploy.workflow import measure, synthetic_windows

    model = _model("thesis-xnor", ["bird", "no_bird"])
    project, _ = deploy(model, tmp_path / "p", target="cortex-m4", build=False)
    rep = measure(model, project, synthetic_windows(model.recipe, n=1), compare_popcounts=False)
    m4, host, engine = rep.rows
    assert m4.target == "cortex-m4" and m4.instructions == m4.frontend_instructions + m4.network_instructions
    assert (
        m4.flash_bytes < 64 * 1024 and m4.ram_bytes < 32 * 1024 and m4.arena_bytes == project.plan.arena_bytes
    )
    assert host.frontend_us > 0 and engine.target.startswith("host engine") and engine.flash_bytes > 0
    assert rep.steps[0].kernel == "frontend" and len(rep.steps) == len(project.plan.steps)
    text = render(rep)
    assert "Cortex-M4 budget" in text and "cortex-m4 vs host engine: same label on 1/1" in text
    rep.save(tmp_path / "report.json")
    assert (tmp_path / "report.json").read_text().startswith("{")


@pytest.mark.slow
def test_missing_input_file_is_reported(tmp_path):
    model = _model("thesis-xnor", ["bird", "no_bird"])
    project, elf = deploy(model, tmp_path / "p", target="cortex-m4")
    with pytest.raises(qemu.DeployError, match="wrong length"):
        qemu.run(
            project.out,
            "cortex-m4",
            np.zeros((1, 100), np.float32),
            kind=qemu.INPUT_AUDIO,
            n_classes=2,
            executable=elf,
        )
