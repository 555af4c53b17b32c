"""Whole-model parity: exported models give PyTorch's eval logits and labels through the engine.

Every exportable registered family (``thesis*``, ``bcnn2d`` in each mode, with and without
shortcuts, and ``cnn2d``) is built with random weights and random batch-norm statistics (about
half the batch-norm scales negative, so flipped thresholds are exercised) and run on every
instruction set. Stated tolerances:

- **binary parts are bit-exact**: the ±1 input of every binary layer equals the sign of the
  tensor PyTorch feeds it. Signs computed by a threshold (batch-norm folded after a binary
  layer) or by a bit max-pool must match exactly; signs taken of a float tensor (the first float
  layer, bcnn2d's real-valued stream) may differ only where PyTorch's value is within
  ``1e-5 * max|value|`` of zero (float rounding), and in practice do not differ at all;
- **float parts** (logits): ``|engine - torch| <= 1e-4 * (1 + max|torch logits|)``;
- **labels** are equal wherever PyTorch's top two logits differ by more than that tolerance.

The real-audio tests run the recipes' front ends on clips from ``../shared/data`` through
:func:`bitsound.experiment.predict_files`, once with the PyTorch model and once with the engine
(:mod:`bitsound.engine.classifier`), and compare the labels clip by clip.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from bitsound import engine
from bitsound.errors import ExportError
from bitsound.export import bsnn
from bitsound.export.packed import export_packed
from bitsound.graph.lower import lower
from bitsound.models import MODELS, build_model, model_entry
from bitsound.nn.layers import BinaryConv1d, BinaryConv2d, BinaryLinear

ISAS = engine.available_isas()
THESIS_SHAPE, AUDIO_SHAPE = (1, 32, 32), (1, 20, 27)
CASES = [
    ("thesis_xnor5", {}, THESIS_SHAPE),
    ("thesis_xnor1", {}, THESIS_SHAPE),
    ("thesis_binarynet5", {}, THESIS_SHAPE),
    ("thesis_binarynet1", {}, THESIS_SHAPE),
    ("thesis", {"activation": "relu", "pool": [0, 2], "binary_layers": 3, "padding": "same"}, THESIS_SHAPE),
    ("thesis", {"activation": ["relu", "tanh"], "first_activation": "relu", "binary_layers": 2,
                "channels": [31, 65], "dense_units": [33, 64], "dropout": 0.3}, THESIS_SHAPE),
    ("thesis", {"mode": "binarynet", "kernel_size": 2, "padding": "same", "binary_layers": 2, "pool": [1],
                "activation": "tanh", "dense_units": 40}, THESIS_SHAPE),
    ("thesis", {"binary_layers": 2, "map_input": False, "first_channels": 64, "channels": 129}, (1, 12, 9)),
    *[("bcnn2d", {"mode": mode, "shortcut": sc, "channels": [16, 33, 64]}, AUDIO_SHAPE)
      for mode in ("xnor", "binarynet", "onebit") for sc in (True, False)],
    ("bcnn2d", {"channels": [32, 16, 8], "convs_per_stage": 2}, AUDIO_SHAPE),  # group-mean shortcuts
    ("bcnn2d", {"channels": [24, 16], "norm": "example", "floor_db": 30.0}, AUDIO_SHAPE),  # conv shortcut
    ("bcnn2d", {"channels": [16, 33, 64], "learn_threshold": True}, AUDIO_SHAPE),  # affine before the sign
    ("bcnn2d", {"channels": [16, 33, 64], "learn_threshold": True, "stream_prelu": True}, AUDIO_SHAPE),
    ("cnn2d", {"channels": [8, 16]}, AUDIO_SHAPE),
    # a position-aware head: mean over frequency, a dense layer over (channel, time step)
    ("cnn2d", {"channels": [8, 16], "head": "time"}, AUDIO_SHAPE),
    ("bcnn2d", {"channels": [16, 33], "head": "time"}, AUDIO_SHAPE),
    # the later stages pool frequency only (2x1 max-pools), keeping time steps for the head
    ("cnn2d", {"channels": [8, 16, 8], "head": "time", "time_pools": 1}, AUDIO_SHAPE),
    ("bcnn2d", {"channels": [16, 33, 16], "head": "time", "time_pools": 1}, AUDIO_SHAPE),
]


def build_graph(net: nn.Module, shape) -> bytes:
    return bsnn.to_bytes(lower(net, shape))


def randomize(net: nn.Module, seed: int = 1) -> nn.Module:
    """Random batch-norm statistics and affine parameters (scales of both signs), PReLU slopes."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g))
                m.running_var.copy_(torch.rand(c, generator=g) * 2 + 0.1)
                if m.affine:  # seed 002's batch norms have no learned scale and offset
                    m.weight.copy_(torch.randn(c, generator=g))
                    m.bias.copy_(torch.randn(c, generator=g) * 0.5)
            if getattr(m, "move", None) is not None:  # bcnn2d's learned sign thresholds
                m.move.copy_(torch.randn(m.move.shape, generator=g) * 0.5)
            if isinstance(m, nn.PReLU):  # slopes of both signs
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.5)
    return net.eval()


