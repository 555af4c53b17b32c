"""ONNX export of trained models, checked in onnxruntime against PyTorch.

:func:`export_onnx` writes a ``model.onnx`` that any ONNX runtime can run: the network alone
(input: features ``(batch, *feature_shape)``, the default) or front end and network together
(``with_frontend=True``; input: waveform windows ``(batch, channels, samples)``). The batch axis
is dynamic. The file's metadata holds the labels, the recipe and what the input is.

Binary layers
-------------
A layer is binary when it declares ``weight_bits == 1`` (the precision attribute the complexity
report reads); it is exported from its attributes alone, never from its class:

- ``quantized_weight()`` (the stored values and the output scale, computed once) becomes a
  constant ±1 weight tensor; the exporter checks it is the hard sign of the latent weight
  (layers without that method: ``sign(weight)`` and ``weight_scale()``);
- ``input_bits == 1``: the input is binarized in the graph as ``Where(x < 0, -1, +1)``. ONNX's
  ``Sign`` maps ``0`` to ``0``, but bitsound's ``sign(0) = +1`` (a zero would add nothing to the
  ±1 dot product instead of ``±1``), so ``Sign`` alone would change the answers wherever an
  activation is exactly zero (after a ReLU, a max-pool of zeros, a zero-padded input). The
  exporter checks that the layer's ``input_quantizer`` really is that sign on probe values;
  ``input_bits == 32`` passes the input unchanged (checked the same way);
- ``Conv`` / ``MatMul`` with the layer's geometry (stride, padding, dilation, groups), whose
  zero padding acts on the already-binarized input, exactly as the layer does;
- ``Mul`` by the scale (XNOR-Net's per-channel ``alpha``, the 1-bit-per-weight constant ``c``,
  or nothing), then ``Add`` of the bias.

The ±1 convolution gives exact integers, but a runtime may fold the ``Mul`` and a following
batch-norm into the convolution's weights (onnxruntime does), which rounds differently from
PyTorch: a value before a sign that is zero or within rounding of zero can then take the other
sign. Trained networks rarely put a pre-sign value there; freshly initialised ones (batch-norm
mean 0, bias 0) do wherever a dot product is exactly 0, so export trained models.

Any other module that declares ``bits == 1`` (a stand-alone sign quantizer) becomes the same
``Where``. XNOR-Net's input scale ``K`` (``input_scale=True``) and quantizers of 2 to 31 bits raise
:class:`~bitsound.errors.ExportError`. The ONNX file stores binary weights as float ±1 and runs
them as float convolutions: any runtime gives the model's answers, but the size and speed of a
binary network need the bit-packed engine (``bitsound export --format bsnn``).

Precision
---------
The precision follows the model: by default (``precision=None``) a network with int8 layers
(``bitsound compress`` with a ``quantize`` stage) exports as ``"int8"`` in QDQ form, one with
fp16-stored weights (an ``fp16`` stage) as ``"fp16"`` and any other as ``"float"``
(:func:`~bitsound.export.onnx_quant.model_precision`; the layer twins are described in
:mod:`bitsound.export.onnx_quant`). Naming a precision checks it against the model and converts
only where no data is needed and nothing the model computes is dropped:

- ``"int8"`` of a model without int8 layers is refused: int8 activations need ranges calibrated
  on training clips, which an export does not have; ``bitsound compress --recipe int8-ptq``
  makes the int8 model (and measures its accuracy), whose ``model.pt`` then exports as int8;
- ``"fp16"`` of a float model rounds its float conv / linear weights to half, as the ``fp16``
  stage of ``bitsound compress`` does (no data needed); the check then compares with that
  rounded model, whose answers are not exactly the float model's;
- ``"float"`` of an fp16 model writes its half-exact weights as float32 (lossless);
- an int8 model exports only as ``"int8"``: as float or fp16 it would drop its int8 rounding.

Tolerances of the check (:class:`OnnxCheck`), per example, relative to its largest ``|logit|``
``m``: float and fp16 networks, every logit within ``ATOL + RTOL * m`` (onnxruntime's float32
reductions sum in sequence: its per-example normalisation over a 40 x 101 map is ~1e-5 off in
relative terms where PyTorch's is ~3e-7, measured against float64, and a trained network carries
that to ~5e-4 of its logits); binary networks, the same except on at most
``floor(BINARY_BEYOND_FRACTION * n)`` examples (a sign near zero, see above); int8 networks,
within ``ATOL + INT8_RTOL * m`` (the runtime's integer requantization rounds some codes one
step away from PyTorch's, see :mod:`bitsound.export.onnx_quant`). Labels must agree on every
example but near-ties (PyTorch's two labels within twice the tolerance). The check runs
``check_batch`` (default 64) inputs, so the binary allowance is a count (3 of 64), never a
rounded-up share of a handful.

Front end
---------
The log-mel front end exports with ``torch.stft`` as ONNX ``STFT``, which needs opset 17 or
later (:data:`MIN_OPSET_FRONTEND`); an older ``opset`` with ``with_frontend=True`` is an
ExportError. The binary-image front end (median, Otsu threshold, antialiased resize) may not
export; its failure is reported as an ExportError naming the front end.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.conv import _ConvNd

from bitsound.errors import ConfigError, ExportError
from bitsound.export.onnx_quant import (
    INT8_RTOL,
    OnnxFp16Layer,
    OnnxHalfRound,
    OnnxInt8Layer,
    OnnxQdq,
    activation_qparams,
    declared_bits,
    keep_half_casts,
    model_precision,
)
from bitsound.nn.quantizers import hard_sign

log = logging.getLogger("bitsound.export")

DEFAULT_OPSET = 18
MIN_OPSET_FRONTEND = 17  # ONNX STFT
PRECISIONS = ("float", "fp16", "int8")
#: the tolerance of float and fp16 networks: |onnx - torch| <= ATOL + RTOL * max |torch logit| of
#: each example (see the module docstring for why relative to the largest logit, and why 1e-3)
ATOL, RTOL = 1e-4, 1e-3
#: binary networks: the share of examples allowed beyond that tolerance, rounded down to a count
#: (labels must still all agree). Two runtimes sum a float convolution in different orders, so a
#: value within rounding of zero before a sign can take the other sign: one flipped bit moves the
#: logits by ~1e-3 to 1e-2 without changing the label. Float networks allow no example beyond.
BINARY_BEYOND_FRACTION = 0.05
#: random inputs the export check compares by default
DEFAULT_CHECK_INPUTS = 64

_PROBE = torch.tensor([-3.0, -1.0, -0.5, -1e-7, -0.0, 0.0, 1e-7, 0.5, 1.0, 3.0])


class OnnxSign(nn.Module):
    """``+1`` where ``x >= 0`` (``sign(0) = +1``), ``-1`` where ``x < 0``; exports as Less + Where.

    x : Tensor [shape=(...)] -> Tensor [shape=(...)] of ±1, same dtype.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        one = torch.ones((), dtype=x.dtype, device=x.device)
        return torch.where(x < 0, -one, one)


