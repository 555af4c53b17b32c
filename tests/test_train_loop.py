import json

import pytest
import torch
from torch import nn

from bitsound.audio.augment import FeatureAugment
from bitsound.config import AugmentConfig, ScheduleConfig, TrainConfig
from bitsound.errors import CheckpointError, ConfigError
from bitsound.train import ClassificationTask, fit
from bitsound.train.loop import seed_everything
from bitsound.train.schedules import cosine_factor, sgdr_factor


def toy_data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.randn(n, 1, 4, 8, generator=g) + y.view(-1, 1, 1, 1).float()
    return x, y


def toy_model():
    seed_everything(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(32, 16), nn.ReLU(), nn.Dropout(0.2),
                         nn.Linear(16, 3))


def accuracy_validator(x, y):
    def validate(model):
        return {"accuracy": float((model(x).argmax(1) == y).float().mean())}
    return validate


def run(tmp_path, *, epochs=4, validate=None, resume=False, **cfg):
    x, y = toy_data()
    model = toy_model()
    train_cfg = TrainConfig(epochs=epochs, batch_size=16, **cfg)
    augment = FeatureAugment(AugmentConfig(time_shift=0.2, time_masks=1, freq_masks=1, gain_db=3))
    result = fit(model=model, task=ClassificationTask(mixup_alpha=0.2), train_x=x, train_y=y,
                 cfg=train_cfg, out_dir=tmp_path, augment=augment, validate=validate,
                 resume=resume, fingerprint="toy", show_progress=False)
    return model, result


def test_training_learns_and_writes_files(tmp_path):
    x, y = toy_data(seed=1)
    model, result = run(tmp_path, epochs=6, validate=accuracy_validator(x, y))
    lines = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == list(range(1, 7))
    assert {"lr", "train_loss", "val_accuracy", "seconds"} <= set(lines[0])
    assert lines[-1]["train_loss"] < lines[0]["train_loss"]
    assert (tmp_path / "checkpoints" / "best.pt").is_file()
    assert (tmp_path / "checkpoints" / "last.pt").is_file()
    assert result.best_metric == max(r["val_accuracy"] for r in lines)
    assert not list(tmp_path.rglob("*.tmp"))


def test_same_seed_same_weights_on_cpu(tmp_path):
    a, _ = run(tmp_path / "a")
    b, _ = run(tmp_path / "b")
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)


