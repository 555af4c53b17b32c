"""The C front end (engine/frontend.c) against the Python front end (audio/features.py) on real clips.

Tolerances and their reasons:

- binary image (seed 000): identical pixels. Its log-mel is float32 in both, but the image only
  changes where a pixel's log-mel minus its band median lies within rounding of the threshold,
  or a resized pixel within rounding of 0.5; the resize weights are read from PyTorch itself and
  applied in its order with its fused multiply-adds, so the C code matches it bit for bit there.
  Measured: 0 of about 1.8 M pixels differ (xeno-canto, ESC-10; fixed, mean and Otsu thresholds).
  The test allows 1 pixel in 10,000 for a rounding tie.
- log-mel: |difference| <= 2e-4 on log values and <= 2e-6 of the window's peak on mel power. Both
  compute a float32 FFT, whose rounding is about log2(n_fft) x 2^-24 of the frame's energy in every
  bin (pocketfft and our radix-2^2 FFT round differently); the log amplifies it where a band's power
  approaches the 1e-6 floor. Measured on FSDD: 3.4e-5 and 5.8e-7.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from bitsound.audio.features import build_frontend
from bitsound.engine.frontend import frontend_spec, resize_weights, run
from bitsound.errors import ConfigError, DataError
from bitsound.recipes import load_recipe

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
XC = sorted((DATA / "xeno-canto-acrocephalus" / "mp3").glob("*.mp3"))
ESC = sorted((DATA / "esc10").glob("*/*.ogg"))
FSDD = sorted((DATA / "fsdd" / "recordings").glob("*.wav"))


def _both(recipe, files):
    from bitsound.deploy.workflow import file_windows

    windows, _ = file_windows(recipe, [str(f) for f in files])
    spec = frontend_spec(recipe)
    fe = build_frontend(recipe.frontend, sample_rate=recipe.audio.sample_rate).eval()
    with torch.no_grad():
        ref = fe(torch.from_numpy(windows)).numpy()
    return run(spec, windows), ref


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides,source",
    [
        ((), "xeno-canto"),
        ((), "esc10"),
        (("frontend.threshold=otsu", "frontend.denoise=none"), "xeno-canto"),
        (("frontend.threshold=mean",), "esc10"),
    ],
)
def test_binary_image_equals_python_on_real_clips(overrides, source):
    files = XC[:1] if source == "xeno-canto" else ESC[::40]
    if not files:
        pytest.skip(f"no {source} clips under {DATA}")
    c, ref = _both(load_recipe("thesis-xnor", overrides=list(overrides)), files)
    assert c.shape == ref.shape and len(c) >= 5
    assert set(np.unique(c)) <= {0.0, 1.0}
    assert (c != ref).mean() <= 1e-4
    assert 0.0 < ref.mean() < 1.0  # real images, neither empty nor full


def test_logmel_within_float32_fft_rounding_on_real_clips():
    files = FSDD[::50]
    if not files:
        pytest.skip(f"no FSDD recordings under {DATA}")
    c, ref = _both(load_recipe("digits-cnn"), files)
    assert c.shape == ref.shape == (len(files), 1, 40, 101)
    assert np.abs(c - ref).max() <= 2e-4
    peak = np.exp(ref).reshape(len(files), -1).max(1)
    assert (np.abs(np.exp(c) - np.exp(ref)).reshape(len(files), -1).max(1) <= 2e-6 * peak).all()


def test_raw_front_end_is_the_waveform():
    r = load_recipe("esc10-xmicro-acdnet")
    spec = frontend_spec(r)
    x = np.random.default_rng(0).normal(size=(2, 1, spec.n_samples)).astype(np.float32)
    assert np.array_equal(run(spec, x), x)


def test_resize_weights_are_pytorchs():
    """Applying the read weights (float64) reproduces F.interpolate on any image within rounding."""
    w_h, w_w = resize_weights(64, 32), resize_weights(87, 32)
    img = torch.rand(1, 1, 64, 87)
    ref = torch.nn.functional.interpolate(
        img, size=(32, 32), mode="bilinear", align_corners=False, antialias=True
    )[0, 0].numpy()
    got = w_h.astype(np.float64) @ img[0, 0].numpy().astype(np.float64) @ w_w.T.astype(np.float64)
    assert np.abs(got - ref).max() < 1e-6
    assert np.allclose(w_h.sum(1), 1, atol=1e-6) and np.allclose(w_w.sum(1), 1, atol=1e-6)


def test_spec_errors_name_the_value_and_the_fix():
    r = load_recipe("digits-cnn", overrides=["frontend.n_fft=400"])
    with pytest.raises(ConfigError, match="n_fft=400.*power-of-two.*n_fft = 512"):
        frontend_spec(r)
    spec = frontend_spec(load_recipe("digits-cnn"))
    with pytest.raises(DataError, match=r"windows of shape \(batch, 1, 8000\)"):
        run(spec, np.zeros((1, 1, 7999), np.float32))


def test_binding_refuses_inconsistent_tables():
    from bitsound.engine import _lib
    from bitsound.engine.frontend import FLOAT_FIELDS, INT_FIELDS, TABLE_FIELDS

    spec = frontend_spec(load_recipe("digits-cnn"))
    tables = {k: np.ascontiguousarray(spec.tables[k], dt) for k, dt in TABLE_FIELDS}
    tables["mel_count"] = tables["mel_count"].copy()
    tables["mel_count"][3] += 1  # the spans no longer add up to the weights
    args = (
        tuple(spec.ints[k] for k in INT_FIELDS),
        tuple(spec.floats[k] for k in FLOAT_FIELDS),
        tuple(tables[k] for k, _ in TABLE_FIELDS),
        np.zeros((1, 1, 8000), np.float32),
        np.zeros((1, 1, 40, 101), np.float32),
    )
    with pytest.raises(ValueError, match="mel"):
        _lib().frontend_run(*args)


def test_predict_engine_uses_the_c_front_end(tmp_path):
    from bitsound.engine.classifier import load_classifier
    from bitsound.export import export_packed
    from bitsound.modelfile import build_net, save_model

    r = load_recipe("digits-cnn")
    torch.manual_seed(0)
    save_model(tmp_path / "model.pt", recipe=r, labels=[str(i) for i in range(10)], net=build_net(r, 10))
    path = export_packed(tmp_path / "model.pt", tmp_path / "model.bsnn")
    clf = load_classifier(path)
    assert clf.frontend_kind == "c"
    wave = torch.randn(2, 1, 8000) * 0.1
    assert np.array_equal(clf.features(wave), run(clf.frontend_spec, wave.numpy()))
    torch_clf = load_classifier(path, frontend="torch")
    assert np.abs(torch_clf.features(wave) - clf.features(wave)).max() < 2e-4
    with pytest.raises(ConfigError, match="frontend must be one of"):
        load_classifier(path, frontend="numpy")


# ---- the C pieces against reference implementations ----------------------------------------------


@pytest.fixture(scope="module")
def fe_lib(tmp_path_factory):
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("needs a C compiler")
    src = Path(__file__).resolve().parents[1] / "src" / "bitsound" / "engine" / "frontend.c"
    out = tmp_path_factory.mktemp("fe") / "libfe.so"
    subprocess.run(
        [cc, "-std=c99", "-O2", "-ffp-contract=off", "-shared", "-fPIC", str(src), "-o", str(out), "-lm"],
        check=True,
    )
    lib = ctypes.CDLL(str(out))
    lib.bsfe_logf.restype = ctypes.c_float
    lib.bsfe_logf.argtypes = [ctypes.c_float]
    lib.bsfe_lower_median.restype = ctypes.c_float
    lib.bsfe_lower_median.argtypes = [ctypes.POINTER(ctypes.c_float), ctypes.c_size_t]
    lib.bsfe_otsu.restype = ctypes.c_float
    lib.bsfe_otsu.argtypes = [ctypes.POINTER(ctypes.c_float), ctypes.c_size_t]
    return lib


def test_logf_within_one_ulp(fe_lib):
    rng = np.random.default_rng(0)
    xs = np.concatenate(
        [
            np.float32(2.0) ** rng.uniform(-126, 127, 20000),
            rng.uniform(0.5, 2, 20000),
            [1.0, 2.0, 1e-6, 1.0000001, 0.99999994, 1e-45, 3.4028235e38],
        ]
    ).astype(np.float32)
    got = np.array([fe_lib.bsfe_logf(float(x)) for x in xs], np.float32)
    ref = np.log(xs.astype(np.float64))
    ulp = np.spacing(np.abs(ref).astype(np.float32)).astype(np.float64)
    ulp[ref == 0] = np.spacing(np.float32(0))
    assert (np.abs(got - ref) <= ulp).all()
    assert (
        fe_lib.bsfe_logf(0.0) == -np.inf and np.isnan(fe_lib.bsfe_logf(-1.0)) and fe_lib.bsfe_logf(1.0) == 0.0
    )


@pytest.mark.parametrize("n", [1, 2, 3, 87, 100, 101])
def test_lower_median_is_torchs(fe_lib, n):
    rng = np.random.default_rng(n)
    for v in (rng.normal(size=n), rng.integers(0, 3, n).astype(float), np.sort(rng.normal(size=n))[::-1]):
        x = np.ascontiguousarray(v, np.float32)
        got = fe_lib.bsfe_lower_median(x.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), n)
        assert got == torch.from_numpy(v.astype(np.float32)).median().item()


def test_otsu_is_pythons(fe_lib):
    from bitsound.audio.features import otsu_threshold

    rng = np.random.default_rng(5)
    for v in (
        rng.normal(size=5568),
        np.concatenate([rng.normal(-3, 1, 3000), rng.normal(2, 0.5, 800)]),
        np.full(100, 0.25),
        rng.integers(0, 4, 999).astype(float),
    ):
        x = np.ascontiguousarray(v, np.float32)
        got = fe_lib.bsfe_otsu(x.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), len(x))
        assert got == otsu_threshold(torch.from_numpy(x)[None]).item()


# ---- the microcontroller's build (one frame at a time) against the engine's (frames in lanes) ----


_i, _f = ctypes.c_int32, ctypes.c_float
_pf, _pu = ctypes.POINTER(ctypes.c_float), ctypes.POINTER(ctypes.c_uint16)


class _Spec(ctypes.Structure):
    """bsfe_spec (engine/frontend.h), field for field."""

    _fields_ = [
        *[(n, _i) for n in ("kind", "n_channels", "n_samples", "n_fft", "hop", "center", "n_frames")],
        *[(n, _i) for n in ("win_start", "win_len", "power_mode")],
        ("power_half", _f), ("log_offset", _f), ("n_mels", _i),
        ("window", _pf), ("twiddle", _pf), ("bitrev", _pu), ("mel_first", _pu), ("mel_count", _pu),
        ("mel_weights", _pf), ("denoise", _i), ("threshold", _i), ("threshold_value", _f),
        ("out_h", _i), ("out_w", _i), ("rs_rows", _i), ("rs_y_first", _pu), ("rs_y_count", _pu),
        ("rs_y_weights", _pf), ("rs_x_first", _pu), ("rs_x_count", _pu), ("rs_x_weights", _pf),
        ("out_in_work", _i),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def one_frame_lib(tmp_path_factory):
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("needs a C compiler")
    src = Path(__file__).resolve().parents[1] / "src" / "bitsound" / "engine" / "frontend.c"
    out = tmp_path_factory.mktemp("fe1") / "libfe1.so"
    flags = ["-std=c99", "-O2", "-ffp-contract=off", "-DBSFE_LANES=1", "-shared", "-fPIC"]
    subprocess.run([cc, *flags, str(src), "-o", str(out), "-lm"], check=True)
    lib = ctypes.CDLL(str(out))
    lib.bsfe_work_bytes.restype = ctypes.c_size_t
    lib.bsfe_work_bytes.argtypes = [ctypes.POINTER(_Spec)]
    lib.bsfe_run.argtypes = [ctypes.POINTER(_Spec), ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    return lib


def _run_one_frame(lib, spec, windows):
    from bitsound.engine.frontend import TABLE_FIELDS

    s = _Spec(**spec.ints, **spec.floats)
    tables = {k: np.ascontiguousarray(spec.tables[k], dtype=dt) for k, dt in TABLE_FIELDS}
    types = dict(_Spec._fields_)
    for k, t in tables.items():
        setattr(s, k, t.ctypes.data_as(types[k]))
    work = np.zeros(lib.bsfe_work_bytes(ctypes.byref(s)) // 4 + 2, np.float64)  # 8-byte aligned
    out = np.empty((len(windows), *spec.feature_shape), np.float32)
    for i, w in enumerate(np.ascontiguousarray(windows, np.float32)):
        lib.bsfe_run(ctypes.byref(s), w.ctypes.data, out[i].ctypes.data, work.ctypes.data)
    return out


@pytest.mark.parametrize(
    "name,overrides",
    [
        ("thesis-xnor", []),
        ("thesis-xnor", ["frontend.threshold=otsu", "frontend.center=false"]),
        ("digits-xnor", []),
        ("digits-xnor", ["frontend.power=1.0"]),
        ("digits-xnor", ["frontend.power=1.5", "frontend.n_fft=16", "frontend.win_length=12"]),
    ],
)
def test_one_frame_build_gives_the_engines_bits(one_frame_lib, name, overrides):
    """The engine computes four frames at once in vector lanes on x86-64; the microcontroller one
    at a time, with the same operations: the same bits, including non-finite input."""
    recipe = load_recipe(name, overrides=overrides)
    spec = frontend_spec(recipe)
    rng = np.random.default_rng(3)
    n = spec.n_samples
    windows = [rng.normal(size=n) * 0.1, np.zeros(n), rng.normal(size=n) * 1e-20, rng.normal(size=n) * 1e4]
    bad = rng.normal(size=n)
    bad[rng.integers(0, n, 3)] = [np.nan, np.inf, -np.inf]
    windows.append(bad)
    files = (XC[:1] if "thesis" in name else FSDD[:3]) if (XC and FSDD) else []
    if files:
        from bitsound.deploy.workflow import file_windows

        windows += list(file_windows(recipe, [str(f) for f in files])[0][:6, 0])
    x = np.stack(windows).astype(np.float32)[:, None]
    got, ref = _run_one_frame(one_frame_lib, spec, x), run(spec, x)
    assert np.array_equal(got.view(np.uint32), ref.view(np.uint32))
