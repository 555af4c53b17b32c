"""``predict --engine`` on a recipe whose front end the C code does not implement (a non-power-of-two
n_fft, as BC-ResNet's 2080): the engine classifier runs the PyTorch front end, with one log line."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import soundfile as sf
import torch

from bitsound.cli import main
from bitsound.engine.classifier import load_classifier
from bitsound.errors import ConfigError
from bitsound.export import export_packed
from bitsound.modelfile import build_net, load_model, save_model
from bitsound.recipes import load_recipe


@pytest.fixture(scope="module")
def odd_fft_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("odd_fft")
    r = load_recipe("digits-cnn", overrides=["frontend.n_fft=400"])
    torch.manual_seed(0)
    save_model(d / "model.pt", recipe=r, labels=[str(i) for i in range(10)], net=build_net(r, 10))
    return d / "model.pt", export_packed(d / "model.pt", d / "model.bsnn")


def test_auto_front_end_falls_back_to_torch_with_one_log_line(odd_fft_model, caplog):
    pt, path = odd_fft_model
    with caplog.at_level(logging.INFO, logger="bitsound.engine"):
        clf = load_classifier(path)
    lines = [r.getMessage() for r in caplog.records if r.name == "bitsound.engine"]
    assert len(lines) == 1 and "PyTorch front end" in lines[0] and "n_fft=400" in lines[0]
    assert clf.frontend_kind == "torch" and clf.frontend_spec is None
    wave = torch.randn(2, 1, 8000) * 0.1
    with torch.no_grad():
        ref = load_model(pt).frontend(wave).numpy()
    assert np.array_equal(clf.features(wave), ref)


def test_forcing_the_c_front_end_names_the_way_out(odd_fft_model):
    _, path = odd_fft_model
    with pytest.raises(ConfigError, match=r"n_fft=400.*power-of-two.*frontend='torch'"):
        load_classifier(path, frontend="c")


def test_predict_engine_runs_such_a_recipe(odd_fft_model, tmp_path, capsys):
    _, path = odd_fft_model
    wav = tmp_path / "tone.wav"
    t = np.arange(8000) / 8000
    sf.write(wav, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 8000)
    assert main(["predict", "--engine", str(path), "--json", str(wav)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 1 and rows[0]["label"] in [str(i) for i in range(10)]
