"""Waveform models through the one training loop: stored clips cropped per batch, multi-crop
validation and evaluation, between-class learning with the KL loss, unseen-device splits and
per-device scores with seen / unseen devices marked (bitsound train / evaluate / predict)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from torch import nn

from bitsound.cli import main
from bitsound.config import parse_recipe
from bitsound.data import open_dataset, unseen_device_split
from bitsound.errors import ConfigError, DataError
from bitsound.experiment import holdout_split, open_recipe_data
from bitsound.metrics import per_device_accuracy
from bitsound.models import MODELS, ModelParams, register_model
from bitsound.pipeline import build_features

DATA = "synthetic:n_per_class=8,duration=2,seed=4"
WAVE_MODEL = "test-wave1d"


class _TinyWave(nn.Module):
    """A small 1-D CNN that insists on its input length (so uncropped batches would fail)."""

    def __init__(self, input_shape, n_classes):
        super().__init__()
        self.input_shape = tuple(input_shape)
        channels = input_shape[0]
        self.body = nn.Sequential(nn.Conv1d(channels, 8, 33, stride=8), nn.ReLU(),
                                  nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(8, n_classes))

    def forward(self, x):
        if tuple(x.shape[1:]) != self.input_shape:
            raise AssertionError(f"got {tuple(x.shape)}, built for {self.input_shape}")
        return self.body(x)


if WAVE_MODEL not in MODELS:
    register_model(WAVE_MODEL, params=ModelParams, example_input=(2, 4000),
                   description="test-only waveform CNN")(
        lambda *, input_shape, n_classes: _TinyWave(input_shape, n_classes))

RECIPE = {
    "name": "wave-test",
    "data": {"spec": DATA, "split": {"kind": "unseen_devices", "val_devices": ["dev_b"],
                                     "val_fraction": 0.3, "seed": 1}},
    "audio": {"sample_rate": 8000, "channels": "stereo", "clip_seconds": 0.5,
              "crop": {"source_seconds": 2.0, "pad": 0.5, "test_crops": 3}},
    "frontend": {"kind": "raw"},
    "model": {"name": WAVE_MODEL},
    "augment": {"random_crop": True, "gain_db": 6, "noise": {"p": 0.5}, "between_class": {}},
    "train": {"epochs": 2, "batch_size": 16, "loss": "kl_divergence",
              "optimizer": {"name": "adam", "lr": 1e-3, "weight_decay": 0},
              "schedule": {"name": "plateau", "gamma": 0.5, "patience": 5,
                           "monitor": "val_log_loss"}},
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("wave")
    recipe_file = root / "wave.yaml"
    recipe_file.write_text(yaml.safe_dump(RECIPE))
    out, cache = root / "run", root / "cache"
    assert main(["train", "--recipe", str(recipe_file), "--out", str(out), "--cache",
                 str(cache), "-q"]) == 0
    return out, cache


def test_training_crops_stored_clips_and_records_devices(trained):
    out, _ = trained
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train_devices"] == ["dev_a", "dev_c", "dev_d"]
    rows = {row["device"]: row for row in metrics["held_out"]["per_device"]}
    assert rows["dev_b"]["seen"] is False and rows["dev_a"]["seen"] is True
    assert sum(row["n"] for row in rows.values()) == metrics["held_out"]["n"]
    assert metrics["split"]["kind"] == "unseen_devices"
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2] and all("val_log_loss" in r for r in log)


def test_evaluate_prints_accuracy_per_device_with_seen_and_unseen(trained, capsys):
    out, cache = trained
    capsys.readouterr()
    assert main(["evaluate", "--model", str(out / "model.pt"), "--data", DATA, "--json",
                 "--cache", str(cache)]) == 0
    report = json.loads(capsys.readouterr().out)
    devices = {row["device"]: row for row in report["per_device"]}
    assert set(devices) == {"dev_a", "dev_b", "dev_c", "dev_d"}
    assert [devices[d]["seen"] for d in sorted(devices)] == [True, False, True, True]
    correct = sum(round(row["accuracy"] * row["n"]) for row in devices.values())
    assert correct == round(report["accuracy"] * report["n"])
    assert main(["evaluate", "--model", str(out / "model.pt"), "--data", DATA,
                 "--cache", str(cache)]) == 0
    text = capsys.readouterr().out
    assert "per device" in text and "unseen" in text and "dev_b" in text


def test_predict_averages_the_test_crops(trained, tmp_path, capsys):
    out, _ = trained
    path = tmp_path / "mono.wav"
    t = np.arange(8000 * 3) / 8000
    sf.write(path, 0.2 * np.sin(2 * np.pi * 440 * t), 8000)
    capsys.readouterr()
    assert main(["predict", "--model", str(out / "model.pt"), str(path), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["n_windows"] == 3  # audio.crop.test_crops


def test_validation_features_are_the_test_crops_and_training_stores_sources(tmp_path, caplog):
    recipe = parse_recipe(RECIPE)
    dataset = open_recipe_data(recipe)
    index = {label: i for i, label in enumerate(dataset.labels)}
    with caplog.at_level(logging.INFO, logger="bitsound.pipeline"):
        windows = build_features(dataset, range(4), recipe=recipe, label_index=index, cache=None,
                                 show_progress=False)
    assert windows.x.shape == (12, 2, 4000)  # 3 crops of 0.5 s per clip
    assert np.bincount(windows.clip_of_window).tolist() == [3, 3, 3, 3]
    assert caplog.text.count("mono clips are duplicated to both channels") == 1
    sources = build_features(dataset, range(4), recipe=recipe, label_index=index, cache=None,
                             show_progress=False, view="source")
    assert sources.x.shape == (4, 2, 16000)
    torch.testing.assert_close(sources.x[:, 0], sources.x[:, 1])  # mono duplicated


# ==================================================================== splits and per-device rows
def test_unseen_device_split_keeps_those_devices_out_of_training():
    dataset = open_dataset(DATA)
    split = unseen_device_split(dataset, val_devices=["dev_b", "dev_c"], val_fraction=0.3, seed=1)
    clips = dataset.clips
    assert not {clips[i].device for i in split.train} & {"dev_b", "dev_c"}
    assert {"dev_b", "dev_c"} <= {clips[i].device for i in split.val}
    assert not {clips[i].group for i in split.train} & {clips[i].group for i in split.val}
    dropped = set(range(len(clips))) - set(split.train) - set(split.val)
    assert dropped and all(clips[i].device in ("dev_b", "dev_c") for i in dropped)
    with pytest.raises(ConfigError, match="must name some but not all"):
        unseen_device_split(dataset, val_devices=["dev_z"], val_fraction=0.3, seed=1)
    with pytest.raises(DataError, match="needs a device on every clip"):
        unseen_device_split(open_dataset(f"fsdd:{_fsdd()}"), val_devices=["x"], val_fraction=0.3,
                            seed=0)
    with pytest.raises(ConfigError, match="needs data.split.val_devices"):
        parse_recipe({**RECIPE, "data": {"spec": DATA, "split": {"kind": "unseen_devices"}}})
    recipe = parse_recipe(RECIPE)
    assert holdout_split(recipe, open_recipe_data(recipe)).name.startswith("unseen_devices(dev_b")


def _fsdd():
    from pathlib import Path

    path = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fsdd"
    if not path.is_dir():
        pytest.skip("../shared/data/fsdd is absent")
    return path


def test_per_device_accuracy_rows_in_natural_order():
    y = np.array([0, 1, 1, 0, 1])
    probs = np.eye(2)[[0, 1, 0, 0, 0]]
    rows = per_device_accuracy(y, probs, ["S10", "A", "S2", "S2", None], seen=["A", "S2"])
    assert [r["device"] for r in rows] == ["(none)", "A", "S2", "S10"]
    assert [(r["n"], r["accuracy"], r["seen"]) for r in rows] == [
        (1, 0.0, False), (1, 1.0, True), (2, 0.5, True), (1, 1.0, False)]
    assert per_device_accuracy(y, probs, ["A"] * 5)[0]["seen"] is None
