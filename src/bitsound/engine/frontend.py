"""The C front end (``engine/frontend.c``): its parameters and tables from a recipe, and running it.

:func:`frontend_spec` turns a recipe's audio and front-end sections into a :class:`FrontEndSpec`:
the scalar fields and the tables of the C struct ``bsfe_spec`` (``engine/frontend.h``). Every
table is computed here, from the same PyTorch modules the Python front end uses, so that the C
code needs no trigonometry and the host engine and the generated microcontroller code
(:mod:`bitsound.deploy`, which writes these tables as ``const`` arrays) compute identical numbers:

- the window is :class:`bitsound.audio.features.LogMel`'s ``window`` buffer (float32) and the mel
  filters its ``mel_basis``, stored as each band's nonzero span;
- the FFT twiddles are ``cos, sin(2 pi k / n_fft)`` rounded to float32;
- the resize weights of the binary image are read from ``torch.nn.functional.interpolate``
  itself (antialiased bilinear, one axis at a time, on impulses): the weights PyTorch applies,
  bit for bit.

:func:`run` computes features in C (``bitsound.engine._engine.frontend_run``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from bitsound.errors import ConfigError, DataError

KINDS = {"raw": 0, "logmel": 1, "binary_image": 2}
THRESHOLDS = {"fixed": 0, "mean": 1, "otsu": 2}
POWER_ANY, POWER_MAG, POWER_SQUARE = 0, 1, 2

# the order in which the binding (_engine.c: frontend_run) reads the fields
INT_FIELDS = (
    "kind",
    "n_channels",
    "n_samples",
    "n_fft",
    "hop",
    "center",
    "n_frames",
    "win_start",
    "win_len",
    "power_mode",
    "n_mels",
    "denoise",
    "threshold",
    "out_h",
    "out_w",
    "rs_rows",
    "out_in_work",
)
FLOAT_FIELDS = ("power_half", "log_offset", "threshold_value")
TABLE_FIELDS = (
    ("window", np.float32),
    ("twiddle", np.float32),
    ("bitrev", np.uint16),
    ("mel_first", np.uint16),
    ("mel_count", np.uint16),
    ("mel_weights", np.float32),
    ("rs_y_first", np.uint16),
    ("rs_y_count", np.uint16),
    ("rs_y_weights", np.float32),
    ("rs_x_first", np.uint16),
    ("rs_x_count", np.uint16),
    ("rs_x_weights", np.float32),
)


def _a8(n: int) -> int:
    return (n + 7) // 8 * 8


@dataclass(frozen=True)
class FrontEndSpec:
    """The C front end's parameters: ``ints`` and ``floats`` (the scalar fields of ``bsfe_spec``),
    ``tables`` (its arrays), the output ``feature_shape`` and the recipe's ``sample_rate``."""

    ints: dict[str, int]
    floats: dict[str, float]
    tables: dict[str, np.ndarray] = field(repr=False)
    feature_shape: tuple[int, ...]
    sample_rate: int

    @property
    def kind(self) -> str:
        return {v: k for k, v in KINDS.items()}[self.ints["kind"]]

    @property
    def n_samples(self) -> int:
        """Samples per channel of one input window."""
        return self.ints["n_samples"]

    @property
    def out_floats(self) -> int:
        return int(np.prod(self.feature_shape))

    def image_bytes(self) -> int:
        return _a8(self.ints["n_mels"] * self.ints["n_frames"] * 4)

    def work_bytes(self) -> int:
        """Working memory of one run (``bsfe_work_bytes`` in frontend.c as the generated projects
        compile it, one frame at a time; the host engine's build, four frames at once, takes more)."""
        i = self.ints
        if i["kind"] == KINDS["raw"]:
            return 0
        fft = _a8(max(i["n_fft"] + 2, i["n_frames"]) * 4)
        if i["kind"] == KINDS["logmel"]:
            return fft
        return self.image_bytes() + _a8(i["rs_rows"] * i["out_w"] * 4) + fft

    def table_bytes(self) -> int:
        return sum(int(t.nbytes) for t in self.tables.values())


