"""``bitsound deploy``: generate, build, run on audio files and measure, in one place.

:func:`load_graph` reads a model (``model.pt`` or ``.bsnn``) as its typed graph and recipe;
:func:`deploy` writes and builds its C project; :func:`run_files` runs it on audio files (cut
into the recipe's windows as ``bitsound predict`` does) and compares every window with the host
engine (the ``.bsnn`` engine with the same C front end); :func:`measure` builds the report of
:mod:`bitsound.deploy.report` (Cortex-M4 image in QEMU, the host build, the host engine).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bitsound.deploy import qemu
from bitsound.deploy.codegen import TARGETS, Project, generate
from bitsound.deploy.report import DeployReport, StepCost, TargetRow, callgrind_instructions, image_size
from bitsound.errors import ConfigError, DeployError

log = logging.getLogger("bitsound.deploy")


@dataclass
class Loaded:
    """A model as its graph, recipe (None for a bare graph) and name."""

    graph: object
    recipe: object
    name: str


def load_graph(path: str | Path) -> Loaded:
    """``DIR/model.pt`` (lowered to its graph) or a ``.bsnn`` file (read back to its graph)."""
    from bitsound.config import parse_recipe
    from bitsound.export import bsnn
    from bitsound.export.packed import model_graph

    p = Path(path)
    if not p.is_file():
        raise ConfigError(
            f"model '{p}' does not exist; pass the DIR/model.pt that `bitsound train` wrote, "
            f"or a .bsnn from `bitsound export`"
        )
    g = bsnn.read(p) if p.suffix == ".bsnn" else model_graph(p)
    meta = g.meta or {}
    recipe = parse_recipe(meta["recipe"], source=f"metadata of '{p}'") if "recipe" in meta else None
    name = (recipe.name if recipe is not None and getattr(recipe, "name", None) else p.parent.name) or p.stem
    return Loaded(g, recipe, name)


def deploy(
    model: Loaded,
    out: str | Path,
    *,
    target: str = "cortex-m4",
    frontend: bool = True,
    popcount: str = "usada8",
    acc: str | None = None,
    build: bool = True,
) -> tuple[Project, Path | None]:
    """Generate the C project of ``model`` into ``out`` and build it for ``target``.

    Returns the project and the built executable / image (None with ``build=False``).
    """
    from bitsound.engine.frontend import frontend_spec

    if target not in TARGETS:
        raise ConfigError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    spec = None
    if frontend:
        if model.recipe is None:
            raise ConfigError(
                "the model file has no recipe, so its front end is unknown: deploy the network alone "
                "(--no-frontend) or export it from a trained model.pt"
            )
        spec = frontend_spec(model.recipe)
    project = generate(model.graph, out, frontend=spec)
    exe = qemu.build(project.out, target, popcount=popcount, acc=acc) if build else None
    return project, exe


def file_windows(recipe, files: list[str]) -> tuple[np.ndarray, list[tuple[str, int]]]:
    """Every window of the files as ``bitsound predict`` cuts them: [n, channels, samples], and
    (file, window index) per row."""
    from bitsound.audio.io import load_audio
    from bitsound.pipeline import window_audio

    audio = recipe.audio
    rows, where = [], []
    for f in files:
        wave = load_audio(f, sample_rate=audio.sample_rate, channels=audio.channels)
        w = window_audio(wave, audio.sample_rate, audio)
        rows.append(w.astype(np.float32))
        where += [(str(f), i) for i in range(len(w))]
    if not rows:
        raise ConfigError("no audio files given to run")
    return np.concatenate(rows), where


def host_engine_logits(model: Loaded, windows: np.ndarray, *, engine=None) -> tuple[np.ndarray, float, float]:
    """Logits of the host engine (C front end + .bsnn engine, ``engine`` or the model's loaded
    here), and its front-end and network seconds per window."""
    from bitsound.engine import loads
    from bitsound.engine.frontend import frontend_spec, run
    from bitsound.export import bsnn

    spec = frontend_spec(model.recipe)
    eng = engine if engine is not None else loads(bsnn.to_bytes(model.graph))
    t0 = time.perf_counter()
    feats = run(spec, windows)
    t1 = time.perf_counter()
    logits = eng.predict(feats)
    t2 = time.perf_counter()
    n = max(len(windows), 1)
    return logits, (t1 - t0) / n, (t2 - t1) / n


@dataclass
class FileRun:
    """A target's logits on every window, the host engine's, and where they agree."""

    target: str
    where: list[tuple[str, int]]
    windows: np.ndarray
    logits: np.ndarray
    engine_logits: np.ndarray
    labels: list[str]
    result: qemu.RunResult
    acc: str | None = None  # the float sums of the build (None: the target's default)

    @property
    def same_labels(self) -> np.ndarray:
        return self.logits.argmax(1) == self.engine_logits.argmax(1)

    @property
    def bit_exact(self) -> np.ndarray:
        return np.all(self.logits.view(np.uint32) == self.engine_logits.view(np.uint32), axis=1)

    def summary(self) -> str:
        n = len(self.where)
        diff = float(np.abs(self.logits - self.engine_logits).max()) if n else 0.0
        text = (
            f"{self.target} vs host engine: same label on {int(self.same_labels.sum())}/{n} windows, "
            f"bit-identical logits on {int(self.bit_exact.sum())}/{n}, max |logit difference| {diff:.3g}"
        )
        if self.bit_exact.sum() < n:
            if (self.acc or ("double" if self.target == "host" else "float")) == "float":
                text += (
                    " (the float convolutions sum in float32 here where the engine sums in double: "
                    "rounding differences; the binary layers count bits exactly; --acc double gives the "
                    "engine's logits bit for bit)"
                )
            else:
                text += (
                    " (this build sums as the engine does, so its logits should be the engine's bit for "
                    "bit: a difference is a defect of the generated code; please report it)"
                )
        return text


def run_files(
    model: Loaded, project: Project, exe: Path, files: list[str], *, target: str, acc: str | None = None
) -> FileRun:
    """Run the built project (built with float sums ``acc``) on every window of ``files`` and
    compare with the host engine."""
    if model.recipe is None or project.frontend is None:
        raise ConfigError("running on audio files needs the model's front end: deploy without --no-frontend")
    windows, where = file_windows(model.recipe, files)
    res = qemu.run(
        project.out,
        target,
        windows.reshape(len(windows), -1),
        kind=qemu.INPUT_AUDIO,
        n_classes=project.n_classes,
        executable=exe,
    )
    ref, _, _ = host_engine_logits(model, windows)
    return FileRun(target, where, windows, res.logits, ref, project.labels, res, acc)


def _host_flash(exe: Path) -> tuple[int, int]:
    """text + rodata and data + bss of a host executable."""
    from bitsound.deploy.report import section_sizes

    sec = section_sizes(exe)
    flash = sum(v for k, v in sec.items() if k in (".text", ".rodata"))
    ram = sec.get(".data", 0) + sec.get(".bss", 0)
    return flash, ram


def measure(
    model: Loaded,
    project: Project,
    windows: np.ndarray,
    *,
    popcount: str = "usada8",
    acc: str | None = None,
    compare_popcounts: bool = True,
) -> DeployReport:
    """The report: Cortex-M4 image in QEMU, the host build of the same code, the host engine."""
    from bitsound.engine import loads
    from bitsound.export import bsnn

    n = len(windows)
    records = windows.reshape(n, -1)
    rows: list[TargetRow] = []
    # Cortex-M4 under QEMU
    elf = qemu.build(project.out, "cortex-m4", popcount=popcount, acc=acc)
    m4 = qemu.run(
        project.out, "cortex-m4", records, kind=qemu.INPUT_AUDIO, n_classes=project.n_classes, executable=elf
    )
    size = image_size(elf, arena=project.plan.arena_bytes, map_file=elf.with_suffix(".map"))
    fe_i = int(m4.instructions(m4.frontend_ticks).mean())
    net_i = int(m4.instructions(m4.network_ticks).mean())
    rows.append(
        TargetRow(
            target="cortex-m4",
            flash_bytes=size.flash,
            ram_bytes=size.ram_static + m4.stack_bytes,
            stack_bytes=m4.stack_bytes,
            arena_bytes=project.plan.arena_bytes,
            frontend_instructions=fe_i,
            network_instructions=net_i,
            notes=f"QEMU mps2-an386, -icount shift=0 (instructions, not cycles); flash without the test "
            f"harness ({size.harness_flash} B); float sums in {acc or 'float'}"
            + ("32 (double is software on the M4)" if acc != "double" else ""),
        )
    )
    steps = [
        StepCost(
            step=0,
            kernel="frontend",
            ops=project.frontend.kind if project.frontend else "features",
            instructions=fe_i,
        )
    ]
    for k, ticks in sorted(m4.step_ticks.items()):
        s = project.plan.steps[k]
        steps.append(
            StepCost(step=k, kernel=s.kind, ops=s.name, instructions=int(ticks) * qemu.INSTRUCTIONS_PER_TICK)
        )
    # the same sources on the host
    host_exe = qemu.build(project.out, "host", popcount=popcount)
    host = qemu.run(
        project.out, "host", records, kind=qemu.INPUT_AUDIO, n_classes=project.n_classes, executable=host_exe
    )
    hflash, hram = _host_flash(host_exe)
    fe_x86 = callgrind_instructions(host_exe, project.out, "bsfe_run")
    all_x86 = callgrind_instructions(host_exe, project.out, "bitsound_model_run")
    rows.append(
        TargetRow(
            target="host",
            flash_bytes=hflash,
            ram_bytes=hram,
            arena_bytes=project.plan.arena_bytes,
            frontend_instructions=None if fe_x86 is None else fe_x86 // n,
            network_instructions=None if all_x86 is None or fe_x86 is None else (all_x86 - fe_x86) // n,
            frontend_us=float(host.frontend_ticks.mean()) / 1e3,
            network_us=float(host.network_ticks.mean()) / 1e3,
            notes="the generated code built by the host compiler (x86-64 -O2, double sums); instructions by "
            "valgrind callgrind"
            if fe_x86 is not None
            else "valgrind not installed: no instruction count",
        )
    )
    # the host engine
    data = bsnn.to_bytes(model.graph)
    eng = loads(data)
    ref, fe_s, net_s = host_engine_logits(model, windows, engine=eng)
    rows.append(
        TargetRow(
            target=f"host engine ({eng.isa})",
            flash_bytes=len(data),
            ram_bytes=eng.arena_bytes,
            arena_bytes=eng.arena_bytes,
            frontend_us=fe_s * 1e6,
            network_us=net_s * 1e6,
            notes="the .bsnn engine with the same C front end: flash = the .bsnn file, RAM = its arena",
        )
    )
    labels_m4 = m4.logits.argmax(1)
    agreement = {
        "cortex-m4 vs host engine": f"same label on {int((labels_m4 == ref.argmax(1)).sum())}/{n} windows, "
        f"max |logit difference| {float(np.abs(m4.logits - ref).max()):.3g}",
        "host build vs host engine": f"bit-identical logits on "
        f"{int(np.all(host.logits.view(np.uint32) == ref.view(np.uint32), axis=1).sum())}/{n}",
    }
    pops: dict[str, int] = {}
    if compare_popcounts and any(s.kind.startswith("binary_conv") for s in project.plan.steps):
        for name in qemu.POPCOUNTS:
            e = elf if name == popcount else qemu.build(project.out, "cortex-m4", popcount=name, acc=acc)
            r = qemu.run(
                project.out,
                "cortex-m4",
                records[:1],
                kind=qemu.INPUT_AUDIO,
                n_classes=project.n_classes,
                executable=e,
            )
            pops[name] = int(r.instructions(r.network_ticks).mean())
    return DeployReport(
        model=model.name,
        labels=project.labels,
        records=n,
        popcount=popcount,
        rows=rows,
        steps=steps,
        popcount_instructions=pops,
        agreement=agreement,
    )


def synthetic_windows(recipe, n: int = 2, seed: int = 0) -> np.ndarray:
    """Deterministic test windows (a chirp in noise) when no audio file is given."""
    audio = recipe.audio
    samples = audio.window_samples
    t = np.arange(samples) / audio.sample_rate
    rng = np.random.default_rng(seed)
    out = np.empty((n, audio.n_channels, samples), np.float32)
    for i in range(n):
        f0 = 400.0 * (i + 1)
        chirp = 0.3 * np.sin(2 * np.pi * (f0 * t + 0.5 * f0 * t**2))
        out[i] = (chirp + 0.01 * rng.standard_normal(samples)).astype(np.float32)
    return out


def check_target(target: str) -> None:
    """A DeployError when ``target``'s tools are missing (before any work)."""
    qemu.require(target)


__all__ = [
    "FileRun",
    "Loaded",
    "deploy",
    "file_windows",
    "host_engine_logits",
    "load_graph",
    "measure",
    "run_files",
    "synthetic_windows",
    "DeployError",
]
