"""``mcdonnell-asc``: McDonnell's one-bit-per-weight split-frequency ResNet (seed 002).

Seed 002 sections 2-3 and the authors' Keras model (``McDonnell-Lab/DCASE2020_Task1b``,
``NNets.model_resnet_DCASE2020_Task1b`` with ``num_filters=26``, ``binarise_weights=True``): a
pre-activation ResNet whose every convolution has 1-bit weights ``sqrt(2 / (F^2 C_in)) sign(W)``
(eqn. 1; :class:`bitsound.nn.BinaryConv2d` in mode ``"onebit"``) on full-precision
activations. For log-mel input ``(2, 256, T)`` (both stereo channels, 256 bands)::

    split the 256 bands into 0-127 and 128-255; on each half, its own path:
        BN (learned scale and offset) -> conv 3x3, 2 -> w, stride (1, 2)         # time only
        4 stacks x 2 residual blocks; channels w, 2w, 4w, 8w (w = 26):
            block: BN -> ReLU -> conv 3x3 (stride (1, 2) in the first block of stacks 2-4)
                   BN -> ReLU -> conv 3x3
                   + shortcut: identity, or where the block downsamples and widens: 3x3
                     average pool, stride (1, 2), then zero channels appended (no weights)
    add the two paths (late fusion by addition of the frequency halves)
    BN -> ReLU -> conv 3x3, 8w -> 192
    BN -> ReLU -> conv 1x1, 192 -> n_classes
    BN (learned scale and offset) -> global average pool -> logits

Batch norms have no learned scale and offset except the two input ones (one per path, as the
authors' code) and the output one (seed 002 section 3.5). There is no downsampling in
frequency: each path keeps 128 bins, so the global average pool averages overlapping views of
35 bins. With ``w = 26`` and 3 classes the 36 convolutions hold 2 x 1,813,500 + 359,424 + 576 =
3,987,000 one-bit weights, 486.69 KB (DCASE 2020 rule: 1 KB = 1024 bytes, batch norm excluded),
the seed's numbers.

Choices where neither source fixes the detail (PyTorch against the authors' TensorFlow):

- padding: symmetric zero padding 1 (TensorFlow's ``"same"`` puts the extra zero of a stride-2
  window at the end); output sizes are the same, ``ceil(T / 2)``;
- the average pool of a shortcut ignores padded positions, as Keras's ``AveragePooling2D``
  with ``"same"`` does (``count_include_pad=False``);
- latent weights are initialised He-normal (truncated at two standard deviations, Keras's
  ``he_normal``); they only matter through their signs and their size relative to the learning
  rate and weight decay;
- test-time channel swap (section 3.7: the network run on both channel orders, the results
  averaged): with ``swap_average`` the network in eval mode returns the mean of the logits of
  both orders (the authors average the softmax outputs; the mean of logits is the normalised
  geometric mean of the two probability vectors, and it lowers to the model graph, so the
  engine computes the same). It doubles inference cost, and is the identity for a mono signal
  duplicated to both channels;
- ``bn_momentum``: PyTorch's 0.1 by default (Keras's momentum 0.99 is PyTorch's 0.01, too slow
  for the statistics to settle in a short CPU schedule).

References
----------
- M. D. McDonnell, "Low-complexity acoustic scene classification using one-bit-per-weight deep
  convolutional neural networks", DCASE 2020 task 1b technical report (seed 002).
- M. D. McDonnell, "Training wide residual networks for deployment using a single bit for each
  weight", ICLR 2018.
- M. D. McDonnell, W. Gao, "Acoustic scene classification using deep residual networks with
  late fusion of separated high and low frequency paths", ICASSP 2020.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from bitsound.errors import ConfigError
from bitsound.models.registry import Flag, ModelParams, PositiveInt, register_model
from bitsound.nn.layers import BinaryConv2d

STACKS = 4
BLOCKS_PER_STACK = 2
TIME_STRIDE = (1, 2)  # (frequency, time)


def onebit_conv(c_in: int, c_out: int, kernel: int, stride=1) -> BinaryConv2d:
    """A 1-bit-weight convolution on float inputs, zero padding ``kernel // 2``, He-normal init."""
    conv = BinaryConv2d(c_in, c_out, kernel, mode="onebit", stride=stride, padding=kernel // 2, bias=False)
    std = math.sqrt(2.0 / conv.weight[0].numel())
    nn.init.trunc_normal_(conv.weight, std=std, a=-2 * std, b=2 * std)
    return conv


class PreActConv(nn.Module):
    """``[BN] -> [ReLU] -> 1-bit conv``, the ``resnet_layer`` of the authors' code.

    ``learn_bn`` gives the batch-norm a learned scale and offset (only the first layer of a path);
    ``relu=False`` leaves the activation out (also only there).
    """

    def __init__(self, c_in: int, c_out: int, kernel: int = 3, stride=1, *, learn_bn: bool = False,
                 relu: bool = True, bn_momentum: float = 0.1):
        super().__init__()
        self.bn = nn.BatchNorm2d(c_in, affine=learn_bn, momentum=bn_momentum)
        self.relu = nn.ReLU() if relu else nn.Identity()
        self.conv = onebit_conv(c_in, c_out, kernel, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.relu(self.bn(x)))


class ResidualBlock(nn.Module):
    """Two pre-activation 1-bit convolutions plus a shortcut (see the module docstring).

    x : Tensor [shape=(batch, c_in, freq, time)] -> Tensor [shape=(batch, c_out, freq, time')]
    """

    def __init__(self, c_in: int, c_out: int, *, downsample: bool, bn_momentum: float):
        super().__init__()
        if c_out < c_in:
            raise ConfigError(f"a residual block cannot narrow {c_in} -> {c_out} channels with a "
                              f"zero-padded shortcut")
        self.downsample = downsample
        self.extra = c_out - c_in
        stride = TIME_STRIDE if downsample else 1
        self.conv1 = PreActConv(c_in, c_out, 3, stride, bn_momentum=bn_momentum)
        self.conv2 = PreActConv(c_out, c_out, 3, 1, bn_momentum=bn_momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.conv1(x))
        shortcut = x
        if self.downsample:
            shortcut = F.avg_pool2d(shortcut, 3, stride=TIME_STRIDE, padding=1, count_include_pad=False)
        if self.extra:
            shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, self.extra))  # zero channels, no weights
        return y + shortcut