def make(name, params, shape, seed=0):
    torch.manual_seed(seed)
    return randomize(build_model(name, input_shape=shape, n_classes=6, params=params), seed + 1)


def inputs(shape, n=6, seed=2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if shape == THESIS_SHAPE:  # seed 000's binary images in {0, 1}
        return torch.randint(0, 2, (n, *shape), generator=g).float()
    return torch.randn((n, *shape), generator=g) * 3


def binary_inputs(net: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The float tensor each binary layer with sign inputs receives (before its sign)."""
    seen: dict[str, torch.Tensor] = {}
    hooks = []
    for name, m in net.named_modules():
        if isinstance(m, (BinaryConv1d, BinaryConv2d, BinaryLinear)) and m.mode != "onebit":
            hooks.append(m.register_forward_pre_hook(
                lambda mod, args, name=name: seen.__setitem__(name, args[0])))
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    return seen


def check_logits(out: np.ndarray, ref: np.ndarray, what: str) -> None:
    tol = 1e-4 * (1 + np.abs(ref).max())
    err = np.abs(out - ref).max()
    assert err <= tol, f"{what}: logits differ by {err:.3g} > {tol:.3g}"
    top2 = np.sort(ref, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > tol
    assert (out.argmax(1) == ref.argmax(1))[clear].all(), f"{what}: labels differ"


def check_bits(eng: engine.Engine, net: nn.Module, x: torch.Tensor, what: str) -> int:
    """Compare the ±1 input of every binary layer; returns how many layers were checked."""
    feeds = binary_inputs(net, x)
    producer = {}
    checked = 0
    for i in range(len(x)):
        trace = eng.trace(x[i].numpy())
        for info, _ in trace:
            if info.type == "binary_conv2d":
                layer = info.name.split("+")[0]
                if layer not in feeds:
                    continue
                src_info, bits = max(((o, v) for o, v in trace[:info.index] if o.out == info.in0),
                                     key=lambda t: t[0].index)
                t = feeds[layer][i]
                t = t.reshape(bits.shape[2], bits.shape[0], bits.shape[1]) if t.dim() == 1 else t
                t = t.permute(1, 2, 0).numpy() if t.dim() == 3 else t.reshape(bits.shape)
                want = np.where(t < 0, -1, 1)
                diff = bits != want
                if src_info.type == "pack":  # a sign of floats: rounding may flip values at 0
                    near = np.abs(t) <= 1e-5 * max(1.0, np.abs(t).max())
                    assert not (diff & ~near).any(), f"{what}: sign bits of '{layer}' differ"
                else:  # thresholds and bit max-pools: exact
                    assert not diff.any(), f"{what}: {diff.sum()} threshold bits of '{layer}' differ"
                producer[layer] = src_info.type
                checked += 1
    return checked


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("name,params,shape", CASES, ids=lambda v: str(v))
def test_engine_matches_pytorch(name, params, shape):
    net = make(name, params, shape)
    data = build_graph(net, shape)
    x = inputs(shape)
    with torch.no_grad():
        ref = net(x).numpy()
    n_binary = sum(isinstance(m, (BinaryConv2d, BinaryLinear)) and m.mode != "onebit" for m in net.modules())
    for isa in ISAS:
        eng = engine.loads(data, isa=isa)
        check_logits(eng.predict(x.numpy()), ref, f"{name} {params} on {isa}")
    checked = check_bits(engine.loads(data), net, x[:2], f"{name} {params}")
    assert checked == 2 * n_binary


def test_thresholds_fold_batch_norm_and_pool_into_bits():
    """thesis blocks become one binary conv with bit output + a bit max-pool; no float in between."""
    net = make("thesis", {"binary_layers": 3, "pool": [1], "activation": "relu"}, THESIS_SHAPE)
    eng = engine.loads(build_graph(net, THESIS_SHAPE))
    types = [(o.type, o.bits) for o in eng.ops]
    assert types == [("input", False), ("affine", False), ("conv2d", False), ("affine", False),
                     ("pack", True), ("binary_conv2d", True), ("maxpool2d", True), ("binary_conv2d", True),
                     ("binary_conv2d", False), ("activation", False), ("affine", False), ("linear", False),
                     ("output", False)]
    assert eng.ops[5].name == "binary.0.0+binary.0.1+binary.0.2+sign"


def test_negative_batch_norm_scale_flips_the_channel():
    torch.manual_seed(0)
    net = build_model("thesis_binarynet5", input_shape=THESIS_SHAPE, n_classes=3).eval()
    randomize(net)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(-m.weight.abs())  # every channel decreasing
    x = inputs(THESIS_SHAPE)
    with torch.no_grad():
        ref = net(x).numpy()
    eng = engine.loads(build_graph(net, THESIS_SHAPE))
    check_logits(eng.predict(x.numpy()), ref, "all-negative batch-norm scales")
    assert check_bits(eng, net, x[:1], "flipped") == 5


def test_unsupported_layers_raise_export_error():
    net = make("thesis", {"input_scale": True}, THESIS_SHAPE)
    with pytest.raises(ExportError, match=r"binary\.0\.0.*input scale K"):
        build_graph(net, THESIS_SHAPE)
    with pytest.raises(ExportError, match=r"'1' \(torch.nn.modules.activation.GELU\) has no lowering"):
        build_graph(nn.Sequential(nn.Conv2d(1, 4, 3), nn.GELU()), (1, 8, 8))
    with pytest.raises(ExportError, match="padding_mode='reflect'"):
        build_graph(nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, padding_mode="reflect")), (2, 8, 8))
    with pytest.raises(ExportError, match="flattened"):
        build_graph(nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.BatchNorm1d(144)).eval(), (1, 8, 8))
    with pytest.raises(ExportError, match="logits"):
        build_graph(nn.Sequential(nn.Conv2d(1, 4, 3)), (1, 8, 8))


@pytest.mark.parametrize("name", list(MODELS))
def test_every_registered_model_runs_in_the_engine(name):
    """timm's list_models pattern: a new family is covered (or declared not exportable) automatically."""
    entry = model_entry(name)
    if entry.not_exportable:
        pytest.skip(f"declared not exportable: {entry.not_exportable}")
    torch.manual_seed(0)
    net = randomize(build_model(name, input_shape=entry.example_input, n_classes=5), 1)
    x = torch.randn((3, *entry.example_input), generator=torch.Generator().manual_seed(5)) * 2
    with torch.no_grad():
        ref = net(x).numpy()
    data = build_graph(net, entry.example_input)
    check_logits(engine.loads(data).predict(x.numpy()), ref, name)


def test_sequential_conv1d_model_exports():
    """A 1-D binary stack (raw-audio style) through the generic nn.Sequential path."""
    torch.manual_seed(3)
    net = randomize(nn.Sequential(
        nn.Conv1d(2, 16, 9, stride=4, padding=4, bias=False), nn.BatchNorm1d(16),
        BinaryConv1d(16, 33, 5, padding=2, bias=False), nn.BatchNorm1d(33), nn.MaxPool1d(3, 2),
        BinaryConv1d(33, 64, 3, stride=2, bias=False), nn.BatchNorm1d(64), nn.ReLU(),
        nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(64, 5)))
    x = torch.randn(4, 2, 400)
    with torch.no_grad():
        ref = net(x).numpy()
    data = build_graph(net, (2, 400))
    for isa in ISAS:
        check_logits(engine.loads(data, isa=isa).predict(x.numpy()), ref, f"conv1d stack on {isa}")


def test_prelu_exports_per_channel_and_shared():
    """A per-channel PReLU on a float map, and a shared-slope one folded into a sign threshold."""
    torch.manual_seed(4)
    net = randomize(nn.Sequential(
        nn.Conv2d(1, 12, 3, padding=1, bias=False), nn.BatchNorm2d(12), nn.PReLU(12),
        BinaryConv2d(12, 20, 3, padding=1, bias=False), nn.BatchNorm2d(20), nn.PReLU(),
        BinaryConv2d(20, 8, 3, bias=False), nn.BatchNorm2d(8), nn.PReLU(8),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)))
    with torch.no_grad():
        net[5].weight.fill_(0.3)  # monotone, so it folds into the next sign's threshold
    x = torch.randn(5, 1, 9, 11) * 2
    with torch.no_grad():
        ref = net(x).numpy()
    data = build_graph(net, (1, 9, 11))
    types = [o.type for o in engine.loads(data).ops]
    assert types.count("activation") == 2  # the shared-slope PReLU is inside a threshold
    for isa in ISAS:
        check_logits(engine.loads(data, isa=isa).predict(x.numpy()), ref, f"PReLU stack on {isa}")
    with pytest.raises(ExportError, match="3 slopes for 12 channels"):
        build_graph(nn.Sequential(nn.Conv2d(1, 12, 3), nn.PReLU(3)), (1, 8, 8))


# ---- real audio through the front end -----------------------------------------------------------

def _classifier(recipe_name: str, model: dict | None, tmp_path, labels):
    from bitsound.config import parse_recipe, read_yaml
    from bitsound.modelfile import build_net, save_model
    from bitsound.recipes import _shipped

    data = read_yaml(_shipped()[recipe_name])
    if model is not None:
        data["model"] = model
    recipe = parse_recipe(data, source=recipe_name)
    torch.manual_seed(0)
    net = randomize(build_net(recipe, len(labels)))
    save_model(tmp_path / "model.pt", recipe=recipe, labels=labels, net=net)
    out = export_packed(tmp_path / "model.pt", tmp_path / "model.bsnn")
    return tmp_path / "model.pt", out


def _compare_files(model_pt, bsnn, files):
    from bitsound.engine.classifier import load_classifier
    from bitsound.experiment import predict_files
    from bitsound.modelfile import load_model

    torch_rows = predict_files(load_model(model_pt), files)
    eng = load_classifier(bsnn)
    engine_rows = predict_files(eng, files)
    assert eng.labels == load_model(model_pt).labels
    for a, b in zip(torch_rows, engine_rows, strict=True):
        pa = np.array(list(a["probabilities"].values()))
        pb = np.array(list(b["probabilities"].values()))
        assert np.abs(pa - pb).max() < 1e-4, a["file"]
        top2 = np.sort(pa)[-2:]
        if top2[1] - top2[0] > 1e-4:
            assert a["label"] == b["label"], a["file"]
    return len(torch_rows)


DATA = __import__("pathlib").Path(__file__).resolve().parents[1].parent / "shared" / "data"


def test_thesis_xnor_recipe_same_labels_on_real_clips(tmp_path):
    esc = DATA / "esc10"
    files = sorted(esc.glob("*/*.ogg"))[::16]
    if not files:
        pytest.skip(f"no ESC-10 clips under {esc}")
    model_pt, bsnn = _classifier("thesis-xnor", None, tmp_path, ["bird", "no_bird"])
    assert _compare_files(model_pt, bsnn, [str(f) for f in files]) == len(files)


@pytest.mark.parametrize("recipe", ["digits-xnor", "digits-xnor-kd"])
def test_digits_binary_recipe_same_labels_on_real_clips(tmp_path, recipe):
    fsdd = DATA / "fsdd" / "recordings"
    files = sorted(fsdd.glob("*.wav"))[::40]
    if not files:
        pytest.skip(f"no FSDD recordings under {fsdd}")
    model_pt, bsnn = _classifier(recipe, None, tmp_path, [str(d) for d in range(10)])
    assert _compare_files(model_pt, bsnn, [str(f) for f in files]) == len(files)