class OnnxBinaryLayer(nn.Module):
    """Export twin of a binary conv / linear layer, built from its declared attributes.

    ``y = op(q(x), sign(W)) * scale + bias`` with ``q`` the hard sign for 1-bit inputs (identity
    for float inputs), ``op`` the layer's convolution or matrix product and ``scale`` its
    ``weight_scale()``. Shapes as the layer it replaces.
    """

    def __init__(self, layer: nn.Module, *, name: str):
        super().__init__()
        if getattr(layer, "input_scale", False):
            raise ExportError(f"layer '{name}' uses XNOR-Net's input scale K (input_scale=True), "
                              f"which the ONNX exporter does not lower; train without it")
        in_bits = int(getattr(layer, "input_bits", 32))
        if in_bits not in (1, 32):
            raise ExportError(f"layer '{name}' has 1-bit weights and {in_bits}-bit inputs; the ONNX "
                              f"exporter lowers binary weights on 1-bit or float inputs")
        quantizer = getattr(layer, "input_quantizer", None)
        if quantizer is not None:
            _check_quantizer(quantizer, bits=in_bits, name=f"{name}.input_quantizer")
        self.binarize = OnnxSign() if in_bits == 1 else nn.Identity()
        with torch.no_grad():
            latent = layer.weight.detach()
            if hasattr(layer, "quantized_weight"):  # (stored values, output scale per channel or None)
                wq, scale = layer.quantized_weight()
            else:
                wq = hard_sign(latent)
                scale = layer.weight_scale() if hasattr(layer, "weight_scale") else None
            if not torch.equal(wq, hard_sign(latent)):
                raise ExportError(f"layer '{name}' declares weight_bits == 1 but its stored weights are "
                                  f"not sign(W) in {{-1, +1}}; the ONNX exporter cannot lower it")
        self.register_buffer("weight", wq.clone())
        self.register_buffer("bias", None if layer.bias is None else layer.bias.detach().clone())
        if isinstance(layer, _ConvNd):
            if layer.padding_mode != "zeros":
                raise ExportError(f"layer '{name}': padding_mode {layer.padding_mode!r} is not "
                                  f"exported; binary convolutions use zero padding")
            self.kind = f"conv{len(layer.kernel_size)}d"
            self.n_spatial = len(layer.kernel_size)
            self.geometry = {"stride": layer.stride, "padding": layer.padding,
                             "dilation": layer.dilation, "groups": layer.groups}
        elif isinstance(layer, nn.Linear):
            self.kind, self.n_spatial, self.geometry = "linear", 0, {}
        else:
            raise ExportError(f"layer '{name}' ({type(layer).__name__}) declares weight_bits == 1 but "
                              f"is neither a convolution nor a linear layer; the ONNX exporter "
                              f"lowers only those")
        if scale is not None:
            scale = scale.detach().reshape(-1)
            if scale.numel() not in (1, wq.shape[0]):
                raise ExportError(f"layer '{name}': the weight scale has {scale.numel()} values, "
                                  f"expected 1 or one per output ({wq.shape[0]})")
            scale = scale.reshape(-1, *([1] * self.n_spatial)) if scale.numel() > 1 else scale.reshape(())
        self.register_buffer("scale", scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.binarize(x)
        if self.kind == "linear":
            y = F.linear(x, self.weight)
        else:
            conv = F.conv1d if self.kind == "conv1d" else F.conv2d if self.kind == "conv2d" else F.conv3d
            y = conv(x, self.weight, None, **self.geometry)
        if self.scale is not None:
            y = y * self.scale
        if self.bias is not None:
            y = y + self.bias.reshape(-1, *([1] * self.n_spatial))
        return y


def _check_quantizer(quantizer: nn.Module, *, bits: int, name: str) -> None:
    """The quantizer must be the hard sign (1 bit) or the identity (32 bits) on probe values."""
    with torch.no_grad():
        got = quantizer(_PROBE)
    want = hard_sign(_PROBE) if bits == 1 else _PROBE
    if not torch.equal(got, want):
        what = "sign(x) with sign(0) = +1" if bits == 1 else "the identity"
        raise ExportError(f"'{name}' declares {bits} bits but is not {what} on probe values "
                          f"(got {got.tolist()}); the ONNX exporter cannot lower it")


def _twin(module: nn.Module, name: str, *, store_half: bool) -> nn.Module | None:
    """The export twin of one module by its declared precision; None: keep it (descend into it)."""
    weight_bits, input_bits = declared_bits(module)
    if weight_bits is not None and isinstance(getattr(module, "weight", None), torch.Tensor):
        if weight_bits == 1:
            return OnnxBinaryLayer(module, name=name)
        if weight_bits == 8:
            return OnnxInt8Layer(module, name=name)
        if weight_bits == 16:
            return OnnxFp16Layer(module, name=name, store_half=store_half)
        if weight_bits == 32 and input_bits in (None, 32):
            return None
        raise ExportError(f"layer '{name}' declares {weight_bits}-bit weights and {input_bits}-bit inputs; "
                          f"the ONNX exporter lowers 1-, 8-, 16- and 32-bit weights (8-bit inputs only "
                          f"with 8-bit weights)")
    bits = getattr(module, "bits", None)
    if isinstance(bits, int) and bits != 32 and next(module.parameters(), None) is None:
        if bits == 1:  # a stand-alone quantizer
            _check_quantizer(module, bits=1, name=name)
            return OnnxSign()
        if bits == 8:
            return OnnxQdq(*activation_qparams(module, name=name))
        if bits == 16:
            return OnnxHalfRound()
        raise ExportError(f"'{name}' is a {bits}-bit quantizer; the ONNX exporter lowers 1-, 8- and "
                          f"16-bit quantizers")
    return None


def lower_for_onnx(module: nn.Module, *, store_half: bool = True) -> nn.Module:
    """A copy of ``module`` with every quantized layer and quantizer replaced by its export twin.

    Layers are found by their declared precision, never by class: ``weight_bits == 1``
    (:class:`OnnxBinaryLayer`), ``8`` (:class:`~bitsound.export.onnx_quant.OnnxInt8Layer`, QDQ),
    ``16`` (:class:`~bitsound.export.onnx_quant.OnnxFp16Layer`; ``store_half=False`` stores its
    weights as float32); a module with ``bits`` of 1, 8 or 16 and no parameters is a stand-alone
    quantizer (sign, QDQ, half rounding). Float layers stay as they are.
    """
    module = copy.deepcopy(module).eval()

    def replace(parent: nn.Module, prefix: str) -> None:
        for child_name, child in list(parent.named_children()):
            name = f"{prefix}.{child_name}" if prefix else child_name
            twin = _twin(child, name, store_half=store_half)
            if twin is None:
                replace(child, name)
            else:
                setattr(parent, child_name, twin)

    twin = _twin(module, type(module).__name__, store_half=store_half)
    if twin is not None:
        return twin
    replace(module, "")
    return module


@dataclass
class OnnxCheck:
    """onnxruntime against PyTorch on the same inputs.

    ``max_abs_diff`` is the largest |logit difference|, ``max_rel_diff`` the largest per
    example as a fraction of that example's largest |PyTorch logit|; ``n_beyond_tolerance``
    counts examples with a logit beyond the tolerance ``atol + rtol * m`` (``m``: the example's
    largest |PyTorch logit|; ``INT8_RTOL`` in place of ``rtol`` for ``int8`` networks);
    ``label_mismatches`` counts examples whose arg-max differs, ``near_ties`` those of them where
    PyTorch's two labels were tied within the tolerance (its logit for onnxruntime's label is
    within twice the tolerance of its own top logit: both may move by the tolerance, so either
    label is a correct answer of the exported model). ``binary`` / ``int8``: the network has binary
    / int8 layers; ``allowed_beyond``: how many examples may lie beyond the tolerance (binary
    networks: ``floor(BINARY_BEYOND_FRACTION * n)``, others 0).
    """

    n: int
    max_abs_diff: float
    n_beyond_tolerance: int
    label_mismatches: int
    atol: float
    rtol: float
    binary: bool
    int8: bool = False
    max_rel_diff: float = 0.0
    near_ties: int = 0

    @property
    def allowed_beyond(self) -> int:
        return math.floor(BINARY_BEYOND_FRACTION * self.n) if self.binary else 0

    @property
    def ok(self) -> bool:
        return (self.label_mismatches == self.near_ties
                and self.n_beyond_tolerance <= self.allowed_beyond)

    @property
    def tolerance(self) -> str:
        if self.int8:
            return f"{self.atol:g} + {INT8_RTOL:g}*max|logit| (int8 rounding)"
        return f"{self.atol:g} + {self.rtol:g}*max|logit|"

    def describe(self) -> str:
        allowed = f" (at most {self.allowed_beyond} allowed: binary signs near 0)" if self.binary else ""
        ties = f" ({self.near_ties} at PyTorch near-ties within the tolerance)" if self.near_ties else ""
        return (f"{self.n} inputs: max |logit diff| {self.max_abs_diff:.3g} ({self.max_rel_diff:.2g} of the "
                f"largest |logit|), {self.n_beyond_tolerance} beyond {self.tolerance}{allowed}, "
                f"{self.label_mismatches} labels differ{ties}")


@dataclass
class OnnxExport:
    """What :func:`export_onnx` wrote."""

    path: Path
    opset: int
    precision: str
    with_frontend: bool
    input_name: str
    input_shape: list  # "batch" then the fixed sizes
    labels: list[str]
    check: OnnxCheck


def _require_onnx():
    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise ExportError("ONNX export needs onnx, onnxruntime and onnxscript: "
                          "pip install 'bitsound[onnx]'") from None
    return onnx, onnxruntime


def run_onnx(path: str | Path, inputs: np.ndarray) -> np.ndarray:
    """Logits from onnxruntime (CPU) for ``inputs`` [shape=(batch, ...)] float32."""
    _, ort = _require_onnx()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return session.run(None, {name: np.ascontiguousarray(inputs, dtype=np.float32)})[0]


def compare_onnx(module: nn.Module, path: str | Path, inputs: torch.Tensor, *, atol: float = ATOL,
                 rtol: float = RTOL, batch_size: int = 64) -> OnnxCheck:
    """Run ``inputs`` through the PyTorch ``module`` and the ONNX file; compare logits and labels.

    Parameters
    ----------
    module : nn.Module
        What was exported (the network, or front end + network), in eval mode.
    inputs : Tensor [shape=(n, ...)]
        Features, or waveform windows for a file exported with its front end.
    """
    binary = any(isinstance(m, (OnnxBinaryLayer, OnnxSign)) or getattr(m, "weight_bits", None) == 1
                 for m in module.modules())
    int8 = model_precision(module) == "int8" or any(isinstance(m, (OnnxInt8Layer, OnnxQdq))
                                                    for m in module.modules())
    diffs, rels, beyond, mismatches, ties = [0.0], [0.0], 0, 0, 0
    for start in range(0, len(inputs), batch_size):
        batch = inputs[start:start + batch_size].float()
        with torch.no_grad():
            ref = module(batch).numpy()
        got = run_onnx(path, batch.numpy())
        if got.shape != ref.shape:
            raise ExportError(f"'{path}' gives logits of shape {got.shape}, PyTorch {ref.shape}")
        diff = np.abs(got - ref)
        worst = diff.max(axis=1)
        scale = np.abs(ref).max(axis=1)
        diffs.append(float(worst.max(initial=0.0)))
        rels.append(float((worst / np.maximum(scale, 1e-12)).max(initial=0.0)))
        tol = atol + (INT8_RTOL if int8 else rtol) * scale  # per example: the largest a logit may move
        beyond += int((worst > tol).sum())
        mine, theirs = ref.argmax(axis=1), got.argmax(axis=1)
        differ = mine != theirs
        rows = np.arange(len(ref))
        mismatches += int(differ.sum())
        ties += int((differ & (ref[rows, mine] - ref[rows, theirs] <= 2 * tol)).sum())
    return OnnxCheck(n=int(len(inputs)), max_abs_diff=max(diffs), n_beyond_tolerance=beyond,
                     label_mismatches=mismatches, atol=atol, rtol=rtol, binary=binary, int8=int8,
                     max_rel_diff=max(rels), near_ties=ties)


class _WithFrontend(nn.Module):
    def __init__(self, frontend: nn.Module, net: nn.Module):
        super().__init__()
        self.frontend, self.net = frontend, net

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.net(self.frontend(wave))


def export_onnx(model, out_path: str | Path, *, with_frontend: bool = False, opset: int = DEFAULT_OPSET,
                precision: str | None = None, check_batch: int = DEFAULT_CHECK_INPUTS) -> OnnxExport:
    """Export a trained model to ONNX and check it in onnxruntime.

    Parameters
    ----------
    model : SoundClassifier or str / Path of a ``model.pt``
    out_path : str or Path
        The ``.onnx`` file, written atomically.
    with_frontend : bool
        Include the front end: the input is waveform windows ``(batch, channels, samples)``.
        Default: the network alone, input features ``(batch, *feature_shape)``.
    opset : int
        ONNX opset (>= 17 with the front end: STFT).
    precision : {None, "float", "fp16", "int8"}
        None (default): the model's own (:func:`~bitsound.export.onnx_quant.model_precision`:
        int8 layers export in QDQ form, fp16-stored weights as FLOAT16). A named precision is
        checked against the model (see the module docstring: ``"int8"`` of a float model is
        refused, since it needs calibration: run ``bitsound compress --recipe int8-ptq``;
        ``"fp16"`` of a float model rounds its weights to half first).
    check_batch : int
        Random inputs (waveforms of the recipe's window through the front end; at least 2)
        compared between onnxruntime and PyTorch right after writing; a difference beyond the
        tolerance (:class:`OnnxCheck`) or a changed label is an ExportError.

    Returns
    -------
    OnnxExport
    """
    from bitsound.modelfile import SoundClassifier, load_model
    from bitsound.train.checkpoint import save_bytes

    onnx, _ = _require_onnx()
    if precision is not None and precision not in PRECISIONS:
        raise ConfigError(f"unknown ONNX precision {precision!r}; valid: {', '.join(PRECISIONS)} "
                          f"(or leave it out: the model's own)")
    if isinstance(model, (str, Path)):
        model = load_model(model)
    if not isinstance(model, SoundClassifier):
        raise ConfigError(f"export_onnx takes a model.pt path or a SoundClassifier, got "
                          f"{type(model).__name__}")
    if with_frontend and opset < MIN_OPSET_FRONTEND:
        raise ExportError(f"the front end needs ONNX opset >= {MIN_OPSET_FRONTEND} (STFT); got "
                          f"opset {opset}. Use --opset {DEFAULT_OPSET} or export without the front end")
    model = model.cpu().eval()
    reference, precision = _reference_at(model, precision)
    net = lower_for_onnx(reference, store_half=precision != "float")
    frontend = copy.deepcopy(model.frontend).eval()
    waves = _check_waves(model, max(2, check_batch))
    with torch.no_grad():
        features = frontend(waves)
    if with_frontend:
        module, inputs, input_name = _WithFrontend(frontend, net).eval(), waves, "waveform"
        reference = _WithFrontend(frontend, reference).eval()
    else:
        module, inputs, input_name = net, features, "features"
    batch = torch.export.Dim("batch", min=1)
    try:
        with _quiet_exporter():
            program = torch.onnx.export(module, (inputs[:2],), None, dynamo=True, opset_version=opset,
                                        input_names=[input_name], output_names=["logits"],
                                        dynamic_shapes=({0: batch},), external_data=False, verbose=False,
                                        optimize=False)
            _optimize(program)
    except Exception as err:  # the exporter raises many types; the innermost cause says why
        part = f"front end '{model.recipe.frontend.kind}' + network" if with_frontend else "network"
        raise ExportError(f"ONNX export of the {part} of '{model.recipe.name}' failed: {_root_cause(err)}"
                          + ("; export without --with-frontend and run the front end in Python"
                             if with_frontend else "")) from err
    proto = program.model_proto
    meta = {"labels": json.dumps(model.labels), "recipe": json.dumps(model.recipe.model_dump(mode="json")),
            "input": input_name, "bitsound_precision": precision}
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    out_path = Path(out_path)
    save_bytes(proto.SerializeToString(), out_path)
    check = compare_onnx(reference, out_path, inputs)
    if not check.ok:
        out_path.unlink(missing_ok=True)
        raise ExportError(f"onnxruntime disagrees with PyTorch on random inputs ({check.describe()}); "
                          f"'{out_path}' was not kept")
    return OnnxExport(path=out_path, opset=opset, precision=precision, with_frontend=with_frontend,
                      input_name=input_name, input_shape=["batch", *inputs.shape[1:]],
                      labels=list(model.labels), check=check)


def _reference_at(model, precision: str | None) -> tuple[nn.Module, str]:
    """The network the export must reproduce at ``precision`` (None: the model's own), and the
    precision; refuses conversions that need data or would drop what the model computes."""
    own = model_precision(model.net)
    net = copy.deepcopy(model.net).eval()
    if precision is None or precision == own:
        return net, own
    what = f"model '{model.recipe.name}'"
    if own == "int8":
        raise ExportError(f"{what} has int8 layers: it exports as int8 (QDQ), its own precision; as "
                          f"{precision} it would drop its int8 rounding. Leave --precision out or pass int8")
    if precision == "int8":
        raise ExportError(f"{what} has no int8 layers ({own}); int8 activations need ranges calibrated on "
                          f"training clips, which an export does not have. Make the int8 model with "
                          f"`bitsound compress --model DIR/model.pt --recipe int8-ptq --out DIR2` and "
                          f"export DIR2/model.pt")
    if precision == "fp16":  # float -> fp16: weights rounded to half, no data needed
        from bitsound.compress.quantize import to_fp16

        if not to_fp16(net, layers="all"):
            raise ExportError(f"{what} has no float conv or linear layers to store in fp16")
        log.info("float conv / linear weights rounded to fp16 for the export; the check compares with "
                 "the rounded model")
        return net, "fp16"
    return net, "float"  # fp16 -> float: the half values exactly, as float32


def _optimize(program) -> None:
    """The exporter's graph optimization, keeping the Cast of fp16 weights (see onnx_quant)."""
    from onnxscript import optimizer

    optimizer.optimize_ir(program.model, should_fold=keep_half_casts)


def _check_waves(model, n: int) -> torch.Tensor:
    """Waveforms for the export check: noise plus tones of random pitch and level, so that
    thresholding front ends (binary images) see more than silence."""
    g = torch.Generator().manual_seed(0)
    shape = model.example_input.shape[1:]
    rate = model.recipe.audio.sample_rate
    t = torch.arange(shape[-1], dtype=torch.float32) / rate
    pitch = torch.rand(n, 1, 1, generator=g) * rate * 0.4 + 50
    level = torch.rand(n, 1, 1, generator=g)
    return torch.randn(n, *shape, generator=g) * 0.05 + level * torch.sin(2 * math.pi * pitch * t)


def _root_cause(err: BaseException) -> str:
    while err.__cause__ is not None:
        err = err.__cause__
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip()
    return text.splitlines()[0] if text else type(err).__name__


class _quiet_exporter:
    """Silence the exporter's progress (its ``[torch.onnx]`` prints are turned off by
    ``verbose=False``), the INFO lines of its graph passes (onnx_ir: "Removed 36 unused nodes",
    "Replaced initializer ..."), its warnings about absent torchvision ops and one deprecation
    inside torch.export (``LeafSpec``) that says nothing about the model. Errors still show, and
    every other Python warning still reaches the user."""

    names = ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "onnx_ir")

    def __enter__(self):
        self.levels = {n: logging.getLogger(n).level for n in self.names}
        for n in self.names:
            logging.getLogger(n).setLevel(logging.ERROR)
        self.warnings = warnings.catch_warnings()
        self.warnings.__enter__()
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)",
                                category=FutureWarning)

    def __exit__(self, *exc) -> None:
        self.warnings.__exit__(*exc)
        for n, level in self.levels.items():
            logging.getLogger(n).setLevel(level)


__all__ = ["ATOL", "BINARY_BEYOND_FRACTION", "DEFAULT_CHECK_INPUTS", "DEFAULT_OPSET", "INT8_RTOL",
           "MIN_OPSET_FRONTEND", "OnnxBinaryLayer", "OnnxCheck", "OnnxExport", "OnnxSign", "PRECISIONS",
           "RTOL", "compare_onnx", "export_onnx", "lower_for_onnx", "model_precision", "run_onnx"]
