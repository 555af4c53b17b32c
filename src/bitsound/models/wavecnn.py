"""Seed 004's 1-D CNNs on raw binaural waveforms (DCASE 2020 task 1b, models A-D).

Pajusco, Huang and Farrugia classify 10-s scenes from the two-channel waveform resampled to
18 kHz, with no fixed front end. The layer lists follow the seed's section 3 and the authors'
``models.py`` (``brain-bzh/dcase-2020-task1-subtaskB``; we wrote our own):

``wavecnn-a`` / ``wavecnn-b`` (VGG blocks, seed Figure 1)::

    Conv1d(2, 16, 64, stride 4) - BN - ReLU - MaxPool1d(4)
    Conv1d(16, 16, 4) - BN - ReLU - MaxPool1d(4)
    Conv1d(16, 32, 4) - BN - ReLU - MaxPool1d(4)
    Conv1d(32, 64, 4) - BN - ReLU - MaxPool1d(4)
    [B: Conv1d(64, 64, 4) - BN - ReLU - MaxPool1d(4)]
    average over time - Linear(64, n_classes)

``waveresnet-c`` / ``waveresnet-d`` (1-D ResNet, seed section 3.2 and Figure 2)::

    Conv1d(2, 32, 64, stride 4) - BN - ReLU
    three modules of 3, 4, 3 (C) or 3, 3, 3 (D) basic blocks with 32, 64, 128 maps; the first
    block of each module has stride 4 (no max pooling anywhere). A basic block is
        y = ReLU(BN(conv3(ReLU(BN(conv3_s(x))))) + shortcut(x)),
    the shortcut a 1x1 convolution with the block's stride + BN where the block's stride or
    width changes, else the identity
    average over time - Linear(128, n_classes)

Parameter counts (seed 004 Table 1)
-----------------------------------
Table 1 gives 13,632 / 30,080 / 398,400 / 373,696 total parameters (3 classes). The authors'
per-layer listings (``task1/*/Model*_layers.csv``) show what those totals count: every layer's
weight tensor (convolutions, the dense layer and the batch-norm scales), no bias. The DCASE 2020
task 1b rule counts parameters without batch-norm; our ``dcase2020`` size rule does that and
counts biases. Here every convolution has a bias (PyTorch's default, the authors' VGG, and the
residual block of the seed's Figure 2, adapted from Dive into Deep Learning) and is followed by
exactly one batch-norm of its width, so the convolution biases and the batch-norm scales are
equally many; the dense layer has no bias (Table 1 counts none; a per-class offset before the
softmax of a balanced 3-class task). With that, the ``dcase2020`` count of these networks is
exactly Table 1's total: 13,632, 30,080, 398,400 and 373,696 for 3 classes. (The authors'
ResNet convolutions have no bias; the biases here cost the same as the batch-norm scales the
table counted.)

References
----------
- Seed 004: N. Pajusco, R. Huang, N. Farrugia, "Lightweight convolutional neural networks on
  binaural waveforms for low complexity acoustic scene classification", DCASE 2020 technical
  report.
- K. He, X. Zhang, S. Ren, J. Sun, "Deep Residual Learning for Image Recognition", CVPR 2016.
- K. Simonyan, A. Zisserman, "Very deep convolutional networks for large-scale image
  recognition", 2014.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field, create_model
from torch import nn

from bitsound.errors import ConfigError
from bitsound.models.registry import ModelParams, PositiveInt, register_model

#: 18 kHz, two channels, as the seed; one second is the registry's example input.
SAMPLE_RATE = 18000
EXAMPLE_INPUT = (2, SAMPLE_RATE)


def _check_wave(name: str, input_shape: tuple[int, ...]) -> tuple[int, int]:
    if len(input_shape) != 2:
        raise ConfigError(f"model '{name}' takes a waveform of shape (channels, samples), got "
                          f"{tuple(input_shape)}: use frontend.kind 'raw'")
    return input_shape[0], input_shape[1]


class WaveVGG(nn.Module):
    """1-D VGG on raw audio (seed 004 models A and B; see the module docstring).

    Parameters
    ----------
    input_shape : tuple [shape=(channels, samples)]
    n_classes : int
    channels : list of int
        Output maps of each block; the first block's convolution is ``first_kernel`` wide with
        stride ``first_stride``, the others ``kernel`` wide with stride 1.
    first_kernel, first_stride, kernel, pool : int
        Seed 004: 64, 4, 4 and 4 (max-pool after every block).

    Shapes: x : Tensor [shape=(batch, channels, samples)] -> logits [shape=(batch, n_classes)].
    """

    def __init__(self, *, input_shape: tuple[int, ...], n_classes: int, channels: list[int],
                 first_kernel: int = 64, first_stride: int = 4, kernel: int = 4, pool: int = 4):
        super().__init__()
        c_in, samples = _check_wave("wavecnn", input_shape)
        layers: list[nn.Module] = []
        length = samples
        for i, c_out in enumerate(channels):
            k, s = (first_kernel, first_stride) if i == 0 else (kernel, 1)
            length = ((length - k) // s + 1) // pool
            if length < 1:
                raise ConfigError(f"wavecnn: {samples} samples are too short for {len(channels)} blocks "
                                  f"(nothing is left after block {i + 1}); give longer clips")
            layers += [nn.Conv1d(c_in, c_out, k, stride=s), nn.BatchNorm1d(c_out), nn.ReLU(),
                       nn.MaxPool1d(pool)]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool1d(1), nn.Flatten(),
                                  nn.Linear(c_in, n_classes, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x : Tensor [shape=(batch, channels, samples)] -> logits [shape=(batch, n_classes)]"""
        return self.head(self.features(x))


