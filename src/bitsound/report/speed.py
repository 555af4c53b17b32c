"""Speed of an exported ``.bsnn`` beside its PyTorch model, measured when the report is made."""

from __future__ import annotations

import time
from pathlib import Path

import torch


def _best_seconds(fn, *, budget: float, min_repeats: int = 5) -> float:
    """Fastest of repeated calls of ``fn`` within about ``budget`` seconds (at least min_repeats)."""
    best, spent, repeats = float("inf"), 0.0, 0
    while repeats < min_repeats or spent < budget:
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
        best, spent, repeats = min(best, elapsed), spent + elapsed, repeats + 1
    return best


def engine_speed(bsnn_path: Path, model_path: Path, *, budget: float = 0.3) -> dict:
    """Milliseconds per window of the engine and of PyTorch (one thread, batch of one).

    Parameters
    ----------
    bsnn_path : Path
        The exported model (``bitsound export``).
    model_path : Path
        The ``model.pt`` it was exported from; its front end makes the input features.
    budget : float
        Seconds spent timing each of the two (the fastest call counts).

    Returns
    -------
    dict
        ``engine_ms``, ``torch_ms``, ``speedup``, ``isa`` and ``file`` (the .bsnn name).
    """
    from bitsound.engine import load
    from bitsound.modelfile import load_model

    model = load_model(model_path)
    engine = load(bsnn_path)
    generator = torch.Generator().manual_seed(0)
    wave = torch.randn(1, *model.example_input.shape[1:], generator=generator) * 0.1
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            features = model.frontend(wave)
            feats = features.numpy()
            t_engine = _best_seconds(lambda: engine.predict(feats), budget=budget)
            t_torch = _best_seconds(lambda: model.net(features), budget=budget)
    finally:
        torch.set_num_threads(old)
    return {"file": Path(bsnn_path).name, "isa": engine.isa, "engine_ms": t_engine * 1e3,
            "torch_ms": t_torch * 1e3, "speedup": t_torch / t_engine}
