"""export -> predict --engine gives the labels of the PyTorch model, through the CLI."""

import json

import numpy as np
import pytest
import soundfile as sf

from bitsound.cli import main


@pytest.mark.parametrize("recipe", ["digits-xnor", "thesis-xnor"])
def test_export_and_engine_predict_match_pytorch(recipe, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--recipe", recipe, "--data", "synthetic:n_per_class=3,n_locations=3",
                 "--out", str(out), "--no-cache", "-q", "--set", "train.epochs=2",
                 "--set", "data.split.kind=none"]) == 0
    assert main(["export", "--model", str(out / "model.pt"), "--out", str(tmp_path / "m.bsnn")]) == 0
    files = []
    rng = np.random.default_rng(0)
    for i in range(6):
        path = tmp_path / f"clip{i}.wav"
        t = np.arange(16000) / 16000
        sf.write(path, 0.3 * np.sin(2 * np.pi * (300 + 400 * i) * t) + rng.normal(0, 0.02, 16000),
                 16000)
        files.append(str(path))
    capsys.readouterr()
    assert main(["predict", "--model", str(out / "model.pt"), "--json", *files]) == 0
    torch_rows = json.loads(capsys.readouterr().out)
    assert main(["predict", "--engine", str(tmp_path / "m.bsnn"), "--json", *files]) == 0
    engine_rows = json.loads(capsys.readouterr().out)
    assert main(["predict", "--engine", str(tmp_path / "m.bsnn"), "--threads", "2", "--json", *files]) == 0
    assert json.loads(capsys.readouterr().out) == engine_rows  # threads change nothing
    assert [r["label"] for r in engine_rows] == [r["label"] for r in torch_rows]
    for a, b in zip(engine_rows, torch_rows, strict=True):
        assert a["probability"] == pytest.approx(b["probability"], abs=1e-3)


def test_predict_needs_exactly_one_of_model_and_engine(tmp_path, capsys):
    assert main(["predict", str(tmp_path / "x.wav")]) == 2
    assert "--model" in capsys.readouterr().err
