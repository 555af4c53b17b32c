"""``bcnn2d``: the binary twin of ``cnn2d``, with optional Bi-Real real-valued shortcuts.

Same stage/channel plan as :class:`bitsound.models.cnn.CNN2d` (``channels``,
``convs_per_stage``, ``dropout``, ``norm``, ``floor_db``; :class:`FeatureNorm` first, 2x2 max
pooling after each stage, global average pooling, dropout, one linear classifier), with:

- the first convolution in full precision (``conv -> BN``; XNOR-Net keeps first and last
  layers real-valued), the classifier a float Linear;
- every other 3x3 convolution binary (``mode``: ``"xnor"`` | ``"binarynet"`` | ``"onebit"``,
  see :mod:`bitsound.nn.layers`), followed by a batch-norm. A block is

      ``out = BN(binconv(sign(x))) + shortcut(x)``      (``shortcut=True``, Bi-Real Net)
      ``out = BN(binconv(sign(x)))``                    (``shortcut=False``)

  The sign is the binary layer's input quantizer. With ``shortcut=True`` the real-valued
  stream ``x`` (sum of batch-norm outputs) carries the information the sign discards (Liu et
  al. 2018); each block's batch-norm shift moves the next sign's threshold. With
  ``shortcut=False`` the batch-norm right before every sign learns its threshold.
  ``learn_threshold=True`` gives each block a learned per-channel shift before its sign,
  ``sign(x + move)`` (ReActNet's RSign), so the threshold moves without moving the stream.
  ``"onebit"`` layers (McDonnell 2018) keep float inputs, so there is no sign to give the block
  a nonlinearity: they get a ReLU before the convolution instead (pre-activation, as in
  McDonnell's ResNet).
- max pooling after the batch-norm (on the real-valued stream) and before the next sign.

Shortcut when the shape changes. Spatial downsampling is the max-pool on the stream, outside
the blocks, so only the channel count changes inside a block (the first block of each stage).
Bi-Real's downsample path (average pool + 1x1 float conv + BN) would store ``c_in * c_out``
float weights, ``32 * c_in * c_out`` bits, 3.6 times the ``9 * c_in * c_out`` bits of the
binary 3x3 conv it bypasses: for 128 -> 256 channels, 128 KB of shortcut against 36 KB of conv. We take the
cheapest path that keeps the stream: zero-padding the new channels (ResNet "option A"; no
parameters, no operations). Fewer output channels than input channels (unusual plans) are
handled by averaging groups of ``c_in / c_out`` channels when that divides, and otherwise by a
1x1 float conv + BN (the only case that costs parameters).

References
----------
- Z. Liu, B. Wu, W. Luo, X. Yang, W. Liu, K.-T. Cheng, "Bi-Real Net: Enhancing the Performance
  of 1-bit CNNs with Improved Representational Capability and Advanced Training Algorithm",
  ECCV 2018.
- K. He, X. Zhang, S. Ren, J. Sun, "Deep Residual Learning for Image Recognition", CVPR 2016
  (option A: zero-padding identity shortcuts).
- Z. Liu, Z. Shen, M. Savvides, K.-T. Cheng, "ReActNet: Towards Precise Binary Neural Network
  with Generalized Activation Functions", ECCV 2020 (RSign, RPReLU).
- M. Rastegari et al., "XNOR-Net", ECCV 2016; M. Courbariaux et al., "Binarized Neural
  Networks", 2016; M. D. McDonnell, ICLR 2018 (seed 002).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from bitsound.errors import ConfigError
from bitsound.models.cnn import CNN2dParams, FeatureNorm, classifier_head, stage_pool
from bitsound.models.registry import Flag, register_model
from bitsound.models.thesis import check_input_shape
from bitsound.nn.layers import BINARY_MODES, BinaryConv2d


class ChannelShortcut(nn.Module):
    """Real-valued shortcut from ``c_in`` to ``c_out`` channels, spatial size unchanged.

    ``c_out == c_in``: identity; ``c_out > c_in``: the new channels are zeros (no parameters);
    ``c_out < c_in`` with ``c_in % c_out == 0``: mean of each group of ``c_in / c_out``
    consecutive channels (no parameters); otherwise a 1x1 float convolution + batch-norm.

    x : Tensor [shape=(batch, c_in, freq, time)] -> Tensor [shape=(batch, c_out, freq, time)]
    """

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.c_in, self.c_out = c_in, c_out
        if c_out >= c_in:
            self.kind = "identity" if c_out == c_in else "pad"
            self.proj = None
        elif c_in % c_out == 0:
            self.kind, self.proj = "group_mean", None
        else:
            self.kind = "conv"
            self.proj = nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "identity":
            return x
        if self.kind == "pad":
            return F.pad(x, (0, 0, 0, 0, 0, self.c_out - self.c_in))
        if self.kind == "group_mean":
            return x.unflatten(1, (self.c_out, self.c_in // self.c_out)).mean(dim=2)
        return self.proj(x)

    def extra_repr(self) -> str:
        return f"{self.c_in} -> {self.c_out}, kind={self.kind!r}"


class BinaryBlock(nn.Module):
    """``BN(binconv(sign(x))) [+ shortcut(x)]``, a 3x3 binary conv with zero padding 1.

    Parameters
    ----------
    c_in, c_out : int
    mode : {"xnor", "binarynet", "onebit"}
        ``"onebit"`` gets a ReLU before the convolution (its inputs are not binarized).
    shortcut : bool
        Add the real-valued :class:`ChannelShortcut` (Bi-Real Net).
    learn_threshold : bool
        Learn a per-channel shift ``move`` added to ``x`` before the sign (not to the shortcut).
    stream_prelu : bool
        A per-channel PReLU on the block's output (after the sum with the shortcut).

    x : Tensor [shape=(batch, c_in, freq, time)] -> Tensor [shape=(batch, c_out, freq, time)]
    """

    def __init__(self, c_in: int, c_out: int, *, mode: str, shortcut: bool, learn_threshold: bool = False,
                 stream_prelu: bool = False):
        super().__init__()
        self.move = nn.Parameter(torch.zeros(1, c_in, 1, 1)) if learn_threshold else None
        self.pre = nn.ReLU() if mode == "onebit" else nn.Identity()
        self.conv = BinaryConv2d(c_in, c_out, 3, mode=mode, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.shortcut = ChannelShortcut(c_in, c_out) if shortcut else None
        self.act = nn.PReLU(c_out) if stream_prelu else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(self.pre(x if self.move is None else x + self.move)))
        y = y if self.shortcut is None else y + self.shortcut(x)
        return y if self.act is None else self.act(y)


class BinaryCNN2d(nn.Module):
    """Binary VGG-style CNN, the twin of ``cnn2d`` (see the module docstring).

    Parameters
    ----------
    input_shape : tuple [shape=(channels, freq, time)]
    n_classes : int
    channels : list of int
        Output channels of each stage.
    convs_per_stage : int
        Convolutions per stage; the very first one is float, all others binary.
    dropout : float in [0, 1)
        Dropout before the classifier.
    norm : {"band", "example", "none"}
        :class:`FeatureNorm` mode applied to the input.
    floor_db : float, optional
        :class:`FeatureNorm` dynamic-range floor in dB below each example's maximum.
    mode : {"xnor", "binarynet", "onebit"}
        Binarization of the hidden convolutions.
    shortcut : bool
        Bi-Real real-valued shortcuts around every binary convolution.
    learn_threshold : bool
        A learned per-channel shift before each block's sign (ReActNet's RSign).
    stream_prelu : bool
        A per-channel PReLU on each block's output (ReActNet's RPReLU without its shifts).
    head : {"gap", "time"}
        See :func:`bitsound.models.cnn.classifier_head`.
    time_pools : int, optional
        As in :class:`bitsound.models.cnn.CNN2d`: the stages that halve time too (``None``: all).

    Shapes: x : Tensor [shape=(batch, channels, freq, time)] -> logits [shape=(batch, n_classes)].
    """

    def __init__(self, *, input_shape: tuple[int, ...], n_classes: int,
                 channels: list[int] = (16, 32, 64), convs_per_stage: int = 2,
                 dropout: float = 0.2, norm: str = "band", floor_db: float | None = None,
                 mode: str = "xnor", shortcut: bool = True, learn_threshold: bool = False,
                 stream_prelu: bool = False, head: str = "gap", time_pools: int | None = None):
        super().__init__()
        c_in = check_input_shape("bcnn2d", input_shape)[0]
        if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 1:
            raise ConfigError(f"n_classes must be an integer >= 1, got {n_classes!r}")
        if not isinstance(channels, (list, tuple)) or not channels or \
                not all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in channels):
            raise ConfigError(f"model.params.channels must be a non-empty list of positive ints, "
                              f"got {channels!r}")
        if isinstance(convs_per_stage, bool) or not isinstance(convs_per_stage, int) or convs_per_stage < 1:
            raise ConfigError(f"model.params.convs_per_stage must be an integer >= 1, "
                              f"got {convs_per_stage!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ConfigError(f"model.params.dropout must be a number in [0, 1), got {dropout!r}")
        if mode not in BINARY_MODES:
            raise ConfigError(f"model.params.mode must be one of {', '.join(BINARY_MODES)}, got {mode!r}")
        if not isinstance(shortcut, bool):
            raise ConfigError(f"model.params.shortcut must be true or false, got {shortcut!r}")
        if not isinstance(learn_threshold, bool):
            raise ConfigError(f"model.params.learn_threshold must be true or false, got {learn_threshold!r}")
        if not isinstance(stream_prelu, bool):
            raise ConfigError(f"model.params.stream_prelu must be true or false, got {stream_prelu!r}")
        self.mode = mode
        layers: list[nn.Module] = [FeatureNorm(norm, floor_db=floor_db),
                                   nn.Conv2d(c_in, channels[0], 3, padding=1, bias=False),
                                   nn.BatchNorm2d(channels[0])]
        c_prev = channels[0]
        for stage, c_out in enumerate(channels):
            for i in range(convs_per_stage):
                if stage == 0 and i == 0:
                    continue  # the float first convolution above
                layers.append(BinaryBlock(c_prev, c_out, mode=mode, shortcut=shortcut,
                                          learn_threshold=learn_threshold, stream_prelu=stream_prelu))
                c_prev = c_out
            layers.append(stage_pool(stage, time_pools))
        self.features = nn.Sequential(*layers)
        self.head = classifier_head(self.features, input_shape=input_shape, n_classes=n_classes,
                                    dropout=dropout, head=head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x : Tensor [shape=(batch, channels, freq, time)] -> logits [shape=(batch, n_classes)]"""
        return self.head(self.features(x))


class BCNN2dParams(CNN2dParams):
    """``model.params`` of ``bcnn2d`` (see :class:`BinaryCNN2d`)."""

    mode: Literal["xnor", "binarynet", "onebit"] = "xnor"
    shortcut: Flag = True
    learn_threshold: Flag = False
    stream_prelu: Flag = False


@register_model("bcnn2d", params=BCNN2dParams, example_input=(1, 40, 101),
                description="binary twin of cnn2d: float first conv, binary convs, Bi-Real shortcuts")
def bcnn2d(*, input_shape: tuple[int, ...], n_classes: int, **params: Any) -> nn.Module:
    return BinaryCNN2d(input_shape=input_shape, n_classes=n_classes, **params)
