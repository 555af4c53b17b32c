"""Binary model families: seed 000's ``thesis*`` networks and ``bcnn2d`` (the binary twin of cnn2d).

Builds, forward + backward, layer counts of the presets, effective weights measured from the
forward pass (not recomputed from the layer's own formula), overrides and bad parameters.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bitsound.complexity import complexity_report
from bitsound.errors import ConfigError
from bitsound.models import MODELS, build_model
from bitsound.models.binary_cnn import BinaryBlock, ChannelShortcut
from bitsound.nn.layers import BinaryConv2d, BinaryLinear
from bitsound.nn.quantizers import NoQuantizer

THESIS = ["thesis", "thesis_xnor5", "thesis_xnor1", "thesis_binarynet5", "thesis_binarynet1"]
# (name, params, input shape): every model of the two families, bcnn2d in each mode
CASES = [(name, {}, (1, 32, 32)) for name in THESIS] + [
    ("bcnn2d", {"mode": mode, "shortcut": shortcut}, (1, 20, 27))
    for mode in ("xnor", "binarynet", "onebit") for shortcut in (True, False)
]
# preset -> (mode, number of binary conv layers) it claims
PRESET_CLAIMS = {"thesis_xnor5": ("xnor", 5), "thesis_xnor1": ("xnor", 1),
                 "thesis_binarynet5": ("binarynet", 5), "thesis_binarynet1": ("binarynet", 1)}


def _input(shape, batch=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    if shape == (1, 32, 32):  # seed 000's binary images, values in {0, 1}
        return torch.randint(0, 2, (batch, *shape), generator=g).float()
    return torch.randn((batch, *shape), generator=g)


def _binary_layers(model, kind=(BinaryConv2d, BinaryLinear)):
    return [m for m in model.modules() if isinstance(m, kind)]


def effective_weight(layer):
    """The weights the forward pass multiplies its (binarized) inputs by, measured by probing.

    The input quantizer is replaced by the identity (so the layer is linear in its input), the
    padding removed and the bias dropped; feeding the basis vectors of a kernel-sized input,
    one per batch row, then returns the effective weight tensor column by column.
    """
    probe = copy.deepcopy(layer).double()
    probe.input_quantizer = NoQuantizer()
    probe.bias = None
    n_in = probe.weight[0].numel()
    basis = torch.eye(n_in, dtype=torch.float64)
    if isinstance(probe, nn.Conv2d):
        probe.padding = (0, 0)
        basis = basis.reshape(n_in, *probe.weight.shape[1:])
    with torch.no_grad():
        out = probe(basis).reshape(n_in, -1)  # (inputs, outputs)
    return out.T.reshape(probe.weight.shape)


def test_all_binary_models_registered():
    for name in THESIS + ["bcnn2d"]:
        assert name in MODELS


@pytest.mark.parametrize("name,params,shape", CASES, ids=lambda v: str(v))
def test_forward_backward(name, params, shape):
    torch.manual_seed(0)
    model = build_model(name, input_shape=shape, n_classes=4, params=params)
    model.train()
    x = _input(shape)
    out = model(x)
    assert out.shape == (3, 4)
    loss = F.cross_entropy(out, torch.tensor([0, 1, 3]))
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    # the latent weights of every binary layer learn through the straight-through estimator
    for layer in _binary_layers(model):
        assert layer.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(x)).all()


@pytest.mark.parametrize("name,params,shape", CASES, ids=lambda v: str(v))
def test_effective_weights_are_binary(name, params, shape):
    torch.manual_seed(1)
    model = build_model(name, input_shape=shape, n_classes=3, params=params)
    layers = _binary_layers(model)
    assert layers
    for layer in layers:
        w_eff = effective_weight(layer).flatten(1)
        signs = torch.where(layer.weight.detach() >= 0, 1.0, -1.0).double().flatten(1)
        if layer.mode == "binarynet":
            assert torch.equal(w_eff, signs)  # exactly ±1
        elif layer.mode == "xnor":
            for o in range(w_eff.shape[0]):
                values = torch.unique(w_eff[o])
                assert values.numel() <= 2  # exactly two values per output channel: ±alpha_o
                alpha = layer.weight[o].detach().double().abs().mean()
                torch.testing.assert_close(w_eff[o], signs[o] * alpha, rtol=1e-12, atol=0)
        else:  # onebit: ±sqrt(2 / fan_in), one constant for the whole layer
            c = (2.0 / layer.weight[0].numel()) ** 0.5
            torch.testing.assert_close(w_eff, signs * c, rtol=1e-12, atol=0)


@pytest.mark.parametrize("name,params,shape", [c for c in CASES if c[1].get("mode") != "onebit"],
                         ids=lambda v: str(v))
def test_inputs_of_binary_layers_are_binarized(name, params, shape):
    """xnor/binarynet layers see only sign(x): scaling their input by a positive factor changes nothing."""
    torch.manual_seed(2)
    model = build_model(name, input_shape=shape, n_classes=3, params=params).eval()
    for layer in _binary_layers(model):
        assert layer.input_bits == 1 and layer.weight_bits == 1
        n_in = layer.in_channels if isinstance(layer, nn.Conv2d) else layer.in_features
        x = torch.randn(2, n_in, 6, 7) if isinstance(layer, nn.Conv2d) else torch.randn(2, n_in)
        with torch.no_grad():
            torch.testing.assert_close(layer(x), layer(3.7 * x))


@pytest.mark.parametrize("name", list(PRESET_CLAIMS))
def test_thesis_presets_have_the_layers_they_claim(name):
    mode, n_binary = PRESET_CLAIMS[name]
    model = build_model(name, input_shape=(1, 32, 32), n_classes=2)
    convs = _binary_layers(model, BinaryConv2d)
    assert len(convs) == n_binary
    assert all(c.mode == mode for c in convs)
    assert not _binary_layers(model, BinaryLinear)
    weighted = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    # first and last layers in full precision (XNOR-Net convention)
    assert type(weighted[0]) is nn.Conv2d and type(weighted[-1]) is nn.Linear
    assert len(weighted) == n_binary + 2
    # [38]'s sizes: 16 float 3x3 filters, 32 binary 3x3 filters per layer, valid padding
    assert weighted[0].out_channels == 16 and all(c.out_channels == 32 for c in convs)
    side = 30 - 2 * n_binary
    assert weighted[-1].in_features == 32 * side * side
    report = complexity_report(model, (1, 32, 32))
    assert report["bops"] > 0 and report["flops_seed001"]["a"] == 16 * 9 * 30 * 30


def test_thesis_maps_the_binary_image_to_plus_minus_one():
    model = build_model("thesis_xnor1", input_shape=(1, 32, 32), n_classes=2)
    seen = []
    model.first[0].register_forward_hook(lambda m, inp, out: seen.append(inp[0]))
    model.eval()(_input((1, 32, 32), batch=2))
    assert set(torch.unique(seen[0]).tolist()) == {-1.0, 1.0}


def test_preset_params_are_overridden_by_the_recipe():
    model = build_model("thesis_xnor5", input_shape=(1, 32, 32), n_classes=2,
                        params={"binary_layers": 3, "channels": [8, 16, 24], "mode": "binarynet"})
    convs = _binary_layers(model, BinaryConv2d)
    assert [c.out_channels for c in convs] == [8, 16, 24]
    assert all(c.mode == "binarynet" for c in convs)
    # the overridden preset equals the generic family with the same params
    generic = build_model("thesis", input_shape=(1, 32, 32), n_classes=2,
                          params={"binary_layers": 3, "channels": [8, 16, 24], "mode": "binarynet"})
    assert [tuple(p.shape) for p in model.parameters()] == [tuple(p.shape) for p in generic.parameters()]


def test_thesis_chapter4_variants():
    """Added ReLU + TanH after the binary layers, pooling, a binary dense head and dropout."""
    model = build_model("thesis_xnor1", input_shape=(1, 32, 32), n_classes=2, params={
        "activation": ["relu", "tanh"], "pool": [0, 1], "dense_units": 64, "dropout": 0.5})
    block = model.binary[0]
    assert [type(m) for m in block] == [BinaryConv2d, nn.ReLU, nn.Tanh, nn.BatchNorm2d, nn.MaxPool2d]
    assert isinstance(model.first[-1], nn.MaxPool2d)
    dense = _binary_layers(model, BinaryLinear)
    assert len(dense) == 1 and dense[0].in_features == 32 * 6 * 6 and dense[0].out_features == 64
    assert model.head[-2].p == 0.5 and type(model.head[-1]) is nn.Linear
    assert model(_input((1, 32, 32))).shape == (3, 2)
    # three binary layers (Figure 4.9) on the default generic
    assert len(_binary_layers(build_model("thesis", input_shape=(1, 32, 32), n_classes=2,
                                          params={"binary_layers": 3}), BinaryConv2d)) == 3


def test_bcnn2d_layout_mirrors_cnn2d():
    plan = {"channels": [8, 16, 24], "convs_per_stage": 2}
    model = build_model("bcnn2d", input_shape=(1, 40, 101), n_classes=5, params=plan)
    twin = build_model("cnn2d", input_shape=(1, 40, 101), n_classes=5, params=plan)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert type(convs[0]) is nn.Conv2d and all(isinstance(c, BinaryConv2d) for c in convs[1:])
    assert len(convs) == 3 * 2
    twin_convs = [m for m in twin.modules() if isinstance(m, nn.Conv2d)]
    assert [c.weight.shape for c in convs] == [c.weight.shape for c in twin_convs]
    assert type(model.head[-1]) is nn.Linear
    x = torch.randn(2, 1, 40, 101)
    assert model(x).shape == twin(x).shape == (2, 5)


@pytest.mark.parametrize("name", ["cnn2d", "bcnn2d"])
def test_time_pools_keep_the_time_steps_the_time_head_sees(name):
    x = torch.randn(2, 1, 40, 51)
    steps = {}
    for time_pools in (None, 4, 2, 0):
        net = build_model(name, input_shape=(1, 40, 51), n_classes=5,
                          params={"channels": [8, 16, 16, 8], "head": "time", "time_pools": time_pools})
        assert net(x).shape == (2, 5)
        pools = [m for m in net.features if isinstance(m, nn.MaxPool2d)]
        steps[time_pools] = net.features(x).shape[-1]
        assert net.features(x).shape[-2] == 3  # frequency is halved by every stage: 40 -> 3
        assert net.head[-1].in_features == 8 * steps[time_pools]
    assert [m.kernel_size for m in pools] == [(2, 1)] * 4  # time_pools 0: frequency only
    assert steps == {None: 4, 4: 4, 2: 13, 0: 51}


def test_bcnn2d_block_adds_the_real_valued_shortcut():
    torch.manual_seed(3)
    block = BinaryBlock(4, 6, mode="xnor", shortcut=True).eval()
    x = torch.randn(2, 4, 5, 7)
    with torch.no_grad():
        expected = block.bn(block.conv(x)) + torch.cat([x, torch.zeros(2, 2, 5, 7)], dim=1)
        torch.testing.assert_close(block(x), expected)
    plain = BinaryBlock(4, 6, mode="xnor", shortcut=False).eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(x), plain.bn(plain.conv(x)))


def test_channel_shortcut_kinds():
    x = torch.randn(2, 6, 3, 4)
    torch.testing.assert_close(ChannelShortcut(6, 6)(x), x)
    padded = ChannelShortcut(6, 9)(x)
    assert torch.equal(padded[:, :6], x) and not padded[:, 6:].any()
    # 6 -> 3: mean of the consecutive channel pairs (0, 1), (2, 3), (4, 5)
    torch.testing.assert_close(ChannelShortcut(6, 3)(x), (x[:, 0::2] + x[:, 1::2]) / 2)
    assert sum(p.numel() for p in ChannelShortcut(6, 9).parameters()) == 0
    conv = ChannelShortcut(6, 4)
    assert conv.kind == "conv" and conv(x).shape == (2, 4, 3, 4)


def test_bcnn2d_shortcuts_cost_no_parameters():
    with_sc = build_model("bcnn2d", input_shape=(1, 40, 101), n_classes=10)
    without = build_model("bcnn2d", input_shape=(1, 40, 101), n_classes=10, params={"shortcut": False})
    assert sum(p.numel() for p in with_sc.parameters()) == sum(p.numel() for p in without.parameters())
    assert not [m for m in without.modules() if isinstance(m, ChannelShortcut)]


@pytest.mark.parametrize("channels,max_ratio", [(None, 1 / 16), ([32, 64, 128, 256], 1 / 20)])
def test_bcnn2d_storage_is_a_small_fraction_of_cnn2d(channels, max_ratio):
    """Binary weights at 1 bit: measured 1/17.7 (default plan) and 1/26.6 ([32, 64, 128, 256])."""
    params = {} if channels is None else {"channels": channels}
    shape = (1, 40, 101)
    binary = complexity_report(build_model("bcnn2d", input_shape=shape, n_classes=10, params=params), shape)
    floating = complexity_report(build_model("cnn2d", input_shape=shape, n_classes=10, params=params), shape)
    assert binary["params"] == floating["params"]  # same plan, same parameter count
    assert binary["bytes"]["storage"] <= max_ratio * floating["bytes"]["storage"]


def test_bcnn2d_onebit_keeps_float_inputs_behind_a_relu():
    model = build_model("bcnn2d", input_shape=(1, 20, 20), n_classes=2, params={"mode": "onebit"})
    blocks = [m for m in model.modules() if isinstance(m, BinaryBlock)]
    assert blocks and all(isinstance(b.pre, nn.ReLU) and b.conv.input_bits == 32 for b in blocks)
    assert complexity_report(model, (1, 20, 20))["bops"] == 0  # float inputs: MACs, not BOPs


BAD_PARAMS = [
    ("thesis_xnor5", {"mode": "onebit"}, "mode"),
    ("thesis", {"binary_layers": 0}, "binary_layers"),
    ("thesis", {"binary_layers": 20}, "binary_layers"),  # valid 3x3 convs eat the 32x32 image
    ("thesis", {"activation": "gelu"}, "activation"),
    ("thesis", {"first_activation": ["relu", 3]}, "first_activation"),
    ("thesis", {"dropout": 1.0}, "dropout"),
    ("thesis", {"binary_layers": 2, "channels": [8]}, "channels"),
    ("thesis", {"pool": [7]}, "pool"),
    ("thesis", {"padding": "full"}, "padding"),
    ("thesis", {"kernel_size": 0}, "kernel_size"),
    ("thesis", {"dense_units": 0}, "dense_units"),
    ("thesis", {"map_input": "yes"}, "map_input"),
    ("thesis", {"mode": "binarynet", "input_scale": True}, "input_scale"),
    ("thesis_xnor1", {"bogus": 1}, "bogus"),
    ("bcnn2d", {"mode": "ternary"}, "mode"),
    ("bcnn2d", {"shortcut": "yes"}, "shortcut"),
    ("bcnn2d", {"learn_threshold": 1}, "learn_threshold"),
    ("bcnn2d", {"stream_prelu": "true"}, "stream_prelu"),
    ("bcnn2d", {"channels": []}, "channels"),
    ("bcnn2d", {"convs_per_stage": 0}, "convs_per_stage"),
    ("bcnn2d", {"dropout": -0.1}, "dropout"),
    ("bcnn2d", {"norm": "batch"}, "norm"),
    ("bcnn2d", {"widths": [8]}, "widths"),
]


@pytest.mark.parametrize("name,params,needle", BAD_PARAMS, ids=lambda v: str(v))
def test_bad_params_name_the_param(name, params, needle):
    shape = (1, 32, 32) if name.startswith("thesis") else (1, 40, 101)
    with pytest.raises(ConfigError, match=needle):
        build_model(name, input_shape=shape, n_classes=2, params=params)


@pytest.mark.parametrize("name", ["thesis_xnor1", "bcnn2d"])
def test_bad_input_shape(name):
    with pytest.raises(ConfigError, match=r"\(channels, freq, time\)"):
        build_model(name, input_shape=(1, 16000), n_classes=2)


def test_learned_threshold_moves_the_sign_not_the_stream():
    """bcnn2d's learn_threshold: sign(x + move) feeds the conv, x itself the shortcut; move learns."""
    from bitsound.models.binary_cnn import BinaryBlock
    torch.manual_seed(0)
    block = BinaryBlock(4, 4, mode="xnor", shortcut=True, learn_threshold=True).eval()
    plain = BinaryBlock(4, 4, mode="xnor", shortcut=True).eval()
    plain.load_state_dict({k: v for k, v in block.state_dict().items() if k != "move"})
    x = torch.randn(2, 4, 5, 6)
    assert torch.equal(block(x), plain(x))  # move starts at zero
    with torch.no_grad():
        block.move.fill_(100.0)  # every sign input positive: the conv sees all +1
    assert torch.allclose(block(x) - x, plain(torch.full_like(x, 1.0)) - 1.0)
    block.move.data.fill_(0.1)
    block.train()(x).sum().backward()
    assert block.move.grad is not None and block.move.grad.abs().sum() > 0



def test_stream_prelu_acts_on_the_sum():
    """bcnn2d's stream_prelu: PReLU(BN(conv(sign x)) + shortcut(x)), one learned slope per channel."""
    from bitsound.models.binary_cnn import BinaryBlock
    torch.manual_seed(0)
    block = BinaryBlock(4, 6, mode="xnor", shortcut=True, stream_prelu=True).eval()
    plain = BinaryBlock(4, 6, mode="xnor", shortcut=True).eval()
    plain.load_state_dict({k: v for k, v in block.state_dict().items() if not k.startswith("act.")})
    x = torch.randn(2, 4, 5, 6)
    y = plain(x)
    assert block.act.weight.shape == (6,)
    assert torch.allclose(block(x), torch.where(y >= 0, y, 0.25 * y))  # PyTorch's initial slope
    block.train()(x).sum().backward()
    assert block.act.weight.grad is not None and block.act.weight.grad.abs().sum() > 0
