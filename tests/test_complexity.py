"""Complexity report: float counts against torchinfo, binary layers by hand, budget violations."""

import io
import json

import pytest
import torch
from rich.console import Console
from torch import nn
from torchinfo import summary

from bitsound.complexity import check_budget, complexity_report, render_report
from bitsound.errors import ConfigError
from bitsound.models import build_model
from bitsound.nn import BinaryConv2d, BinaryLinear


def conv1d_model():
    return nn.Sequential(
        nn.Conv1d(2, 8, 9, stride=2, padding=4), nn.BatchNorm1d(8), nn.ReLU(), nn.MaxPool1d(2),
        nn.Conv1d(8, 8, 3, groups=4, bias=False), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(8, 5))


def grouped_conv2d_model():
    return nn.Sequential(
        nn.Conv2d(4, 8, 3, groups=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, groups=8, stride=2), nn.AvgPool2d(1), nn.Flatten(), nn.Linear(8 * 4 * 3, 3))


def mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 4, bias=False))


FLOAT_MODELS = [
    ("cnn2d", lambda: build_model("cnn2d", input_shape=(1, 40, 101), n_classes=10), (1, 40, 101)),
    ("conv1d", conv1d_model, (2, 200)),
    ("grouped", grouped_conv2d_model, (4, 9, 7)),
    ("mlp", mlp, (4, 5)),
]


@pytest.mark.parametrize("name,make,shape", FLOAT_MODELS, ids=[m[0] for m in FLOAT_MODELS])
def test_float_models_match_torchinfo(name, make, shape):
    torch.manual_seed(0)
    model = make()
    report = complexity_report(model, shape)
    ref = summary(model, input_size=(1, *shape), verbose=0)
    assert report["params"] == ref.total_params
    assert report["macs"] == ref.total_mult_adds
    assert report["bops"] == 0
    assert report["bytes"]["dcase2022"] == 4 * ref.total_params  # every float32 parameter at 4 bytes


def test_conv_and_linear_macs_follow_the_textbook_formula():
    model = nn.Sequential(nn.Conv2d(6, 4, (3, 2), stride=(2, 1), groups=2, bias=False), nn.Flatten(),
                          nn.Linear(4 * 3 * 4, 7, bias=False))
    report = complexity_report(model, (6, 7, 5))
    conv, lin = report["layers"][0], report["layers"][1]
    assert conv["output_shape"] == [4, 3, 4]
    assert conv["macs"] == 4 * 3 * 4 * (6 // 2) * 3 * 2  # C_out H_out W_out C_in/groups kh kw
    assert lin["macs"] == 48 * 7


def binary_report(mode, *, bias=False, stride=1, padding=1, size=(6, 5)):
    layer = BinaryConv2d(64, 64, 3, mode=mode, stride=stride, padding=padding, bias=bias)
    return complexity_report(nn.Sequential(layer), (64, *size))


@pytest.mark.parametrize("mode", ["xnor", "binarynet"])
def test_binary_conv_counts_weight_bits_scales_and_bops(mode):
    report = binary_report(mode)
    scales = 64 if mode == "xnor" else 0
    expected_bytes = 64 * 64 * 9 / 8 + scales * 4
    assert report["bytes"] == {"storage": expected_bytes, "dcase2020": expected_bytes,
                               "dcase2022": expected_bytes}
    assert report["params"] == 64 * 64 * 9 and report["scale_params"] == scales
    assert report["bops"] == 64 * 64 * 9 * 6 * 5 and report["macs"] == 0
    layer = report["layers"][0]
    assert (layer["bits_per_weight"], layer["input_bits"], layer["type"]) == (1, 1, "BinaryConv2d")


def test_binary_conv_with_stride_and_bias():
    report = binary_report("xnor", bias=True, stride=2, padding=0, size=(7, 7))
    assert report["layers"][0]["output_shape"] == [64, 3, 3]
    assert report["bops"] == 64 * 64 * 9 * 3 * 3
    assert report["macs"] == 64 * 3 * 3  # the float bias adds
    assert report["bytes"]["storage"] == 64 * 64 * 9 / 8 + 64 * 4 + 64 * 4


def test_onebit_conv_is_macs_and_stores_no_scale():
    report = binary_report("onebit")
    assert report["bops"] == 0 and report["macs"] == 64 * 64 * 9 * 6 * 5
    assert report["bytes"]["dcase2020"] == 64 * 64 * 9 / 8 and report["scale_params"] == 0


def test_seed_002_one_bit_weights_total_486_69_kb():
    # seed 002: "a total of 3,987,000 binary weights, totalling 486.69KB"
    model = nn.Sequential(BinaryLinear(3987, 1000, mode="onebit", bias=False))
    report = complexity_report(model, (3987,))
    assert report["params"] == 3_987_000
    assert round(report["kb"]["dcase2020"], 2) == 486.69


def test_byte_rules_differ_on_batch_norm_buffers_and_zeros():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, bias=False), nn.BatchNorm2d(4))
    with torch.no_grad():
        model[0].weight.view(-1)[:6] = 0.0
    report = complexity_report(model, (1, 5, 5))
    assert report["params"] == 36 + 8
    assert report["nonzero_params"] == 30 + 4  # BN bias starts at zero, BN weight at one
    assert report["bytes"] == {
        "storage": (36 + 8 + 8) * 4,  # running mean and variance are needed at inference
        "dcase2020": 30 * 4,  # non-zero, batch-norm excluded
        "dcase2022": (36 + 8) * 4,  # all parameters, zeros and batch-norm included
    }


