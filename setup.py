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
           "kernels_avx2.c", "kernels_avx512.c", "kernels_avx512_emu.c",
           "frontend.c", "_frontend.c", "slice.c", "pool.c"]

if sys.platform == "win32":
    COMPILE_ARGS: list[str] = []
    LINK_ARGS: list[str] = []
else:
    LINK_ARGS = ["-pthread"]  # the engine's thread pool (pool.c)
    # c99 + POSIX (posix_memalign, clock_gettime); no FMA contraction, so that every instruction
    # set rounds the float parts identically
    COMPILE_ARGS = ["-std=c99", "-D_POSIX_C_SOURCE=200809L", "-O3", "-ffp-contract=off", "-Wall",
                    "-Wno-unknown-pragmas", "-pthread"]

setup(
    ext_modules=[
        Extension(
            "bitsound.engine._engine",
            sources=[str(ENGINE / s) for s in SOURCES],
            depends=[str(ENGINE / "bsnn.h"), str(ENGINE / "bitserial_body.h"), str(ENGINE / "frontend.h"),
                     str(ENGINE / "bitslice_body.h")],
            extra_compile_args=COMPILE_ARGS,
            extra_link_args=LINK_ARGS,
        )
    ],
)
