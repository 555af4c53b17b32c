"""The rules of ``bitsound compress`` checked on tiny networks without training them.

A prune stage is run through :class:`bitsound.compress.pipeline._Run` on random features, with the
deciding accuracy replaced by a function of the network where a test needs to steer it: size
targets (params, kb at 32 and 16 bits) are compared with a linear scan over the same plan (the
slow obvious twin of the binary search), and undoing a step must give back the model before it,
the channels it removed and, for hybrid pruning, the input rather than its sparsified copy.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from bitsound.complexity import complexity_report
from bitsound.compress import prune as P
from bitsound.compress import quantize as Q
from bitsound.compress.config import FinetuneSettings, PruneStage, load_pipeline, parse_pipeline
from bitsound.compress.data import CompressData, _validation_part
from bitsound.compress.pipeline import _Run, check_stages, compress, stage_train_config
from bitsound.config import apply_overrides, parse_recipe
from bitsound.data import open_dataset
from bitsound.errors import ConfigError, DataError
from bitsound.experiment import without_bad_clips
from bitsound.modelfile import build_net, feature_shape, save_model
from bitsound.models import build_model
from bitsound.nn.layers import QuantLinear
from bitsound.nn.quantizers import Int8Activation
from bitsound.pipeline import FeatureSet
from bitsound.report.results import SplitInfo
from bitsound.train.tasks import DistillationTask

LABELS = ["a", "b", "c"]


def recipe(**extra):
    return parse_recipe({"name": "t", "data": {"spec": "synthetic"},
                         "audio": {"sample_rate": 8000, "clip_seconds": 0.5},
                         "frontend": {"kind": "logmel", "n_mels": 16, "n_fft": 256, "hop_length": 128},
                         "model": {"name": "cnn2d",
                                   "params": {"channels": [8, 12, 16], "convs_per_stage": 1}},
                         "train": {"epochs": 1, "batch_size": 8, "optimizer": {"lr": 0.01}}, **extra})


def features(shape, n, seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % len(LABELS)
    return FeatureSet(x=torch.randn(n, *shape, generator=g), y=y, clip_of_window=np.arange(n),
                      clip_y=y.numpy())


def randomized(net: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 if "weight" in name else 0.1))
    return net.eval()


def make_run(tmp_path, *, r=None, stages=None):
    r = r or recipe()
    shape = tuple(feature_shape(r))
    data = CompressData(recipe=r, labels=LABELS, split=SplitInfo(kind="group"), train=features(shape, 24, 1),
                        validation=features(shape, 9, 2), held_out=features(shape, 9, 3), criterion="test",
                        data="random")
    net = randomized(build_net(r, len(LABELS)))
    pipeline = parse_pipeline({"name": "t", "export": False, "stages": stages or [{"kind": "fp16"}]})
    run = _Run(pipeline, type("Model", (), {"net": net})(), data, tmp_path, show_progress=False)
    run.base_criterion = 1.0
    return run, net


def stage(**kw):
    return PruneStage.model_validate({"kind": "prune", "finetune": {"epochs": 0}, **kw})


def n_params(net):
    return sum(p.numel() for p in net.parameters())


# ---- size targets -------------------------------------------------------------------------------
def _fewest_by_scan(run, net, target_kb, *, bits):
    """The slow twin: try 1, 2, 3 ... channels of the same plan until the target is met."""
    plan = P.plan_pruning(net, run.example, importance=P.L1Importance())
    for k in range(1, plan.total + 1):
        trial = P.copy_network(net)
        P.apply_plan(trial, run.example, plan, k)
        if bits == 16:
            Q.to_fp16(trial, layers="all")
        if complexity_report(trial, run.data.input_shape)["kb"]["dcase2020"] <= target_kb:
            return k
    raise AssertionError("the target cannot be met")


@pytest.mark.parametrize("bits", [32, 16])
def test_a_kb_target_is_met_with_the_fewest_channels_at_its_bits(tmp_path, bits):
    run, net = make_run(tmp_path)
    kb32 = complexity_report(net, run.data.input_shape)["kb"]["dcase2020"]
    target = 0.55 * kb32 if bits == 32 else 0.3 * kb32  # fp16 halves the weights: a deeper cut
    want = _fewest_by_scan(run, P.copy_network(net), target, bits=bits)
    st = stage(per_step=0.95, target={"kb": target, "rule": "dcase2020", "bits": bits})
    pruned, notes, steps = run.prune_structured(net, st, tmp_path / "p")
    assert len(steps) == 1 and sum(steps[0].removed.values()) == want  # one step, exactly enough
    assert "target met after 1 steps" in notes
    half = P.copy_network(pruned)
    if bits == 16:
        Q.to_fp16(half, layers="all")
    assert complexity_report(half, run.data.input_shape)["kb"]["dcase2020"] <= target
    if bits == 16:  # counted at 32 bits the pruned network is above the target: 16 bits was used
        assert complexity_report(pruned, run.data.input_shape)["kb"]["dcase2020"] > target


def test_bits_needs_a_kb_target():
    with pytest.raises(ConfigError, match="target.bits"):
        parse_pipeline({"name": "p", "stages": [{"kind": "prune", "target": {"params": 10, "bits": 16}}]})


def test_the_shipped_fp16_pipeline_counts_500_kb_at_16_bits():
    target = load_pipeline("wavecnn-prune-fp16").stages[0].target
    assert (target.kb, target.rule, target.bits) == (500, "dcase2020", 16)


# ---- accuracy floors and undoing a step ------------------------------------------------------------
def test_max_accuracy_drop_sets_the_floor_below_the_input_and_undoes_the_step_under_it(tmp_path):
    run, net = make_run(tmp_path)
    run.base_criterion = 0.9
    first = n_params(net)
    run.data.criterion_accuracy = lambda m: 0.9 * n_params(m) / first  # falls as the network shrinks
    st = stage(per_step=0.1, max_accuracy_drop=0.2, max_steps=30)
    pruned, notes, steps = run.prune_structured(net, st, tmp_path / "p")
    assert "accuracy floor 70.00 % on the deciding data" in notes
    assert steps[-1].reverted and not any(s.reverted for s in steps[:-1])
    assert steps[-1].criterion_accuracy < 0.7 <= run.data.criterion_accuracy(pruned)
    assert n_params(pruned) == steps[-2].params  # the model of the step before is kept


def test_undoing_a_step_gives_back_its_channels_to_a_ratio_target(tmp_path):
    run, net = make_run(tmp_path)
    accuracy = iter([1.0, 0.0])  # step 1 passes, step 2 (which would reach the ratio) fails
    run.data.criterion_accuracy = lambda m: next(accuracy)
    total = P.prunable_channels(net, run.example)
    st = stage(per_step=0.5, target={"ratio": 0.75}, min_accuracy=0.5)
    pruned, notes, steps = run.prune_structured(net, st, tmp_path / "p")
    assert [s.reverted for s in steps] == [False, True]
    assert sum(steps[0].removed.values()) + sum(steps[1].removed.values()) >= 0.75 * total
    left = P.prunable_channels(pruned, run.example)
    assert left == total - sum(steps[0].removed.values())
    assert "the size target was not reached" in notes  # the undone step's channels do not count


def test_undoing_the_first_hybrid_step_keeps_the_input_not_its_sparsified_copy(tmp_path):
    run, net = make_run(tmp_path)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    run.data.criterion_accuracy = lambda m: 0.0
    st = stage(importance="hybrid", per_step=0.2, min_accuracy=0.5, taylor_examples=8)
    pruned, notes, steps = run.prune_structured(net, st, tmp_path / "p")
    assert [s.reverted for s in steps] == [True]
    assert any("undone, the input model kept" in n for n in notes)
    assert before.keys() == pruned.state_dict().keys()
    assert all(torch.equal(before[k], v) for k, v in pruned.state_dict().items())


# ---- training between steps -----------------------------------------------------------------------
def test_a_fine_tune_leaves_its_log_but_not_its_checkpoints(tmp_path):
    run, net = make_run(tmp_path)
    summary = run.finetune(net, FinetuneSettings(epochs=1), tmp_path / "step001")
    assert summary["epochs"] == 1
    assert (tmp_path / "step001" / "log.jsonl").is_file()
    assert not (tmp_path / "step001" / "checkpoints").exists()


def test_distillation_keeps_per_example_mixup(tmp_path):
    r = recipe(augment={"mixup_alpha": 0.4, "mixup_per_example": True})
    run, _ = make_run(tmp_path, r=r)
    settings = FinetuneSettings.model_validate({"epochs": 1, "distill": {"temperature": 2.0}})
    task = run.make_task(r, settings)
    assert isinstance(task, DistillationTask) and task.mixup_per_example and task.mixup_alpha == 0.4


def test_a_schedule_of_another_name_replaces_the_recipes_whole():
    r = recipe(train={"epochs": 3, "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.8},
                      "schedule": {"name": "cosine", "warmup_epochs": 1, "per_step": True}})
    cfg = stage_train_config(r, FinetuneSettings.model_validate(
        {"epochs": 2, "train": {"schedule": {"name": "constant"}, "optimizer": {"lr": 1.0e-4}}}))
    assert cfg.schedule.name == "constant" and not cfg.schedule.per_step
    # the same name merges: the recipe's momentum stays beside the stage's rate
    assert (cfg.optimizer.name, cfg.optimizer.lr, cfg.optimizer.momentum) == ("sgd", 1.0e-4, 0.8)


def test_a_typo_in_the_last_stage_fails_before_the_data_is_opened(tmp_path):
    r = recipe(data={"spec": f"esc10:{tmp_path / 'no-such-folder'}"})
    save_model(tmp_path / "model.pt", recipe=r, labels=LABELS, net=build_net(r, 3))
    pipeline = parse_pipeline({"name": "p", "stages": [
        {"kind": "fp16"}, {"kind": "finetune", "epochs": 1, "train": {"optimizer": {"lr": -1}}}]})
    with pytest.raises(ConfigError, match=r"(?s)stage 02-finetune: .*optimizer\.lr"):
        check_stages(pipeline, r)
    with pytest.raises(ConfigError, match=r"stage 02-finetune"):  # not the data's DataError
        compress(pipeline, model_path=tmp_path / "model.pt", out_dir=tmp_path / "out", cache=None,
                 show_progress=False)
    assert not (tmp_path / "out").exists()


def test_pipeline_references_must_be_published_systems():
    with pytest.raises(ConfigError, match=r"references.*unknown published systems \['seed999'\]"):
        parse_pipeline({"name": "p", "references": ["seed999"], "stages": [{"kind": "fp16"}]})


# ---- overrides ------------------------------------------------------------------------------------
def test_overrides_index_lists_and_every_bad_one_names_its_key():
    data = {"name": "p", "stages": [{"kind": "prune", "target": {"kb": 1}}, {"kind": "fp16"}]}
    out = apply_overrides(data, ["stages.0.target.kb=250", "stages.1.layers=conv", "stages.0.new.x=[1, 2]"])
    assert out["stages"][0]["target"]["kb"] == 250 and out["stages"][1]["layers"] == "conv"
    assert out["stages"][0]["new"] == {"x": [1, 2]} and data["stages"][0]["target"]["kb"] == 1
    bad = {"name.foo=1": "'name' is a value", "stages.0.name=[a": r"'stages\.0\.name' is not valid YAML",
           "stages.9.kind=fp16": "'9' is not an index of a 2-item list", "stages.x.kind=fp16": "not an index",
           "stages..kind=fp16": "empty part", "stages.0.kind.x=1": "'kind' is a value",
           "name=2001-13-01": "'name' is not valid YAML"}
    for item, message in bad.items():
        with pytest.raises(ConfigError, match=message):
            apply_overrides(data, [item])
    with pytest.raises(ConfigError, match=r"stages\.0\.name.*not valid YAML"):
        load_pipeline("int8-ptq", overrides=["stages.0.name=[a"])


# ---- int8 -----------------------------------------------------------------------------------------
def test_int8_codes_are_the_layers_own_float32_codes():
    layer = QuantLinear(64, 2, input_quantizer=Int8Activation(), weight_quantizer=None).eval()
    q = layer.input_quantizer
    q.min_val.fill_(-1.3)
    q.max_val.fill_(2.1)
    q.observed.fill_(1)
    scale, zero = q.qparams()
    s32 = torch.tensor(scale, dtype=torch.float32)
    # values next to half-integers of x / scale, where a float64 division can round the other way
    found = []
    for k in range(-100, 100):
        centre = torch.tensor((k + 0.5) * scale, dtype=torch.float32)
        for step in range(-3, 4):
            x = torch.nextafter(centre, torch.tensor(np.inf if step > 0 else -np.inf)) if step else centre
            for _ in range(abs(step) - 1):
                x = torch.nextafter(x, torch.tensor(np.inf if step > 0 else -np.inf))
            if torch.round(x / s32) != torch.round(x.double() / float(s32)):
                found.append(float(x))
    assert len(found) >= 4  # the test has cases where the two divisions disagree
    x = torch.tensor(found[:64], dtype=torch.float32)
    x = torch.cat([x, torch.zeros(64 - len(x))]).view(1, 64)
    codes, _ = Q.int8_codes(nn.Sequential(layer).eval(), x)
    want = (torch.round(x / s32) + zero).clamp(-128, 127).to(torch.int64)
    assert torch.equal(codes["0"], want)
    # and these are the codes the layer's forward dequantizes
    assert torch.equal(q(x), (want - zero).to(torch.float32) * s32)


def test_int8_codes_can_feed_a_layer_other_codes():
    torch.manual_seed(0)
    net = nn.Sequential(QuantLinear(8, 4, input_quantizer=Int8Activation(), weight_quantizer=None),
                        nn.ReLU(),
                        QuantLinear(4, 2, input_quantizer=Int8Activation(), weight_quantizer=None)).eval()
    for q in (net[0].input_quantizer, net[2].input_quantizer):
        q.min_val.fill_(-2.0)
        q.max_val.fill_(2.0)
        q.observed.fill_(1)
    x = torch.randn(1, 8)
    own, logits = Q.int8_codes(net, x)
    _, zero = net[0].input_quantizer.qparams()
    fed, fed_logits = Q.int8_codes(net, x, feed={"0": torch.full((1, 8), zero)})
    # the first layer computes on zeros: its output is its bias, and the second layer sees that
    assert torch.equal(fed["0"], own["0"])  # its own codes are still reported
    assert torch.allclose(fed_logits, net[2](torch.relu(net[0].bias)[None]))
    assert not torch.allclose(fed_logits, logits)


def test_batchnorm_folds_on_the_layers_device():
    net = nn.Sequential(nn.Conv2d(1, 3, 3, bias=False), nn.BatchNorm2d(3)).to("meta")
    assert Q.fold_batchnorm(net) == ["1"]
    assert net[0].bias.device.type == "meta"


# ---- pruning binary networks ----------------------------------------------------------------------
def test_sparsify_leaves_binary_layers_latent_weights_alone():
    net = build_model("thesis_xnor5", input_shape=(1, 32, 32), n_classes=3)
    binary = [m for m in net.modules() if getattr(m, "weight_bits", 32) == 1]
    floats = [m for m in net.modules() if isinstance(m, P.WEIGHT_LAYERS) and m not in binary]
    assert binary and floats
    before = [m.weight.detach().clone() for m in binary]
    zeroed = P.sparsify(net, 0.9)
    assert zeroed == int(0.9 * sum(m.weight.numel() for m in floats))
    assert all(torch.equal(b, m.weight) for b, m in zip(before, binary, strict=True))


# ---- data ---------------------------------------------------------------------------------------------
def test_validation_is_split_by_group_or_refused_unless_clips_are_asked_for():
    from bitsound.compress.config import ValidationSettings

    dataset = open_dataset("synthetic:n_per_class=4,n_classes=3,n_locations=3")
    idx = np.arange(len(dataset.clips))
    with pytest.raises(ConfigError, match=r"validation part: the 3 groups.*validation\.by=clip"):
        _validation_part(dataset, idx, ValidationSettings(fraction=0.15))
    fit, val, how = _validation_part(dataset, idx, ValidationSettings(fraction=0.15, by="clip"))
    assert len(fit) + len(val) == len(idx) and "stratified by clip (validation.by: clip)" in how
    many = open_dataset("synthetic:n_per_class=6,n_classes=3,n_locations=9")
    idx = np.arange(len(many.clips))
    fit, val, how = _validation_part(many, idx, ValidationSettings(fraction=0.2))
    assert "group-disjoint" in how
    assert not {many.clips[i].group for i in fit} & {many.clips[i].group for i in val}


def test_leaving_out_bad_clips_refuses_an_emptied_part():
    train, held = without_bad_clips(np.array([0, 1, 2]), np.array([3, 4]), {1}, val_name="fold4")
    assert train.tolist() == [0, 2] and held.tolist() == [3, 4]
    with pytest.raises(DataError, match=r"every validation \('fold4'\) clip is unreadable"):
        without_bad_clips(np.array([0, 1]), np.array([3, 4]), {3, 4}, val_name="fold4")
    with pytest.raises(DataError, match="every training clip"):
        without_bad_clips(np.array([0]), np.array([3]), {0}, val_name=None)