def test_binary_weights_are_never_zero():
    layer = BinaryConv2d(4, 4, 3, mode="binarynet", bias=False)
    with torch.no_grad():
        layer.weight.zero_()  # stored as sign(0) = +1
    report = complexity_report(nn.Sequential(layer), (4, 3, 3))
    assert report["nonzero_params"] == report["params"] == 144
    assert report["bytes"]["dcase2020"] == 144 / 8


def test_seed_001_xnor_flops_formula():
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, bias=False),
        BinaryConv2d(8, 8, 3, padding=1, bias=False),
        BinaryConv2d(8, 8, 3, padding=1, bias=False, mode="binarynet"),
        nn.Flatten(), nn.Linear(8 * 4 * 4, 3, bias=False))
    report = complexity_report(model, (1, 4, 4))
    a, binary, b = 8 * 9 * 16, 8 * 8 * 9 * 16, 128 * 3
    assert (report["macs"], report["bops"]) == (a + b, 2 * binary)
    assert report["flops_seed001"] == {"a": a, "b": b, "x": a + 2 * binary + b,
                                       "flops": a + 2 * binary / 64 + b}


def test_peak_activation_counts_binary_inputs_in_bits():
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), BinaryConv2d(8, 16, 3, padding=1))
    report = complexity_report(model, (1, 10, 10))
    float_layer, binary_layer = report["layers"]
    assert float_layer["activation_bytes"] == 100 * 4 + 800 * 4
    assert binary_layer["activation_bytes"] == 800 // 8 + 1600 * 4
    assert (report["peak_activation_bytes"], report["peak_activation_layer"]) == (6500, "1")


class TwiceAndUnused(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.unused = nn.Linear(4, 2)

    def forward(self, x):
        return self.lin(self.lin(x))


def test_shared_layers_count_params_once_and_macs_per_call():
    report = complexity_report(TwiceAndUnused(), (4,))
    lin, unused = report["layers"]
    assert (lin["name"], lin["calls"], lin["params"], lin["macs"]) == ("lin", 2, 20, 40)
    assert (unused["name"], unused["calls"], unused["macs"], unused["output_shape"]) == ("unused", 0, 0, None)
    assert report["params"] == 30


def test_report_is_json_and_leaves_the_model_alone():
    model = conv1d_model().train()
    before = model[1].running_mean.clone()
    report = complexity_report(model, (2, 200))
    assert model.training and model[1].training
    assert torch.equal(model[1].running_mean, before)
    loaded = json.loads(json.dumps(report))
    for key in ("params", "nonzero_params", "macs", "bops", "bytes", "layers", "flops_seed001"):
        assert key in loaded
    assert set(loaded["bytes"]) == {"storage", "dcase2020", "dcase2022"}
    layer_keys = {"name", "type", "output_shape", "params", "nonzero_params", "bits_per_weight", "bytes",
                  "macs", "bops"}
    assert all(layer_keys <= set(layer) for layer in loaded["layers"])


@pytest.mark.parametrize("shape", [(), (1, 0, 3), (1, 40.0), "1x40", None])
def test_bad_input_shape_is_a_config_error(shape):
    with pytest.raises(ConfigError, match="input_shape"):
        complexity_report(mlp(), shape)


def test_model_on_another_device_is_a_config_error():
    with pytest.raises(ConfigError, match="model.to"):
        complexity_report(mlp(), (4, 5), device="meta")


def test_budgets_report_each_violation_with_its_reason():
    report = binary_report("xnor", bias=True)
    assert check_budget(report, max_kb=500, max_macs=10**9, max_params=10**6) == []
    problems = check_budget(report, max_kb=4, max_macs=100, max_params=1000, rule="dcase2020")
    assert len(problems) == 3
    size, macs, params = problems
    assert "dcase2020" in size and "5.00 KB" in size and "4 KB budget" in size
    assert "1,920 MACs" in macs and "100 MAC budget" in macs and "BOPs" in macs
    assert "36,928 parameters" in params and "1,000" in params


def test_budget_arguments_are_checked():
    report = binary_report("binarynet")
    with pytest.raises(ConfigError, match="storage, dcase2020, dcase2022"):
        check_budget(report, max_kb=1, rule="dcase2019")
    with pytest.raises(ConfigError, match="max_kb"):
        check_budget(report, max_kb=-1)


def test_render_report_prints_layers_and_totals():
    buffer = io.StringIO()
    render_report(complexity_report(grouped_conv2d_model(), (4, 9, 7)), Console(file=buffer, width=200))
    text = buffer.getvalue()
    assert "BatchNorm2d" in text and "total" in text and "dcase2020" in text and "BOPs" in text
