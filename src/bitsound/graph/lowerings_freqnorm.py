"""Lowerings of the frequency-wise normalisation layers (:mod:`bitsound.nn.freqnorm`, seed 003).

- :class:`~bitsound.nn.freqnorm.ResNorm` ``lam * x + FreqIN(x)``: ``normalize`` over time and
  channels (axes w | c) for each frequency, plus ``affine(x, lam)`` and an ``add``; with
  ``lam = 0`` the ``normalize`` alone.
- :class:`~bitsound.nn.freqnorm.SubSpectralNorm` at inference: a ``freq_affine`` whose scale
  and bias are the sub-band batch-norm's, repeated over the bins of each sub-band.
- :class:`~bitsound.nn.freqnorm.GlobalFreqNorm`: a ``freq_affine`` from the training statistics.
- :class:`~bitsound.nn.freqnorm.FixedPCEN` has no graph op (a recursive smoother along time);
  its lowering stops the export with the reason.

Imported by :mod:`bitsound.graph.lowerings`, which :func:`bitsound.graph.lower.lower` loads.
"""

from __future__ import annotations

import numpy as np

from bitsound.errors import ExportError
from bitsound.graph import opcodes as oc
from bitsound.graph.lower import LowerContext, Value, register_lowering
from bitsound.nn.freqnorm import FixedPCEN, GlobalFreqNorm, ResNorm, SubSpectralNorm


def _map(ctx: LowerContext, x: Value, name: str, what: str) -> Value:
    x = ctx.floats(x, name, what)
    if x.rank != 2:
        raise ExportError(f"layer '{name}' ({what}) needs a (N, C, F, T) feature map, got rank {x.rank}")
    return x


def _freq_affine(ctx: LowerContext, x: Value, scale: np.ndarray, bias: np.ndarray, *, name: str,
                 source) -> Value:
    s = ctx.shape(x)
    if scale.shape != (s.h, s.c) or bias.shape != (s.h, s.c):
        raise ExportError(f"layer '{name}': a {scale.shape} frequency map for a {s.h}x{s.c} input")
    if not (np.isfinite(scale).all() and np.isfinite(bias).all()):
        raise ExportError(f"layer '{name}' has non-finite normalisation statistics")
    return ctx.add("freq_affine", [x], {"h": s.h, "c": s.c}, {"scale": scale, "bias": bias}, name=name,
                   rank=2, source=source)


@register_lowering(ResNorm)
def _resnorm(ctx, m, name, x):
    x = _map(ctx, x, name, "ResNorm")
    mask = (1 << oc.AXES["w"]) | (1 << oc.AXES["c"])  # time and channels, for every frequency
    normed = ctx.add("normalize", [x], {"axes": mask, "eps": m.eps}, name=f"{name}.freq_in", rank=2, source=m)
    if m.lam == 0:
        return normed
    scaled = ctx.affine(x, m.lam, 0.0, name=f"{name}.shortcut", source=m)
    return ctx.add("add", [normed, scaled], {"mode": oc.ADD_MODES["same"]}, name=name, rank=2, source=m)


@register_lowering(SubSpectralNorm)
def _subspectral(ctx, m, name, x):
    x = _map(ctx, x, name, "SubSpectralNorm")
    s = ctx.shape(x)
    if s.h % m.sub_bands or s.c != m.channels:
        raise ExportError(f"layer '{name}' (SubSpectralNorm of {m.channels} channels, {m.sub_bands} "
                          f"sub-bands) gets a {s.h} x {s.c} (freq x channels) input")
    if m.bn.running_mean is None:
        raise ExportError(f"layer '{name}' normalises with batch statistics at inference; the graph needs "
                          f"track_running_stats=True")
    scale, bias = m.freq_affine(s.h)
    return _freq_affine(ctx, x, scale.numpy(), bias.numpy(), name=name, source=m)


@register_lowering(GlobalFreqNorm)
def _global_freq(ctx, m, name, x):
    x = _map(ctx, x, name, "GlobalFreqNorm")
    s = ctx.shape(x)
    if s.h != m.n_freq:
        raise ExportError(f"layer '{name}' (GlobalFreqNorm of {m.n_freq} bins) gets {s.h} bins")
    inv = 1.0 / np.sqrt(m.var.detach().double().numpy() + m.eps)
    shift = -m.mean.detach().double().numpy() * inv
    return _freq_affine(ctx, x, np.repeat(inv[:, None], s.c, 1), np.repeat(shift[:, None], s.c, 1),
                        name=name, source=m)


@register_lowering(FixedPCEN)
def _pcen(ctx, m, name, x):
    raise ExportError(f"layer '{name}' (FixedPCEN, the 'pcen' ablation of seed 003 Table 3) smooths along "
                      f"time with a recursive filter, which the model graph has no op for; export a "
                      f"model trained with another model.params.norm (e.g. 'resnorm')")
