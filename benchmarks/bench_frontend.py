"""Time the LogMel front end against librosa (melspectrogram + log) in the same run.

Usage::

    python benchmarks/bench_frontend.py [--batch 64] [--seconds 1.0] [--repeats 7]
                                        [--device cpu] [--threads N]

Both sides get the same float32 batch and the same settings (LogMelConfig defaults at 16 kHz);
librosa takes the whole (batch, samples) array in one vectorised call. Times are the median of
``--repeats`` runs after one warm-up run; the ratio is librosa time / LogMel time.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import librosa
import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from bitsound.audio import LogMel
from bitsound.config import LogMelConfig

SAMPLE_RATE = 16000


def median_seconds(fn: Callable[[], object], *, repeats: int, sync: Callable[[], None]) -> float:
    fn()  # warm-up: allocations, FFT plans, CUDA kernels
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def librosa_logmel(x: np.ndarray, cfg: LogMelConfig) -> np.ndarray:
    mel = librosa.feature.melspectrogram(
        y=x,
        sr=SAMPLE_RATE,
        n_fft=cfg.n_fft,
        hop_length=cfg.hop_length,
        win_length=cfg.win_length,
        center=cfg.center,
        pad_mode="constant",
        power=cfg.power,
        n_mels=cfg.n_mels,
        fmin=cfg.fmin,
        fmax=cfg.fmax,
        htk=cfg.mel_scale == "htk",
    )
    return np.log(mel + cfg.log_offset)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu", help="torch device for LogMel, e.g. cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    n = round(args.seconds * SAMPLE_RATE)
    x = (0.3 * np.random.default_rng(0).standard_normal((args.batch, n))).astype(np.float32)
    x_torch = torch.from_numpy(x)[:, None].to(device)

    table = Table(
        title=f"log-mel of {args.batch} x {args.seconds:g} s at {SAMPLE_RATE} Hz "
        f"(median of {args.repeats}; torch threads: {torch.get_num_threads()})"
    )
    # Round brackets: rich would read "[ms]" as markup.
    for column in ("n_fft/hop/mels", "librosa (ms)", f"LogMel {device} (ms)", "librosa / LogMel"):
        table.add_column(column, justify="right")
    settings = [LogMelConfig(), LogMelConfig(n_fft=1024, hop_length=320, n_mels=64)]
    for cfg in settings:
        frontend = LogMel(cfg, sample_rate=SAMPLE_RATE).to(device)
        with torch.inference_mode():
            t_ours = median_seconds(lambda f=frontend: f(x_torch), repeats=args.repeats, sync=sync)
        t_ref = median_seconds(
            lambda c=cfg: librosa_logmel(x, c), repeats=args.repeats, sync=lambda: None
        )
        name = f"{cfg.n_fft}/{cfg.hop_length}/{cfg.n_mels}"
        table.add_row(name, f"{t_ref * 1e3:.1f}", f"{t_ours * 1e3:.1f}", f"{t_ref / t_ours:.1f}x")
    Console().print(table)


if __name__ == "__main__":
    main()
