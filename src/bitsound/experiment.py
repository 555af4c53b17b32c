"""What the CLI's train, cv, evaluate and predict commands do, as plain functions."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bitsound.audio.augment import FeatureAugment
from bitsound.audio.io import load_audio
from bitsound.config import Recipe
from bitsound.data import FeatureCache, Split, open_dataset, splits
from bitsound.data.combine import Source, open_combined
from bitsound.data.records import Dataset
from bitsound.errors import ConfigError, DataError
from bitsound.modelfile import SoundClassifier, build_net, load_model, save_model
from bitsound.pipeline import build_features, feature_config, score, window_audio
from bitsound.train import ClassificationTask, fit
from bitsound.train.checkpoint import save_json
from bitsound.train.loop import seed_everything
from bitsound.train.tasks import DistillationTask

log = logging.getLogger("bitsound")


def data_name(recipe: Recipe) -> str:
    """The recipe's data as one string: its spec, or its sources' specs joined by '+'."""
    return recipe.data.spec or " + ".join(source.spec for source in recipe.data.sources)


def open_recipe_data(recipe: Recipe) -> Dataset:
    """The recipe's data set (one spec or combined sources) without its excluded labels."""
    if recipe.data.sources:
        dataset = open_combined([Source(**source.model_dump()) for source in recipe.data.sources])
    else:
        dataset = open_dataset(recipe.data.spec)
    excluded = set(recipe.data.exclude_labels)
    if excluded:
        unknown = excluded - set(dataset.labels)
        if unknown:
            log.warning("data.exclude_labels %s are not labels of %s", sorted(unknown), dataset.kind)
        dataset = dataset.subset([i for i, c in enumerate(dataset.clips) if c.label not in excluded])
    if not dataset.clips:
        raise DataError(f"data set '{data_name(recipe)}' has no clips left to train on")
    return dataset


def holdout_split(recipe: Recipe, dataset: Dataset) -> Split | None:
    """The single train/validation split the recipe asks for (None for ``kind: none``)."""
    s = recipe.data.split
    clips = dataset.clips
    if s.kind == "none":
        return None
    if s.kind == "stratified":
        return splits.stratified_split(clips, val_fraction=s.val_fraction, seed=s.seed)
    if s.kind == "group":
        return splits.group_split(clips, val_fraction=s.val_fraction, seed=s.seed)
    if s.kind == "folds":
        return splits.given_folds(clips, val_folds=s.val_folds)[0]
    every = splits.leave_one_group_out(clips)
    if s.holdout_group is None:
        raise ConfigError("data.split.kind 'leave_one_group_out' needs data.split.holdout_group "
                          "for train (bitsound cv runs every group in turn); groups: "
                          + ", ".join(sp.name for sp in every))
    for split in every:
        if split.name == s.holdout_group:
            return split
    raise ConfigError(f"data.split.holdout_group {s.holdout_group!r} is not a group of the data; "
                      f"groups: {', '.join(sp.name for sp in every)}")


def cv_splits(recipe: Recipe, dataset: Dataset) -> list[Split]:
    """Every split of a cross-validation: each fold or each group held out in turn."""
    if recipe.data.cv == "folds":
        return splits.given_folds(dataset.clips)
    return splits.leave_one_group_out(dataset.clips)


