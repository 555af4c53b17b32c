"""Measured size and cost of a deployed model: flash, RAM and instructions per clip.

Sizes come from the built image (pyelftools reads the ELF sections; the linker map attributes
them to object files). For the Cortex-M4 image:

- **flash** = ``.text`` + ``.rodata`` + ``.ARM.exidx`` + the load image of ``.data``, less what
  the test harness (``harness.o``: input reading, printing) adds; the start-up code, semihosting
  and SysTick of ``platform_m4.o`` and the C library functions the model calls are counted;
- **RAM** = ``.data`` + ``.bss`` (the arena and the kernels' statics; the harness's input buffer
  lives in ``.harness_bss`` and is not counted, nor is the caller's audio) + the stack's
  high-water mark measured in the run (painted stack).

Instructions are counted by QEMU (:mod:`bitsound.deploy.qemu`): the same every run. For the
host build of the generated code, instructions are counted with valgrind's callgrind when it is
installed, and its time is given; the x86 engine (``.bsnn``) row gives its file size, arena and
time per clip.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from bitsound.errors import DeployError

FLASH_SECTIONS = (".text", ".rodata", ".ARM.exidx")
HARNESS_OBJECTS = ("harness.o",)
BUDGET_FLASH, BUDGET_RAM, BUDGET_INSTRUCTIONS = 64 * 1024, 32 * 1024, 10_000_000


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ImageSize(_Model):
    """Bytes of a built image, by section (``sections``) and what the model needs (flash, ram)."""

    sections: dict[str, int]
    flash: int
    ram_static: int  # .data + .bss without the harness's input buffer
    harness_flash: int
    arena: int


class TargetRow(_Model):
    """One target's measurement of one model (per clip / window)."""

    target: str
    flash_bytes: int | None = None
    ram_bytes: int | None = None  # static + stack high-water mark
    stack_bytes: int | None = None
    arena_bytes: int | None = None
    frontend_instructions: int | None = None
    network_instructions: int | None = None
    frontend_us: float | None = None
    network_us: float | None = None
    notes: str = ""

    @property
    def instructions(self) -> int | None:
        if self.frontend_instructions is None or self.network_instructions is None:
            return None
        return self.frontend_instructions + self.network_instructions


class StepCost(_Model):
    """Instructions of one step of the plan on the Cortex-M4 (first record)."""

    step: int
    kernel: str
    ops: str
    instructions: int


class DeployReport(_Model):
    """Everything ``bitsound deploy --report`` measured for one model."""

    model: str
    labels: list[str]
    records: int
    popcount: str
    rows: list[TargetRow]
    steps: list[StepCost] = []
    popcount_instructions: dict[str, int] = {}  # network instructions per clip by counting method
    agreement: dict[str, str] = {}

    def save(self, path: Path) -> None:
        tmp = Path(path).with_name(Path(path).name + ".tmp")
        tmp.write_text(json.dumps(self.model_dump(mode="json"), indent=2))
        tmp.replace(path)


def _elf():
    try:
        from elftools.elf.elffile import ELFFile
    except ImportError as err:  # pragma: no cover - pyelftools is a dependency of bitsound[deploy]
        raise DeployError(
            f"measuring an image needs pyelftools ({err}): pip install 'bitsound[deploy]'"
        ) from None
    return ELFFile


def section_sizes(elf: Path) -> dict[str, int]:
    """Allocated sections of an ELF file and their sizes."""
    ELFFile = _elf()
    with open(elf, "rb") as f:
        e = ELFFile(f)
        return {s.name: int(s["sh_size"]) for s in e.iter_sections() if s["sh_flags"] & 0x2 and s["sh_size"]}


_MAP_LINE = re.compile(r"^\s+(0x[0-9a-f]+)\s+(0x[0-9a-f]+)\s+(\S+)\s*$")


def map_attribution(map_file: Path) -> dict[tuple[str, str], int]:
    """Bytes per (output section, input object file) from a GNU ld map file."""
    out: dict[tuple[str, str], int] = {}
    section = None
    pending = False
    text = Path(map_file).read_text(errors="replace")
    start = text.find("Linker script and memory map")
    for line in text[start:].splitlines():
        if not line.strip():
            continue
        if not line.startswith(" "):
            section = line.split()[0]
            continue
        stripped = line.strip()
        m = _MAP_LINE.match(line)
        if m and (pending or not stripped.startswith("*")):
            addr, size, obj = m.groups()
            pending = False
        else:
            parts = stripped.split()
            if len(parts) == 1 and parts[0].startswith("."):
                pending = True  # a long input section name; its address, size and file follow
                continue
            if (
                len(parts) >= 4
                and parts[0].startswith(".")
                and parts[1].startswith("0x")
                and parts[2].startswith("0x")
            ):
                size, obj = parts[2], parts[3]
            else:
                pending = False
                continue
        key = (section or "?", Path(obj.split("(")[0]).name if "(" not in obj else obj.split("/")[-1])
        out[key] = out.get(key, 0) + int(size, 16)
    return out