class BasicBlock1d(nn.Module):
    """ResNet basic block with 1-D convolutions of width 3 (seed 004 Figure 2).

    x : Tensor [shape=(batch, c_in, t)] -> Tensor [shape=(batch, c_out, ceil(t / stride))]
    """

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv1d(c_in, c_out, 3, stride=stride, padding=1)
        self.bn1 = nn.BatchNorm1d(c_out)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv1d(c_out, c_out, 3, padding=1)
        self.bn2 = nn.BatchNorm1d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv1d(c_in, c_out, 1, stride=stride), nn.BatchNorm1d(c_out))
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(y + self.shortcut(x))


class WaveResNet(nn.Module):
    """1-D ResNet on raw audio (seed 004 models C and D; see the module docstring).

    Parameters
    ----------
    input_shape : tuple [shape=(channels, samples)]
    n_classes : int
    blocks : list of int
        Basic blocks per module (C: 3, 4, 3; D: 3, 3, 3).
    widths : list of int
        Maps per module (32, 64, 128), one per entry of ``blocks``.
    stem_channels, stem_kernel, stem_stride, stride : int
        The first convolution (32 maps, width 64, stride 4) and the stride of each module's
        first block (4).

    Shapes: x : Tensor [shape=(batch, channels, samples)] -> logits [shape=(batch, n_classes)].
    """

    def __init__(self, *, input_shape: tuple[int, ...], n_classes: int, blocks: list[int],
                 widths: list[int] = (32, 64, 128), stem_channels: int = 32, stem_kernel: int = 64,
                 stem_stride: int = 4, stride: int = 4):
        super().__init__()
        c_in, samples = _check_wave("waveresnet", input_shape)
        if len(blocks) != len(widths):
            raise ConfigError(f"model.params.blocks ({list(blocks)}) and widths ({list(widths)}) need "
                              f"one entry per module")
        if samples < stem_kernel:
            raise ConfigError(f"waveresnet: {samples} samples are shorter than the first convolution "
                              f"({stem_kernel}); give longer clips")
        self.stem = nn.Sequential(nn.Conv1d(c_in, stem_channels, stem_kernel, stride=stem_stride),
                                  nn.BatchNorm1d(stem_channels), nn.ReLU())
        modules: list[nn.Module] = []
        c_prev = stem_channels
        for n_blocks, width in zip(blocks, widths, strict=True):
            for i in range(n_blocks):
                modules.append(BasicBlock1d(c_prev, width, stride if i == 0 else 1))
                c_prev = width
        self.body = nn.Sequential(*modules)
        self.head = nn.Sequential(nn.AdaptiveAvgPool1d(1), nn.Flatten(),
                                  nn.Linear(c_prev, n_classes, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x : Tensor [shape=(batch, channels, samples)] -> logits [shape=(batch, n_classes)]"""
        return self.head(self.body(self.stem(x)))


class WaveVGGParams(ModelParams):
    """``model.params`` of ``wavecnn-a`` / ``wavecnn-b`` (see :class:`WaveVGG`)."""

    channels: list[PositiveInt] = Field(default=[16, 16, 32, 64], min_length=1)
    first_kernel: PositiveInt = 64
    first_stride: PositiveInt = 4
    kernel: PositiveInt = 4
    pool: PositiveInt = 4


class WaveResNetParams(ModelParams):
    """``model.params`` of ``waveresnet-c`` / ``waveresnet-d`` (see :class:`WaveResNet`)."""

    blocks: list[PositiveInt] = Field(default=[3, 4, 3], min_length=1)
    widths: list[PositiveInt] = Field(default=[32, 64, 128], min_length=1)
    stem_channels: PositiveInt = 32
    stem_kernel: PositiveInt = 64
    stem_stride: PositiveInt = 4
    stride: PositiveInt = 4


PRESETS: dict[str, tuple[type, type[ModelParams], dict[str, Any], str]] = {
    "wavecnn-a": (WaveVGG, WaveVGGParams, {"channels": [16, 16, 32, 64]},
                  "seed 004 model A: 1-D VGG, 4 blocks, on 2-channel waveforms (13,632 params, 3 classes)"),
    "wavecnn-b": (WaveVGG, WaveVGGParams, {"channels": [16, 16, 32, 64, 64]},
                  "seed 004 model B: 1-D VGG, 5 blocks (30,080 params, 3 classes)"),
    "waveresnet-c": (WaveResNet, WaveResNetParams, {"blocks": [3, 4, 3]},
                     "seed 004 model C: 1-D ResNet, 3-4-3 basic blocks (398,400 params, 3 classes)"),
    "waveresnet-d": (WaveResNet, WaveResNetParams, {"blocks": [3, 3, 3]},
                     "seed 004 model D: 1-D ResNet, 3-3-3 basic blocks (373,696 params, 3 classes)"),
}


def _register(name: str) -> None:
    cls, base, values, description = PRESETS[name]
    fields = {k: (base.model_fields[k].annotation, Field(default=v, min_length=1)) for k, v in values.items()}
    params = create_model(f"{name.replace('-', '_')}_params", __base__=base, **fields)

    def builder(*, input_shape: tuple[int, ...], n_classes: int, **kwargs: Any) -> nn.Module:
        return cls(input_shape=input_shape, n_classes=n_classes, **kwargs)

    builder.__name__ = builder.__qualname__ = name.replace("-", "_")
    builder.__doc__ = f"Seed 004 preset {name}: {values} (recipe params override it)."
    register_model(name, params=params, example_input=EXAMPLE_INPUT, description=description)(builder)


for _name in PRESETS:
    _register(_name)
