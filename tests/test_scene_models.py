"""Seed 002's mcdonnell-asc and seed 003's BC-ResNet-ASC: structure, the seeds' numbers, the
frequency-wise normalisation layers against hand-written references, and their export.

The seeds' numbers come from the CLI (``bitsound complexity --recipe NAME --json``, untrained):
3,987,000 one-bit weights and 486.69 KB for scenes3-mcdonnell (3 classes), 8.1 k and 315 k
parameters for the BC-ResNet-ASC recipes with TAU 2020's 10 classes.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from bitsound import engine
from bitsound.cli import main
from bitsound.errors import ConfigError, ExportError
from bitsound.export import bsnn
from bitsound.graph.lower import lower
from bitsound.models import build_model
from bitsound.models.bcresnet import BCResNetASC
from bitsound.models.mcdonnell import McDonnellASC, ResidualBlock
from bitsound.nn import BinaryConv2d
from bitsound.nn.freqnorm import FixedPCEN, GlobalFreqNorm, ResNorm, SubSpectralNorm
from bitsound.train.datastats import collect_data_statistics


def _cli_json(capsys, *args) -> dict:
    assert main([*args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


# ------------------------------------------------------------------------------ seed numbers

def test_mcdonnell_recipe_reports_the_seed_binary_weights_and_kilobytes(capsys):
    report = _cli_json(capsys, "complexity", "--recipe", "scenes3-mcdonnell", "--classes", "3")
    assert report["binary_weights"] == 3_987_000
    assert f"{report['kb']['dcase2020']:.2f}" == "486.69"
    convs = [layer for layer in report["layers"] if layer["type"] == "BinaryConv2d"]
    assert len(convs) == 36 and all(layer["bits_per_weight"] == 1 and layer["input_bits"] == 32
                                    for layer in convs)
    # batch norm with learned scale and offset: the two input ones (2 channels) and the output one
    assert report["params"] - report["binary_weights"] == 2 * 2 * 2 + 2 * 3


@pytest.mark.parametrize("recipe,expected", [("scenes-bcresnet-1", "8.1 k"), ("scenes-bcresnet-8", "315 k")])
def test_bcresnet_recipes_report_the_seed_parameter_counts(capsys, recipe, expected):
    report = _cli_json(capsys, "complexity", "--recipe", recipe, "--classes", "10")
    params = report["params"]
    shown = f"{params / 1000:.1f} k" if params < 10_000 else f"{round(params / 1000)} k"
    assert shown == expected, params


# ------------------------------------------------------------------------------ mcdonnell-asc

def test_mcdonnell_layers_follow_the_authors_code():
    torch.manual_seed(0)
    net = McDonnellASC(input_shape=(2, 256, 40), n_classes=3)
    convs = [m for m in net.modules() if isinstance(m, BinaryConv2d)]
    assert len(convs) == 36 and all(m.mode == "onebit" and m.bias is None for m in convs)
    for m in convs:  # eqn. 1: sqrt(2 / (F^2 C_in))
        assert math.isclose(float(m.weight_scale()), math.sqrt(2 / (m.kernel_size[0] ** 2 * m.in_channels)),
                            rel_tol=1e-6)
    path_convs = [m for m in net.low.modules() if isinstance(m, BinaryConv2d)]
    assert len(path_convs) == 17
    assert [m.out_channels for m in path_convs] == [26] * 5 + [52] * 4 + [104] * 4 + [208] * 4
    assert [m.stride for m in path_convs if m.stride != (1, 1)] == [(1, 2)] * 4  # time only
    learned = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d) and m.affine]
    assert learned == [net.low.entry.bn, net.high.entry.bn, net.head[2]]
    # no downsampling in frequency: each path keeps 128 bins, time goes 40 -> 20 -> 10 -> 5 -> 3
    x = torch.randn(2, 2, 256, 40)
    assert net.low(x[:, :, :128]).shape == (2, 208, 128, 3)
    assert net(x).shape == (2, 3)


def test_zero_padded_shortcut_is_the_pooled_input_then_zeros():
    torch.manual_seed(1)
    block = ResidualBlock(6, 12, downsample=True, bn_momentum=0.1).eval()
    block.conv2.register_forward_hook(lambda mod, args, out: torch.zeros_like(out))  # keep the shortcut alone
    x = torch.randn(2, 6, 5, 9)
    out = block(x)
    pooled = nn.AvgPool2d(3, stride=(1, 2), padding=1, count_include_pad=False)(x)
    assert torch.allclose(out[:, :6], pooled) and (out[:, 6:] == 0).all()
    assert out.shape == (2, 12, 5, 5)


def test_swap_average_is_the_mean_over_both_channel_orders_at_inference():
    torch.manual_seed(2)
    net = McDonnellASC(input_shape=(2, 64, 16), n_classes=4, width=4, head_channels=8).eval()
    x = torch.randn(3, 2, 64, 16)
    with torch.no_grad():
        both = (net.logits(x) + net.logits(x.flip(1))) / 2
        assert torch.allclose(net(x), both, atol=1e-6)
        net.swap_average = False
        assert torch.allclose(net(x), net.logits(x))
    with pytest.raises(ConfigError, match="swap_average"):
        McDonnellASC(input_shape=(1, 64, 16), n_classes=3)


# ------------------------------------------------------------------------------ BC-ResNet-ASC

def test_bcresnet_follows_table_1():
    torch.manual_seed(3)
    net = BCResNetASC(input_shape=(1, 256, 40), n_classes=10, base_channels=10).eval()
    shapes = []
    for stage in net.stages:
        stage.register_forward_hook(lambda mod, args, out: shapes.append(tuple(out.shape[1:])))
    with torch.no_grad():
        assert net(torch.randn(2, 1, 256, 40)).shape == (2, 10)
    # stages 1 and 2 end in a 2x2 max-pool; channels c, 1.5c, 2c, 2.5c
    assert shapes == [(10, 64, 10), (15, 32, 5), (20, 32, 5), (25, 32, 5)]
    assert sum(len(stage) for stage in net.stages) - 2 - 4 == 9  # blocks (minus pools and norms)
    assert [type(m).__name__ for m in net.modules() if isinstance(m, ResNorm)] == ["ResNorm"] * 5


@pytest.mark.parametrize("norm,kinds", [
    ("resnorm", ["ResNorm"] * 5), ("resnorm_input", ["ResNorm"]), ("freq_in", ["ResNorm"] * 5),
    ("global_freq", ["GlobalFreqNorm"]), ("pcen", ["FixedPCEN"]), ("none", [])])
def test_table_3_variants_place_their_modules(norm, kinds):
    net = build_model("bcresnet-asc-1", input_shape=(1, 64, 20), n_classes=3, params={"norm": norm})
    found = [type(m).__name__ for m in net.modules() if isinstance(m, (ResNorm, GlobalFreqNorm, FixedPCEN))]
    assert found == kinds
    lams = {m.lam for m in net.modules() if isinstance(m, ResNorm)}
    assert lams <= ({0.0} if norm == "freq_in" else {0.1})
    assert net(torch.randn(2, 1, 64, 20)).shape == (2, 3)


def test_bcresnet_refuses_what_it_cannot_build():
    with pytest.raises(ConfigError, match="divisible by 32"):
        build_model("bcresnet-asc-1", input_shape=(1, 40, 20), n_classes=3)
    with pytest.raises(ConfigError, match="lam"):
        build_model("bcresnet-asc-1", input_shape=(1, 64, 20), n_classes=3,
                    params={"norm": "freq_in", "lam": 0.2})


def test_pcen_hop_must_be_the_front_ends():
    from bitsound.config import parse_recipe
    from bitsound.modelfile import build_net

    def recipe(norm, hop_length, **params):
        return parse_recipe({"name": "t", "data": {"spec": "synthetic"},
                             "audio": {"sample_rate": 16000, "clip_seconds": 0.5},
                             "frontend": {"kind": "logmel", "n_mels": 64, "n_fft": 1024,
                                          "hop_length": hop_length},
                             "model": {"name": "bcresnet-asc-1", "params": {"norm": norm, **params}}})

    # the default 30 ms is the seed's hop, 480 samples at 16 kHz; 512 samples are 32 ms
    assert isinstance(build_net(recipe("pcen", 480), 3).input_norm, FixedPCEN)
    with pytest.raises(ConfigError, match=r"hop_seconds=0\.03 but .* 512 / 16000 = 0\.032 s"):
        build_net(recipe("pcen", 512), 3)
    assert build_net(recipe("pcen", 512, hop_seconds=0.032), 3).input_norm.hop_seconds == 0.032
    build_net(recipe("resnorm", 512), 3)  # only the PCEN smoother uses the hop


# ------------------------------------------------------------------------------ normalisation layers

def test_resnorm_is_lambda_x_plus_frequency_instance_norm():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 5, 8, 11, generator=g) * 3 + 2
    xn = x.double().numpy()
    mean = xn.mean(axis=(1, 3), keepdims=True)  # over channels and time, per example and frequency
    var = ((xn - mean) ** 2).mean(axis=(1, 3), keepdims=True)
    freq_in = (xn - mean) / np.sqrt(var + 1e-5)
    assert np.allclose(ResNorm(0.1)(x).numpy(), 0.1 * xn + freq_in, atol=1e-5)
    plain = ResNorm(0.0)(x).double().numpy()
    assert np.allclose(plain.mean(axis=(1, 3)), 0, atol=1e-6)
    assert np.allclose(plain.var(axis=(1, 3)), 1, atol=1e-3)
    with pytest.raises(ConfigError, match="lambda"):
        ResNorm(-1.0)


def test_subspectral_norm_normalises_each_sub_band_and_exports_as_a_frequency_map():
    torch.manual_seed(5)
    ssn = SubSpectralNorm(3, 4)
    x = torch.randn(6, 3, 16, 7) * torch.arange(1, 17).view(1, 1, 16, 1)  # a scale per bin
    out = ssn(x)  # training mode: batch statistics per (channel, sub-band of 4 bins)
    bands = out.reshape(6, 3, 4, 4, 7)
    assert torch.allclose(bands.mean(dim=(0, 3, 4)), torch.zeros(3, 4), atol=1e-5)
    assert torch.allclose(bands.var(dim=(0, 3, 4), unbiased=False), torch.ones(3, 4), atol=1e-3)
    with torch.no_grad():
        ssn.bn.running_mean.normal_()
        ssn.bn.running_var.uniform_(0.5, 2)
        ssn.bn.weight.normal_()
    ssn.eval()
    scale, bias = ssn.freq_affine(16)
    manual = x.double() * scale.t().reshape(1, 3, 16, 1) + bias.t().reshape(1, 3, 16, 1)
    assert torch.allclose(ssn(x).double(), manual, atol=1e-5)


def test_global_freq_norm_accumulates_the_statistics_it_collects():
    g = torch.Generator().manual_seed(6)
    norm = GlobalFreqNorm(5)
    scale = torch.arange(1, 6).view(1, 1, 5, 1)
    batches = [torch.randn(n, 2, 5, 9, generator=g) * scale + 3 for n in (4, 7, 2)]
    norm.train()(batches[0])
    assert not norm.has_statistics  # training batches are not the data's statistics
    norm.collecting = True
    for b in batches:
        norm(b)
    norm.collecting = False
    every = torch.cat(batches).double()
    assert torch.allclose(norm.mean.double(), every.mean(dim=(0, 1, 3)), atol=1e-5)
    assert torch.allclose(norm.var.double(), every.var(dim=(0, 1, 3), unbiased=False), atol=1e-4)
    before = norm.mean.clone()
    out = norm(every.float())
    assert torch.equal(norm.mean, before)  # training mode does not update
    assert torch.allclose(out.double().mean(dim=(0, 1, 3)), torch.zeros(5, dtype=torch.float64), atol=1e-5)


def test_the_loop_measures_global_freq_norm_on_the_plain_training_features(tmp_path):
    from bitsound.audio.augment import FeatureAugment
    from bitsound.config import AugmentConfig, TrainConfig
    from bitsound.train import ClassificationTask, fit

    g = torch.Generator().manual_seed(3)
    x = torch.randn(24, 1, 8, 10, generator=g) * torch.arange(1, 9).view(1, 1, 8, 1) + 2
    y = torch.arange(24) % 3
    norm = GlobalFreqNorm(8)
    net = nn.Sequential(norm, nn.Flatten(), nn.Linear(80, 3))
    # SpecAugment zeroes bands and frames and mixup blends pairs: neither is the data
    masks = AugmentConfig(freq_masks=2, freq_mask_width=0.5, time_masks=2, time_mask_width=0.5)
    augment = FeatureAugment(masks, input_kind="logmel")
    fit(model=net, task=ClassificationTask(mixup_alpha=0.4), train_x=x, train_y=y, augment=augment,
        cfg=TrainConfig(epochs=2, batch_size=8), out_dir=tmp_path / "a", show_progress=False)
    assert norm.count.item() == 24 * 10  # every example's frames once, not once per epoch
    assert torch.allclose(norm.mean.double(), x.double().mean(dim=(0, 1, 3)), atol=1e-5)
    assert torch.allclose(norm.var.double(), x.double().var(dim=(0, 1, 3), unbiased=False), rtol=1e-4)
    # fine-tuning (a second fit) keeps the statistics the weights were trained with
    before = norm.mean.clone()
    fit(model=net, task=ClassificationTask(), train_x=x[:12] * 3, train_y=y[:12],
        cfg=TrainConfig(epochs=1, batch_size=8), out_dir=tmp_path / "b", show_progress=False)
    assert torch.equal(norm.mean, before)


def test_fixed_pcen_matches_librosa():
    librosa = pytest.importorskip("librosa")
    g = torch.Generator().manual_seed(7)
    logmel = torch.randn(2, 1, 6, 50, generator=g) * 2 - 8
    pcen = FixedPCEN(hop_seconds=0.03)
    ours = pcen(logmel).double().numpy()
    energy = np.exp(logmel.double().numpy() / 2) * 2.0 ** 31
    # librosa's smoother starts from the state (1 - b) * E[0], the steady state we take
    ref = librosa.pcen(energy, sr=1000, hop_length=30, gain=0.98, bias=2.0, power=0.5, time_constant=0.4,
                       eps=1e-6, zi=(1 - pcen.b) * energy[..., :1])
    assert np.allclose(ours, ref, rtol=1e-6, atol=1e-9)


# ------------------------------------------------------------------------------ export

def _randomized(net: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(8)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.randn(m.num_features, generator=g))
    return net.eval()


@pytest.mark.parametrize("norm", ["resnorm", "resnorm_input", "freq_in", "global_freq", "none"])
def test_bcresnet_variants_run_in_the_engine_with_pytorch_logits(norm):
    torch.manual_seed(9)
    net = build_model("bcresnet-asc-1", input_shape=(1, 64, 24), n_classes=4, params={"norm": norm})
    if norm == "global_freq":  # training statistics
        collect_data_statistics(net, torch.randn(8, 1, 64, 24) * 2 + 1, batch_size=4)
        assert net.input_norm.has_statistics
    net = _randomized(net)
    x = torch.randn(3, 1, 64, 24) * 2
    with torch.no_grad():
        ref = net(x).numpy()
    graph = lower(net, (1, 64, 24))
    kinds = {op.kind for op in graph.ops}
    assert "freq_affine" in kinds  # SubSpectralNorm at inference
    assert ("normalize" in kinds) == (norm in ("resnorm", "resnorm_input", "freq_in"))
    out = engine.loads(bsnn.to_bytes(graph)).predict(x.numpy())
    assert np.abs(out - ref).max() <= 1e-4 * (1 + np.abs(ref).max())
    assert (out.argmax(1) == ref.argmax(1)).all()


def test_pcen_variant_names_why_it_does_not_export():
    net = build_model("bcresnet-asc-1", input_shape=(1, 64, 24), n_classes=4, params={"norm": "pcen"}).eval()
    with pytest.raises(ExportError, match="FixedPCEN.*recursive filter"):
        lower(net, (1, 64, 24))


def test_mcdonnell_runs_in_the_engine_on_both_channel_orders():
    torch.manual_seed(10)
    net = _randomized(McDonnellASC(input_shape=(2, 64, 20), n_classes=3, width=5, head_channels=12))
    x = torch.randn(4, 2, 64, 20) * 2
    with torch.no_grad():
        ref = net(x).numpy()
    graph = lower(net, (2, 64, 20))
    kinds = [op.kind for op in graph.ops]
    # the swap (two slices + concat), 1-bit convs on floats, zero-padded shortcuts, late fusion
    assert kinds.count("conv2d") == 2 * 36 and kinds.count("concat") == 1
    assert all(op.params["wdtype"] == 3 for op in graph.ops if op.kind == "conv2d")
    assert any(op.kind == "add" and op.params["mode"] == 1 for op in graph.ops)  # pad shortcut
    for isa in engine.available_isas():
        out = engine.loads(bsnn.to_bytes(graph), isa=isa).predict(x.numpy())
        assert np.abs(out - ref).max() <= 1e-4 * (1 + np.abs(ref).max()), isa
        assert (out.argmax(1) == ref.argmax(1)).all(), isa


@pytest.mark.parametrize("recipe,labels", [
    ("scenes3-mcdonnell", ["indoor", "outdoor", "transportation"]),
    ("scenes-bcresnet-8", ["beach", "bus", "cafe/restaurant", "car", "city_center", "forest_path",
                           "grocery_store", "home", "library", "metro_station", "office", "park",
                           "residential_area", "train", "tram"])])
def test_scene_recipes_same_labels_on_real_clips(tmp_path, recipe, labels):
    from test_engine_models import DATA, _classifier, _compare_files

    files = sorted((DATA / "tut2017-scenes" / "audio").glob("*.flac"))[::97]
    if not files:
        pytest.skip(f"no TUT 2017 scenes under {DATA}")
    model_pt, packed = _classifier(recipe, None, tmp_path, labels)
    assert _compare_files(model_pt, packed, [str(f) for f in files]) == len(files)
