"""Model complexity: parameters, bytes under the challenge rules, MACs, binary operations.

:func:`complexity_report` runs one forward pass on a ``(1, *input_shape)`` input with hooks on the
counted layers and reads each layer's precision from its attributes ("precision is data", as
larq's ``models.summary``): ``weight_bits`` (bits of the parameter named ``weight``), ``input_bits``
(bits of the input activations) and ``n_scale_params`` (extra float scales the deployed layer
stores, e.g. XNOR-Net's per-channel alpha). A layer without these attributes is full precision:
its parameters are counted at their dtype's width (32 bits for float32). A new compression
method therefore needs no counting code here, only those attributes on its layers.

Counted layers are modules that own parameters or buffers directly, plus convolutions, linear
layers, batch-norm and pooling layers; containers and parameter-free activations are skipped.

Counting rules
--------------
params, nonzero_params
    All parameters (as ``torchinfo``'s ``total_params``) and those whose stored value is not
    zero. A 1-bit weight is stored as ``sign(W)`` in {-1, +1} and is never zero.
bytes : dict, one entry per rule (1 KB = 1024 bytes; bits / 8, no padding to whole words)
    ``"storage"``: what inference needs: every parameter at its storage precision (1-bit
    weights at 1 bit; biases, batch-norm and other float parameters at their dtype width),
    ``n_scale_params`` scales at 32 bits, and the persistent floating-point buffers
    (batch-norm running mean and variance; integer counters such as ``num_batches_tracked``
    are not needed).
    ``"dcase2020"``: DCASE 2020/2021 task 1b rule ("500 KB for the non-zero parameters",
    excluding batch-norm and feature extraction; seed 002): non-zero parameters of all but
    batch-norm layers, each at its storage precision, plus the scales. McDonnell's 3,987,000
    one-bit weights count 3,987,000 / 8 / 1024 = 486.69 KB this way; his per-layer constant
    ``sqrt(2 / fan_in)`` follows from the shape and stores nothing.
    ``"dcase2022"``: DCASE 2022 task 1 rule: all parameters, zero-valued ones and batch-norm
    included, each at its precision, plus the scales (buffers are not parameters).
binary_weights
    Weights stored at one bit (``weight_bits == 1``), per layer and in all: seed 002's
    "3,987,000 binary weights".
params_by_rule : dict
    The parameters each rule counts (scales aside): ``storage`` and ``dcase2022`` all of them,
    ``dcase2020`` the non-zero ones outside batch-norm (seed 004's Table 1 totals).
macs
    Multiply-accumulates with float operands, counted as ``torchinfo`` (``total_mult_adds``,
    the counter behind the DCASE ``nessi`` tool) does for a batch of one: a convolution counts
    ``weight.numel() * output positions`` (= ``C_out * H_out * W_out * C_in / groups * kh * kw``)
    plus one per output value for its bias; a linear layer ``in * out`` (plus ``out`` for the
    bias) per input row; any other layer with parameters (batch-norm) one per parameter;
    pooling and activations nothing. Unlike ``torchinfo``, a linear layer applied to
    ``(1, T, in)`` counts ``T`` rows, not one.
bops
    Binary operations of layers with ``weight_bits == 1`` and ``input_bits == 1``: the same
    count as their weight MACs (one XNOR-popcount lane per MAC), reported separately and not
    included in ``macs``; their bias adds stay in ``macs``, and the output scaling by alpha or
    ``K`` is not counted (it folds into the next batch-norm). A one-bit-per-weight layer
    (float inputs, ``±c`` weights) still multiplies floats: its operations are ``macs``.
flops_seed001
    The XNOR-Net FLOPs of seed 001 (section III.B): ``a + (x - (a + b)) / 64 + b`` with
    ``a`` and ``b`` the operations of the first and last weight layers (convolution or linear,
    in execution order; the layers XNOR-Net keeps in full precision) and ``x`` the FLOPs of the
    full-precision version as the seed counts them (the authors' ``calculator.py``, which gives
    Table 1's 544 M for ACDNet): one per multiply-accumulate of every convolution and linear
    layer, binary ones included, and per bias add; one per output value of an activation
    module (ReLU, sigmoid, softmax ...; a functional call inside ``forward`` is not seen); one
    per value each pooling window reads (``kernel`` values per pooled output); none for
    batch-norm, which folds into the neighbouring layer. One FLOP
    is one MAC, as in the seed's tables. With a single weight layer ``b = 0``. The value is the
    seed's estimate for the network *as an XNOR-Net*; it does not check which layers are
    actually binary.
peak_activation_bytes
    The largest, over layer calls, of the layer's input(s) plus output bytes for one example;
    an input read by a layer with ``input_bits == 1`` counts 1 bit per value (the engine keeps
    it bit-packed), every other tensor its dtype width. Tensors kept alive across layers (skip
    connections) are not added: it is a lower bound for a sequential executor.
layers
    One dict per counted layer in execution order (layers that did not run come last with
    ``calls = 0``): name, type, output_shape (without the batch axis), calls, params,
    nonzero_params, scale_params, bits_per_weight, input_bits, bytes (per rule), macs, bops,
    activation_bytes.

References
----------
- Seed 001: XNOR FLOPs ``a + (x - (a + b)) / 64 + b`` (section III.B).
- Seed 002 / McDonnell 2018: 1 bit per weight, the DCASE 2020 task 1b size rule.
- DCASE 2022 task 1 rules: all parameters including zero-valued ones, at their precision.
- M. Rastegari et al., "XNOR-Net", ECCV 2016 (binary operation counting).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.pooling import (
    _AdaptiveAvgPoolNd,
    _AdaptiveMaxPoolNd,
    _AvgPoolNd,
    _LPPoolNd,
    _MaxPoolNd,
)

from bitsound.errors import ConfigError

RULES = ("storage", "dcase2020", "dcase2022")
KB = 1024  # bytes per KB, as the DCASE rules and seed 002 count
SCALE_BITS = 32
XNOR_SPEEDUP = 64  # seed 001: binary operations cost 1/64 of a FLOP

_COUNTED_TYPES = (_ConvNd, nn.Linear, _BatchNorm, _MaxPoolNd, _AvgPoolNd, _AdaptiveAvgPoolNd,
                  _AdaptiveMaxPoolNd, _LPPoolNd)
_POOL_TYPES = _COUNTED_TYPES[3:]
# element-wise activations: one FLOP per output value in seed 001's count (not layers here)
_ACTIVATION_TYPES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SiLU, nn.GELU, nn.Sigmoid,
                     nn.Tanh, nn.Hardtanh, nn.Softmax, nn.LogSoftmax)


def _is_counted(module: nn.Module) -> bool:
    owns = next(module.parameters(recurse=False), None) is not None
    owns = owns or next(module.buffers(recurse=False), None) is not None
    return owns or isinstance(module, _COUNTED_TYPES)


def _tensors(obj: Any) -> list[torch.Tensor]:
    """Tensors inside a module's inputs or outputs (tensor, or nested list/tuple/dict)."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for item in obj for t in _tensors(item)]
    if isinstance(obj, dict):
        return [t for item in obj.values() for t in _tensors(item)]
    return []