def image_size(elf: Path, *, arena: int, map_file: Path | None = None) -> ImageSize:
    """Flash and static RAM of a built image (see the module's notes)."""
    sec = section_sizes(elf)
    flash = sum(sec.get(s, 0) for s in FLASH_SECTIONS) + sec.get(".data", 0)
    harness = 0
    if map_file is not None and map_file.is_file():
        attr = map_attribution(map_file)
        harness = sum(
            v for (s, obj), v in attr.items() if obj in HARNESS_OBJECTS and s in (*FLASH_SECTIONS, ".data")
        )
    ram = sec.get(".data", 0) + sec.get(".bss", 0)
    return ImageSize(sections=sec, flash=flash - harness, ram_static=ram, harness_flash=harness, arena=arena)


def callgrind_instructions(executable: Path, cwd: Path, function: str, *, timeout: float = 600) -> int | None:
    """x86 instructions executed inside ``function`` (inclusive) in one run, or None without valgrind."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        r = subprocess.run(
            [
                valgrind,
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                f"--toggle-collect={function}",
                str(executable.resolve()),
            ],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if r.returncode != 0 or not out.is_file():
            raise DeployError(f"callgrind could not run {executable}:\n{r.stderr[-1500:]}")
        for line in out.read_text().splitlines():
            if line.startswith("totals:") or line.startswith("summary:"):
                return int(line.split()[1])
    return None


def render(rep: DeployReport) -> str:
    """The report as a plain-text table."""

    def num(v, unit=""):
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:,.1f}{unit}"
        return f"{v:,}{unit}"

    head = (
        f"{rep.model}: {len(rep.labels)} classes, per clip (mean of {rep.records}), popcount {rep.popcount}"
    )
    cols = (
        "target",
        "flash B",
        "RAM B",
        "arena B",
        "stack B",
        "front end instr",
        "network instr",
        "total instr",
        "front end us",
        "network us",
    )
    rows = [
        (
            r.target,
            num(r.flash_bytes),
            num(r.ram_bytes),
            num(r.arena_bytes),
            num(r.stack_bytes),
            num(r.frontend_instructions),
            num(r.network_instructions),
            num(r.instructions),
            num(r.frontend_us),
            num(r.network_us),
        )
        for r in rep.rows
    ]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    lines = [
        head,
        "  ".join(c.rjust(w) for c, w in zip(cols, widths, strict=True)),
        "  ".join("-" * w for w in widths),
    ]
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    notes = [f"- {r.target}: {r.notes}" for r in rep.rows if r.notes]
    if notes:
        lines += ["", *notes]
    m4 = next((r for r in rep.rows if r.target == "cortex-m4"), None)
    if m4 is not None and m4.instructions is not None:
        checks = [
            ("flash", m4.flash_bytes, BUDGET_FLASH),
            ("RAM", m4.ram_bytes, BUDGET_RAM),
            ("instructions", m4.instructions, BUDGET_INSTRUCTIONS),
        ]
        lines += [
            "",
            "Cortex-M4 budget (a 64 KB / 32 KB part, 10 M instructions per clip): "
            + ", ".join(
                f"{name} {v:,} {'<' if v < lim else '>='} {lim:,} ({'ok' if v < lim else 'OVER'})"
                for name, v, lim in checks
            ),
        ]
    if rep.popcount_instructions:
        lines += [
            "",
            "network instructions per clip by popcount method: "
            + ", ".join(f"{k} {v:,}" for k, v in rep.popcount_instructions.items()),
        ]
    if rep.steps:
        total = sum(s.instructions for s in rep.steps) or 1
        lines += ["", "Cortex-M4 instructions by step (first clip):"]
        lines += [
            f"  {s.step:3d} {s.kernel:16s} {s.instructions:>12,} {100 * s.instructions / total:5.1f} %"
            f"  {s.ops}"
            for s in sorted(rep.steps, key=lambda s: -s.instructions)
        ]
    if rep.agreement:
        lines += ["", *(f"{k}: {v}" for k, v in rep.agreement.items())]
    return "\n".join(lines)


__all__ = [
    "BUDGET_FLASH",
    "BUDGET_INSTRUCTIONS",
    "BUDGET_RAM",
    "DeployReport",
    "ImageSize",
    "StepCost",
    "TargetRow",
    "callgrind_instructions",
    "image_size",
    "map_attribution",
    "render",
    "section_sizes",
]
