"""The typed graph: one definition of the op codes, lowering of every registered model, file round trips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from nets import randomized  # tests/nets.py
from torch import nn

from bitsound.errors import CheckpointError, ExportError
from bitsound.export import bsnn
from bitsound.export.packed import model_graph
from bitsound.graph import opcodes as oc
from bitsound.graph.ir import Graph
from bitsound.graph.lower import lower, register_lowering
from bitsound.models import MODELS, build_model, model_entry
from bitsound.nn import QuantConv2d, QuantLinear

ENGINE_DIR = Path(__file__).resolve().parents[1] / "src" / "bitsound" / "engine"


def test_c_header_is_generated_from_the_python_definitions():
    header = (ENGINE_DIR / "bsnn_codes.h").read_text()
    assert header == oc.c_header(), (
        "src/bitsound/engine/bsnn_codes.h is stale: run "
        "`python -m bitsound.graph.opcodes > src/bitsound/engine/bsnn_codes.h`")


def test_op_codes_and_names_are_unique():
    assert len({op.code for op in oc.OPS}) == len(oc.OPS)
    assert len({op.name for op in oc.OPS}) == len(oc.OPS)
    assert oc.REC_META not in {op.code for op in oc.OPS}


def registered_models() -> list[str]:
    return list(MODELS)


@pytest.mark.parametrize("name", registered_models())
def test_every_registered_model_lowers_and_round_trips_through_a_bsnn_file(name):
    entry = model_entry(name)
    if entry.not_exportable:
        pytest.skip(f"declared not exportable: {entry.not_exportable}")
    net = randomized(build_model(name, input_shape=entry.example_input, n_classes=5))
    g = lower(net, entry.example_input, meta={"model": name})
    assert g.ops[0].kind == "input" and g.ops[-1].kind == "output"
    assert g.tensors[g.output].dims() == (1, 1, 5)
    again = bsnn.from_bytes(bsnn.to_bytes(g))
    assert again.equals(g)
    assert bsnn.from_bytes(bsnn.to_bytes(again)).equals(g)


def test_binary_convolutions_feeding_signs_output_bits():
    net = randomized(build_model("thesis_xnor5", input_shape=(1, 32, 32), n_classes=3))
    g = lower(net, (1, 32, 32))
    kinds = [op.kind for op in g.ops]
    bconvs = [op for op in g.ops if op.kind == "binary_conv2d"]
    assert kinds.count("pack") == 1  # one sign of the float first layer; the rest are threshold outputs
    assert [op.params["out_mode"] for op in bconvs] == [oc.BOUT_MODES["bits"]] * 4 + [oc.BOUT_MODES["float"]]
    plain = lower(net, (1, 32, 32), optimize=False)
    assert plain.op_counts()["pack"] == 5 and plain.op_counts()["affine"] > g.op_counts()["affine"]


class Gain(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.gain = nn.Parameter(torch.linspace(0.5, 2.0, c))

    def forward(self, x):
        if x.sum() > 0:  # control flow on a value: not traceable
            return x * self.gain.view(1, -1, 1, 1)
        return x


class WithGain(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.gain = Gain(4)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))

    def forward(self, x):
        return self.head(self.gain(self.conv(x)))


def test_a_layer_without_lowering_names_itself_and_how_to_register():
    with pytest.raises(ExportError, match=r"'gain'.*register_lowering\(Gain\)"):
        lower(WithGain().eval(), (1, 8, 8))


def test_a_registered_lowering_plugs_in_without_exporter_changes():
    @register_lowering(Gain)
    def _lower_gain(ctx, m, name, x):
        return ctx.affine(x, m.gain.detach().double().numpy(), 0.0, name=name, source=None)

    try:
        g = lower(WithGain().eval(), (1, 8, 8))
        affine = [op for op in g.ops if op.kind == "affine"]
        assert [op.name for op in affine] == ["gain"]
        np.testing.assert_allclose(affine[0].arrays["scale"], np.linspace(0.5, 2.0, 4), rtol=1e-6)
    finally:
        from bitsound.graph import lower as lower_mod

        del lower_mod._MODULE_LOWERINGS[Gain]


class Mystery(nn.Module):
    def forward(self, x):
        return torch.fft.rfft(x).real


def test_a_function_without_lowering_is_named():
    net = nn.Sequential(nn.Conv1d(2, 3, 3), Mystery(), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(2, 2))
    with pytest.raises(ExportError, match="fft_rfft|rfft"):
        lower(net.eval(), (2, 16))


def test_new_graph_ops_lower_from_pytorch():
    """Grouped/depthwise convs, average pools, slices, concatenation, broadcast adds, permutes, 1-D ops."""

    class Mix(nn.Module):
        def __init__(self):
            super().__init__()
            self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)
            self.pw = nn.Conv2d(4, 8, 1, groups=2)
            self.pool = nn.AvgPool2d(2, ceil_mode=True, count_include_pad=False)
            self.lin = nn.Linear(8, 3)

        def forward(self, x):
            y = self.dw(x)
            low, high = y[:, :, :5], y[:, :, 5:]
            y = torch.cat([high, low], dim=2)
            y = y + y.mean(dim=2, keepdim=True)  # BC-ResNet's broadcast residual
            y = self.pool(self.pw(y).permute(0, 1, 3, 2))
            return self.lin(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))

    g = lower(randomized(Mix()), (4, 10, 7))
    counts = g.op_counts()
    for kind in ("slice", "concat", "add", "permute", "avgpool2d", "conv2d", "global_avg_pool", "linear"):
        assert kind in counts, kind
    assert {op.params["groups"] for op in g.ops if op.kind == "conv2d"} == {4, 2}

    wave = nn.Sequential(nn.Conv1d(2, 6, 9, stride=4, padding=4), nn.BatchNorm1d(6), nn.ReLU(),
                         nn.MaxPool1d(3), nn.AvgPool1d(2), nn.AdaptiveAvgPool1d(1), nn.Flatten(),
                         nn.Linear(6, 4))
    g1 = lower(randomized(wave), (2, 400))
    assert {"conv1d", "maxpool1d", "avgpool1d"} <= set(g1.op_counts())


def test_quantized_layers_lower_to_their_precision():
    net = nn.Sequential(
        QuantConv2d(1, 4, 3, weight_quantizer="mcdonnell_sign"),  # 1-bit weights, float inputs
        QuantConv2d(4, 4, 3, weight_quantizer="fp16"),
        QuantConv2d(4, 4, 1, input_quantizer="ste_sign", weight_quantizer="xnor_sign"),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), QuantLinear(4, 2, weight_quantizer="int8_weight"))
    g = lower(randomized(net), (1, 9, 9))
    convs = [op for op in g.ops if op.kind == "conv2d"]
    assert [op.params["wdtype"] for op in convs] == [oc.WDTYPES["sign"], oc.WDTYPES["f16"]]
    np.testing.assert_allclose(convs[0].arrays["weight_scale"], np.sqrt(2 / 9), rtol=1e-6)
    assert "binary_conv2d" in g.op_counts() and "linear" in g.op_counts()


def test_int8_layers_lower_to_quantize_and_integer_ops():
    net = nn.Sequential(QuantConv2d(2, 3, 3, input_quantizer="int8", weight_quantizer="int8_weight"),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2))
    net.train()
    net(torch.randn(8, 2, 6, 6))  # observe the input range
    g = lower(randomized(net), (2, 6, 6))
    q = [op for op in g.ops if op.kind in ("quantize", "qconv2d")]
    assert [op.kind for op in q] == ["quantize", "qconv2d"]
    assert g.tensors[q[0].output].dtype == "i8"
    w = q[1].arrays["weight"]
    assert w.dtype == np.int8 and np.abs(w).max() == 127  # per-channel symmetric: each row reaches 127


def test_graph_checks_shapes_like_the_engine():
    g = Graph()
    x = g.add("input", [], {"rank": 2, "c": 3, "h": 4, "w": 4})
    with pytest.raises(ExportError, match="affine over 5 channels, input has 3"):
        g.add("affine", [x], {"c": 5}, {"scale": np.ones(5), "bias": np.zeros(5)})
    with pytest.raises(ExportError, match="missing"):
        g.add("slice", [x], {"axis": 0})
    with pytest.raises(ExportError, match="slice 2:9"):
        g.add("slice", [x], {"axis": 0, "start": 2, "stop": 9})


def test_reader_names_the_problem():
    with pytest.raises(CheckpointError, match="bad magic"):
        bsnn.from_bytes(b"not a model at all, certainly not" * 3)
    net = randomized(build_model("cnn2d", input_shape=(1, 8, 8), n_classes=2, params={"channels": [4]}))
    data = bytearray(bsnn.to_bytes(lower(net, (1, 8, 8))))
    data[60] ^= 0xFF
    with pytest.raises(CheckpointError, match="checksum"):
        bsnn.from_bytes(bytes(data))


def test_model_graph_of_a_trained_model_file_keeps_labels_and_shape(tmp_path):
    from bitsound.config import parse_recipe
    from bitsound.modelfile import build_net, save_model

    recipe = parse_recipe({"name": "t", "data": {"spec": "synthetic"}, "audio": {"sample_rate": 8000},
                           "frontend": {"kind": "logmel", "n_mels": 16},
                           "model": {"name": "bcnn2d", "params": {"channels": [8, 8]}}})
    net = randomized(build_net(recipe, 3))
    save_model(tmp_path / "model.pt", recipe=recipe, labels=["a", "b", "c"], net=net)
    g = model_graph(tmp_path / "model.pt")
    assert g.meta["labels"] == ["a", "b", "c"] and g.meta["model"] == "bcnn2d"
    assert tuple(g.meta["feature_shape"]) == (g.tensors[0].c, g.tensors[0].h, g.tensors[0].w)
