"""ONNX export checked in onnxruntime against PyTorch.

Stated tolerances (those of :mod:`bitsound.export.onnx`):

- float networks: every logit within ``1e-4 + 1e-3 * max |torch logit|`` of its example, labels
  equal on every clip;
- binary networks: labels equal on every clip; logits within the same tolerance except on at
  most ``floor(5 % of n)`` examples, where a float value within rounding of zero before a sign
  takes the other sign in the other runtime (one flipped bit; the engine avoids this with
  thresholds read off PyTorch's own arithmetic, ONNX cannot). The binary layers themselves are
  exact (±1 sums).

Models are built with random weights and random batch-norm statistics, as in the engine parity
tests, and run on real FSDD clips through the recipes' own front ends.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from bitsound.cli import main  # noqa: E402
from bitsound.errors import ExportError  # noqa: E402
from bitsound.export.onnx import (  # noqa: E402
    ATOL,
    RTOL,
    OnnxBinaryLayer,
    OnnxSign,
    compare_onnx,
    export_onnx,
    lower_for_onnx,
    run_onnx,
)
from bitsound.modelfile import SoundClassifier, build_net, save_model  # noqa: E402
from bitsound.nn.layers import BinaryConv1d, BinaryConv2d, BinaryLinear  # noqa: E402
from bitsound.recipes import load_recipe  # noqa: E402

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FSDD = DATA / "fsdd" / "recordings"


def randomize(net: nn.Module, seed: int = 1) -> nn.Module:
    """Random batch-norm statistics and affine parameters (both signs), learned sign shifts."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g))
                m.running_var.copy_(torch.rand(c, generator=g) * 2 + 0.1)
                m.weight.copy_(torch.randn(c, generator=g))
                m.bias.copy_(torch.randn(c, generator=g) * 0.5)
            if getattr(m, "move", None) is not None:
                m.move.copy_(torch.randn(m.move.shape, generator=g) * 0.5)
    return net.eval()


def classifier(recipe_name: str) -> SoundClassifier:
    recipe = load_recipe(recipe_name)
    torch.manual_seed(0)
    return SoundClassifier(recipe, [str(d) for d in range(10)], randomize(build_net(recipe, 10))).eval()


def fsdd_windows(model: SoundClassifier, step: int) -> torch.Tensor:
    """Waveform windows [shape=(n, 1, 8000)] of every ``step``-th FSDD recording, as predict reads them."""
    from bitsound.audio.io import load_audio
    from bitsound.pipeline import window_audio

    files = sorted(FSDD.glob("*.wav"))[::step]
    if not files:
        pytest.skip(f"no FSDD recordings under {FSDD}")
    audio = model.recipe.audio
    windows = [window_audio(load_audio(f, sample_rate=audio.sample_rate, channels=audio.channels),
                            audio.sample_rate, audio) for f in files]
    assert all(len(w) == 1 for w in windows)  # 1-s clips: one window each
    return torch.from_numpy(np.concatenate(windows)).float()


@pytest.mark.parametrize("mode", ["xnor", "binarynet", "onebit"])
@pytest.mark.parametrize("kind", ["conv1d", "conv2d", "linear"])
def test_binary_twin_equals_the_layer(mode, kind):
    torch.manual_seed(3)
    if kind == "conv1d":
        layer, x = BinaryConv1d(5, 7, 3, mode=mode, padding=1, stride=2), torch.randn(4, 5, 11)
    elif kind == "conv2d":
        layer, x = BinaryConv2d(5, 7, 3, mode=mode, padding=(1, 0), dilation=2), torch.randn(4, 5, 9, 8)
    else:
        layer, x = BinaryLinear(13, 6, mode=mode), torch.randn(4, 13)
    x[x.abs() < 0.3] = 0.0  # exact zeros binarize to +1
    layer.eval()
    twin = lower_for_onnx(layer)
    assert isinstance(twin, OnnxBinaryLayer)
    with torch.no_grad():
        torch.testing.assert_close(twin(x), layer(x), rtol=0, atol=1e-6)