def fingerprint(recipe: Recipe) -> str:
    """Identifies an experiment for --resume: the whole recipe, its data included."""
    text = json.dumps(recipe.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class TrainOutcome:
    out_dir: Path
    metrics: dict


def train_on_split(recipe: Recipe, dataset: Dataset, split: Split | None, *, out_dir: Path,
                   cache: FeatureCache | None, resume: bool = False, select_best: bool = True,
                   show_progress: bool = True) -> TrainOutcome:
    """Train one model on ``split.train`` (all clips if None), validate on ``split.val``, and
    write ``model.pt``, ``metrics.json`` and ``log.jsonl`` into ``out_dir``."""
    started = time.perf_counter()
    out_dir = Path(out_dir)
    recipe = for_split(recipe, split.name if split is not None else "all")
    labels = sorted({dataset.clips[i].label for i in (split.train if split else
                                                      range(len(dataset.clips)))})
    label_index = {label: i for i, label in enumerate(labels)}
    train_idx = split.train if split else np.arange(len(dataset.clips))
    train = build_features(dataset, train_idx, recipe=recipe, label_index=label_index,
                           cache=cache, show_progress=show_progress, description="train features")
    val = None
    if split is not None:
        val_labels = {dataset.clips[i].label for i in split.val}
        missing = sorted(val_labels - set(labels))
        if missing:
            raise DataError(f"split '{split.name}': validation labels {missing} never occur in "
                            f"training; choose another split seed or split kind")
        val = build_features(dataset, split.val, recipe=recipe, label_index=label_index,
                             cache=cache, show_progress=show_progress, description="val features")

    seed_everything(recipe.train.seed)
    net = build_net(recipe, len(labels))
    if recipe.train.init_from:
        start = _compatible_model(recipe.train.init_from, recipe, labels, role="train.init_from")
        try:
            net.load_state_dict(start.net.state_dict())
        except RuntimeError as err:
            raise ConfigError(f"train.init_from '{recipe.train.init_from}' has other layers than "
                              f"model '{recipe.model.name}': {str(err).splitlines()[0]}") from None
    task = make_task(recipe, labels)
    level = recipe.evaluation.level

    def validate(model):
        return score(model, val, labels=labels, level=level)

    result = fit(model=net, task=task, train_x=train.x, train_y=train.y, cfg=recipe.train,
                 out_dir=out_dir, augment=FeatureAugment(recipe.augment),
                 validate=validate if val is not None else None, resume=resume,
                 fingerprint=fingerprint(recipe), select_best=select_best,
                 show_progress=show_progress)
    net.cpu()
    metrics = {
        "recipe": recipe.name,
        "data": data_name(recipe),
        "split": _describe_split(recipe, split),
        "n_train_clips": int(train.n_clips),
        "n_train_windows": int(len(train.y)),
        "labels": labels,
        "params": int(sum(p.numel() for p in net.parameters())),
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "stopped_early": result.stopped_early,
        "train_seconds": round(time.perf_counter() - started, 1),
        # Scored in eval mode without augmentation: the "training accuracy" of study tables.
        "score_level": level,
        "train_accuracy": score(net, train, labels=labels, level=level)["accuracy"],
        "held_out": score(net, val, labels=labels, level=level) if val is not None else None,
    }
    save_model(out_dir / "model.pt", recipe=recipe, labels=labels, net=net, metrics=metrics)
    save_json(metrics, out_dir / "metrics.json")
    return TrainOutcome(out_dir=out_dir, metrics=metrics)


SPLIT_PLACEHOLDER = "{split}"


def for_split(recipe: Recipe, split_name: str) -> Recipe:
    """The recipe with ``{split}`` in its teacher and init_from paths replaced by the split name.

    Cross-validation then distils each fold's student from the teacher trained on that same
    fold (e.g. ``runs/digits-cnn-cv/cv-{split}/model.pt``), so that no teacher has seen the
    held-out fold: one teacher for every fold would leak it.
    """
    train = recipe.train
    changes = {}
    if train.init_from and SPLIT_PLACEHOLDER in train.init_from:
        changes["init_from"] = train.init_from.replace(SPLIT_PLACEHOLDER, split_name)
    if train.distill is not None and SPLIT_PLACEHOLDER in train.distill.teacher:
        teacher = train.distill.teacher.replace(SPLIT_PLACEHOLDER, split_name)
        changes["distill"] = train.distill.model_copy(update={"teacher": teacher})
    if not changes:
        return recipe
    return recipe.model_copy(update={"train": train.model_copy(update=changes)})


def make_task(recipe: Recipe, labels: list[str]):
    """The training task object the recipe asks for."""
    common = {"label_smoothing": recipe.train.label_smoothing,
              "mixup_alpha": recipe.augment.mixup_alpha}
    if recipe.train.task == "distillation":
        d = recipe.train.distill
        teacher = _compatible_model(d.teacher, recipe, labels, role="train.distill.teacher")
        return DistillationTask(teacher.net, temperature=d.temperature, alpha=d.alpha, **common)
    return ClassificationTask(**common)


def _compatible_model(path: str, recipe: Recipe, labels: list[str], *, role: str):
    """Load a model that must see the same features and predict the same labels as ``recipe``."""
    model = load_model(path)
    if model.labels != labels:
        raise ConfigError(f"{role} '{path}' predicts {model.labels}, but this training has "
                          f"labels {labels}; train it on the same data")
    if feature_config(model.recipe) != feature_config(recipe):
        raise ConfigError(f"{role} '{path}' was trained on other features (audio/frontend "
                          f"config differs); use the same audio and frontend sections")
    return model


def _describe_split(recipe: Recipe, split: Split | None) -> dict:
    if split is None:
        return {"kind": "none", "note": "trained on every clip; nothing held out (see bitsound cv)"}
    return {"kind": recipe.data.split.kind, "name": split.name, "n_train": int(len(split.train)),
            "n_val": int(len(split.val))}


def cross_validate(recipe: Recipe, dataset: Dataset, *, out_dir: Path,
                   cache: FeatureCache | None, show_progress: bool = True) -> dict:
    """Train one model per fold/group and report each held-out score and their mean.

    Each model trains for the recipe's full epoch count and is scored as it ends: the held-out
    fold never selects an epoch, so the mean is an honest estimate for unseen folds/speakers.
    """
    rows = []
    for split in cv_splits(recipe, dataset):
        log.info("cross-validation: holding out %s (%d clips)", split.name, len(split.val))
        outcome = train_on_split(recipe, dataset, split, out_dir=Path(out_dir) / f"cv-{split.name}",
                                 cache=cache, select_best=False, show_progress=show_progress)
        held = outcome.metrics["held_out"]
        rows.append({"held_out": split.name, "n": held["n"], "accuracy": held["accuracy"],
                     "balanced_accuracy": held["balanced_accuracy"], "macro_f1": held["macro_f1"],
                     "log_loss": held["log_loss"]})
    accs = np.array([r["accuracy"] for r in rows])
    summary = {"recipe": recipe.name, "data": data_name(recipe), "split": recipe.data.cv,
               "folds": rows, "mean_accuracy": float(accs.mean()), "std_accuracy": float(accs.std()),
               "min_accuracy": float(accs.min())}
    save_json(summary, Path(out_dir) / "cv.json")
    return summary


def evaluate_model(model: SoundClassifier, spec: str, *, cache: FeatureCache | None,
                   show_progress: bool = True) -> dict:
    """Score ``model`` on every clip of the data set ``spec`` with its own front end and windows.

    Labels of the data must be a subset of the model's labels.
    """
    dataset = open_dataset(spec)
    unknown = sorted(set(dataset.labels) - set(model.labels))
    if unknown:
        raise DataError(f"data set '{spec}' has labels {unknown} that the model was not trained "
                        f"on; the model knows {model.labels}. Evaluate on a subset of its labels")
    label_index = {label: i for i, label in enumerate(model.labels)}
    features = build_features(dataset, range(len(dataset.clips)), recipe=model.recipe,
                              label_index=label_index, cache=cache, show_progress=show_progress,
                              description="features")
    level = model.recipe.evaluation.level
    report = score(model.net, features, labels=model.labels, level=level)
    report["level"] = level
    report["data"] = spec
    return report


@torch.no_grad()
def predict_files(model: SoundClassifier, paths: list[str]) -> list[dict]:
    """Label and class probabilities of each audio file (mean over its windows)."""
    audio = model.recipe.audio
    rows = []
    for path in paths:
        wave = load_audio(path, sample_rate=audio.sample_rate, channels=audio.channels)
        windows = torch.from_numpy(np.ascontiguousarray(window_audio(wave, audio.sample_rate,
                                                                     audio)))
        probs = torch.softmax(model(windows), dim=-1).mean(dim=0)
        best = int(probs.argmax())
        rows.append({"file": str(path), "label": model.labels[best],
                     "probability": float(probs[best]), "n_windows": int(len(windows)),
                     "probabilities": dict(zip(model.labels, map(float, probs), strict=True))})
    return rows


__all__ = ["cross_validate", "evaluate_model", "load_model", "predict_files", "train_on_split"]
