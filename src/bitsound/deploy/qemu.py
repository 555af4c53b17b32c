"""Building a generated project and running it: natively (``host``) or in QEMU (``cortex-m4``).

The Cortex-M4 image runs in ``qemu-system-arm -M mps2-an386`` (a Cortex-M4F with an FPU) with
semihosting: the harness reads its inputs from ``input.bin`` in the project folder and prints
one line per record. QEMU has no cycle model; with ``-icount shift=0`` each emulated instruction
advances the virtual clock by 1 ns and the 25 MHz SysTick the harness reads ticks once every
:data:`INSTRUCTIONS_PER_TICK` instructions, deterministically: instruction counts, not cycles.

The toolchain comes from Debian's ``gcc-arm-none-eabi``, ``libnewlib-arm-none-eabi`` and
``qemu-system-arm`` packages (``make mcu-deps``); :func:`toolchain` finds it and
:func:`require` names what is missing and how to install it.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bitsound.errors import DeployError

INSTRUCTIONS_PER_TICK = 40  # SysTick at 25 MHz, 1 ns per instruction (-icount shift=0)
POPCOUNTS = {"builtin": 1, "table": 2, "swar": 3, "usada8": 4}
INPUT_AUDIO, INPUT_FEATURES = 0, 1
DEBIAN_PACKAGES = ("gcc-arm-none-eabi", "libnewlib-arm-none-eabi", "qemu-system-arm")


@dataclass(frozen=True)
class Toolchain:
    """Paths of the tools (None where missing)."""

    make: str | None
    cc: str | None
    arm_cc: str | None
    qemu: str | None
    newlib: bool

    def missing(self, target: str) -> list[str]:
        need = (
            {"make": self.make, "cc": self.cc}
            if target == "host"
            else {"make": self.make, "arm-none-eabi-gcc": self.arm_cc, "qemu-system-arm": self.qemu}
        )
        out = [name for name, path in need.items() if path is None]
        if target != "host" and self.arm_cc and not self.newlib:
            out.append("newlib (libnewlib-arm-none-eabi)")
        return out


def _has_newlib(arm_cc: str | None) -> bool:
    if arm_cc is None:
        return False
    try:
        r = subprocess.run(
            [
                arm_cc,
                "-mcpu=cortex-m4",
                "-mthumb",
                "-mfloat-abi=hard",
                "-mfpu=fpv4-sp-d16",
                "--specs=nano.specs",
                "-print-file-name=libc_nano.a",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return os.path.isabs(r.stdout.strip()) and Path(r.stdout.strip()).is_file()


def toolchain() -> Toolchain:
    """The build and run tools found on ``PATH``."""
    arm_cc = shutil.which("arm-none-eabi-gcc")
    return Toolchain(
        make=shutil.which("make"),
        cc=shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc"),
        arm_cc=arm_cc,
        qemu=shutil.which("qemu-system-arm"),
        newlib=_has_newlib(arm_cc),
    )


def require(target: str, tc: Toolchain | None = None) -> Toolchain:
    """The toolchain, or a DeployError naming what ``target`` needs and how to install it."""
    tc = tc or toolchain()
    missing = tc.missing(target)
    if missing:
        how = (
            "install a C compiler and make"
            if target == "host"
            else f"run `make mcu-deps` (or `sudo apt-get install {' '.join(DEBIAN_PACKAGES)}`)"
        )
        raise DeployError(
            f"target {target!r} needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
            f"not installed: {how}"
        )
    return tc


@dataclass
class RunResult:
    """What one run of the harness printed.

    Attributes
    ----------
    target : str
    logits : ndarray [shape=(records, classes), dtype=float32]
    frontend_ticks, network_ticks : ndarray [shape=(records,)]
        Platform ticks (Cortex-M4: SysTick; host: nanoseconds) of the front end and the network.
    step_ticks : dict of int to int
        Ticks of each step of the plan on the first record.
    stack_bytes : int
        Stack high-water mark (Cortex-M4; 0 on the host).
    """

    target: str
    logits: np.ndarray
    frontend_ticks: np.ndarray
    network_ticks: np.ndarray
    step_ticks: dict[int, int] = field(default_factory=dict)
    stack_bytes: int = 0

    def instructions(self, ticks) -> np.ndarray:
        """Instructions of ticks counted on the Cortex-M4 under QEMU."""
        if self.target != "cortex-m4":
            raise DeployError(
                "instructions are counted on the cortex-m4 target only (host ticks are nanoseconds)"
            )
        return np.asarray(ticks, dtype=np.int64) * INSTRUCTIONS_PER_TICK


def write_input(path: Path, records: np.ndarray, kind: int) -> Path:
    """``input.bin`` for the harness: records [n, floats] float32 of audio windows or features."""
    x = np.ascontiguousarray(records, dtype="<f4").reshape(len(records), -1)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(b"BSIN" + struct.pack("<IIII", 1, kind, x.shape[0], x.shape[1]))
        f.write(x.tobytes())
    tmp.replace(path)
    return path


def build(
    project: Path,
    target: str,
    *,
    popcount: str = "usada8",
    acc: str | None = None,
    build_dir: str | None = None,
    timeout: float = 600,
) -> Path:
    """Build the harness of a generated project; returns the executable (host) or the ELF image.

    Parameters
    ----------
    project : Path
        A folder written by :func:`bitsound.deploy.codegen.generate`.
    target : {"host", "cortex-m4"}
    popcount : {"builtin", "table", "swar", "usada8"}
        How the binary convolutions count bits (the Cortex-M4 has no popcount instruction).
    acc : {"float", "double"}, optional
        The float convolutions' sums (default: double on the host, float on the Cortex-M4).
    build_dir : str, optional
        Build folder inside the project; by default one per configuration
        (``build/POPCOUNT-ACC``), since make does not rebuild when only the flags change.
    """
    if popcount not in POPCOUNTS:
        raise DeployError(f"popcount must be one of {', '.join(POPCOUNTS)}, got {popcount!r}")
    if acc not in (None, "float", "double"):
        raise DeployError(f"acc must be 'float' or 'double', got {acc!r}")
    tc = require(target)
    build_dir = build_dir or f"build/{popcount}-{acc or 'default'}"
    args = [tc.make, "-C", str(project), f"POPCOUNT={POPCOUNTS[popcount]}", f"BUILD={build_dir}"]
    if target == "host":
        args += ["host"] + ([f"HOST_ACC={acc}"] if acc else []) + [f"CC={tc.cc}"]
        out = project / build_dir / "host" / "bitsound_host"
    else:
        args += ["m4"] + ([f"M4_ACC={acc}"] if acc else [])
        out = project / build_dir / "m4" / "bitsound_m4.elf"
    try:
        r = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise DeployError(f"building {project} for {target} took more than {timeout:.0f} s") from None
    if r.returncode != 0:
        raise DeployError(f"building {project} for {target} failed:\n{(r.stdout + r.stderr)[-3000:]}")
    return out


def _malformed(target: str, number: int, line: str, why: str) -> DeployError:
    return DeployError(
        f"the {target} harness printed a line it never prints (line {number}: {line[:200]!r}): {why}; "
        "the image and the project are out of step: regenerate and rebuild it"
    )


def parse_output(text: str, target: str, n_classes: int, *, records: int | None = None) -> RunResult:
    """The harness's lines (its standard output) -> RunResult.

    Every non-blank line must be one the harness prints (harness.c): ``R`` with ``n_classes``
    logits and the next record index, ``P``, ``S``, then ``X`` last; ``E`` reports its error.

    Raises
    ------
    DeployError
        Quoting the harness's error, a malformed line (with its number), output that ends before
        ``X``, or, given ``records``, a number of logit rows other than ``records``.
    """
    rows, fe, net, steps, stack = [], [], [], {}, 0
    done = False
    for number, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "E":
            raise DeployError(f"the {target} harness stopped: {' '.join(parts[1:])}")
        if done:
            raise _malformed(target, number, line, "a line after the last one (X)")
        try:
            if parts[0] == "R":
                if len(parts) != 4 + n_classes:
                    raise ValueError(f"{len(parts) - 4} logits where the model has {n_classes}")
                if int(parts[1]) != len(rows):
                    raise ValueError(f"record {parts[1]} where record {len(rows)} comes next")
                if any(len(h) != 8 for h in parts[4:]):
                    raise ValueError("a logit that is not 8 hex digits")
                logits = np.array([int(h, 16) for h in parts[4:]], dtype=np.uint32).view(np.float32)
                fe.append(int(parts[2]))
                net.append(int(parts[3]))
                rows.append(logits)
            elif parts[0] == "P" and len(parts) == 3:
                steps[int(parts[1])] = int(parts[2])
            elif parts[0] == "S" and len(parts) == 2:
                stack = int(parts[1])
            elif parts == ["X"]:
                done = True
            else:
                raise ValueError("not a harness line")
        except ValueError as err:
            raise _malformed(target, number, line, str(err)) from None
    if not done:
        raise DeployError(f"the {target} run ended before its last line; its output:\n{text[-2000:]}")
    if records is not None and len(rows) != records:
        raise DeployError(
            f"the {target} harness printed logits for {len(rows)} records of the {records} in input.bin: "
            "its output is incomplete"
        )
    logits = np.stack(rows) if rows else np.zeros((0, n_classes), np.float32)
    return RunResult(target, logits, np.asarray(fe, np.int64), np.asarray(net, np.int64), steps, stack)


def run(
    project: Path,
    target: str,
    records: np.ndarray,
    *,
    kind: int,
    n_classes: int,
    executable: Path,
    timeout: float = 300,
) -> RunResult:
    """Run a built harness on ``records`` (audio windows or features, one per row).

    Raises
    ------
    DeployError
        When the run fails, times out, or its output is malformed or incomplete (fewer or more
        logit rows than ``records``).
    """
    write_input(project / "input.bin", records, kind)
    if target == "host":
        cmd = [str(executable.resolve())]
    else:
        tc = require(target)
        cmd = [
            tc.qemu,
            "-M",
            "mps2-an386",
            "-nographic",
            "-monitor",
            "none",
            "-serial",
            "none",
            # the harness's semihosting console on standard output, QEMU's own notes on standard error
            "-chardev",
            "stdio,id=semihost",
            "-semihosting-config",
            "enable=on,target=native,chardev=semihost",
            "-icount",
            "shift=0",
            "-no-reboot",
            "-kernel",
            str(executable.resolve()),
        ]
    try:
        r = subprocess.run(cmd, cwd=project, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise DeployError(f"the {target} run of {project} took more than {timeout:.0f} s") from None
    if r.returncode != 0:
        text = r.stdout + r.stderr
        raise DeployError(f"the {target} run of {project} exited with status {r.returncode}:\n{text[-2000:]}")
    # the harness writes to standard output (the semihosting console on the Cortex-M4)
    return parse_output(r.stdout, target, n_classes, records=len(records))


__all__ = [
    "DEBIAN_PACKAGES",
    "INSTRUCTIONS_PER_TICK",
    "POPCOUNTS",
    "RunResult",
    "Toolchain",
    "build",
    "parse_output",
    "require",
    "run",
    "toolchain",
    "write_input",
]
