"""BC-ResNet-ASC with Residual Normalization (seed 003): ``bcresnet-asc-1`` and ``bcresnet-asc-8``.

Seed 003 Table 1, base channels ``c`` = 10 (``-1``) and 80 (``-8``), input ``256 x T`` log-mel
(16 kHz, 256 bands, 130 ms window, 30 ms hop), frequency first::

    input                                   ResNorm (1)
    conv2d 5x5, stride 2, 2c  -> BN -> ReLU        128 x T/2 x 2c
    stage 1: 2 BC-ResBlocks, c              ResNorm (2)
    max-pool 2x2                                    64 x T/4
    stage 2: 2 BC-ResBlocks, 1.5c           ResNorm (3)
    max-pool 2x2                                    32 x T/8
    stage 3: 2 BC-ResBlocks, 2c             ResNorm (4)
    stage 4: 3 BC-ResBlocks, 2.5c           ResNorm (5)
    conv2d 1x1 -> n_classes (with bias), global average pool

A BC-ResBlock (broadcasted residual learning, Kim et al. 2021) is, for ``x`` of ``C`` channels::

    [transition, C_in != C:  x = ReLU(BN(conv1x1(x)))]
    aux = SubSpectralNorm(freq depthwise conv 3x1 (x))              # 2-D part, 4 sub-bands
    y   = Dropout2d(conv1x1(SiLU(BN(temporal depthwise conv 1x3 (mean over frequency of aux)))))
    out = ReLU(y + aux [+ x if not a transition])                   # y broadcast over frequency

The ASC version keeps no dilation (max-pools limit the receptive field instead) and strides
nowhere inside the blocks. The stem is the official BC-ResNet's ``conv (no bias) -> BN -> ReLU``.
With 10 classes (TAU 2020 Mobile) this gives 8,055 parameters for ``c = 10`` and 314,970 for
``c = 80``: the seed's 8.1 k and 315 k.

``norm`` selects the rows of seed 003 Table 3 (``lam`` is the ResNorm shortcut weight, 0.1 in
the seed, for the ResNorm variants only):

=================  ======================================================================
``resnorm``        ResNorm at the input and after each of the four stages (five modules)
``resnorm_input``  "w/o ResNorm in Network": ResNorm at the input only
``freq_in``        "w/o Shortcut": FreqIN (ResNorm with lambda = 0) at the five places
``global_freq``    "Global FreqNorm": each input frequency bin normalised by training statistics
``pcen``           "Fixed PCEN": per-channel energy normalisation instead of the log compression
``none``           "Baseline": no normalisation module
=================  ======================================================================

References
----------
- Seed 003: B. Kim, S. Yang, J. Kim, S. Chang, "Domain generalization on efficient acoustic scene
  classification using residual normalization", DCASE 2021 workshop.
- B. Kim, S. Chang, J. Lee, D. Sung, "Broadcasted residual learning for efficient keyword
  spotting", Interspeech 2021 (BC-ResNet; Qualcomm-AI-research/bcresnet).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from bitsound.errors import ConfigError
from bitsound.models.registry import Fraction, ModelParams, PositiveInt, register_model
from bitsound.nn.freqnorm import FixedPCEN, GlobalFreqNorm, ResNorm, SubSpectralNorm

NORMS = ("resnorm", "resnorm_input", "freq_in", "global_freq", "pcen", "none")
DEFAULT_LAMBDA = 0.1  # seed 003: "We use fixed lambda = 0.1 for ResNorm"


class BCResBlock(nn.Module):
    """One BC-ResBlock (see the module docstring); a transition block when ``c_in != c_out``.

    x : Tensor [shape=(batch, c_in, freq, time)] -> Tensor [shape=(batch, c_out, freq, time)]
    """

    def __init__(self, c_in: int, c_out: int, *, sub_bands: int = 4, dropout: float = 0.1):
        super().__init__()
        self.transition = c_in != c_out
        self.pre = (nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())
                    if self.transition else None)
        self.freq_dw = nn.Conv2d(c_out, c_out, (3, 1), padding=(1, 0), groups=c_out, bias=False)
        self.ssn = SubSpectralNorm(c_out, sub_bands)
        self.temp_dw = nn.Conv2d(c_out, c_out, (1, 3), padding=(0, 1), groups=c_out, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.swish = nn.SiLU()
        self.pw = nn.Conv2d(c_out, c_out, 1, bias=False)
        self.drop = nn.Dropout2d(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        if self.pre is not None:
            x = self.pre(x)
        aux = self.ssn(self.freq_dw(x))
        y = aux.mean(dim=2, keepdim=True)  # the 1-D (temporal) part on the frequency-averaged map
        y = self.drop(self.pw(self.swish(self.bn(self.temp_dw(y)))))
        out = y + aux  # broadcast over frequency
        if not self.transition:
            out = out + identity
        return F.relu(out)


def _norm(kind: str, *, lam: float, n_freq: int, hop_seconds: float, at_input: bool) -> nn.Module:
    if kind in ("resnorm", "freq_in") or (kind == "resnorm_input" and at_input):
        return ResNorm(0.0 if kind == "freq_in" else lam)
    if at_input and kind == "global_freq":
        return GlobalFreqNorm(n_freq)
    if at_input and kind == "pcen":
        return FixedPCEN(hop_seconds=hop_seconds)
    return nn.Identity()


class BCResNetASC(nn.Module):
    """BC-ResNet-ASC (seed 003 Table 1; see the module docstring).

    Parameters
    ----------
    input_shape : tuple [shape=(channels, freq, time)]
        ``freq`` must be divisible by 32 (stride 2, two max-pools, 4 sub-bands).
    n_classes : int
    base_channels : int
        ``c`` of Table 1 (10 for BC-ResNet-ASC-1, 80 for -8).
    norm : str
        One of :data:`NORMS` (Table 3 rows).
    lam : float, optional
        ResNorm's shortcut weight for ``resnorm`` and ``resnorm_input`` (default 0.1).
    sub_bands : int
        SubSpectralNorm sub-bands (4 in the seed).
    dropout : float
        Channel dropout in each block (0.1 in the seed).
    hop_seconds : float
        The front end's hop, used by the ``pcen`` smoother only (30 ms in the seed); built from
        a recipe, it must equal ``frontend.hop_length / audio.sample_rate`` (checked).

    Shapes: x : Tensor [shape=(batch, channels, freq, time)] -> logits [shape=(batch, n_classes)].
    """

    def __init__(self, *, input_shape: tuple[int, ...], n_classes: int, base_channels: int,
                 norm: str = "resnorm", lam: float | None = None, sub_bands: int = 4,
                 dropout: float = 0.1, hop_seconds: float = 0.03):
        super().__init__()
        if len(input_shape) != 3:
            raise ConfigError(f"BC-ResNet-ASC takes log-mel features (channels, freq, time), got "
                              f"{tuple(input_shape)}: use a logmel front end")
        c_in, n_freq, _ = input_shape
        if n_freq % (8 * sub_bands):
            raise ConfigError(f"BC-ResNet-ASC needs a number of mel bands divisible by {8 * sub_bands} "
                              f"(stride 2, two 2x2 max-pools, {sub_bands} sub-bands), got {n_freq}; the "
                              f"seed uses 256")
        if norm not in NORMS:
            raise ConfigError(f"model.params.norm must be one of {', '.join(NORMS)}, got {norm!r}")
        if lam is not None and norm not in ("resnorm", "resnorm_input"):
            raise ConfigError(f"model.params.lam is ResNorm's shortcut weight and applies to norm 'resnorm' "
                              f"or 'resnorm_input', not {norm!r} ('freq_in' is lambda = 0); drop it")
        lam = DEFAULT_LAMBDA if lam is None else lam
        c = base_channels
        widths = [c, int(1.5 * c), 2 * c, int(2.5 * c)]
        blocks = [2, 2, 2, 3]
        self.norm_kind = norm
        freq = [n_freq, n_freq // 2, n_freq // 4, n_freq // 8, n_freq // 8]
        norms = [_norm(norm, lam=lam, n_freq=f, hop_seconds=hop_seconds, at_input=i == 0)
                 for i, f in enumerate(freq)]
        self.input_norm = norms[0]
        self.stem = nn.Sequential(nn.Conv2d(c_in, 2 * c, 5, stride=2, padding=2, bias=False),
                                  nn.BatchNorm2d(2 * c), nn.ReLU())
        stages: list[nn.Module] = []
        prev = 2 * c
        for i, (width, n) in enumerate(zip(widths, blocks, strict=True)):
            layers: list[nn.Module] = []
            for _ in range(n):
                layers.append(BCResBlock(prev, width, sub_bands=sub_bands, dropout=dropout))
                prev = width
            layers.append(norms[i + 1])
            if i < 2:
                layers.append(nn.MaxPool2d(2))
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.classifier = nn.Conv2d(prev, n_classes, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x : Tensor [shape=(batch, channels, freq, time)] -> logits [shape=(batch, n_classes)]"""
        x = self.stages(self.stem(self.input_norm(x)))
        return torch.flatten(self.pool(self.classifier(x)), 1)