def _is_binary(module: nn.Module) -> bool:
    return getattr(module, "weight_bits", 32) == 1 and getattr(module, "input_bits", 32) == 1


def _call_ops(module: nn.Module, out: torch.Tensor) -> tuple[int, int]:
    """(weight ops, bias ops) of one call with output ``out`` (batch of one)."""
    if isinstance(module, _ConvNd):
        positions = out.numel() // module.out_channels
        bias = out.numel() if module.bias is not None else 0
        return module.weight.numel() * positions, bias
    if isinstance(module, nn.Linear):
        rows = out.numel() // module.out_features
        bias = out.numel() if module.bias is not None else 0
        return module.weight.numel() * rows, bias
    # torchinfo's rule for any other layer: one operation per parameter (batch-norm: 2C)
    return 0, sum(p.numel() for p in module.parameters(recurse=False))


def _seed001_ops(module: nn.Module, inputs: tuple, out: torch.Tensor, layer_ops: int) -> int:
    """One call's FLOPs as seed 001 counts them (see ``flops_seed001`` in the module docstring)."""
    if isinstance(module, (_ConvNd, nn.Linear)):
        return layer_ops
    if isinstance(module, _POOL_TYPES):
        kernel = getattr(module, "kernel_size", None)
        if kernel is None:  # adaptive: each output reads about input / output values
            first = _tensors(inputs)
            return first[0].numel() if first else 0
        return out.numel() * math.prod(kernel if isinstance(kernel, (tuple, list)) else
                                       [kernel] * (out.dim() - 2))
    if isinstance(module, _ACTIVATION_TYPES):
        return out.numel()
    return 0


