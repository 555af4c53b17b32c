"""Seed 001's ACDNet family on raw audio, and its XNOR-Net twins.

ACDNet (Mohaimenuzzaman et al. 2021, "Environmental sound classification on the edge") and the
pruning-vs-XNOR study of seed 001 classify a 1.51-s waveform (30,225 samples at 20 kHz) with a
spectral feature extraction block (SFEB: 1-D convolutions on the waveform) followed by a
temporal feature extraction block (TFEB: 2-D convolutions on the SFEB's channels x time map).
The layer list below is the authors' (``mohaimenz/acdnet`` ``torch/resources/models.py`` and
``mohaimenz/pruning-vs-xnor`` ``audio/nets/models.py``; we wrote our own)::

    SFEB  conv1  Conv1d(1, c0, 9, stride 2) - BN - ReLU            30,225 -> 15,109 samples
          conv2  Conv1d(c0, c1, 5, stride 2) - BN - ReLU           -> 7,553
          MaxPool1d(sr / 100 / 4 = 50)                              -> 151 frames of 10 ms
    swap  (batch, c1, 151) -> (batch, 1, c1, 151): the SFEB channels become the TFEB's height
    TFEB  conv3  Conv2d(1, c2, 3x3, pad 1) - BN - ReLU - MaxPool(p0)
          conv4, conv5  (c2 -> c3 -> c4)  3x3 - BN - ReLU each, then MaxPool(p1)
          conv6, conv7  (-> c5 -> c6), MaxPool(p2); conv8, conv9 (-> c7 -> c8), MaxPool(p3);
          conv10, conv11 (-> c9 -> c10), MaxPool(p4)
          Dropout(0.2) - conv12 Conv2d(c10, c11, 1x1) - BN - ReLU - AvgPool(p5)
          Flatten - Linear(c11, n_classes)

Convolutions have no bias (the batch-norm after each one carries it). The pools halve height
and width while they are at least 2 (a side already 1 is not pooled) and the last, average
pool takes what is left (the authors' ``get_tfeb_pool_sizes``: for ACDNet's 64 x 151 map the
pools are 2x2 five times and 2x4 at the end). ACDNet's widths are
``c = 8, 64, 32, 64, 64, 128, 128, 256, 256, 512, 512`` and ``c11 = n_classes``; we use the
SFEB's real output width (151 here, the authors' ``int(length / sr * 100)``) for the pools.
Initialisation as the authors': He-normal convolutions, LeCun-normal classifier.

Sizes (``bitsound complexity``, 50 classes)
-------------------------------------------
- ``acdnet``: 4,735,378 parameters (4.74 M, seed 001 Table 1; batch-norm scales and shifts
  included), 18,497.6 KB at 32 bits; 544.4 M FLOPs by the seed's convention
  (``flops_seed001["x"]``: MACs with bias adds, plus one per activation output and one per value
  a pooling window reads, as the authors' ``calculator.py`` counts; Table 1: 544 M).
- ``micro-acdnet``: the pruned configuration ``7, 20, 10, 14, 22, 31, 35, 41, 51, 67, 69, 48``
  (``audio/quantization.py`` of the authors' code; ``c11 = 48``, not the class count). With it
  the authors' code builds **131,474 parameters** for 50 classes (129,514 for 10): 513.6 KB at
  32 bits, which is Table 1's 514 KB. Table 1's "0.31 M" beside it does not follow from that
  code; we take the code's count.
- ``mini-acdnet``: seed 001 derives it by pruning ACDNet until its XNOR twin matches QMicro-ACDNet
  (Table 4: 1.05 M parameters, 4096 KB, 112 M FLOPs). The authors' code reads its channels from
  a model file (``audio/models/mini_acdnet.pt``) that is not published in any readable form, so
  its pruned configuration is unknown. Ours is fitted to Table 4 by a two-number rule: conv1
  keeps 8 maps, conv2 (the TFEB's height) 56, and the TFEB widths are ACDNet's x 0.46, rounded
  (``8, 56, 15, 29, 29, 59, 59, 118, 118, 236, 236``): 1,016,905 parameters and 113.1 M FLOPs
  for 50 classes (Table 4: 1.05 M and 112 M; no uniform scale of all widths gets within 10 % of
  both). The accuracy of our mini-acdnet is therefore not the seed's Mini-ACDNet's.

The XNOR twins (``xacdnet``, ``xmini-acdnet``, ``xmicro-acdnet``; ``mode="xnor"``)
-------------------------------------------------------------------------------------
Every layer is binary except the first (conv1) and the last (the classifier), as XNOR-Net and
seed 001 require. A binary layer is the authors' (and XNOR-Net's, Rastegari et al. 2016
section 3.2) block ``BN(c_in) - sign - binary conv (alpha per output channel) - ReLU - [pool]``:
the batch-norm right before the sign learns each channel's threshold, and the ReLU keeps the
float stream between blocks non-negative as in the authors' ``BinConv2d``. conv1 stays
``conv - BN - ReLU`` in float; the dropout sits before conv12's batch-norm.

Seed 001 Table 4 prints XACDNet at 578 KB and 8.88 M FLOPs. 578 KB is every parameter of the
4.74 M at one bit (4,735,378 / 8 / 1024 = 578.0 KB): the classifier, conv1, the batch-norms and
the alpha scales at 32 bits add about 18 KB (our ``storage`` rule: what inference needs). The
8.88 M is what the authors' ``common/calculator.py`` prints for their ``BINACDNet``: it skips the
float conv1 (its class is not in the calculator's list), inserts the SFEB-to-TFEB swap one
module late (so conv2 is counted on the unstrided waveform and conv3 before the swap), and
divides everything after the first binary layer by 64, the float classifier included. The
seed's formula ``a + (x - (a + b)) / 64 + b`` on this network's real counts
(``flops_seed001``) gives 9.58 M for 50 classes.

References
----------
- Seed 001: M. Mohaimenuzzaman, C. Bergmeir, B. Meyer, "Pruning vs XNOR-Net: A comprehensive
  study of deep learning for audio classification on edge-devices", IEEE Access 2022.
- M. Mohaimenuzzaman, C. Bergmeir, I. West, B. Meyer, "Environmental sound classification on
  the edge: a pipeline for deep acoustic networks on extremely resource-constrained devices",
  Pattern Recognition 2023 (arXiv 2103.03483): ACDNet, Micro-ACDNet.
- M. Rastegari, V. Ordonez, J. Redmon, A. Farhadi, "XNOR-Net", ECCV 2016.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from pydantic import Field, create_model
from torch import nn

from bitsound.errors import ConfigError
from bitsound.models.registry import Fraction, ModelParams, PositiveInt, register_model
from bitsound.nn.layers import BinaryConv1d, BinaryConv2d

#: ACDNet's widths of conv1 ... conv11 (conv12 gives one map per class).
ACDNET_CHANNELS: tuple[int, ...] = (8, 64, 32, 64, 64, 128, 128, 256, 256, 512, 512)
#: Micro-ACDNet (the authors' pruned configuration; conv12 has 48 maps).
MICRO_CHANNELS: tuple[int, ...] = (7, 20, 10, 14, 22, 31, 35, 41, 51, 67, 69, 48)
#: Our Mini-ACDNet, fitted to seed 001 Table 4's counts (see the module docstring).
MINI_CHANNELS: tuple[int, ...] = (8, 56, 15, 29, 29, 59, 59, 118, 118, 236, 236)

#: The authors' input: 30,225 samples (1.51 s) at 20 kHz.
INPUT_SAMPLES = 30225
SAMPLE_RATE = 20000


def pool_plan(length: int, stages: int = 6) -> list[int]:
    """Pool sizes along one axis: halve while at least 2 is left, the last stage takes the rest.

    The authors' ``get_tfeb_pool_size_component``: e.g. 151 -> [2, 2, 2, 2, 2, 4] and
    64 -> [2, 2, 2, 2, 2, 2], 20 -> [2, 2, 2, 2, 1, 1].
    """
    sizes = []
    for stage in range(stages):
        if length < 2:
            sizes.append(1)
        elif stage == stages - 1:
            sizes.append(length)
        else:
            sizes.append(2)
            length //= 2
    return sizes


def _conv_out(length: int, kernel: int, stride: int) -> int:
    return (length - kernel) // stride + 1


def _he(module: nn.Module) -> nn.Module:
    nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    return module


class ACDNet(nn.Module):
    """ACDNet on a raw waveform, float or XNOR-Net (see the module docstring for the layers).

    Parameters
    ----------
    input_shape : tuple [shape=(channels, samples)]
        One example: ``(1, 30225)`` for the authors' 1.51 s at 20 kHz.
    n_classes : int
    channels : list of int
        Widths of conv1 ... conv11 (11 values; conv12 then has ``n_classes`` maps, as ACDNet),
        or of conv1 ... conv12 (12 values, as Micro-ACDNet).
    sample_rate : int
        Of the waveform; the SFEB pools ``sample_rate / 400`` positions (10-ms frames after
        the two stride-2 convolutions). Must equal the recipe's ``audio.sample_rate`` (checked
        when the network is built from a recipe).
    dropout : float in [0, 1)
        Before conv12.
    mode : {"float", "xnor", "binarynet"}
        ``"xnor"``: every layer but conv1 and the classifier binary (XNOR-Net).

    Shapes: x : Tensor [shape=(batch, channels, samples)] -> logits [shape=(batch, n_classes)].
    """

    def __init__(self, *, input_shape: tuple[int, ...], n_classes: int,
                 channels: list[int] = ACDNET_CHANNELS, sample_rate: int = SAMPLE_RATE,
                 dropout: float = 0.2, mode: str = "float"):
        super().__init__()
        if len(input_shape) != 2:
            raise ConfigError(f"ACDNet takes a waveform of shape (channels, samples), got "
                              f"{tuple(input_shape)}: use frontend.kind 'raw'")
        if len(channels) not in (11, 12):
            raise ConfigError(f"model.params.channels must list the widths of conv1..conv11 (11 values) or "
                              f"conv1..conv12 (12), got {len(channels)}: {list(channels)}")
        if mode not in ("float", "xnor", "binarynet"):
            raise ConfigError(f"model.params.mode must be 'float', 'xnor' or 'binarynet', got {mode!r}")
        c_in, samples = input_shape
        widths = [*channels, n_classes] if len(channels) == 11 else list(channels)
        frame_pool = sample_rate // 400
        if sample_rate % 400:
            raise ConfigError(f"model.params.sample_rate={sample_rate}: ACDNet pools 10-ms frames after two "
                              f"stride-2 convolutions, so it needs a multiple of 400 Hz (20000)")
        width = _conv_out(_conv_out(samples, 9, 2), 5, 2) // frame_pool
        if width < 1:
            raise ConfigError(f"ACDNet needs at least {4 * frame_pool + 13} samples per example at "
                              f"{sample_rate} Hz, got {samples}")
        self.mode = mode
        binary = mode != "float"

        def block(conv: nn.Module, c_out: int, c_conv_in: int, two_d: bool) -> list[nn.Module]:
            bn = nn.BatchNorm2d if two_d else nn.BatchNorm1d
            if binary:  # XNOR-Net: BN - sign (the conv's input quantizer) - binary conv - ReLU
                return [bn(c_conv_in), conv, nn.ReLU()]
            return [conv, bn(c_out), nn.ReLU()]

        def conv2d(c_a: int, c_b: int, k: int) -> nn.Module:
            if binary:
                return _he(BinaryConv2d(c_a, c_b, k, mode=mode, padding=k // 2, bias=False))
            return _he(nn.Conv2d(c_a, c_b, k, padding=k // 2, bias=False))

        conv2 = (BinaryConv1d(widths[0], widths[1], 5, mode=mode, stride=2, bias=False) if binary
                 else nn.Conv1d(widths[0], widths[1], 5, stride=2, bias=False))
        self.sfeb = nn.Sequential(
            _he(nn.Conv1d(c_in, widths[0], 9, stride=2, bias=False)), nn.BatchNorm1d(widths[0]), nn.ReLU(),
            *block(_he(conv2), widths[1], widths[0], two_d=False),
            nn.MaxPool1d(frame_pool))

        heights, lengths = pool_plan(widths[1]), pool_plan(width)
        pools = list(zip(heights, lengths, strict=True))
        layers: list[nn.Module] = block(conv2d(1, widths[2], 3), widths[2], 1, two_d=True)
        layers += self._pool(nn.MaxPool2d, pools[0])
        c_prev = widths[2]
        for stage, first in enumerate((3, 5, 7, 9), start=1):
            for index in (first, first + 1):
                layers += block(conv2d(c_prev, widths[index], 3), widths[index], c_prev, two_d=True)
                c_prev = widths[index]
            layers += self._pool(nn.MaxPool2d, pools[stage])
        layers.append(nn.Dropout(float(dropout)))
        layers += block(conv2d(c_prev, widths[11], 1), widths[11], c_prev, two_d=True)
        layers += self._pool(nn.AvgPool2d, pools[5])
        self.tfeb = nn.Sequential(*layers)
        classifier = nn.Linear(widths[11], n_classes)
        nn.init.kaiming_normal_(classifier.weight, nonlinearity="sigmoid")  # LeCun normal
        self.head = nn.Sequential(nn.Flatten(), classifier)

    @staticmethod
    def _pool(kind, size: tuple[int, int]) -> list[nn.Module]:
        return [kind(size)] if math.prod(size) > 1 else []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x : Tensor [shape=(batch, channels, samples)] -> logits [shape=(batch, n_classes)]"""
        x = self.sfeb(x)  # (batch, c1, frames)
        x = x.unsqueeze(2).permute(0, 2, 1, 3)  # (batch, 1, c1, frames): channels become rows
        return self.head(self.tfeb(x))


