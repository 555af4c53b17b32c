"""The C front end on non-finite values (overflowing audio, NaN): no undefined behaviour, torch's numbers.

A float -> int conversion of NaN or infinity is undefined in C (on x86 it gave bin INT_MIN of
Otsu's histogram: a write far outside it). ``bsfe_otsu`` is compiled here with UBSan's
float-cast-overflow check into a small driver, so that such a conversion aborts the run.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from bitsound.audio.features import build_frontend, otsu_threshold
from bitsound.engine.frontend import frontend_spec, run
from bitsound.recipes import load_recipe

ENGINE = Path(__file__).resolve().parents[1] / "src" / "bitsound" / "engine"

DRIVER = r"""
#include <stdio.h>
#include <string.h>
float bsfe_otsu(const float *v, size_t n);
static float buf[1 << 16];
int main(void) {
    size_t n = fread(buf, 4, 1 << 16, stdin);
    float t = bsfe_otsu(buf, n);
    unsigned u;
    memcpy(&u, &t, 4);
    printf("%08x\n", u);
    return 0;
}
"""


@pytest.fixture(scope="module")
def otsu_exe(tmp_path_factory):
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("needs a C compiler")
    d = tmp_path_factory.mktemp("otsu")
    (d / "drv.c").write_text(DRIVER)
    base = [cc, "-std=c99", "-O1", "-ffp-contract=off", str(d / "drv.c"), str(ENGINE / "frontend.c"), "-lm",
            "-o", str(d / "otsu")]
    san = ["-fsanitize=undefined,float-cast-overflow", "-fno-sanitize-recover=all"]
    if subprocess.run(base[:1] + san + base[1:], capture_output=True).returncode != 0:
        subprocess.run(base, check=True)  # no sanitizer runtime: the values are still checked
    return d / "otsu"


def _otsu_c(exe: Path, v: np.ndarray) -> float:
    x = np.ascontiguousarray(v, "<f4")
    proc = subprocess.run([str(exe)], input=x.tobytes(), capture_output=True, timeout=30)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    return struct.unpack("<f", bytes.fromhex(proc.stdout.decode().strip())[::-1])[0]


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    "values",
    [
        [1.0, NAN, 3.0, 2.0, 5.0],  # NaN: torch's amin / amax give NaN, every bin 0
        [NAN, 1.0, 2.0],
        [1.0, INF, 3.0, 2.0],  # a span of inf: bins from inf / inf
        [-INF, 1.0, 3.0, 2.0],
        [-INF, INF, 0.0],
        [-3e38, 3e38, 0.0, 1.0],  # max - min overflows to inf
        [0.0, 1e-45, 1e-45, 0.0],  # a span whose 1/256 rounds to 0: positions of +inf
        [0.25] * 7,
    ],
)
def test_otsu_of_non_finite_values_is_torchs_without_undefined_behaviour(otsu_exe, values):
    v = np.asarray(values * 3, np.float32)
    got = _otsu_c(otsu_exe, v)
    ref = otsu_threshold(torch.from_numpy(v)[None]).item()
    assert (np.isnan(got) and np.isnan(ref)) or got == ref, (got, ref)


@pytest.mark.parametrize("overrides", [["frontend.threshold=otsu"], ["frontend.threshold=mean"], []])
def test_binary_image_of_overflowing_audio_is_torchs(overrides):
    """Audio x 1e25 overflows the power spectrum to inf (log inf, band medians inf - inf = NaN):
    the C image is still PyTorch's, pixel for pixel."""
    r = load_recipe("thesis-xnor", overrides=overrides)
    spec = frontend_spec(r)
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((3, 1, spec.n_samples)) * 0.1).astype(np.float32)
    x[1] *= 1e25
    x[2, :, ::2] *= 1e25
    fe = build_frontend(r.frontend, sample_rate=r.audio.sample_rate).eval()
    with torch.no_grad():
        ref = fe(torch.from_numpy(x)).numpy()
    assert np.array_equal(run(spec, x), ref)
    assert ref[0].mean() > 0  # the ordinary window has foreground
