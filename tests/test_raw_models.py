"""Seed 001's ACDNet family and seed 004's 1-D CNNs: layer lists, binary layers, bad input, the
seed-001 FLOP count, and held-out scoring every N epochs (``train.validate_every``)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from bitsound.complexity import complexity_report
from bitsound.config import TrainConfig
from bitsound.errors import ConfigError
from bitsound.models import build_model
from bitsound.models.acdnet import ACDNet, pool_plan
from bitsound.models.wavecnn import BasicBlock1d
from bitsound.train import ClassificationTask, fit

ACDNET_FAMILY = ("acdnet", "mini-acdnet", "micro-acdnet", "xacdnet", "xmini-acdnet", "xmicro-acdnet")


def weight_layers(net: nn.Module) -> list[nn.Module]:
    return [m for m in net.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))]


def shapes_after(net: nn.Module, x: torch.Tensor, kinds) -> list[tuple[int, ...]]:
    shapes: list[tuple[int, ...]] = []
    handles = [m.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[1:])))
               for m in net.modules() if isinstance(m, kinds)]
    with torch.no_grad():
        net.eval()(x)
    for h in handles:
        h.remove()
    return shapes


def test_pool_plan_is_the_authors():
    assert pool_plan(151) == [2, 2, 2, 2, 2, 4]
    assert pool_plan(64) == [2, 2, 2, 2, 2, 2]
    assert pool_plan(20) == [2, 2, 2, 2, 1, 1]
    assert pool_plan(1) == [1] * 6


def test_acdnet_layer_list_on_the_authors_input():
    net = build_model("acdnet", input_shape=(1, 30225), n_classes=50)
    x = torch.randn(2, 1, 30225)
    # SFEB: two strided 1-D convolutions, then 10-ms frames (pool 50 at 20 kHz)
    assert shapes_after(net.sfeb, x, (nn.Conv1d, nn.MaxPool1d)) == [(8, 15109), (64, 7553), (64, 151)]
    # TFEB on the (1, 64, 151) map: five 2x2 pools, then 2x4 average pooling
    pools = shapes_after(net, x, (nn.MaxPool2d, nn.AvgPool2d))
    assert pools == [(32, 32, 75), (64, 16, 37), (128, 8, 18), (256, 4, 9), (512, 2, 4), (50, 1, 1)]
    convs = [m for m in weight_layers(net) if not isinstance(m, nn.Linear)]
    assert [m.out_channels for m in convs] == [8, 64, 32, 64, 64, 128, 128, 256, 256, 512, 512, 50]
    assert all(m.bias is None for m in convs)
    assert net(x).shape == (2, 50)


def test_micro_acdnet_keeps_48_maps_before_the_classifier():
    net = build_model("micro-acdnet", input_shape=(1, 30225), n_classes=10)
    layers = weight_layers(net)
    assert [m.out_channels for m in layers[:-1]] == [7, 20, 10, 14, 22, 31, 35, 41, 51, 67, 69, 48]
    assert (layers[-1].in_features, layers[-1].out_features) == (48, 10)
    # 20 SFEB maps: the fifth and sixth pools leave the height alone
    pools = shapes_after(net, torch.randn(1, 1, 30225), (nn.MaxPool2d, nn.AvgPool2d))
    assert pools[-2:] == [(69, 1, 4), (48, 1, 1)]


@pytest.mark.parametrize("name", ACDNET_FAMILY)
def test_xnor_twins_binarize_all_but_the_first_and_last_layer(name):
    net = build_model(name, input_shape=(1, 30225), n_classes=10)
    layers = weight_layers(net)
    binary = [getattr(m, "weight_bits", 32) == 1 and getattr(m, "input_bits", 32) == 1 for m in layers]
    if name.startswith("x"):
        assert binary == [False] + [True] * 11 + [False]
        # XNOR-Net's block: batch-norm (the sign's threshold) right before each binary conv
        modules = list(net.sfeb) + list(net.tfeb)
        for i, m in enumerate(modules):
            if getattr(m, "weight_bits", 32) == 1:
                assert isinstance(modules[i - 1], (nn.BatchNorm1d, nn.BatchNorm2d))
                assert modules[i - 1].num_features == m.in_channels
                assert isinstance(modules[i + 1], nn.ReLU)
    else:
        assert not any(binary)


def test_acdnet_refuses_bad_input_with_the_rule():
    with pytest.raises(ConfigError, match="waveform of shape"):
        ACDNet(input_shape=(1, 40, 101), n_classes=10)
    with pytest.raises(ConfigError, match="11 values"):
        ACDNet(input_shape=(1, 30225), n_classes=10, channels=[8, 64, 32])
    with pytest.raises(ConfigError, match="multiple of 400 Hz"):
        ACDNet(input_shape=(1, 30225), n_classes=10, sample_rate=22050)
    with pytest.raises(ConfigError, match="at least 213 samples"):
        ACDNet(input_shape=(1, 100), n_classes=10)
    with pytest.raises(ConfigError, match=r"model\.params\.channels"):
        build_model("acdnet", input_shape=(1, 30225), n_classes=10, params={"channels": [8] * 13})
    with pytest.raises(ConfigError, match=r"model\.params\.mode"):
        build_model("acdnet", input_shape=(1, 30225), n_classes=10, params={"mode": "ternary"})


def test_acdnet_sample_rate_must_be_the_recipes():
    from bitsound.config import parse_recipe
    from bitsound.modelfile import build_net

    def recipe(audio_rate, model_rate):
        return parse_recipe({"name": "t", "data": {"spec": "synthetic"}, "frontend": {"kind": "raw"},
                             "audio": {"sample_rate": audio_rate, "clip_seconds": 1.51125},
                             "model": {"name": "acdnet", "params": {"sample_rate": model_rate,
                                                                   "channels": [4, 8] + [4] * 9}}})

    # 16 kHz audio with the default 20 kHz pooling would build (a multiple of 400) but pool 12.5-ms frames
    with pytest.raises(ConfigError, match=r"model\.params\.sample_rate=20000 but audio\.sample_rate=16000"):
        build_net(recipe(16000, 20000), 10)
    assert build_net(recipe(16000, 16000), 10)(torch.zeros(1, 1, 24180)).shape == (1, 10)


@pytest.mark.parametrize(("name", "convs"), [("wavecnn-a", 4), ("wavecnn-b", 5)])
def test_wave_vgg_blocks(name, convs):
    net = build_model(name, input_shape=(2, 180000), n_classes=3)
    layers = weight_layers(net)
    assert len(layers) == convs + 1
    first = layers[0]
    assert (first.in_channels, first.out_channels, first.kernel_size, first.stride) == (2, 16, (64,), (4,))
    assert all(m.kernel_size == (4,) for m in layers[1:-1])
    assert layers[-1].bias is None and layers[-1].out_features == 3
    assert net(torch.randn(2, 2, 180000)).shape == (2, 3)


@pytest.mark.parametrize(("name", "blocks"), [("waveresnet-c", [3, 4, 3]), ("waveresnet-d", [3, 3, 3])])
def test_wave_resnet_modules(name, blocks):
    net = build_model(name, input_shape=(2, 18000), n_classes=3)
    stem = net.stem[0]
    assert (stem.in_channels, stem.out_channels, stem.kernel_size, stem.stride) == (2, 32, (64,), (4,))
    found = [m for m in net.body if isinstance(m, BasicBlock1d)]
    assert len(found) == sum(blocks)
    firsts = [0, blocks[0], blocks[0] + blocks[1]]
    for i, block in enumerate(found):
        # stride 4 and a 1x1 convolution shortcut at each module's first block, identity elsewhere
        assert block.conv1.stride == ((4,) if i in firsts else (1,))
        assert isinstance(block.shortcut, nn.Sequential if i in firsts else nn.Identity)
    assert [b.conv2.out_channels for b in found] == [32] * blocks[0] + [64] * blocks[1] + [128] * blocks[2]
    assert not any(isinstance(m, (nn.MaxPool1d, nn.MaxPool2d)) for m in net.modules())
    x = torch.randn(2, 2, 18000)
    assert shapes_after(net, x, nn.AdaptiveAvgPool1d) == [(128, 1)]
    assert net(x).shape == (2, 3)


def test_wave_models_refuse_bad_input():
    with pytest.raises(ConfigError, match="too short"):
        build_model("wavecnn-b", input_shape=(2, 2000), n_classes=3)
    with pytest.raises(ConfigError, match="waveform of shape"):
        build_model("waveresnet-c", input_shape=(2, 40, 100), n_classes=3)
    with pytest.raises(ConfigError, match="one entry per module"):
        build_model("waveresnet-c", input_shape=(2, 18000), n_classes=3, params={"blocks": [1, 1]})


def test_seed_001_flops_count_activations_and_pooling_reads():
    model = nn.Sequential(nn.Conv1d(1, 4, 3, bias=True), nn.BatchNorm1d(4), nn.ReLU(), nn.MaxPool1d(2),
                          nn.Flatten(), nn.Linear(16, 3), nn.Softmax(dim=-1))
    report = complexity_report(model, (1, 10))
    conv = 4 * 8 * 3 + 4 * 8  # weight MACs and bias adds of 8 outputs per map
    relu, pool, linear, softmax = 4 * 8, 4 * 4 * 2, 16 * 3 + 3, 3
    assert report["flops_seed001"]["x"] == conv + relu + pool + linear + softmax
    # batch-norm folds into the convolution: nothing in the seed's count, 2 per channel in MACs
    assert report["macs"] == conv + 8 + linear


def test_validate_every_scores_every_n_epochs_and_the_last(tmp_path):
    torch.manual_seed(0)
    x, y = torch.randn(40, 6), torch.arange(40) % 2
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
    calls = []

    def validate(m):
        calls.append(len(calls))
        return {"accuracy": float((m(x).argmax(1) == y).float().mean())}

    cfg = TrainConfig(epochs=5, batch_size=8, validate_every=2)
    result = fit(model=model, task=ClassificationTask(), train_x=x, train_y=y, cfg=cfg, out_dir=tmp_path,
                 validate=validate, show_progress=False)
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [("val_accuracy" in r) for r in log] == [False, True, False, True, True]
    assert len(calls) == 3 and result.epochs_run == 5
    assert result.best_epoch in (2, 4, 5)  # the kept epoch is a scored one
