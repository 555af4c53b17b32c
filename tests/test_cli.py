"""End-to-end runs of the CLI contract on tiny data (the quickstart recipe's debug run)."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch

import bitsound
from bitsound.cli import main

TINY = "synthetic:n_per_class=6,seed=3"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cache = tmp_path_factory.mktemp("cache")
    code = main(["train", "--recipe", "quickstart", "--data", TINY, "--out", str(out),
                 "--cache", str(cache), "--set", "train.epochs=2", "-q"])
    assert code == 0
    return out, cache


def test_train_writes_the_promised_files(trained):
    out, _ = trained
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["held_out"]["n"] > 0
    assert metrics["split"]["kind"] == "group"
    assert 0.0 <= metrics["held_out"]["accuracy"] <= 1.0
    lines = (out / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    # Self-contained and safe to load.
    data = torch.load(out / "model.pt", weights_only=True)
    assert data["labels"] == metrics["labels"]
    assert data["recipe"]["audio"]["sample_rate"] == 16000


def test_load_model_runs_its_example_input(trained):
    out, _ = trained
    model = bitsound.load_model(out / "model.pt")
    assert not model.training
    logits = model(model.example_input)
    assert logits.shape == (1, len(model.labels))


def test_evaluate_json_has_the_contract_keys(trained, capsys):
    out, cache = trained
    capsys.readouterr()
    assert main(["evaluate", "--model", str(out / "model.pt"), "--data", TINY, "--json",
                 "--cache", str(cache)]) == 0
    report = json.loads(capsys.readouterr().out)
    for key in ("accuracy", "balanced_accuracy", "log_loss", "labels", "confusion_matrix", "n"):
        assert key in report
    assert report["n"] == 6 * len(report["labels"])
    assert np.sum(report["confusion_matrix"]) == report["n"]


def test_predict_labels_a_wav_file(trained, tmp_path, capsys):
    out, _ = trained
    path = tmp_path / "tone.wav"
    t = np.arange(8000) / 8000  # another rate than the model's: predict resamples
    sf.write(path, 0.3 * np.sin(2 * np.pi * 440 * t), 8000)
    capsys.readouterr()
    assert main(["predict", "--model", str(out / "model.pt"), str(path), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    model = bitsound.load_model(out / "model.pt")
    assert rows[0]["label"] in model.labels
    assert sum(rows[0]["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)


def test_resume_continues_a_finished_run(trained, tmp_path):
    out, cache = trained
    code = main(["train", "--recipe", "quickstart", "--data", TINY, "--out", str(out),
                 "--cache", str(cache), "--set", "train.epochs=3", "--resume", "-q"])
    # More epochs than the checkpoint's run is another experiment: refused, not silently mixed.
    assert code == 2


@pytest.mark.parametrize("what", ["models", "datasets", "recipes"])
def test_list(what, capsys):
    assert main(["list", what]) == 0
    text = capsys.readouterr().out
    assert {"models": "cnn2d", "datasets": "fsdd", "recipes": "digits-cnn"}[what] in text


def test_list_ops_keeps_the_shapes_in_brackets(capsys):
    """rich would read ``[cout]`` as a style tag and drop it: descriptions are printed escaped."""
    assert main(["list", "ops"]) == 0
    text = capsys.readouterr().out
    assert "scale[c]" in text and "[cout]" in text


def test_evaluate_subset_of_labels_is_fine_and_unknown_labels_are_an_error(trained, tmp_path,
                                                                            capsys):
    out, _ = trained
    model = bitsound.load_model(out / "model.pt")
    rows = ["path,label"]
    for i, label in enumerate([model.labels[0], "not-a-class"]):
        path = tmp_path / f"{i}.wav"
        sf.write(path, np.random.default_rng(i).normal(0, 0.1, 16000), 16000)
        rows.append(f"{path.name},{label}")
    (tmp_path / "bad.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "good.csv").write_text("\n".join(rows[:2]) + "\n")
    assert main(["evaluate", "--model", str(out / "model.pt"), "--data",
                 f"manifest:{tmp_path / 'good.csv'}", "--no-cache", "--json"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--model", str(out / "model.pt"), "--data",
                 f"manifest:{tmp_path / 'bad.csv'}", "--no-cache", "--json"]) == 2
    assert "not-a-class" in capsys.readouterr().err


def test_complexity_json_and_budget(trained, capsys):
    out, _ = trained
    capsys.readouterr()
    assert main(["complexity", "--model", str(out / "model.pt"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    for key in ("params", "nonzero_params", "macs", "bops", "bytes", "layers"):
        assert key in report
    model = bitsound.load_model(out / "model.pt")
    assert report["params"] == sum(p.numel() for p in model.net.parameters())
    assert main(["complexity", "--model", str(out / "model.pt"), "--max-kb", "1",
                 "--max-macs", "1000"]) == 1
    err = capsys.readouterr().err
    assert "over budget" in err and "KB" in err


def test_keep_last_scores_the_last_epoch_not_the_best(trained, tmp_path):
    """With train.keep: last the held-out split never picks the model: the kept epoch is the last
    one, and its held-out accuracy is the one log.jsonl records for that epoch."""
    _, cache = trained
    out = tmp_path / "last"
    assert main(["train", "--recipe", "quickstart", "--data", TINY, "--out", str(out), "--cache", str(cache),
                 "--set", "train.epochs=3", "--set", "train.keep=last", "-q"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert metrics["best_epoch"] == metrics["epochs_run"] == 3
    assert metrics["held_out"]["accuracy"] == pytest.approx(log[-1]["val_accuracy"])
