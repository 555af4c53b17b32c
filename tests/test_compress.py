"""Compression that really shrinks: structured and unstructured pruning, int8, fp16, against references.

Structured pruning is checked by what it must change (tensors, parameter counts as torchinfo
counts them, the model file, the .bsnn) and what it must not (a channel whose output is exactly
zero can be removed without changing the logits). int8 layers are checked against torch's own
fake-quantization ops and the engine against the PyTorch model at every int8 tensor.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from nets import randomized  # tests/nets.py
from torch import nn

import bitsound
from bitsound import engine
from bitsound.complexity import complexity_report
from bitsound.compress import prune as P
from bitsound.compress import quantize as Q
from bitsound.compress.config import load_pipeline, parse_pipeline
from bitsound.config import parse_recipe
from bitsound.errors import ConfigError
from bitsound.export import export_packed
from bitsound.modelfile import build_net, save_model
from bitsound.models import build_model
from bitsound.nn.layers import QuantConv2d, QuantLinear
from bitsound.nn.quantizers import Int8Activation, Int8Weight

SHAPE = (1, 16, 40)


def cnn(channels=(8, 12, 16), seed=0):
    return randomized(build_model("cnn2d", input_shape=SHAPE, n_classes=4,
                                  params={"channels": list(channels), "convs_per_stage": 1}), seed)


def n_params(net):
    return sum(p.numel() for p in net.parameters())


# ---- structured pruning ---------------------------------------------------------------------
def test_structured_pruning_removes_channels_and_torchinfo_agrees():
    torchinfo = pytest.importorskip("torchinfo")
    net = cnn()
    ex = torch.zeros(1, *SHAPE)
    before = n_params(net)
    step = P.prune_channels(net, ex, 10, importance=P.L1Importance())
    assert step.total == 10
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert sum(c.out_channels for c in convs) == 8 + 12 + 16 - 10
    # the next layer's inputs, the batch-norms and the classifier shrank with them
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            assert m.weight.shape[:2] == (m.out_channels, m.in_channels)
        if isinstance(m, nn.BatchNorm2d):
            assert m.running_mean.shape == (m.num_features,)
    assert net.head[-1].in_features == convs[-1].out_channels
    after = n_params(net)
    assert after < before
    assert after == sum(t.numel() for k, t in net.state_dict().items() if "running" not in k
                        and "num_batches" not in k)
    summary = torchinfo.summary(net, input_size=(1, *SHAPE), verbose=0)
    assert summary.total_params == after == complexity_report(net, SHAPE)["params"]
    assert net(torch.randn(2, *SHAPE)).shape == (2, 4)


def test_removing_a_dead_channel_leaves_the_logits_unchanged():
    net = cnn()
    conv, bn = net.features[1], net.features[2]
    with torch.no_grad():  # channel 3 of the first conv outputs exactly 0 after BN and ReLU
        bn.weight[3], bn.bias[3] = 0.0, -1.0
    x = torch.randn(3, *SHAPE)
    want = net(x)

    def dead_first(group):
        scores = torch.ones(group.channels, dtype=torch.float64)
        if group.root is conv:
            scores[3] = 0.0
        return scores

    step = P.prune_channels(net, torch.zeros(1, *SHAPE), 1, importance=dead_first)
    assert step.removed == {"features.1": 1} and conv.out_channels == 7
    torch.testing.assert_close(net(x), want, rtol=1e-5, atol=1e-6)


def test_layer_scope_takes_the_same_fraction_of_every_layer_its_weakest_first():
    net = cnn((8, 12, 16))
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    # six of the first layer's eight filters far below its mean: a global ranking takes them first
    with torch.no_grad():
        convs[0].weight[:6].mul_(1e-3)
        convs[2].weight[5].mul_(1e-2)  # the weakest filter of the last layer
    weakest = convs[2].weight.abs().sum(dim=(1, 2, 3)).argsort()[:4].tolist()
    kept_last = [i for i in range(16) if i not in weakest]
    want = net.features[10].weight[kept_last].clone()  # the last conv's batch-norm scales
    glob = copy.deepcopy(net)
    P.prune_channels(glob, torch.zeros(1, *SHAPE), 9, importance=P.L1Importance())
    step = P.prune_channels(net, torch.zeros(1, *SHAPE), 9, importance=P.L1Importance(), scope="layer")
    assert step.removed == {"features.1": 2, "features.5": 3, "features.9": 4}  # a quarter each
    assert torch.equal(net.features[10].weight, want)  # the last layer lost its four weakest filters
    assert [m.out_channels for m in glob.modules() if isinstance(m, nn.Conv2d)][0] == 2
    with pytest.raises(ConfigError, match="scope"):
        P.prune_channels(net, torch.zeros(1, *SHAPE), 1, importance=P.L1Importance(), scope="net")


def test_the_classifier_is_never_pruned_and_min_channels_is_kept():
    net = cnn((4, 4, 4))
    step = P.prune_channels(net, torch.zeros(1, *SHAPE), 100, importance=P.L1Importance(), min_channels=2)
    assert step.total == 6  # three groups of 4, each down to 2
    assert net.head[-1].out_features == 4


def test_a_pruned_network_saves_reloads_exports_smaller_and_the_engine_agrees(tmp_path):
    recipe = parse_recipe({"name": "t", "data": {"spec": "synthetic"}, "audio": {"sample_rate": 8000},
                           "frontend": {"kind": "logmel", "n_mels": 16},
                           "model": {"name": "cnn2d", "params": {"channels": [16, 24, 32],
                                                                 "convs_per_stage": 1}}})
    net = randomized(build_net(recipe, 4))
    shape = tuple(bitsound.modelfile.feature_shape(recipe))
    save_model(tmp_path / "full.pt", recipe=recipe, labels=list("abcd"), net=net)
    P.prune_channels(net, torch.zeros(1, *shape), 36, importance=P.L1Importance())
    save_model(tmp_path / "pruned.pt", recipe=recipe, labels=list("abcd"), net=net)
    loaded = bitsound.load_model(tmp_path / "pruned.pt")
    x = torch.randn(4, *shape)
    torch.testing.assert_close(loaded.net(x), net(x))
    full_state = torch.load(tmp_path / "full.pt", weights_only=True)["state_dict"]
    pruned_state = torch.load(tmp_path / "pruned.pt", weights_only=True)["state_dict"]
    assert sum(t.numel() for t in pruned_state.values()) < sum(t.numel() for t in full_state.values())
    export_packed(tmp_path / "full.pt", tmp_path / "full.bsnn")
    export_packed(tmp_path / "pruned.pt", tmp_path / "pruned.bsnn")
    assert (tmp_path / "pruned.bsnn").stat().st_size < 0.6 * (tmp_path / "full.bsnn").stat().st_size
    got = engine.load(tmp_path / "pruned.bsnn").predict(x.numpy())
    np.testing.assert_allclose(got, net(x).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_binary_layers_are_pruned_with_their_registered_pruner(tmp_path):
    net = randomized(build_model("thesis_xnor5", input_shape=(1, 32, 32), n_classes=3))
    ex = torch.zeros(1, 1, 32, 32)
    assert P.prunable_channels(net, ex) == 16 + 5 * 32
    graph = P.dependency_graph(net, ex)
    binary = net.binary[0][0]
    pruner = graph.get_pruner_of_module(binary)
    assert type(pruner).__name__ == "QuantConvPruner"
    P.prune_channels(net, ex, 40, importance=P.L1Importance())
    assert n_params(net) < 105973
    assert "forward" not in binary.__dict__  # the float tracing patch is gone
    x = torch.randn(5, 1, 32, 32)
    want = net(x)
    g = bitsound.export.packed.model_graph(net, input_shape=(1, 32, 32))
    path = bitsound.export.bsnn.write(g, tmp_path / "b.bsnn")
    got = engine.load(path).predict(x.numpy())
    assert (got.argmax(1) == want.argmax(1).numpy()).all()


def test_shortcuts_that_pad_channels_are_refused_by_name():
    net = build_model("bcnn2d", input_shape=SHAPE, n_classes=3, params={"channels": [8, 16]})
    with pytest.raises(ConfigError, match=r"features\.\d+\.shortcut.*'pad'.*shortcut=false"):
        P.prune_channels(net, torch.zeros(1, *SHAPE), 2, importance=P.L1Importance())
    flat = build_model("bcnn2d", input_shape=SHAPE, n_classes=3,
                       params={"channels": [8, 16], "shortcut": False, "learn_threshold": True,
                               "stream_prelu": True})
    before = n_params(flat)
    P.prune_channels(flat, torch.zeros(1, *SHAPE), 6, importance=P.L1Importance())
    assert n_params(flat) < before
    moves = [m.move for m in flat.modules() if getattr(m, "move", None) is not None]
    convs = [m.conv for m in flat.modules() if hasattr(m, "move")]
    assert all(mv.shape[1] == c.in_channels for mv, c in zip(moves, convs, strict=True))
    assert flat(torch.randn(2, *SHAPE)).shape == (2, 3)


class RowsFromChannels(nn.Module):
    """A 1-D conv whose channels become the rows of a 2-D map (ACDNet's SFEB -> TFEB)."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv1d(1, 6, 5)
        self.c2 = nn.Conv1d(6, 8, 5)
        self.c3 = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        x = torch.relu(self.c2(torch.relu(self.c1(x))))
        x = torch.relu(self.c3(x.unsqueeze(2).permute(0, 2, 1, 3)))
        return self.fc(x.mean(dim=(2, 3)))


def test_layers_whose_channels_feed_a_permute_are_found_unprunable():
    net = RowsFromChannels().eval()
    bad = P.unprunable_groups(net, torch.zeros(1, 1, 50))
    assert list(bad) == ["c2"]
    P.prune_channels(net, torch.zeros(1, 1, 50), 3, importance=P.L1Importance(), exclude=["c2"])
    assert net.c1.out_channels + net.c3.out_channels == 10 - 3
    assert net(torch.randn(2, 1, 50)).shape == (2, 2)


def test_l1_importance_is_each_filters_l1_norm_over_the_layer_mean():
    net = cnn()
    _, groups = P.channel_groups(net, torch.zeros(1, *SHAPE))
    first = next(g for g in groups if g.name == "features.1")
    l1 = net.features[1].weight.detach().abs().flatten(1).sum(1).double()
    torch.testing.assert_close(P.L1Importance()(first), l1 / l1.mean())


def test_taylor_importance_is_seed_001_eq_1_to_4():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv1d(1, 3, 3), nn.ReLU(), nn.Conv1d(3, 2, 3), nn.Flatten(), nn.Linear(2 * 6, 2))
    x, y = torch.randn(4, 1, 10), torch.tensor([0, 1, 1, 0])
    imp = P.TaylorImportance()
    imp.measure(net, [(x[:2], y[:2]), (x[2:], y[2:])], F.cross_entropy)
    assert all(p.grad is None for p in net.parameters())  # measuring leaves no gradients behind
    # by hand: Z of the first conv, dC/dZ for each batch, |mean over time of Z*g| per example,
    # averaged over the 4 examples, divided by the L2 norm of the layer's scores
    per = []
    for xb, yb in ((x[:2], y[:2]), (x[2:], y[2:])):
        z = net[0](xb)
        z.retain_grad()
        F.cross_entropy(net[4](net[3](net[2](net[1](z)))), yb).backward()
        per.append((z * z.grad).mean(dim=2).abs().detach())
    mean = torch.cat(per).mean(dim=0).double()
    torch.testing.assert_close(imp.scores[net[0]], mean / mean.norm())