def _periodic_tables(n_fft: int) -> np.ndarray:
    k = np.arange(n_fft // 2, dtype=np.float64)
    ang = 2.0 * np.pi * k / n_fft
    return np.stack([np.cos(ang), np.sin(ang)], axis=1).astype(np.float32).reshape(-1)


def _bit_reversal(m: int) -> np.ndarray:
    """i -> i with its log2(m) bits reversed."""
    bits = m.bit_length() - 1
    i = np.arange(m)
    r = np.zeros(m, dtype=np.int64)
    for b in range(bits):
        r |= ((i >> b) & 1) << (bits - 1 - b)
    return r.astype(np.uint16)


def _spans(weights: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of ``weights`` [rows][n]: first nonzero column, span length, the span's values."""
    first, count, values = [], [], []
    for r, row in enumerate(weights):
        nz = np.flatnonzero(row != 0)
        if nz.size == 0:
            first.append(0)
            count.append(0)
            continue
        if nz[-1] >= 65535:
            raise ConfigError(f"{what} row {r} reaches index {nz[-1]}, beyond the C tables' 16-bit range")
        first.append(int(nz[0]))
        count.append(int(nz[-1] - nz[0] + 1))
        values.append(row[nz[0] : nz[-1] + 1])
    vals = np.concatenate(values).astype(np.float32) if values else np.zeros(0, np.float32)
    return np.asarray(first, np.uint16), np.asarray(count, np.uint16), vals


def resize_weights(n_in: int, n_out: int) -> np.ndarray:
    """The weights [n_out][n_in] of PyTorch's antialiased bilinear resize along one axis.

    Read from ``F.interpolate`` on impulses (an identity along the other axis, which keeps width
    2 there: width-1 inputs take another code path in PyTorch), so they are the float32 numbers
    it applies.
    """
    x = torch.eye(n_in, dtype=torch.float32).reshape(n_in, 1, n_in, 1).repeat(1, 1, 1, 2)
    y = F.interpolate(x, size=(n_out, 2), mode="bilinear", align_corners=False, antialias=True)
    return y[:, 0, :, 0].T.numpy().copy()


def frontend_spec(recipe) -> FrontEndSpec:
    """The C front end of a recipe: its parameters and tables for one input window.

    Parameters
    ----------
    recipe : Recipe
        Its ``audio`` (rate, channels, window length) and ``frontend`` sections are used.

    Raises
    ------
    ConfigError
        For a front end the C code does not implement (an STFT size that is not a power of two),
        naming the value and the fix.
    """
    from bitsound.audio.features import build_frontend
    from bitsound.modelfile import feature_shape

    audio, cfg = recipe.audio, recipe.frontend
    n_samples = audio.window_samples
    shape = tuple(feature_shape(recipe))
    ints = dict.fromkeys(INT_FIELDS, 0)
    floats = dict.fromkeys(FLOAT_FIELDS, 0.0)
    tables = {name: np.zeros(0, dt) for name, dt in TABLE_FIELDS}
    ints.update(kind=KINDS[cfg.kind], n_channels=audio.n_channels, n_samples=n_samples)
    if cfg.kind != "raw":
        n_fft = cfg.n_fft
        if n_fft < 4 or n_fft & (n_fft - 1):
            raise ConfigError(
                f"frontend.n_fft={n_fft}: the C front end computes power-of-two FFTs only; "
                f"use n_fft = {1 << max(2, (n_fft - 1).bit_length())} (and win_length={n_fft} "
                f"to keep the window)"
            )
        fe = build_frontend(cfg, sample_rate=audio.sample_rate)
        logmel = fe.logmel if cfg.kind == "binary_image" else fe
        window = logmel.window.numpy().astype(np.float32)
        win_length = cfg.win_length or n_fft
        left = (n_fft - win_length) // 2
        mel_first, mel_count, mel_weights = _spans(logmel.mel_basis.numpy().astype(np.float32), "mel filter")
        if cfg.power == 2.0:
            power_mode = POWER_SQUARE
        elif cfg.power == 1.0:
            power_mode = POWER_MAG
        else:
            power_mode = POWER_ANY
        ints.update(
            n_fft=n_fft,
            hop=cfg.hop_length,
            center=int(cfg.center),
            n_frames=logmel.n_frames(n_samples),
            win_start=left,
            win_len=win_length,
            power_mode=power_mode,
            n_mels=cfg.n_mels,
        )
        floats.update(
            power_half=float(np.float32(cfg.power / 2)), log_offset=float(np.float32(cfg.log_offset))
        )
        tables.update(
            window=window[left : left + win_length].copy(),
            twiddle=_periodic_tables(n_fft),
            bitrev=_bit_reversal(n_fft // 2),
            mel_first=mel_first,
            mel_count=mel_count,
            mel_weights=mel_weights,
        )
    if cfg.kind == "binary_image":
        n_mels, n_frames = ints["n_mels"], ints["n_frames"]
        yf, yc, yw = _spans(resize_weights(n_mels, cfg.height), "resize (height)")
        xf, xc, xw = _spans(resize_weights(n_frames, cfg.width), "resize (width)")
        ints.update(
            denoise=int(cfg.denoise == "band_median"),
            threshold=THRESHOLDS[cfg.threshold],
            out_h=cfg.height,
            out_w=cfg.width,
            rs_rows=int(yc.max()),
        )
        floats.update(threshold_value=float(np.float32(cfg.threshold_value)))
        tables.update(
            rs_y_first=yf, rs_y_count=yc, rs_y_weights=yw, rs_x_first=xf, rs_x_count=xc, rs_x_weights=xw
        )
    spec = FrontEndSpec(ints, floats, tables, shape, audio.sample_rate)
    if cfg.kind == "binary_image":
        spec.ints["out_in_work"] = int(_out_fits_in_image(spec))
    return spec


def _out_fits_in_image(spec: FrontEndSpec) -> bool:
    """Whether the resized image may be written over the log-mel image it is computed from:
    output row oy (written after its input rows are read) must end before the first input row of
    every later output row, and the output must fit in the image."""
    i, t = spec.ints, spec.tables
    if i["n_channels"] != 1 or spec.out_floats * 4 > spec.image_bytes():
        return False
    first = t["rs_y_first"].astype(np.int64)
    return all((oy + 1) * i["out_w"] <= first[oy + 1] * i["n_frames"] for oy in range(i["out_h"] - 1))


def run(spec: FrontEndSpec, audio: np.ndarray) -> np.ndarray:
    """Features of a batch of windows, computed by the C front end.

    Parameters
    ----------
    spec : FrontEndSpec
    audio : ndarray [shape=(batch, channels, samples)]
        Windows of ``spec.n_samples`` samples at the recipe's rate (converted to float32).

    Returns
    -------
    ndarray [shape=(batch, *spec.feature_shape), dtype=float32]
    """
    from bitsound.engine import _lib

    x = np.ascontiguousarray(audio, dtype=np.float32)
    want = (spec.ints["n_channels"], spec.n_samples)
    if x.ndim != 3 or x.shape[1:] != want:
        raise DataError(
            f"the C front end takes windows of shape (batch, {want[0]}, {want[1]}), got "
            f"{tuple(x.shape)}: cut the audio into the recipe's windows first"
        )
    out = np.empty((x.shape[0], *spec.feature_shape), dtype=np.float32)
    _lib().frontend_run(
        tuple(int(spec.ints[k]) for k in INT_FIELDS),
        tuple(float(spec.floats[k]) for k in FLOAT_FIELDS),
        tuple(np.ascontiguousarray(spec.tables[k], dtype=dt) for k, dt in TABLE_FIELDS),
        x,
        out,
    )
    return out


__all__ = ["FrontEndSpec", "frontend_spec", "resize_weights", "run"]