def _activation_bytes(module: nn.Module, inputs: tuple, out: list[torch.Tensor]) -> int:
    in_bits = getattr(module, "input_bits", None)
    bits = 0
    for t in _tensors(inputs):
        bits += t.numel() * (1 if in_bits == 1 else t.element_size() * 8)
    bits_out = sum(t.numel() * t.element_size() * 8 for t in out)
    return math.ceil(bits / 8) + math.ceil(bits_out / 8)


def _layer_storage(module: nn.Module, seen: set[int]) -> dict[str, Any]:
    """Parameter counts and bytes per rule of one layer; ``seen`` dedupes shared parameters."""
    weight_bits = int(getattr(module, "weight_bits", 0)) or None
    params = nonzero = bits_all = bits_nonzero = binary = 0
    for name, p in module.named_parameters(recurse=False):
        if id(p) in seen:
            continue
        seen.add(id(p))
        bits = weight_bits if (name == "weight" and weight_bits) else p.element_size() * 8
        n = p.numel()
        # a 1-bit weight is stored as sign(W) = ±1: never zero
        nz = n if bits == 1 else int(torch.count_nonzero(p.detach()))
        params, nonzero = params + n, nonzero + nz
        bits_all, bits_nonzero = bits_all + n * bits, bits_nonzero + nz * bits
        binary += n if bits == 1 else 0
    scale = int(getattr(module, "n_scale_params", 0))
    buffer_bits = sum(b.numel() * b.element_size() * 8 for name, b in module.named_buffers(recurse=False)
                      if b.is_floating_point() and name not in module._non_persistent_buffers_set)
    is_bn = isinstance(module, _BatchNorm)
    bytes_ = {
        "storage": (bits_all + scale * SCALE_BITS + buffer_bits) / 8,
        "dcase2020": 0.0 if is_bn else (bits_nonzero + scale * SCALE_BITS) / 8,
        "dcase2022": (bits_all + scale * SCALE_BITS) / 8,
    }
    return {"params": params, "nonzero_params": nonzero, "scale_params": scale, "binary_weights": binary,
            "bits_per_weight": weight_bits or 32, "bytes": bytes_}


def _check_input_shape(input_shape) -> tuple[int, ...]:
    shape = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else None
    if not shape or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape):
        raise ConfigError(f"input_shape must be a non-empty tuple of positive ints without the batch axis, "
                          f"e.g. (1, 40, 101); got {input_shape!r}")
    return shape


def _model_dtype(model: nn.Module, device: torch.device) -> torch.dtype:
    for p in model.parameters():
        if p.device != device:
            raise ConfigError(f"the model is on {p.device} but complexity_report was asked for device="
                              f"{str(device)!r}; move the model with model.to({str(device)!r}) or pass "
                              f"device={str(p.device)!r}")
    floats = [p.dtype for p in model.parameters() if p.is_floating_point()]
    return floats[0] if floats else torch.float32