def test_sparsify_zeroes_the_smallest_weights_globally():
    net = cnn()
    total = sum(m.weight.numel() for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    zeroed = P.sparsify(net, 0.95)
    assert zeroed == int(0.95 * total)
    left = torch.cat([m.weight.detach().abs().flatten() for m in net.modules()
                      if isinstance(m, (nn.Conv2d, nn.Linear))])
    assert int((left == 0).sum()) == zeroed


# ---- unstructured pruning ----------------------------------------------------------------------
def test_magnitude_masks_survive_training_and_fold_into_the_weights():
    net = cnn()
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    n_conv = sum(c.weight.numel() for c in convs)
    masked = P.apply_magnitude_masks(net, 0.75, layers="conv", scope="global")
    assert masked == round(0.75 * n_conv)
    zero_before = [c.weight_mask == 0 for c in convs]
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    net.train()
    F.cross_entropy(net(torch.randn(4, *SHAPE)), torch.tensor([0, 1, 2, 3])).backward()
    opt.step()
    assert all((c.weight[z] == 0).all() for c, z in zip(convs, zero_before, strict=True))
    assert P.has_masks(net) and P.fold_masks(net) == len(convs) and not P.has_masks(net)
    assert all(isinstance(c.weight, nn.Parameter) for c in convs)
    report = complexity_report(net.eval(), SHAPE)
    assert report["params"] - report["nonzero_params"] >= masked
    conv_rows = [r for r in report["layers"] if r["type"] == "Conv2d"]
    for row, c in zip(conv_rows, convs, strict=True):
        assert row["nonzero_params"] == int((c.weight != 0).sum())
        assert row["bytes"]["dcase2020"] == 4 * row["nonzero_params"]


# ---- int8 and fp16 -----------------------------------------------------------------------------
def test_batchnorm_folding_keeps_the_outputs():
    net = cnn()
    x = torch.randn(3, *SHAPE)
    want = net(x)
    folded = Q.fold_batchnorm(net)
    assert folded == ["features.2", "features.6", "features.10"]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    torch.testing.assert_close(net(x), want, rtol=1e-5, atol=1e-5)


def test_int8_layers_equal_torchs_fake_quantization():
    torch.manual_seed(1)
    w = torch.randn(5, 3, 3, 3)
    values, scale = Int8Weight(per_channel=True).quantize_weight(w)
    ref = torch.fake_quantize_per_channel_affine(w, scale, torch.zeros(5, dtype=torch.int32), 0, -127, 127)
    torch.testing.assert_close(values * scale.view(-1, 1, 1, 1), ref)
    q = Int8Activation()
    x = torch.randn(64) * 3
    q.train()
    q(x)
    q.eval()
    s, z = q.qparams()
    torch.testing.assert_close(q(x), torch.fake_quantize_per_tensor_affine(x, s, z, -128, 127))


def test_int8_conversion_counts_one_byte_per_weight_and_fp16_two():
    net = cnn()
    Q.fold_batchnorm(net)
    names = Q.quantize_int8(net, layers="conv")
    assert names == ["features.1", "features.5", "features.9"]
    Q.calibrate(net, [torch.randn(8, *SHAPE) for _ in range(2)])
    Q.to_fp16(net, layers="all")
    rows = {r["name"]: r for r in complexity_report(net, SHAPE)["layers"]}
    for name in names:
        m = dict(net.named_modules())[name]
        assert rows[name]["bits_per_weight"] == 8 and rows[name]["input_bits"] == 8
        # weights 1 byte, float32 bias 4 bytes, one float32 scale per output channel
        assert rows[name]["bytes"]["dcase2022"] == m.weight.numel() + 4 * m.out_channels + 4 * m.out_channels
    head = net.head[-1]
    assert isinstance(head, QuantLinear) and rows["head.3"]["bits_per_weight"] == 16
    assert rows["head.3"]["bytes"]["dcase2022"] == 2 * head.weight.numel() + 4 * head.out_features
    assert torch.equal(head.weight, head.weight.half().float())  # stored exactly as half


def test_engine_int8_tensors_equal_pytorchs_quantized_reference(tmp_path):
    net = cnn((16, 24, 32), seed=3)
    Q.fold_batchnorm(net)
    Q.quantize_int8(net, layers="all")
    torch.manual_seed(0)
    Q.calibrate(net, [torch.randn(16, *SHAPE) for _ in range(4)], method="percentile", percentile=99.9)
    assert all(isinstance(m, (QuantConv2d, QuantLinear)) for m in net.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear)))
    g = bitsound.export.packed.model_graph(net, input_shape=SHAPE)
    kinds = g.op_counts()
    assert kinds["quantize"] == 4 and kinds["qconv2d"] == 3 and kinds["qlinear"] == 1
    eng = engine.load(bitsound.export.bsnn.write(g, tmp_path / "q.bsnn"))
    x = torch.randn(6, *SHAPE)
    a = Q.int8_agreement(net, eng, x)
    assert a.codes == 6 * (16 * 40 + 16 * 8 * 20 + 24 * 4 * 10 + 32)
    # equal, or one step where x / scale lies within float rounding of a half-integer
    assert a.max_step <= 1 and a.equal_fraction >= 0.999
    # layer by layer (PyTorch fed the engine's codes) at least as close as end to end
    assert a.layer_max_step <= 1 and a.layer_equal >= a.equal
    assert a.labels_equal == 6 and a.logit_max_rel < 1e-4


