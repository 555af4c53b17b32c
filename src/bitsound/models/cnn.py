"""Plain float CNNs on 2-D features (log-mel, binary images): the float baselines.

The layout is the common VGG-style audio CNN: stages of two 3x3 conv-BN-ReLU layers followed by
2x2 max pooling, then global average pooling, dropout and one linear classifier. Global pooling
keeps the model independent of clip length and small in parameters.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import nn

from bitsound.errors import ConfigError
from bitsound.models.registry import Fraction, ModelParams, PositiveInt, register_model


class FeatureNorm(nn.Module):
    """Per-example normalisation of a (batch, channels, freq, time) feature map.

    ``mode``:
      - ``"band"``: subtract each band's mean over time and divide by the example's std
        (cepstral mean normalisation; removes a fixed microphone/speaker colouring),
      - ``"example"``: standardise each example as a whole,
      - ``"none"``: pass through.

    ``floor_db`` (log-power features only) first raises every value to at least the example's
    maximum minus ``floor_db`` decibels, like librosa's ``top_db``: the noise floor, zero padding
    and recording level then no longer tell speakers or devices apart.
    """

    def __init__(self, mode: str = "band", *, floor_db: float | None = None, eps: float = 1e-5):
        super().__init__()
        if mode not in ("band", "example", "none"):
            raise ConfigError(f"model.params.norm must be 'band', 'example' or 'none', got {mode!r}")
        if floor_db is not None and floor_db <= 0:
            raise ConfigError(f"model.params.floor_db must be > 0 dB, got {floor_db}")
        self.mode = mode
        self.floor_db = floor_db
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.floor_db is not None:
            floor = x.amax(dim=(-3, -2, -1), keepdim=True) - self.floor_db * math.log(10) / 10
            x = torch.maximum(x, floor)
        if self.mode == "none":
            return x
        if self.mode == "band":
            x = x - x.mean(dim=-1, keepdim=True)
        else:
            x = x - x.mean(dim=(-3, -2, -1), keepdim=True)
        return x / (x.std(dim=(-3, -2, -1), keepdim=True) + self.eps)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, floor_db={self.floor_db}"


def classifier_head(features: nn.Module, *, input_shape: tuple[int, ...], n_classes: int, dropout: float,
                    head: str) -> nn.Sequential:
    """The classifier after ``features``.

    ``"gap"``: global average pooling, dropout, linear (independent of clip length). ``"time"``:
    the mean over frequency only, then a linear layer over every (channel, time step), so that
    the classifier knows *where* in the window a sound is: a detector that names a window by its
    centre needs that, since an event heard at the edge of the window must not count. The
    window length is then fixed by ``input_shape``.
    """
    with torch.no_grad():  # the shape the features produce, from a dry run
        c, h, w = features(torch.zeros(1, *input_shape)).shape[1:]
    if head == "gap":
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(float(dropout)),
                             nn.Linear(c, n_classes))
    if head == "time":
        return nn.Sequential(nn.AvgPool2d((h, 1)), nn.Flatten(), nn.Dropout(float(dropout)),
                             nn.Linear(c * w, n_classes))
    raise ConfigError(f"model.params.head must be 'gap' or 'time', got {head!r}")


def stage_pool(stage: int, time_pools: int | None) -> nn.MaxPool2d:
    """The max-pool closing ``stage`` (0-based): 2x2, or 2x1 (frequency only) from stage
    ``time_pools`` on."""
    halve_time = time_pools is None or stage < time_pools
    return nn.MaxPool2d(2 if halve_time else (2, 1), ceil_mode=True)


def conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True)]


class CNN2d(nn.Module):
    """VGG-style CNN: ``stages`` of ``convs_per_stage`` conv-BN-ReLU + max-pool, GAP, linear.

    Parameters
    ----------
    input_shape : tuple [shape=(channels, freq, time)]
    n_classes : int
    channels : list of int
        Output channels of each stage.
    convs_per_stage : int
    dropout : float
        Dropout before the classifier.
    norm : str
        :class:`FeatureNorm` mode applied to the input.
    floor_db : float, optional
        :class:`FeatureNorm` dynamic-range floor in dB below each example's maximum.
    head : {"gap", "time"}
        See :func:`classifier_head`.
    time_pools : int, optional
        How many stages, from the first, halve the time axis as well as frequency; the later
        ones pool frequency only. ``None``: all. Fewer keep the time resolution a ``"time"``
        head sees (a detector locating an event's onset within its window wants that).
    """

    def __init__(self, *, input_shape: tuple[int, ...], n_classes: int,
                 channels: list[int] = (16, 32, 64), convs_per_stage: int = 2,
                 dropout: float = 0.2, norm: str = "band", floor_db: float | None = None,
                 head: str = "gap", time_pools: int | None = None):
        super().__init__()
        if len(input_shape) != 3:
            raise ConfigError(f"CNN2d needs 2-D features of shape (channels, freq, time); got "
                              f"{tuple(input_shape)}: use a logmel or binary_image front end")
        layers: list[nn.Module] = [FeatureNorm(norm, floor_db=floor_db)]
        c_in = input_shape[0]
        for stage, c_out in enumerate(channels):
            for i in range(convs_per_stage):
                layers += conv_bn_relu(c_in if i == 0 else c_out, c_out)
            layers.append(stage_pool(stage, time_pools))
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.head = classifier_head(self.features, input_shape=input_shape, n_classes=n_classes,
                                    dropout=dropout, head=head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x : Tensor [shape=(batch, channels, freq, time)] -> logits [shape=(batch, n_classes)]"""
        return self.head(self.features(x))


class CNN2dParams(ModelParams):
    """``model.params`` of ``cnn2d`` (see :class:`CNN2d`)."""

    channels: list[PositiveInt] = Field(default=[16, 32, 64], min_length=1)
    convs_per_stage: PositiveInt = 2
    dropout: Fraction = 0.2
    norm: Literal["band", "example", "none"] = "band"
    floor_db: Annotated[float, Field(gt=0)] | None = None
    head: Literal["gap", "time"] = "gap"
    time_pools: Annotated[int, Field(ge=0)] | None = None


@register_model("cnn2d", params=CNN2dParams, example_input=(1, 40, 101),
                description="float VGG-style CNN on 2-D features (configurable)")
def cnn2d(**kwargs) -> nn.Module:
    return CNN2d(**kwargs)