class BCResNetASCParams(ModelParams):
    """``model.params`` of ``bcresnet-asc-1`` / ``-8`` (see :class:`BCResNetASC`)."""

    norm: Literal["resnorm", "resnorm_input", "freq_in", "global_freq", "pcen", "none"] = "resnorm"
    lam: Annotated[float, Field(ge=0)] | None = None
    sub_bands: PositiveInt = 4
    dropout: Fraction = 0.1
    hop_seconds: Annotated[float, Field(gt=0)] = 0.03

    def check_recipe(self, recipe: Any) -> None:
        """With ``norm: pcen`` the smoother's rate comes from ``hop_seconds``: it must be the
        front end's hop (``frontend.hop_length / audio.sample_rate``); other norms do not use it."""
        if self.norm != "pcen":
            return
        hop_length = getattr(recipe.frontend, "hop_length", None)
        if hop_length is None:
            raise ConfigError(f"model.params.norm pcen smooths log-mel frames, but frontend.kind "
                              f"{recipe.frontend.kind!r} has no hop; use a logmel front end")
        hop = hop_length / recipe.audio.sample_rate
        if not math.isclose(self.hop_seconds, hop, rel_tol=1e-6):
            raise ConfigError(f"model.params.hop_seconds={self.hop_seconds} but the front end's hop is "
                              f"frontend.hop_length / audio.sample_rate = {hop_length} / "
                              f"{recipe.audio.sample_rate} = {hop:g} s: the PCEN smoother (norm pcen) "
                              f"needs the real frame rate; set model.params.hop_seconds={hop:g}")


# 256 log-mel bands; 2 s at the seed's 30 ms hop (any length runs: all-convolutional)
EXAMPLE = (1, 256, 67)


@register_model("bcresnet-asc-1", params=BCResNetASCParams, example_input=EXAMPLE,
                description="seed 003 BC-ResNet-ASC-1 (c = 10, 8.1 k params) with ResNorm")
def bcresnet_asc_1(*, input_shape: tuple[int, ...], n_classes: int, **params: Any) -> nn.Module:
    return BCResNetASC(input_shape=input_shape, n_classes=n_classes, base_channels=10, **params)


@register_model("bcresnet-asc-8", params=BCResNetASCParams, example_input=EXAMPLE,
                description="seed 003 BC-ResNet-ASC-8 (c = 80, 315 k params) with ResNorm")
def bcresnet_asc_8(*, input_shape: tuple[int, ...], n_classes: int, **params: Any) -> nn.Module:
    return BCResNetASC(input_shape=input_shape, n_classes=n_classes, base_channels=80, **params)
