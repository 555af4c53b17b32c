"""Build of the C engine extension (``bitsound.engine._engine``); all metadata is in pyproject.toml.

``pip install .`` / ``pip install -e .`` compile it with no extra step. The AVX2 and AVX-512
kernels carry ``__attribute__((target(...)))`` on their functions, so every file compiles with the
same portable flags (no ``-march``); the engine picks the instruction set at run time.
"""

import sys
from pathlib import Path

from setuptools import Extension, setup

ENGINE = Path("src/bitsound/engine")
SOURCES = ["_engine.c", "format.c", "model.c", "dispatch.c", "kernels_ref.c", "kernels_scalar.c",
           "kernels_avx2.c", "kernels_avx512.c", "kernels_avx512_emu.c"]

if sys.platform == "win32":
    COMPILE_ARGS: list[str] = []
else:
    # c99 + POSIX (posix_memalign, clock_gettime); no FMA contraction, so that every instruction
    # set rounds the float parts identically
    COMPILE_ARGS = ["-std=c99", "-D_POSIX_C_SOURCE=200809L", "-O3", "-ffp-contract=off", "-Wall",
                    "-Wno-unknown-pragmas"]

setup(
    ext_modules=[
        Extension(
            "bitsound.engine._engine",
            sources=[str(ENGINE / s) for s in SOURCES],
            depends=[str(ENGINE / "bsnn.h"), str(ENGINE / "bitserial_body.h")],
            extra_compile_args=COMPILE_ARGS,
        )
    ],
)