def test_conversion_keeps_masks_and_skips_binary_layers():
    net = cnn()
    P.apply_magnitude_masks(net, 0.5, layers="conv")
    Q.fold_batchnorm(net)
    Q.quantize_int8(net, layers="conv", activations="float")
    conv = net.features[1]
    assert isinstance(conv, QuantConv2d) and P.has_masks(net)
    zeros = conv.weight_mask == 0
    P.fold_masks(net)
    assert (conv.weight[zeros] == 0).all()
    binary = build_model("thesis_xnor1", input_shape=(1, 32, 32), n_classes=2)
    done = Q.quantize_int8(binary, layers="conv")
    assert done == ["first.0"]  # the binary convolution keeps its 1-bit weights


# ---- pipeline configuration ----------------------------------------------------------------------
def test_pipelines_are_validated_with_key_paths():
    with pytest.raises(ConfigError, match=r"stages\.0\.prune\.speed: unknown key"):
        parse_pipeline({"name": "p", "stages": [{"kind": "prune", "speed": 1, "target": {"ratio": 0.5}}]})
    with pytest.raises(ConfigError, match="stopping criterion"):
        parse_pipeline({"name": "p", "stages": [{"kind": "prune"}]})
    with pytest.raises(ConfigError, match="qat trains"):
        parse_pipeline({"name": "p", "stages": [{"kind": "quantize", "mode": "qat"}]})
    with pytest.raises(ConfigError, match="needs amount"):
        parse_pipeline({"name": "p", "stages": [{"kind": "prune", "method": "unstructured"}]})
    with pytest.raises(ConfigError, match="stages"):
        parse_pipeline({"name": "p", "stages": []})