def test_sign_maps_zero_to_plus_one_in_onnxruntime(tmp_path):
    """ONNX's Sign would give 0 for 0; the exported binarization must give +1, as bitsound does."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.ReLU(), BinaryConv2d(3, 4, 3, padding=1, mode="binarynet", bias=False)).eval()
    model = SoundClassifier(load_recipe("digits-cnn"), list("abcd"), nn.Identity())
    low = lower_for_onnx(net)
    x = torch.randn(2, 3, 6, 6)  # half the values are ReLU zeros
    program = torch.onnx.export(low, (x,), None, dynamo=True, opset_version=18,
                                dynamic_shapes=({0: torch.export.Dim("batch", min=1)},), external_data=False)
    path = tmp_path / "sign.onnx"
    path.write_bytes(program.model_proto.SerializeToString())
    ops = {node.op_type for node in program.model_proto.graph.node}
    assert "Conv" in ops and "Where" in ops
    got = run_onnx(path, x.numpy())
    with torch.no_grad():
        want = net(x).numpy()
    np.testing.assert_array_equal(got, want)  # integer dot products: exact
    assert model.labels == list("abcd")


def test_digits_cnn_with_front_end_gives_pytorch_labels_on_real_clips(tmp_path):
    model = classifier("digits-cnn")
    result = export_onnx(model, tmp_path / "digits-cnn.onnx", with_frontend=True)
    assert result.input_name == "waveform" and result.input_shape == ["batch", 1, 8000]
    waves = fsdd_windows(model, step=10)  # 200 recordings of all four speakers
    check = compare_onnx(model, result.path, waves, batch_size=37)  # dynamic batch, ragged last batch
    assert check.n == len(waves) == 200
    assert check.label_mismatches == 0
    assert check.n_beyond_tolerance == 0, check.describe()
    assert check.max_abs_diff <= ATOL + RTOL * 100
    # the metadata says what the input is and which labels the logits are
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(result.path)).metadata_props}
    assert json.loads(meta["labels"]) == model.labels and meta["input"] == "waveform"


@pytest.mark.parametrize("recipe", ["digits-xnor", "digits-xnor-kd"])
def test_binary_digits_network_gives_pytorch_labels_on_real_clips(tmp_path, recipe):
    model = classifier(recipe)
    result = export_onnx(model, tmp_path / f"{recipe}.onnx")
    ops = {node.op_type for node in __import__("onnx").load(str(result.path)).graph.node}
    assert {"Conv", "Where", "Less"} <= ops  # binarization as plain ONNX ops
    waves = fsdd_windows(model, step=10)
    with torch.no_grad():
        features = model.frontend(waves)
    check = compare_onnx(model.net, result.path, features, batch_size=64)
    assert check.binary and check.n == 200
    assert check.label_mismatches == 0, check.describe()
    assert check.ok, check.describe()


def test_export_refuses_what_it_cannot_lower(tmp_path):
    layer = BinaryConv2d(3, 4, 3, mode="xnor", input_scale=True)
    with pytest.raises(ExportError, match="input scale K"):
        lower_for_onnx(nn.Sequential(layer))
    model = classifier("digits-cnn")
    with pytest.raises(ExportError, match="opset >= 17"):
        export_onnx(model, tmp_path / "m.onnx", with_frontend=True, opset=16)
    with pytest.raises(ExportError, match="no int8 layers.*calibrated.*bitsound compress"):
        export_onnx(model, tmp_path / "m.onnx", precision="int8")

    class NotASign(nn.Module):
        bits = 1

        def forward(self, x):
            return torch.sign(x)  # sign(0) = 0: not bitsound's binarization

    with pytest.raises(ExportError, match="is not sign"):
        lower_for_onnx(nn.Sequential(NotASign()))
    assert isinstance(lower_for_onnx(nn.Sequential(__import__("bitsound").nn.quantizers.SteSign()))[0],
                      OnnxSign)


def test_binary_image_front_end_failure_names_the_op(tmp_path):
    recipe = load_recipe("thesis-xnor")
    torch.manual_seed(0)
    model = SoundClassifier(recipe, ["bird", "no_bird"], randomize(build_net(recipe, 2))).eval()
    with pytest.raises(ExportError, match="median"):
        export_onnx(model, tmp_path / "t.onnx", with_frontend=True)
    assert not (tmp_path / "t.onnx").exists()
    assert export_onnx(model, tmp_path / "t.onnx").check.ok  # the network alone exports


def test_cli_export_onnx_and_default_bsnn(tmp_path, capsys):
    model = classifier("digits-xnor")
    save_model(tmp_path / "model.pt", recipe=model.recipe, labels=model.labels, net=model.net)
    assert main(["export", "--model", str(tmp_path / "model.pt"), "--out", str(tmp_path / "m.onnx"),
                 "--format", "onnx"]) == 0
    out = capsys.readouterr().out
    assert "onnxruntime vs PyTorch" in out and "bit-packed engine" in out
    assert (tmp_path / "m.onnx").stat().st_size > 0
    assert main(["export", "--model", str(tmp_path / "model.pt"), "--out", str(tmp_path / "m.bsnn")]) == 0
    assert (tmp_path / "m.bsnn").read_bytes()[:4] == b"BSNN"
    assert main(["export", "--model", str(tmp_path / "model.pt"), "--out", str(tmp_path / "x.bsnn"),
                 "--with-frontend"]) == 2
