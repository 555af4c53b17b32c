"""Speed measurements of the engine against PyTorch fp32, taken in the same run.

:func:`bench_layer` is the body of ``bitsound bench layer --cin 256 --cout 256 --size 32x32
--kernel 3 [--json]``; :func:`peak_xor_popcount` measures the machine's XOR+popcount throughput
(the ceiling a binary convolution can reach); :func:`bench_model` times a whole model per clip.
:func:`bench_threads` measures the throughput of a batch of examples on 1, 2, ... threads.
``benchmarks/bench_engine.py`` prints the tables. Times are the minimum over repeats (the least
disturbed run), both sides measured back to back, one thread each unless asked otherwise.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bitsound import engine
from bitsound.errors import ConfigError
from bitsound.graph.builder import GraphBuilder

# peak methods per instruction set: the engine's best kernel can use any of them
PEAK_METHODS = {"avx512": ["avx512"], "avx2": ["avx2-harley-seal", "avx2-lut", "popcnt"],
                "scalar": ["scalar"], "reference": ["scalar"]}


def parse_size(size) -> tuple[int, int]:
    """32, (32, 32) or "32x32" -> (32, 32)."""
    if isinstance(size, str):
        parts = size.lower().split("x")
        if len(parts) not in (1, 2) or not all(p.strip().isdigit() for p in parts):
            raise ConfigError(f"size must be like 32x32 or 32, got {size!r}")
        vals = [int(p) for p in parts]
    elif isinstance(size, int):
        vals = [size]
    else:
        vals = [int(v) for v in size]
    if len(vals) == 1:
        vals = vals * 2
    if len(vals) != 2 or min(vals) < 1:
        raise ConfigError(f"size must be one or two positive integers, got {size!r}")
    return vals[0], vals[1]


def _min_time(fn, *, budget: float, min_repeats: int = 3) -> float:
    fn()  # warm up
    best, spent, n = float("inf"), 0.0, 0
    while n < min_repeats or spent < budget:
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best, spent, n = min(best, dt), spent + dt, n + 1
    return best


def peak_xor_popcount(isa: str | None = None, *, seconds: float = 0.3) -> dict[str, Any]:
    """The machine's XOR+popcount throughput on L1-resident data, in binary MACs per second.

    Every method available to ``isa`` (default: the one ``auto`` picks) is measured; the peak
    is the best. One binary MAC = one bit of XOR + its share of the popcount and the add. The
    bit-serial kernels skip the half of the weight bits they do not need, so a convolution can
    exceed this peak (a fraction above 1): it is the ceiling of the word-parallel method.
    """
    from bitsound.engine import _lib

    isa = isa or engine.auto_isa()
    rates = {m: _lib().peak(m, seconds) for m in PEAK_METHODS.get(isa, ["scalar"]) if m != "avx512" or
             _lib().isa_available("avx512")}
    best = max(rates, key=rates.get)
    return {"isa": isa, "methods": rates, "best_method": best, "peak_macs_per_s": rates[best]}


def _conv_graph(cin, cout, h, w, k, out_mode) -> bytes:
    rng = np.random.default_rng(0)
    wr = GraphBuilder()
    x = wr.add_input((cin, h, w))
    b = wr.add_pack(x, name="pack")
    signs = np.where(rng.standard_normal((cout, cin, k, k)) < 0, -1, 1)
    p = k // 2
    pad = (p, p, k - 1 - p, k - 1 - p)  # 'same'
    if out_mode == "bits":
        wr.add_bconv2d(b, signs, padding=pad, out_mode="bits", thr=rng.integers(-3, 4, cout),
                       flip=rng.integers(0, 2, cout), name="bconv")
    else:
        wr.add_bconv2d(b, signs, padding=pad, out_mode="float", scale=np.ones(cout), bias=np.zeros(cout),
                       name="bconv")
    wr.add_output(x)
    return wr.to_bytes()


def bench_layer(cin: int, cout: int, size, kernel: int, *, threads: int = 1, isa: str = "auto",
                bconv: str = "auto", budget: float = 1.0, peak: dict | None = None) -> dict[str, Any]:
    """Time the engine's binary conv against torch fp32 ``conv2d`` of the same shape.

    Parameters
    ----------
    cin, cout : int
        Input and output channels.
    size : int, (h, w) or "HxW"
        Spatial size of the input; zero 'same' padding, stride 1.
    kernel : int
        Square kernel size.
    threads : int
        Threads of each side: torch's intra-op threads, the engine's pool (the conv's blocks of
        output pixels split over it).
    isa : str
        Engine instruction set (``auto`` = fastest available).
    bconv : {"auto", "word", "serial", "slice"}
        The engine's binary conv form (where the layer allows it; ``form`` in the result says
        which ran).
    budget : float
        Seconds spent timing each side (the minimum over the runs is reported).
    peak : dict, optional
        A :func:`peak_xor_popcount` result to reuse; measured if omitted.

    Returns
    -------
    dict
        ``torch_ms``, ``engine_ms`` (binary conv with thresholded bit output, the form binary
        layers run in a model), ``engine_float_out_ms`` (scale + bias float output),
        ``pack_ms`` (binarizing the float input), ``speedup`` (torch / engine), ``macs``,
        ``engine_macs_per_s``, ``torch_macs_per_s``, ``peak_macs_per_s``, ``fraction_of_peak``
        (of one thread's peak), ``form``, and the configuration.
    """
    h, w = parse_size(size)
    for name, v in (("cin", cin), ("cout", cout), ("kernel", kernel)):
        if not isinstance(v, int) or v < 1:
            raise ConfigError(f"{name} must be a positive integer, got {v!r}")
    # the engines first: they validate isa, threads and bconv (before torch is given the threads)
    opts = {"isa": isa, "threads": threads, "bconv": bconv}
    e_bits = engine.loads(_conv_graph(cin, cout, h, w, kernel, "bits"), **opts)
    e_float = engine.loads(_conv_graph(cin, cout, h, w, kernel, "float"), **opts)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = torch.randn(1, cin, h, w)
        wt = torch.randn(cout, cin, kernel, kernel)
        p = kernel // 2
        xp = F.pad(x, (p, kernel - 1 - p, p, kernel - 1 - p))
        with torch.no_grad():
            t_torch = _min_time(lambda: F.conv2d(xp, wt), budget=budget)
    finally:
        torch.set_num_threads(old_threads)
    feats = x[0].numpy()
    reps = max(3, min(1000, int(budget / max(t_torch / 10, 1e-6))))
    t_bits = min(e_bits.time_op(feats, 2, repeats=reps))
    t_float = min(e_float.time_op(feats, 2, repeats=reps))
    t_pack = min(e_bits.time_op(feats, 1, repeats=reps))
    macs = cin * cout * kernel * kernel * h * w
    peak = peak or peak_xor_popcount(e_bits.isa)
    rate = macs / t_bits
    return {
        "cin": cin, "cout": cout, "size": [h, w], "kernel": kernel, "threads": threads, "isa": e_bits.isa,
        "form": e_bits.forms[2], "float_out_form": e_float.forms[2],
        "macs": macs, "torch_ms": t_torch * 1e3, "engine_ms": t_bits * 1e3,
        "engine_float_out_ms": t_float * 1e3,
        "pack_ms": t_pack * 1e3, "speedup": t_torch / t_bits, "speedup_float_out": t_torch / t_float,
        "torch_macs_per_s": macs / t_torch, "engine_macs_per_s": rate,
        "peak_macs_per_s": peak["peak_macs_per_s"], "peak_method": peak["best_method"],
        "fraction_of_peak": rate / peak["peak_macs_per_s"], "cpu": _cpu_name(),
    }


def bench_model(model, *, isa: str = "auto", clips: int = 20, budget: float = 1.0) -> dict[str, Any]:
    """Per-clip latency of a whole model: PyTorch eval vs the engine, front end included and not.

    Parameters
    ----------
    model : SoundClassifier or str/Path of a ``model.pt``
        Exported to a temporary ``.bsnn`` on the fly.
    clips : int
        Batch of synthetic 1-window clips timed one at a time.
    """
    import tempfile

    from bitsound.engine.classifier import EngineClassifier
    from bitsound.export.packed import export_packed
    from bitsound.modelfile import load_model

    if isinstance(model, (str, Path)):
        model = load_model(model)
    with tempfile.TemporaryDirectory() as tmp:
        path = export_packed(model, Path(tmp) / "model.bsnn")
        clf = EngineClassifier(engine.load(path, isa=isa))
    wave = torch.randn(clips, *model.example_input.shape[1:]) * 0.1
    with torch.no_grad():
        feats = model.frontend(wave)
    feats_np = feats.numpy()
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            t_front = _min_time(lambda: [model.frontend(wave[i:i + 1]) for i in range(clips)], budget=budget)
            t_torch = _min_time(lambda: [model.net(feats[i:i + 1]) for i in range(clips)], budget=budget)
            t_eng = _min_time(lambda: [clf.engine.predict(feats_np[i:i + 1]) for i in range(clips)],
                              budget=budget)
            # the engine's own path, audio to label in C, when the recipe's front end has a C twin
            t_c_front = None
            if clf.frontend_kind == "c":
                t_c_front = _min_time(lambda: [clf.features(wave[i:i + 1]) for i in range(clips)],
                                      budget=budget)
    finally:
        torch.set_num_threads(old)
    per = lambda t: t / clips * 1e3  # noqa: E731
    return {"model": model.recipe.model.name, "recipe": model.recipe.name, "isa": clf.engine.isa,
            "feature_shape": list(clf.engine.feature_shape), "frontend_ms": per(t_front),
            "torch_ms": per(t_torch), "engine_ms": per(t_eng),
            "torch_with_frontend_ms": per(t_front + t_torch), "engine_with_frontend_ms": per(t_front + t_eng),
            "speedup": t_torch / t_eng, "speedup_with_frontend": (t_front + t_torch) / (t_front + t_eng),
            "c_frontend_ms": None if t_c_front is None else per(t_c_front),
            "engine_with_c_frontend_ms": None if t_c_front is None else per(t_c_front + t_eng),
            "rtf_engine_with_c_frontend": None if t_c_front is None else
            (t_c_front + t_eng) / clips / model.recipe.audio.window_seconds}


def bench_threads(data: bytes, *, threads=(1, 2), isa: str = "auto", batch: int = 64,
                  budget: float = 1.0) -> list[dict[str, Any]]:
    """Throughput of the engine on a batch of examples, per number of threads.

    Parameters
    ----------
    data : bytes
        A ``.bsnn`` model.
    threads : sequence of int
        Thread counts to measure (the first is the baseline of ``scaling``).
    batch : int
        Examples per :meth:`Engine.predict` call (random features; speed hardly depends on them).

    Returns
    -------
    list of dict
        Per thread count: ``threads``, ``batch_ms``, ``examples_per_s``, ``scaling`` (throughput
        over the first count's), ``identical`` (the logits equal the first count's bit for bit).
    """
    rows, base, first = [], None, None
    shape = engine.loads(data, isa=isa).feature_shape
    x = np.random.default_rng(0).standard_normal((batch, *shape)).astype(np.float32)
    for n in threads:
        e = engine.loads(data, isa=isa, threads=int(n))
        out = e.predict(x)
        t = _min_time(lambda e=e: e.predict(x), budget=budget)
        if base is None:
            base, first = t, out
        rows.append({"threads": int(n), "isa": e.isa, "batch": batch, "batch_ms": t * 1e3,
                     "examples_per_s": batch / t, "scaling": base / t,
                     "identical": bool(np.array_equal(out, first))})
    return rows


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


__all__ = ["bench_layer", "bench_model", "bench_threads", "parse_size", "peak_xor_popcount"]
