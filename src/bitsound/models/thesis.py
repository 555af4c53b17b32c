"""Seed 000's binarized CNNs (BinaryNet and XNOR-Net) on thresholded 32x32 mel images.

One parameterized family, :class:`ThesisNet`, registered as ``thesis`` (every knob a parameter)
and as four presets reproducing the networks the thesis compares in its section 4.1:
``thesis_xnor5``, ``thesis_binarynet5`` (five binary convolutional layers, Table 4.1 /
Figure 3.13) and ``thesis_xnor1``, ``thesis_binarynet1`` (one binary convolutional layer,
Table 4.2 / Figure 3.14). A recipe's ``model.params`` override a preset's values, e.g.
``thesis_xnor1`` with ``{"activation": "relu"}`` is the Table 4.5 / Figure 4.10 variant and
``{"binary_layers": 3}`` the Figure 4.9 one.

What the thesis states and what we chose
----------------------------------------
The seed text we hold (``../shared/seeds/000_*.txt``) contains the abstract, the lists of
tables and figures, chapter 1 and the references; the bodies of chapters 3 and 4 (the layer
lists of Figures 3.13-3.15, Tables 4.1-4.5, Figure 4.13) are **not** in it. What it does state:

- input: mel spectrograms thresholded to binary images and reshaped to 32x32 pixels;
- the networks: BinaryNet and XNOR-Net "with five" and "with one binary convolutional layer"
  (Figures 3.13, 3.14), compared "in terms of the number of hidden layers"; then XNOR-Net with
  one, two and three binary layers (Figures 4.7-4.9, Table 4.4), with ReLU, TanH, and ReLU
  and TanH "added" (Figures 4.10-4.12, Table 4.5), and a sweep of model parameters (Figure
  4.13); the selected model has one binary convolutional layer (abstract);
- tools: Keras; its reference list names the layers it used: BatchNormalization [36],
  Conv2D [39], sign activation [40], MaxPooling2D [41], Flatten [42, 43], Dropout [44],
  Dense [45], and the implementations it builds on: [37] jiecaoyu/XNOR-Net-PyTorch and [38]
  yaysummeriscoming/BinaryNet_and_XNORNet (Keras).

So the sizes come from [38], the Keras code the thesis cites, whose model has exactly the
"five binary convolutional layers" between a full-precision first convolution and a
full-precision dense output: a 3x3 "valid" float convolution with 16 filters, BN; five 3x3
"valid" binary convolutions with 32 filters; Flatten; Dense(n_classes) with softmax (our
logits; the loss applies the softmax). We read the one-layer network as the same structure
with one binary layer (the thesis compares the two by "the number of hidden layers").
Choices where neither source fixes the detail:

- ``{0, 1} -> {-1, +1}``: the binary image ``x`` enters as ``2x - 1`` (``map_input=True``), so
  "off" pixels are ``-1`` rather than ``0``: every pixel then carries the same weight into the
  first convolution, the image is already in the binary layers' alphabet (the first layer
  could be binarized without loss), and a zero-padded border is neutral (neither on nor off).
- block order: ``BatchNorm -> [MaxPool] -> sign -> binary conv -> [activation]``, XNOR-Net's
  ``BNorm -> BinActiv -> BinConv -> Pool`` block (Rastegari et al. 2016, Fig. 3; [37]) with
  the pool moved from before to after the next batch-norm. The batch-norm right before every
  sign gives each channel a learned threshold; the pool still acts on real values before the
  sign (pooling ±1 values would turn almost everything to +1), and after the batch-norm it
  picks the largest *normalized* value, whatever the sign of the batch-norm's scale. The sign
  is the binary layer's input quantizer (:class:`bitsound.nn.BinaryConv2d`, clipped
  straight-through gradient).
- the activation "added" after a binary layer (``activation``) acts on the binary
  convolution's output, before the next batch-norm (as ReLU does in [37] and [38]'s XNOR
  block); after a batch-norm it would be useless (``sign(relu(.))`` is always +1).
  ``["relu", "tanh"]`` applies both in that order (Figure 4.12). Default: none.
- the first float convolution has no bias and no activation by default
  (``first_activation``): ``conv -> BN -> sign`` is BinaryNet's layer and a learned threshold
  of a linear map. [38] puts a ReLU there; ``first_activation="relu"`` restores it.
- binary layers have no bias (a batch-norm follows each one and absorbs it), no XNOR input
  scale ``K`` by default (``input_scale``; most later work drops it for batch-norm).
- pooling: none in [38]'s network (``pool=[]``); ``pool`` lists the layers followed by a 2x2
  max-pool (0 = the float first convolution, ``i`` = the i-th binary convolution).
- dense head (``dense_units``): hidden dense layers are binary (XNOR-Net keeps only the first
  and last layers in full precision; [37]'s LeNet has the same binary hidden dense), each
  followed by the activation and a batch-norm. The output layer is a float Linear.
- dropout: before the float output layer only (Keras ``Flatten -> Dropout -> Dense``). Inside
  the binary part it would do nothing useful: a dropped value is 0 and ``sign(0) = +1``.

Layer list of the presets for a (1, 32, 32) image (``C`` = 32 channels, ``n`` classes)::

    2x - 1
    Conv2d(1, 16, 3, valid, no bias) -> BN(16)                           30 x 30
    repeat L times (L = 5 or 1):
        sign -> BinaryConv2d(16 or C, C, 3, valid, no bias) -> BN(C)     28 .. 20 x 20
    Flatten -> Dropout(0) -> Linear(C * s * s, n)                        s = 30 - 2L

References
----------
- Seed 000 (thesis): XNOR-Net/BinaryNet bird-presence detection on binary 32x32 mel images.
- M. Rastegari, V. Ordonez, J. Redmon, A. Farhadi, "XNOR-Net: ImageNet Classification Using
  Binary Convolutional Neural Networks", ECCV 2016.
- M. Courbariaux, I. Hubara, D. Soudry, R. El-Yaniv, Y. Bengio, "Binarized Neural Networks",
  2016.
- [37] https://github.com/jiecaoyu/XNOR-Net-PyTorch, [38]
  https://github.com/yaysummeriscoming/BinaryNet_and_XNORNet (the thesis's references).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import create_model
from torch import nn

from bitsound.errors import ConfigError
from bitsound.models.registry import Flag, Fraction, ModelParams, NonNegativeInt, PositiveInt, register_model
from bitsound.nn.layers import BinaryConv2d, BinaryLinear

THESIS_MODES = ("xnor", "binarynet")
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}
PADDINGS = ("valid", "same")

# the generic ``thesis`` defaults: the structure the thesis selects (one binary conv layer,
# XNOR-Net) with [38]'s sizes; the presets below change mode and depth only
DEFAULTS: dict[str, Any] = {
    "mode": "xnor",
    "binary_layers": 1,
    "first_channels": 16,
    "channels": 32,
    "kernel_size": 3,
    "padding": "valid",
    "activation": None,
    "first_activation": None,
    "pool": [],
    "dense_units": None,
    "dropout": 0.0,
    "map_input": True,
    "input_scale": False,
}

PRESETS: dict[str, dict[str, Any]] = {
    "thesis_xnor5": {"mode": "xnor", "binary_layers": 5},
    "thesis_xnor1": {"mode": "xnor", "binary_layers": 1},
    "thesis_binarynet5": {"mode": "binarynet", "binary_layers": 5},
    "thesis_binarynet1": {"mode": "binarynet", "binary_layers": 1},
}


class PlusMinusOne(nn.Module):
    """Map a {0, 1} image to {-1, +1}: ``x -> 2x - 1`` (any shape)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x - 1


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _pos_int(name: str, value: Any) -> int:
    if not _is_int(value) or value < 1:
        raise ConfigError(f"model.params.{name} must be an integer >= 1, got {value!r}")
    return value