class ACDNetParams(ModelParams):
    """``model.params`` of the ACDNet family (see :class:`ACDNet`)."""

    channels: list[PositiveInt] = Field(default=list(ACDNET_CHANNELS), min_length=11, max_length=12)
    sample_rate: PositiveInt = SAMPLE_RATE
    dropout: Fraction = 0.2
    mode: Literal["float", "xnor", "binarynet"] = "float"

    def check_recipe(self, recipe: Any) -> None:
        """The SFEB's 10-ms pooling is sized from ``sample_rate``: it must be the audio's."""
        audio_rate = recipe.audio.sample_rate
        if self.sample_rate != audio_rate:
            raise ConfigError(f"model.params.sample_rate={self.sample_rate} but audio.sample_rate="
                              f"{audio_rate}: ACDNet pools sample_rate / 400 positions into 10-ms frames, "
                              f"so the two must be equal; set model.params.sample_rate={audio_rate} (or "
                              f"audio.sample_rate={self.sample_rate})")


PRESETS: dict[str, tuple[dict[str, Any], str]] = {
    "acdnet": ({"channels": list(ACDNET_CHANNELS)},
               "seed 001 ACDNet on 1.51 s of raw audio at 20 kHz (4.74 M parameters, 50 classes)"),
    "mini-acdnet": ({"channels": list(MINI_CHANNELS)},
                    "ACDNet fitted to seed 001 Mini-ACDNet's size (its channels are unpublished)"),
    "micro-acdnet": ({"channels": list(MICRO_CHANNELS)},
                     "seed 001 Micro-ACDNet, the authors' pruned channels (131 k parameters)"),
    "xacdnet": ({"channels": list(ACDNET_CHANNELS), "mode": "xnor"},
                "XNOR-Net ACDNet: all but conv1 and the classifier binary (seed 001 XACDNet)"),
    "xmini-acdnet": ({"channels": list(MINI_CHANNELS), "mode": "xnor"},
                     "XNOR-Net twin of mini-acdnet (seed 001 XMini-ACDNet)"),
    "xmicro-acdnet": ({"channels": list(MICRO_CHANNELS), "mode": "xnor"},
                      "XNOR-Net twin of micro-acdnet (seed 001 XMicro-ACDNet)"),
}


def _register(name: str) -> None:
    values, description = PRESETS[name]
    # the preset's values become the defaults of its params model; a recipe overrides them
    fields = {k: (ACDNetParams.model_fields[k].annotation, Field(default=v, **(
        {"min_length": 11, "max_length": 12} if k == "channels" else {}))) for k, v in values.items()}
    params = create_model(f"{name.replace('-', '_')}_params", __base__=ACDNetParams, **fields)

    def builder(*, input_shape: tuple[int, ...], n_classes: int, **kwargs: Any) -> nn.Module:
        return ACDNet(input_shape=input_shape, n_classes=n_classes, **kwargs)

    builder.__name__ = builder.__qualname__ = name.replace("-", "_")
    builder.__doc__ = f"Seed 001 preset {name}: {values} (recipe params override it)."
    register_model(name, params=params, example_input=(1, INPUT_SAMPLES), description=description)(builder)


for _name in PRESETS:
    _register(_name)
