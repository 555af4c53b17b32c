"""``bitsound compress`` end to end on tiny data: every stage kind, the stopping rules, the shipped
pipelines on small members of the families they were written for.

Each run trains a small model for one epoch on synthetic clips, then compresses it; the full runs
(ESC-10, FSDD, TAU) are the README's commands.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

import bitsound
from bitsound.cli import main
from bitsound.complexity import complexity_report
from bitsound.errors import ConfigError
from bitsound.modelfile import feature_shape
from bitsound.report.results import CompressResult, load_result

DATA = "synthetic:n_per_class=4,n_classes=3,n_locations=4"
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
LOGMEL = {"kind": "logmel", "n_fft": 256, "hop_length": 128, "n_mels": 16}


def recipe(tmp_path, name, model, *, frontend=None, audio=None, data=DATA, split=None):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "name": name, "data": {"spec": data, "split": split or {"kind": "group", "val_fraction": 0.3}},
        "audio": audio or {"sample_rate": 8000, "clip_seconds": 1.0}, "frontend": frontend or LOGMEL,
        "model": model, "train": {"epochs": 1, "batch_size": 8, "optimizer": {"lr": 0.003}}}))
    return path


def train(tmp_path, path, name="base"):
    out = tmp_path / name
    assert main(["train", "--recipe", str(path), "--out", str(out), "--no-cache", "-q"]) == 0
    return out / "model.pt"


def compress(tmp_path, model, pipeline, *sets, out="compressed"):
    args = ["compress", "--model", str(model), "--recipe", str(pipeline), "--out", str(tmp_path / out),
            "--no-cache", "-q"]
    # the engine checks on 4 held-out clips: fast. The tiny data's training clips come from 3
    # locations of 3 clips: too few groups for a group-disjoint validation part, so the tests opt
    # in to the clip-level one (the refusal itself: tests/test_compress_rules.py)
    for s in ("engine_examples=4", "validation.by=clip", *sets):
        args += ["--set", s]
    assert main(args) == 0
    return load_result(tmp_path / out / "compress.json", CompressResult)


@pytest.mark.slow
def test_every_stage_kind_writes_a_loadable_measured_model(tmp_path):
    base = train(tmp_path, recipe(tmp_path, "cnn", {"name": "cnn2d", "params": {
        "channels": [8, 16, 24], "convs_per_stage": 1}}))
    pipeline = tmp_path / "all.yaml"
    pipeline.write_text(yaml.safe_dump({"name": "all", "stages": [
        {"kind": "prune", "importance": "taylor", "per_step": 0.25, "target": {"ratio": 0.4},
         "taylor_examples": 16, "finetune": {"epochs": 1}},
        {"kind": "prune", "method": "unstructured", "amount": 0.5, "finetune": {"epochs": 0}},
        {"kind": "quantize", "mode": "qat", "layers": "conv", "calibration_examples": 16,
         "finetune": {"epochs": 1, "distill": {"temperature": 2.0}}},
        {"kind": "fp16"},
        {"kind": "distill", "epochs": 1}]}))
    result = compress(tmp_path, base, pipeline)
    rows = {r.stage: r for r in result.rows}
    assert list(rows) == ["00-input", "01-prune", "02-prune", "03-quantize", "04-fp16", "05-distill"]
    first, pruned, sparse, int8, half = (rows[k] for k in ("00-input", "01-prune", "02-prune",
                                                          "03-quantize", "04-fp16"))
    # structured: 40 % of the 48 prunable channels removed, the network physically smaller
    assert sum(sum(s.removed.values()) for s in pruned.steps if not s.reverted) == 20
    assert pruned.params < first.params and pruned.macs < first.macs
    assert pruned.bsnn_bytes < first.bsnn_bytes
    # unstructured: same shapes, half the conv weights zero, counted by the DCASE 2020 rule
    assert sparse.params == pruned.params and sparse.nonzero_params < pruned.nonzero_params
    assert sparse.kb["dcase2020"] < pruned.kb["dcase2020"]
    assert sparse.kb["dcase2022"] == pruned.kb["dcase2022"]
    # int8 convs (the masks kept through QAT), then fp16 for the classifier
    assert int8.nonzero_params < int8.params and int8.kb["storage"] < 0.4 * sparse.kb["storage"]
    assert int8.engine["int8_max_step"] <= 1 and int8.engine["int8_layer_max_step"] <= 1
    assert int8.engine["int8_equal"] >= 0.999 * int8.engine["int8_codes"]
    assert half.kb["storage"] < int8.kb["storage"]
    for row in result.rows:
        assert row.engine["labels_equal"] == row.engine["examples"]
        model = bitsound.load_model(row.model)
        assert model.metrics["stage"] == row.stage
        assert sum(p.numel() for p in model.net.parameters()) == row.params
    last = bitsound.load_model(tmp_path / "compressed" / "model.pt")
    assert last.metrics["stage"] == "05-distill"
    table = (tmp_path / "compressed" / "compress.md").read_text()
    assert "| 03-quantize |" in table and "int8 (qat, int8 activations)" in table
    assert json.loads((tmp_path / "compressed" / "compress.json").read_text())["pipeline"] == "all"


@pytest.mark.slow
def test_accuracy_floor_undoes_the_step_below_it_and_a_size_target_is_met_exactly(tmp_path):
    base = train(tmp_path, recipe(tmp_path, "cnn", {"name": "cnn2d", "params": {
        "channels": [8, 16, 24], "convs_per_stage": 1}}))
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(yaml.safe_dump({"name": "p", "export": False, "stages": [
        {"kind": "prune", "per_step": 0.3, "min_accuracy": 1.0, "finetune": {"epochs": 0}}]}))
    result = compress(tmp_path, base, pipeline, out="floor")
    first, row = result.rows
    assert row.steps[0].reverted and len(row.steps) == 1
    assert row.params == first.params  # the step that fell below the floor was undone
    target = first.params // 2
    result = compress(tmp_path, base, pipeline, "stages.0.min_accuracy=null",
                      f"stages.0.target={{params: {target}}}", "stages.0.per_step=0.9", out="budget")
    pruned = result.rows[1]
    assert pruned.params <= target
    # the last step removed no more channels than needed: one channel fewer misses the target
    assert pruned.params > target - 8 * 24 * 9 and pruned.bsnn_bytes is None
    # the accuracy-vs-KB table reads a compress run's stages from its folder, wherever it moved
    spec = importlib.util.spec_from_file_location("compress_table", BENCHMARKS / "compress_table.py")
    table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table)
    moved = shutil.move(tmp_path / "budget", tmp_path / "elsewhere")
    rows = table.rows_of(Path(moved), "storage")
    assert [r["model"] for r in rows] == ["elsewhere/00-input", "elsewhere/01-prune"]
    assert [r["params"] for r in rows] == [first.params, pruned.params]


def test_a_model_trained_on_every_clip_is_refused(tmp_path):
    base = train(tmp_path, recipe(tmp_path, "cnn", {"name": "cnn2d", "params": {"channels": [4]}},
                                  split={"kind": "none"}))
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(yaml.safe_dump({"name": "p", "stages": [{"kind": "fp16"}]}))
    from bitsound.compress import compress as run
    from bitsound.compress import load_pipeline

    with pytest.raises(ConfigError, match="trained on every clip.*held-out split"):
        run(load_pipeline(str(pipeline)), model_path=base, out_dir=tmp_path / "x", cache=None,
            show_progress=False)


@pytest.mark.slow
def test_acdnet_to_micro_runs_on_a_small_acdnet(tmp_path):
    base = train(tmp_path, recipe(
        tmp_path, "acd", {"name": "acdnet", "params": {"channels": [4, 8, 4, 4, 6, 6, 6, 6, 8, 8, 6]}},
        frontend={"kind": "raw"}, data=DATA + ",duration=2.0",
        audio={"sample_rate": 20000, "clip_seconds": 1.51125,
               "crop": {"source_seconds": 2.0, "pad": 0.5, "test_crops": 2}}))
    model = bitsound.load_model(base)
    kb = complexity_report(model.net, feature_shape(model.recipe))["kb"]["dcase2022"]
    # the shipped kb target (dcase2022, 32 bits), scaled to this tiny ACDNet: 75 % of its size
    result = compress(tmp_path, base, "acdnet-to-micro", f"stages.0.target.kb={0.75 * kb}",
                      "stages.0.per_step=0.2", "stages.0.taylor_examples=8", "stages.1.epochs=1",
                      "stages.2.calibration_examples=16")
    first, micro, tuned, q = result.rows
    assert [r.stage for r in result.rows] == ["00-input", "01-micro", "02-micro-finetuned", "03-qmicro"]
    assert any("sparsified" in n for n in micro.notes)
    # the SFEB's last conv feeds a channel-to-row permute: left unpruned, and said so
    assert any("left unpruned" in n and "sfeb.3 keeps 8 " in n for n in micro.notes)
    assert micro.params < first.params and q.params <= tuned.params
    assert micro.kb["dcase2022"] <= 0.75 * kb and any("target met" in n for n in micro.notes)
    assert q.kb["storage"] < 0.45 * tuned.kb["storage"]
    assert q.engine["int8_max_step"] <= 1
    table = (tmp_path / "compressed" / "compress.md").read_text()  # the seed's numbers beside ours
    assert "Micro-ACDNet: 96.25 %" in table and "QMicro-ACDNet (8-bit): 92.75 %" in table


@pytest.mark.slow
def test_bcresnet_compress_runs_on_bcresnet_asc_1(tmp_path):
    base = train(tmp_path, recipe(tmp_path, "bc", {"name": "bcresnet-asc-1"},
                                  frontend={**LOGMEL, "n_mels": 32}))
    result = compress(tmp_path, base, "bcresnet-compress", "stages.1.finetune.epochs=1",
                      "stages.1.calibration_examples=16")
    first, pruned, q, half = result.rows
    conv = sum(m.weight.numel() for m in bitsound.load_model(first.model).net.modules()
               if isinstance(m, torch.nn.Conv2d))
    assert first.nonzero_params - pruned.nonzero_params >= int(0.89 * conv) - 1
    assert q.nonzero_params < q.params and half.kb["dcase2020"] <= q.kb["dcase2020"]


@pytest.mark.slow
def test_wavecnn_prune_fp16_runs_on_wavecnn_a(tmp_path):
    from bitsound.compress import quantize as Q
    from bitsound.compress.prune import copy_network

    base = train(tmp_path, recipe(tmp_path, "wave", {"name": "wavecnn-a", "params": {"channels": [8, 8, 8]}},
                                  frontend={"kind": "raw"},
                                  audio={"sample_rate": 8000, "clip_seconds": 1.0, "channels": "stereo"}))
    model = bitsound.load_model(base)
    half_input = copy_network(model.net)
    Q.to_fp16(half_input, layers="all")
    kb16 = complexity_report(half_input, feature_shape(model.recipe))["kb"]["dcase2020"]
    # the shipped target (dcase2020 KB at 16 bits), scaled to this tiny model: 70 % of its fp16 size
    result = compress(tmp_path, base, "wavecnn-prune-fp16", "stages.0.finetune.epochs=1",
                      f"stages.0.target.kb={0.7 * kb16}")
    first, pruned, half = result.rows
    assert pruned.params < first.params and half.kb["storage"] < pruned.kb["storage"]
    # the fp16 stage stores what the target counted: at most the target, and at 32 bits above it
    assert half.kb["dcase2020"] <= 0.7 * kb16 < pruned.kb["dcase2020"]
    assert any("target met" in n for n in pruned.notes)
    assert half.engine["labels_equal"] == half.engine["examples"]