def complexity_report(model: nn.Module, input_shape: tuple[int, ...], *, device="cpu") -> dict:
    """Count parameters, bytes per rule, MACs and binary operations of ``model``.

    Parameters
    ----------
    model : nn.Module
        Any model; quantized layers declare ``weight_bits``, ``input_bits`` and
        ``n_scale_params`` (see the module docstring for every counting rule).
    input_shape : tuple of int
        One example's shape without the batch axis, e.g. ``(1, 40, 101)``.
    device : str or torch.device
        Where the forward pass runs; the model must already be there.

    Returns
    -------
    dict (JSON-serialisable)
        ``params``, ``nonzero_params``, ``scale_params``, ``macs``, ``bops``, ``bytes``
        (``{"storage", "dcase2020", "dcase2022"}`` in bytes), ``kb`` (the same in KB),
        ``params_by_rule``, ``flops_seed001`` (``{"a", "b", "x", "flops"}``), ``peak_activation_bytes``,
        ``peak_activation_layer``, ``input_shape`` and ``layers`` (list of per-layer dicts).
        The model's training flags and weights are left unchanged.
    """
    shape = _check_input_shape(input_shape)
    device = torch.device(device)
    dtype = _model_dtype(model, device)
    counted = [(name or type(model).__name__, m) for name, m in model.named_modules() if _is_counted(m)]
    calls: dict[nn.Module, dict[str, Any]] = {}
    order: list[nn.Module] = []
    seed_flops = [0]  # seed 001's full-precision FLOPs, over every call

    def seed_hook(module: nn.Module, inputs: tuple, output: Any) -> None:
        outs = _tensors(output)
        if outs and not _is_counted(module):
            seed_flops[0] += _seed001_ops(module, inputs, outs[0], 0)

    def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
        outs = _tensors(output)
        if not outs:
            return
        rec = calls.setdefault(module, {"calls": 0, "macs": 0, "bops": 0, "activation_bytes": 0})
        if rec["calls"] == 0:
            order.append(module)
        weight_ops, other_ops = _call_ops(module, outs[0])
        seed_flops[0] += _seed001_ops(module, inputs, outs[0], weight_ops + other_ops)
        binary = _is_binary(module) and weight_ops > 0
        rec["calls"] += 1
        rec["bops"] += weight_ops if binary else 0
        rec["macs"] += other_ops + (0 if binary else weight_ops)
        rec["output_shape"] = list(outs[0].shape[1:])
        rec["activation_bytes"] = max(rec["activation_bytes"], _activation_bytes(module, inputs, outs))

    training = {m: m.training for m in model.modules()}
    handles = [m.register_forward_hook(hook) for _, m in counted]
    handles += [m.register_forward_hook(seed_hook) for m in model.modules()
                if isinstance(m, _ACTIVATION_TYPES)]
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros((1, *shape), dtype=dtype, device=device))
    finally:
        for h in handles:
            h.remove()
        for m, flag in training.items():
            m.training = flag
    return _assemble(counted, calls, order, shape, seed_flops[0])


def _assemble(counted: list[tuple[str, nn.Module]], calls: dict, order: list[nn.Module],
              shape: tuple[int, ...], seed_flops: int) -> dict:
    names = {m: name for name, m in counted}
    idle = [m for _, m in counted if m not in calls and next(m.parameters(recurse=False), None) is not None]
    seen: set[int] = set()
    layers = []
    counted_by_rule = dict.fromkeys(RULES, 0)
    for m in order + idle:
        rec = calls.get(m, {"calls": 0, "macs": 0, "bops": 0, "activation_bytes": 0, "output_shape": None})
        storage = _layer_storage(m, seen)
        counted_by_rule["storage"] += storage["params"]
        counted_by_rule["dcase2022"] += storage["params"]
        counted_by_rule["dcase2020"] += 0 if isinstance(m, _BatchNorm) else storage["nonzero_params"]
        layers.append({
            "name": names[m], "type": type(m).__name__, "output_shape": rec["output_shape"],
            "calls": rec["calls"], **storage, "input_bits": int(getattr(m, "input_bits", 32)),
            "macs": rec["macs"], "bops": rec["bops"], "activation_bytes": rec["activation_bytes"],
        })
    totals = {key: sum(layer[key] for layer in layers)
              for key in ("params", "nonzero_params", "scale_params", "binary_weights", "macs", "bops")}
    bytes_ = {rule: sum(layer["bytes"][rule] for layer in layers) for rule in RULES}
    peak = max(layers, key=lambda layer: layer["activation_bytes"], default=None)
    return {
        "input_shape": list(shape),
        **totals,
        "bytes": bytes_,
        "kb": {rule: b / KB for rule, b in bytes_.items()},
        "params_by_rule": counted_by_rule,
        "flops_seed001": _flops_seed001(calls, order, seed_flops),
        "peak_activation_bytes": peak["activation_bytes"] if peak else 0,
        "peak_activation_layer": peak["name"] if peak else None,
        "layers": layers,
    }


def _flops_seed001(calls: dict, order: list[nn.Module], x: int) -> dict[str, float]:
    """Seed 001's ``a + (x - (a + b)) / 64 + b`` (see the module docstring)."""
    weighted = [calls[m]["macs"] + calls[m]["bops"] for m in order if isinstance(m, (_ConvNd, nn.Linear))]
    a = weighted[0] if weighted else 0
    b = weighted[-1] if len(weighted) > 1 else 0
    return {"a": a, "b": b, "x": x, "flops": a + (x - (a + b)) / XNOR_SPEEDUP + b}