def _activations(name: str, value: Any) -> list[str]:
    """None, a name, or a list of names -> list of names (validated)."""
    names = [] if value is None else [value] if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)) or any(n not in ACTIVATIONS for n in names):
        raise ConfigError(f"model.params.{name} must be None, one of {sorted(ACTIVATIONS)} or a list "
                          f"of them (applied in order, e.g. ['relu', 'tanh']), got {value!r}")
    return list(names)


def _dropout(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ConfigError(f"model.params.dropout must be a number in [0, 1), got {value!r}")
    return float(value)


def check_input_shape(model: str, input_shape: Any) -> tuple[int, int, int]:
    """Validate a (channels, freq, time) input shape for a 2-D model."""
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(_is_int(s) and s > 0 for s in shape):
        raise ConfigError(f"model '{model}' needs 2-D features of shape (channels, freq, time); got "
                          f"{shape}: use a binary_image or logmel front end")
    return shape  # type: ignore[return-value]


class ThesisNet(nn.Module):
    """Seed 000's BinaryNet / XNOR-Net family (see the module docstring for every choice).

    Parameters
    ----------
    input_shape : tuple [shape=(channels, height, width)]
        Typically ``(1, 32, 32)`` binary images with values in {0, 1}.
    n_classes : int
    mode : {"xnor", "binarynet"}
        Binarization of the hidden layers (XNOR-Net scales outputs by ``alpha``; BinaryNet
        does not).
    binary_layers : int >= 1
        Number of binary convolutional layers after the float first convolution.
    first_channels : int
        Output channels of the float first convolution.
    channels : int or list of int
        Output channels of each binary convolution (one int for all, or one per layer).
    kernel_size : int
        Square kernel of every convolution.
    padding : {"valid", "same"}
        Padding of every convolution (zeros; in binary layers after binarizing the input).
    activation : None, str or list of str
        ``"relu"`` and/or ``"tanh"`` applied to each binary layer's output, in order.
    first_activation : None, str or list of str
        Activation after the float first convolution.
    pool : list of int
        Layers followed by a 2x2 max-pool (after their batch-norm): 0 is the first float
        convolution, ``i`` the i-th binary convolution.
    dense_units : None, int or list of int
        Hidden binary dense layers before the float output layer.
    dropout : float in [0, 1)
        Dropout before the float output layer.
    map_input : bool
        Map the {0, 1} input to {-1, +1} (``2x - 1``) before the first layer.
    input_scale : bool
        XNOR-Net's input scale ``K`` in the binary layers (xnor only).

    Shapes: x : Tensor [shape=(batch, channels, height, width)] -> logits [shape=(batch, n_classes)].
    """

    def __init__(self, *, input_shape: tuple[int, ...], n_classes: int, mode: str = "xnor",
                 binary_layers: int = 1, first_channels: int = 16, channels: int | list[int] = 32,
                 kernel_size: int = 3, padding: str = "valid", activation: Any = None,
                 first_activation: Any = None, pool: list[int] = (), dense_units: Any = None,
                 dropout: float = 0.0, map_input: bool = True, input_scale: bool = False):
        super().__init__()
        c_in, height, width = check_input_shape("thesis", input_shape)
        if not _is_int(n_classes) or n_classes < 1:
            raise ConfigError(f"n_classes must be an integer >= 1, got {n_classes!r}")
        if mode not in THESIS_MODES:
            raise ConfigError(f"model.params.mode must be one of {', '.join(THESIS_MODES)} (the thesis "
                              f"compares BinaryNet and XNOR-Net), got {mode!r}")
        n_binary = _pos_int("binary_layers", binary_layers)
        _pos_int("first_channels", first_channels)
        widths = [channels] * n_binary if _is_int(channels) else channels
        if not isinstance(widths, (list, tuple)) or len(widths) != n_binary or \
                not all(_is_int(c) and c > 0 for c in widths):
            raise ConfigError(f"model.params.channels must be a positive int or a list of "
                              f"binary_layers={n_binary} positive ints, got {channels!r}")
        k = _pos_int("kernel_size", kernel_size)
        if padding not in PADDINGS:
            raise ConfigError(f"model.params.padding must be one of {PADDINGS}, got {padding!r}")
        acts = _activations("activation", activation)
        first_acts = _activations("first_activation", first_activation)
        pools = list(pool) if isinstance(pool, (list, tuple)) else None
        if pools is None or not all(_is_int(i) and 0 <= i <= n_binary for i in pools) or \
                len(set(pools)) != len(pools):
            raise ConfigError(f"model.params.pool must be a list of distinct layer indices in "
                              f"0..{n_binary} (0 = first float conv, i = i-th binary conv), got {pool!r}")
        units = [] if dense_units is None else [dense_units] if _is_int(dense_units) else dense_units
        if not isinstance(units, (list, tuple)) or not all(_is_int(u) and u > 0 for u in units):
            raise ConfigError(f"model.params.dense_units must be None, a positive int or a list of "
                              f"positive ints, got {dense_units!r}")
        p_drop = _dropout(dropout)
        for name, flag in (("map_input", map_input), ("input_scale", input_scale)):
            if not isinstance(flag, bool):
                raise ConfigError(f"model.params.{name} must be true or false, got {flag!r}")
        if input_scale and mode != "xnor":
            raise ConfigError(f"model.params.input_scale=True is XNOR-Net's K and needs mode='xnor', "
                              f"got mode={mode!r}")

        # spatial size through the stack, so that a too-deep valid stack fails here, by name
        size = [height, width]
        shrink = 0 if padding == "same" else k - 1
        for layer in range(n_binary + 1):
            size = [s - shrink for s in size]
            if layer in pools:
                size = [s // 2 for s in size]
            if min(size) < 1:
                raise ConfigError(
                    f"model.params.binary_layers={n_binary} with kernel_size={k}, padding={padding!r} "
                    f"and pool={pools} shrinks the {height}x{width} input to nothing at layer {layer}; "
                    f"use fewer layers, padding='same' or fewer pools")

        self.mode = mode
        self.input_map = PlusMinusOne() if map_input else nn.Identity()
        first: list[nn.Module] = [nn.Conv2d(c_in, first_channels, k, padding=padding, bias=False)]
        first += [ACTIVATIONS[a]() for a in first_acts] + [nn.BatchNorm2d(first_channels)]
        if 0 in pools:
            first.append(nn.MaxPool2d(2))
        self.first = nn.Sequential(*first)

        blocks: list[nn.Module] = []
        c_prev = first_channels
        for i, c_out in enumerate(widths, start=1):
            block: list[nn.Module] = [BinaryConv2d(c_prev, c_out, k, mode=mode, padding=padding, bias=False,
                                                   input_scale=input_scale)]
            block += [ACTIVATIONS[a]() for a in acts] + [nn.BatchNorm2d(c_out)]
            if i in pools:
                block.append(nn.MaxPool2d(2))
            blocks.append(nn.Sequential(*block))
            c_prev = c_out
        self.binary = nn.Sequential(*blocks)

        head: list[nn.Module] = [nn.Flatten()]
        n_in = c_prev * size[0] * size[1]
        for n_out in units:
            head += [BinaryLinear(n_in, n_out, mode=mode, bias=False, input_scale=input_scale)]
            head += [ACTIVATIONS[a]() for a in acts] + [nn.BatchNorm1d(n_out)]
            n_in = n_out
        head += [nn.Dropout(p_drop), nn.Linear(n_in, n_classes)]
        self.head = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x : Tensor [shape=(batch, channels, height, width)] -> logits [shape=(batch, n_classes)]"""
        return self.head(self.binary(self.first(self.input_map(x))))


_Act = Literal["relu", "tanh"]


class ThesisParams(ModelParams):
    """``model.params`` of the ``thesis`` family (see :class:`ThesisNet`; defaults: :data:`DEFAULTS`)."""

    mode: Literal["xnor", "binarynet"] = DEFAULTS["mode"]
    binary_layers: PositiveInt = DEFAULTS["binary_layers"]
    first_channels: PositiveInt = DEFAULTS["first_channels"]
    channels: PositiveInt | list[PositiveInt] = DEFAULTS["channels"]
    kernel_size: PositiveInt = DEFAULTS["kernel_size"]
    padding: Literal["valid", "same"] = DEFAULTS["padding"]
    activation: _Act | list[_Act] | None = DEFAULTS["activation"]
    first_activation: _Act | list[_Act] | None = DEFAULTS["first_activation"]
    pool: list[NonNegativeInt] = DEFAULTS["pool"]
    dense_units: PositiveInt | list[PositiveInt] | None = DEFAULTS["dense_units"]
    dropout: Fraction = DEFAULTS["dropout"]
    map_input: Flag = DEFAULTS["map_input"]
    input_scale: Flag = DEFAULTS["input_scale"]


@register_model("thesis", params=ThesisParams, example_input=(1, 32, 32),
                description="seed 000 BinaryNet/XNOR-Net on 32x32 binary mel images (all knobs)")
def thesis(*, input_shape: tuple[int, ...], n_classes: int, **params: Any) -> nn.Module:
    return ThesisNet(input_shape=input_shape, n_classes=n_classes, **params)


def _register_preset(name: str, description: str) -> None:
    # the preset's values become the defaults of its params model; the recipe overrides them
    fields = {k: (ThesisParams.model_fields[k].annotation, v) for k, v in PRESETS[name].items()}
    params = create_model(f"{name}_params", __base__=ThesisParams, **fields)

    def builder(*, input_shape: tuple[int, ...], n_classes: int, **kwargs: Any) -> nn.Module:
        return ThesisNet(input_shape=input_shape, n_classes=n_classes, **kwargs)

    builder.__name__ = builder.__qualname__ = name
    builder.__doc__ = f"Seed 000 preset {PRESETS[name]} (recipe params override it)."
    register_model(name, params=params, example_input=(1, 32, 32), description=description)(builder)


_register_preset("thesis_xnor5", "seed 000 XNOR-Net, 5 binary conv layers (Table 4.1)")
_register_preset("thesis_xnor1", "seed 000 XNOR-Net, 1 binary conv layer (Table 4.2)")
_register_preset("thesis_binarynet5", "seed 000 BinaryNet, 5 binary conv layers (Table 4.1)")
_register_preset("thesis_binarynet1", "seed 000 BinaryNet, 1 binary conv layer (Table 4.2)")