def test_resume_after_crash_matches_uninterrupted_run(tmp_path):
    x, y = toy_data(seed=1)
    validate = accuracy_validator(x, y)
    straight, _ = run(tmp_path / "straight", epochs=5, validate=validate)

    calls = {"n": 0}

    def crashing(model):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated crash")
        return validate(model)

    with pytest.raises(RuntimeError, match="simulated crash"):
        run(tmp_path / "resumed", epochs=5, validate=crashing)
    resumed, result = run(tmp_path / "resumed", epochs=5, validate=validate, resume=True)
    for pa, pb in zip(straight.state_dict().values(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)
    epochs = [json.loads(line)["epoch"]
              for line in (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3, 4, 5]
    assert result.epochs_run == 5


def test_resume_refuses_another_experiment(tmp_path):
    run(tmp_path, epochs=1)
    x, y = toy_data()
    with pytest.raises(CheckpointError, match="another recipe"):
        fit(model=toy_model(), task=ClassificationTask(), train_x=x, train_y=y,
            cfg=TrainConfig(epochs=2), out_dir=tmp_path, resume=True, fingerprint="other",
            show_progress=False)


def test_early_stopping_stops_when_metric_stalls(tmp_path):
    stalled = lambda model: {"accuracy": 0.5}  # noqa: E731
    _, result = run(tmp_path, epochs=20, validate=stalled,
                    early_stopping={"metric": "val_accuracy", "patience": 2})
    assert result.stopped_early
    assert result.epochs_run == 3 and result.best_epoch == 1


def test_unknown_early_stopping_metric_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="val_acc.*valid: .*val_accuracy"):
        run(tmp_path, validate=lambda m: {"accuracy": 1.0},
            early_stopping={"metric": "val_acc"})


@pytest.mark.parametrize("schedule", [
    {"name": "step", "step_size": 2, "gamma": 0.5},
    {"name": "cosine", "warmup_epochs": 1},
    {"name": "sgdr", "restarts": [2]},
    {"name": "plateau", "patience": 1},
    {"name": "inverse_time", "decay": 0.01},
])
def test_every_schedule_runs(tmp_path, schedule):
    x, y = toy_data()
    _, result = run(tmp_path, epochs=4, validate=accuracy_validator(x, y),
                    schedule=ScheduleConfig(**schedule), balanced_sampling=True)
    assert result.epochs_run == 4


def test_schedule_shapes():
    assert cosine_factor(0, epochs=10, warmup=1, min_factor=0) == pytest.approx(0.5)
    assert cosine_factor(1, epochs=10, warmup=1, min_factor=0) == pytest.approx(1.0)
    assert cosine_factor(10, epochs=10, warmup=1, min_factor=0.1) == pytest.approx(0.1)
    # SGDR: back to the full rate at each restart.
    factors = [sgdr_factor(e, epochs=9, restarts=[3, 6], min_factor=0) for e in range(9)]
    assert factors[0] == factors[3] == factors[6] == 1.0
    assert factors[2] < factors[1] < 1.0


def test_inverse_time_decay_counts_iterations():
    from bitsound.train.schedules import optim_lambda

    f = optim_lambda(ScheduleConfig(name="inverse_time", decay=0.01), epochs=5, min_factor=0,
                     steps_per_epoch=10)
    assert f(0) == 1.0 and f(2) == pytest.approx(1 / 1.2)


def test_without_selection_the_last_epoch_is_kept(tmp_path):
    falling = iter([0.9, 0.5, 0.4, 0.3])
    x, y = toy_data()
    model, result = run(tmp_path, epochs=4, validate=lambda m: {"accuracy": next(falling)},
                        early_stopping={"metric": "val_accuracy", "patience": 1})
    assert result.best_epoch == 1 and result.stopped_early
    falling = iter([0.9, 0.5, 0.4, 0.3])
    x, y = toy_data()
    model = toy_model()
    result = fit(model=model, task=ClassificationTask(), train_x=x, train_y=y,
                 cfg=TrainConfig(epochs=4, batch_size=16,
                                 early_stopping={"metric": "val_accuracy", "patience": 1}),
                 out_dir=tmp_path / "last", validate=lambda m: {"accuracy": next(falling)},
                 select_best=False, show_progress=False)
    assert result.best_epoch == 4 and result.epochs_run == 4 and not result.stopped_early


class RecordingTask(ClassificationTask):
    """Keeps a copy of the weights each training step starts from."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def training_loss(self, model, x, y, generator):
        self.seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return super().training_loss(model, x, y, generator)


def test_weight_average_keeps_the_moving_average_of_every_step(tmp_path):
    x, y = toy_data()
    model, task, decay = toy_model(), RecordingTask(), 0.9
    fit(model=model, task=task, train_x=x, train_y=y,
        cfg=TrainConfig(epochs=2, batch_size=16, weight_average=decay), out_dir=tmp_path,
        show_progress=False)  # no validation: the last epoch is kept
    last = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)["model"]
    after_steps = task.seen[1:] + [last]  # the weights after each of the 12 steps
    assert len(after_steps) == 12
    expected = dict(after_steps[0])
    for weights in after_steps[1:]:
        expected = {k: decay * expected[k] + (1 - decay) * weights[k] for k in expected}
    for name, value in model.state_dict().items():  # the kept model is the average ...
        torch.testing.assert_close(value, expected[name])
    assert not torch.allclose(model.state_dict()["1.weight"], last["1.weight"])  # ... not the last step


def test_resume_with_weight_average_matches_uninterrupted_run(tmp_path):
    x, y = toy_data(seed=1)
    validate = accuracy_validator(x, y)
    straight, _ = run(tmp_path / "straight", epochs=4, validate=validate, weight_average=0.95)

    def crashing(model, calls=[0]):  # noqa: B006 - counts the calls of this one test
        calls[0] += 1
        if calls[0] == 2:
            raise RuntimeError("simulated crash")
        return validate(model)

    with pytest.raises(RuntimeError, match="simulated crash"):
        run(tmp_path / "resumed", epochs=4, validate=crashing, weight_average=0.95)
    resumed, _ = run(tmp_path / "resumed", epochs=4, validate=validate, resume=True, weight_average=0.95)
    for pa, pb in zip(straight.state_dict().values(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)


def test_resume_refuses_a_checkpoint_without_a_fitting_weight_average(tmp_path):
    run(tmp_path / "plain", epochs=1)
    with pytest.raises(CheckpointError, match="written without train.weight_average"):
        run(tmp_path / "plain", epochs=2, resume=True, weight_average=0.9)
    run(tmp_path / "damaged", epochs=1, weight_average=0.9)
    last = tmp_path / "damaged" / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=False)
    del state["weight_average"]["module.1.weight"]
    torch.save(state, last)
    with pytest.raises(CheckpointError, match="weight average does not fit this model"):
        run(tmp_path / "damaged", epochs=2, resume=True, weight_average=0.9)
