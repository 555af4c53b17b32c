"""Model files keep the architecture they were saved with: pruned networks reload exactly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import bitsound
from bitsound.config import parse_recipe
from bitsound.errors import CheckpointError
from bitsound.export.packed import model_graph
from bitsound.modelfile import build_net, save_model
from bitsound.modelspec import build_from_spec, module_spec

RECIPE = {"name": "t", "data": {"spec": "synthetic"}, "audio": {"sample_rate": 8000},
          "frontend": {"kind": "logmel", "n_mels": 16},
          "model": {"name": "bcnn2d", "params": {"channels": [8, 16], "stream_prelu": True}}}


def _recipe(model=None):
    data = dict(RECIPE)
    if model:
        data["model"] = model
    return parse_recipe(data)


def _keep(t: torch.Tensor, idx: torch.Tensor, dim: int) -> nn.Parameter:
    return nn.Parameter(t.detach().index_select(dim, idx).clone())


def remove_channels(net: nn.Module, keep: list[int]) -> None:
    """Remove output channels of cnn2d's first conv (and its batch-norm) and the next conv's inputs."""
    idx = torch.tensor(keep)
    conv1, bn1, conv2 = net.features[1], net.features[2], net.features[4]
    conv1.weight = _keep(conv1.weight, idx, 0)
    conv1.out_channels = len(keep)
    bn1.weight, bn1.bias = _keep(bn1.weight, idx, 0), _keep(bn1.bias, idx, 0)
    bn1.running_mean = bn1.running_mean[idx].clone()
    bn1.running_var = bn1.running_var[idx].clone()
    bn1.num_features = len(keep)
    conv2.weight = _keep(conv2.weight, idx, 1)
    conv2.in_channels = len(keep)


def test_a_network_with_channels_removed_saves_reloads_and_exports(tmp_path):
    recipe = _recipe({"name": "cnn2d", "params": {"channels": [12, 16], "convs_per_stage": 2}})
    torch.manual_seed(0)
    net = build_net(recipe, 4).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2.0)
                m.running_mean.normal_(0, 0.2)
    remove_channels(net, [0, 2, 3, 5, 7, 8, 11])
    x = torch.randn(3, 1, 16, 101)
    with torch.no_grad():
        want = net(x)
    save_model(tmp_path / "model.pt", recipe=recipe, labels=list("abcd"), net=net)
    raw = torch.load(tmp_path / "model.pt", weights_only=True)
    assert raw["version"] == 2 and "module_spec" in raw
    model = bitsound.load_model(tmp_path / "model.pt")
    assert model.net.features[1].out_channels == 7 and model.net.features[4].weight.shape[1] == 7
    assert sum(p.numel() for p in model.net.parameters()) == sum(p.numel() for p in net.parameters())
    with torch.no_grad():
        assert torch.equal(model.net(x), want)
    g = model_graph(tmp_path / "model.pt")
    convs = [op for op in g.ops if op.kind == "conv2d"]
    assert convs[0].params["cout"] == 7 and convs[1].params["cin"] == 7


def test_a_binary_network_reloads_with_identical_outputs(tmp_path):
    recipe = _recipe()
    torch.manual_seed(1)
    net = build_net(recipe, 3).eval()
    save_model(tmp_path / "model.pt", recipe=recipe, labels=list("abc"), net=net)
    model = bitsound.load_model(tmp_path / "model.pt")
    x = torch.randn(2, 1, 16, 101)
    with torch.no_grad():
        assert torch.equal(model.net(x), net(x))
    assert type(model.net.features[3].conv).__name__ == "BinaryConv2d"


def test_version_1_model_files_still_load(tmp_path):
    recipe = _recipe()
    net = build_net(recipe, 3).eval()
    torch.save({"format": "bitsound.model", "version": 1, "recipe": recipe.model_dump(mode="json"),
                "labels": list("abc"), "state_dict": net.state_dict(), "metrics": {}}, tmp_path / "old.pt")
    model = bitsound.load_model(tmp_path / "old.pt")
    x = torch.randn(2, 1, 16, 101)
    with torch.no_grad():
        assert torch.equal(model.net(x), net(x))


def test_a_version_1_file_of_a_pruned_network_says_how_to_convert(tmp_path):
    recipe = _recipe({"name": "cnn2d", "params": {"channels": [12, 16]}})
    net = build_net(recipe, 4)
    remove_channels(net, [0, 1, 2])
    torch.save({"format": "bitsound.model", "version": 1, "recipe": recipe.model_dump(mode="json"),
                "labels": list("abcd"), "state_dict": net.state_dict(), "metrics": {}}, tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match="re-save it"):
        bitsound.load_model(tmp_path / "old.pt")


def test_specs_rebuild_only_known_module_classes():
    spec = module_spec(nn.Sequential(nn.Linear(2, 3)))
    spec["children"]["0"]["class"] = "some_unimported_package.Layer"
    with pytest.raises(CheckpointError, match="neither a torch.nn or bitsound class"):
        build_from_spec(spec)
    spec["children"]["0"]["class"] = "os.system"
    with pytest.raises(CheckpointError, match="not an nn.Module class"):
        build_from_spec(spec)
    spec["children"]["0"]["class"] = "torch.nn.modules.linear.Linear"
    del spec["children"]["0"]["params"]
    with pytest.raises(CheckpointError, match="malformed"):
        build_from_spec(spec)


@pytest.mark.parametrize("shape", [[[3], 2], [3, -1], [3, True], "32", None])
def test_a_tensor_shape_that_is_not_a_list_of_sizes_is_malformed(shape):
    spec = module_spec(nn.Sequential(nn.Linear(2, 3)))
    spec["children"]["0"]["params"]["weight"]["shape"] = shape
    with pytest.raises(CheckpointError, match="malformed.*is not a list of sizes"):
        build_from_spec(spec)


def test_a_tensor_description_that_is_not_a_mapping_is_malformed():
    spec = module_spec(nn.Sequential(nn.Linear(2, 3)))
    spec["children"]["0"]["params"]["weight"] = torch.zeros(2)
    with pytest.raises(CheckpointError, match="malformed.*Tensor, not a mapping"):
        build_from_spec(spec)


def test_a_module_holding_a_plain_tensor_attribute_cannot_be_described():
    layer = nn.Linear(2, 3)
    layer.table = torch.ones(3)  # neither a parameter nor a buffer
    with pytest.raises(CheckpointError, match="attribute 'table' of module '0'"):
        module_spec(nn.Sequential(layer))


def test_classes_defined_in_functions_cannot_be_described():
    class Custom(nn.Module):
        pass

    with pytest.raises(CheckpointError, match="inside a function"):
        module_spec(nn.Sequential(Custom()))