class FrequencyPath(nn.Module):
    """One path of the split network: input BN (learned) + conv, then the residual stacks."""

    def __init__(self, c_in: int, width: int, *, bn_momentum: float):
        super().__init__()
        self.entry = PreActConv(c_in, width, 3, TIME_STRIDE, learn_bn=True, relu=False,
                                bn_momentum=bn_momentum)
        blocks = []
        c = width
        for stack in range(STACKS):
            c_out = width * 2**stack
            for block in range(BLOCKS_PER_STACK):
                first = stack > 0 and block == 0
                blocks.append(ResidualBlock(c, c_out, downsample=first, bn_momentum=bn_momentum))
                c = c_out
        self.blocks = nn.Sequential(*blocks)
        self.out_channels = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.entry(x))


class McDonnellASC(nn.Module):
    """The split-frequency 1-bit-per-weight ResNet of seed 002 (see the module docstring).

    Parameters
    ----------
    input_shape : tuple [shape=(channels, freq, time)]
        ``(2, 256, T)`` in the seed (both stereo channels, 256 log-mel bands).
    n_classes : int
    width : int
        Channels of the first stack (26 in the seed); stacks have w, 2w, 4w, 8w.
    head_channels : int
        Output channels of the 3x3 convolution after the fusion (192 in the seed).
    swap_average : bool
        In eval mode, average the logits of both channel orders (needs two input channels).
    bn_momentum : float
        Momentum of every batch-norm (PyTorch's convention).

    Shapes: x : Tensor [shape=(batch, channels, freq, time)] -> logits [shape=(batch, n_classes)].
    """

    def __init__(self, *, input_shape: tuple[int, ...], n_classes: int, width: int = 26,
                 head_channels: int = 192, swap_average: bool = True, bn_momentum: float = 0.1):
        super().__init__()
        if len(input_shape) != 3:
            raise ConfigError(f"mcdonnell-asc takes log-mel features (channels, freq, time), got "
                              f"{tuple(input_shape)}: use a logmel front end")
        c_in, n_freq, _ = input_shape
        if n_freq < 2:
            raise ConfigError(f"mcdonnell-asc splits the frequency axis in two halves; it needs at least 2 "
                              f"bands, got {n_freq} (the seed uses 256)")
        if swap_average and c_in != 2:
            raise ConfigError(f"model.params.swap_average averages over both orders of two channels, but "
                              f"the input has {c_in}; set audio.channels: stereo or swap_average: false")
        self.split = n_freq // 2
        self.swap_average = bool(swap_average)
        self.low = FrequencyPath(c_in, width, bn_momentum=bn_momentum)
        self.high = FrequencyPath(c_in, width, bn_momentum=bn_momentum)
        fused = self.low.out_channels
        self.head = nn.Sequential(
            PreActConv(fused, head_channels, 3, bn_momentum=bn_momentum),
            PreActConv(head_channels, n_classes, 1, bn_momentum=bn_momentum),
            nn.BatchNorm2d(n_classes, momentum=bn_momentum),  # learned scale and offset
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """One pass: x : Tensor [shape=(batch, channels, freq, time)] -> [shape=(batch, n_classes)]."""
        fused = self.low(x[:, :, :self.split]) + self.high(x[:, :, self.split:])
        return self.head(fused)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x : Tensor [shape=(batch, channels, freq, time)] -> logits [shape=(batch, n_classes)]"""
        if self.swap_average and not self.training:
            swapped = torch.cat([x[:, 1:2], x[:, 0:1]], dim=1)
            return (self.logits(x) + self.logits(swapped)) * 0.5
        return self.logits(x)


class McDonnellParams(ModelParams):
    """``model.params`` of ``mcdonnell-asc`` (see :class:`McDonnellASC`)."""

    width: PositiveInt = 26
    head_channels: PositiveInt = 192
    swap_average: Flag = True
    bn_momentum: Annotated[float, Field(gt=0, le=1)] = 0.1


@register_model("mcdonnell-asc", params=McDonnellParams, example_input=(2, 256, 16),
                description="seed 002: split-frequency ResNet, 36 one-bit-weight convs (3,987,000 bits)")
def mcdonnell_asc(*, input_shape: tuple[int, ...], n_classes: int, **params: Any) -> nn.Module:
    return McDonnellASC(input_shape=input_shape, n_classes=n_classes, **params)