@pytest.mark.parametrize("name", ["acdnet-to-micro", "bcresnet-compress", "wavecnn-prune-fp16",
                                  "wavecnn-prune-fp16-acc", "wavecnn-prune-fp16-close", "int8-ptq"])
def test_shipped_pipelines_load_and_take_overrides(name):
    from bitsound.models import MODELS
    from bitsound.published import get_published

    p = load_pipeline(name)
    assert p.name == name and p.stage_names()[0].startswith("01-")
    assert all(m in MODELS for m in p.models)  # written for registered families
    # every reference resolves to a published system with points to draw beside the result
    assert all(get_published(ref).points for ref in p.references)
    assert bool(p.references) == (name != "int8-ptq")
    changed = load_pipeline(name, overrides=["stages.0.name=first", "validation.fraction=0.2"])
    assert changed.stage_names()[0] == "01-first" and changed.validation.fraction == 0.2
    with pytest.raises(ConfigError, match="not an index"):
        load_pipeline(name, overrides=["stages.9.kind=fp16"])


def test_a_network_is_unchanged_by_tracing_for_the_dependency_graph():
    net = build_model("thesis_xnor1", input_shape=(1, 32, 32), n_classes=2).eval()
    before = copy.deepcopy(net.state_dict())
    x = torch.randn(2, 1, 32, 32)
    want = net(x)
    P.dependency_graph(net, torch.zeros(1, 1, 32, 32))
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    torch.testing.assert_close(net(x), want)