def check_budget(report: dict, *, max_kb: float | None = None, max_macs: float | None = None,
                 max_params: int | None = None, rule: str = "storage") -> list[str]:
    """List the ways ``report`` breaks a complexity budget (empty list: within budget).

    Parameters
    ----------
    report : dict
        From :func:`complexity_report`.
    max_kb : float, optional
        Size limit in KB (1024 bytes) under ``rule``.
    max_macs : float, optional
        Limit on float multiply-accumulates (binary operations are not MACs).
    max_params : int, optional
        Limit on the number of parameters (all, zero-valued included).
    rule : {"storage", "dcase2020", "dcase2022"}
        Which byte count ``max_kb`` applies to.

    Returns
    -------
    list of str
        One readable reason per violated limit.
    """
    if rule not in RULES:
        raise ConfigError(f"unknown size rule {rule!r}; valid rules: {', '.join(RULES)}")
    for key, value in (("max_kb", max_kb), ("max_macs", max_macs), ("max_params", max_params)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not value > 0):
            raise ConfigError(f"{key} must be a positive number or None, got {value!r}")
    problems = []
    if max_kb is not None:
        kb = report["bytes"][rule] / KB
        if kb > max_kb:
            problems.append(f"size {kb:,.2f} KB under the '{rule}' rule exceeds the {max_kb:,} KB budget "
                            f"by {kb - max_kb:,.2f} KB (1 KB = 1024 bytes)")
    if max_macs is not None and report["macs"] > max_macs:
        problems.append(f"{report['macs']:,} MACs exceed the {max_macs:,} MAC budget by "
                        f"{report['macs'] - max_macs:,} (binary operations are counted separately: "
                        f"{report['bops']:,} BOPs)")
    if max_params is not None and report["params"] > max_params:
        problems.append(f"{report['params']:,} parameters exceed the {max_params:,} parameter budget by "
                        f"{report['params'] - max_params:,}")
    return problems


def render_report(report: dict, console=None) -> None:
    """Print ``report`` as a rich table: one row per layer, then the totals.

    Parameters
    ----------
    report : dict
        From :func:`complexity_report`.
    console : rich.console.Console, optional
        Where to print; a new console on stdout if None.
    """
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title=f"complexity for input {tuple(report['input_shape'])}", show_footer=True)
    table.add_column("layer", footer="total")
    table.add_column("type")
    table.add_column("output", footer="")
    table.add_column("params", justify="right", footer=f"{report['params']:,}")
    table.add_column("bits", justify="right", footer="")
    table.add_column("storage B", justify="right", footer=f"{report['bytes']['storage']:,.1f}")
    table.add_column("MACs", justify="right", footer=f"{report['macs']:,}")
    table.add_column("BOPs", justify="right", footer=f"{report['bops']:,}")
    for layer in report["layers"]:
        shape = "x".join(map(str, layer["output_shape"])) if layer["output_shape"] is not None else "-"
        table.add_row(layer["name"], layer["type"], shape, f"{layer['params']:,}",
                      f"w{layer['bits_per_weight']}/a{layer['input_bits']}" if layer["params"] else "",
                      f"{layer['bytes']['storage']:,.1f}", f"{layer['macs']:,}", f"{layer['bops']:,}")
    console.print(table)
    kb = ", ".join(f"{rule} {value:,.2f} KB" for rule, value in report["kb"].items())
    seed = report["flops_seed001"]
    dcase2020 = report.get("params_by_rule", {}).get("dcase2020")
    binary = report.get("binary_weights")
    console.print(f"size: {kb}; non-zero params {report['nonzero_params']:,}"
                  + (f" ({dcase2020:,} outside batch-norm, the dcase2020 count)" if dcase2020 is not None
                     else "")
                  + (f"; one-bit weights {binary:,}" if binary else "")
                  + f"; peak activations {report['peak_activation_bytes']:,} B "
                  f"({report['peak_activation_layer']}); seed-001 FLOPs {seed['x']:,.0f} as float, "
                  f"{seed['flops']:,.0f} as XNOR-Net")