def test_the_held_out_split_is_the_one_the_model_was_scored_on():
    from types import SimpleNamespace

    from bitsound.compress.data import base_split
    from bitsound.data import splits
    from bitsound.experiment import open_recipe_data

    recipe = parse_recipe({"name": "t", "data": {"spec": "synthetic:n_per_class=2,n_classes=2,n_locations=3",
                                                 "split": {"kind": "none"}, "cv": "leave_one_group_out"},
                           "model": {"name": "cnn2d"}})
    dataset = open_recipe_data(recipe)
    groups = [s.name for s in splits.leave_one_group_out(dataset.clips)]
    # a fold model of bitsound cv: the recipe trains on everything, its metrics name the fold
    fold = SimpleNamespace(recipe=recipe, metrics={"split": {"name": groups[1]}})
    assert base_split(fold, dataset).name == groups[1]
    with pytest.raises(ConfigError, match="trained on every clip"):
        base_split(SimpleNamespace(recipe=recipe, metrics={}), dataset)
    split = recipe.data.split.model_copy(update={"kind": "leave_one_group_out", "holdout_group": groups[0]})
    held = recipe.model_copy(update={"data": recipe.data.model_copy(update={"split": split})})
    for name in (groups[0], groups[-1]):  # the recipe's own split, or the fold the metrics name
        model = SimpleNamespace(recipe=held, metrics={"split": {"name": name}})
        assert base_split(model, dataset).name == name


def test_list_pipelines_names_the_shipped_ones(capsys):
    from bitsound.cli import main

    assert main(["list", "pipelines"]) == 0
    text = capsys.readouterr().out
    assert "acdnet-to-micro" in text and "bcresnet-compress" in text and "wavecnn-prune-fp16" in text
