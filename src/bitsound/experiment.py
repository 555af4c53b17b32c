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
from bitsound.audio.io import duplicated_mono_count, load_audio
from bitsound.audio.wave_mix import BetweenClassMixer, CutMixer
from bitsound.config import Recipe, input_kind
from bitsound.data import FeatureCache, Split, open_dataset, splits
from bitsound.data.combine import Source, open_combined, select_classes
from bitsound.data.records import Dataset
from bitsound.errors import AudioDecodeError, ConfigError, DataError
from bitsound.metrics import per_device_accuracy
from bitsound.modelfile import SoundClassifier, build_net, load_model, save_model
from bitsound.pipeline import (
    FeatureSet,
    build_features,
    feature_config,
    score,
    scored_probabilities,
    window_audio,
)
from bitsound.preflight import Preflight, check_clips, enforce
from bitsound.report.results import (
    CvFold,
    CvResult,
    DeviceScore,
    EvaluateResult,
    Prediction,
    Scores,
    SplitInfo,
    TrainResult,
    scores_and_predictions,
)
from bitsound.train import ClassificationTask, distributed, fit
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
    if recipe.data.classes is not None:
        dataset = select_classes(dataset, recipe.data.classes)
    if not dataset.clips:
        raise DataError(f"data set '{data_name(recipe)}' has no clips left to train on")
    return dataset


def check_split_kind(dataset: Dataset, kind: str, *, key: str) -> None:
    """Refuse a split kind the data set rules out (UrbanSound8K: official folds only)."""
    if dataset.required_split is None or kind == "none":
        return
    required, reason = dataset.required_split
    if kind != required:
        raise ConfigError(f"{key} '{kind}' is refused for {dataset.kind} data: {reason}")


def holdout_split(recipe: Recipe, dataset: Dataset) -> Split | None:
    """The single train/validation split the recipe asks for (None for ``kind: none``)."""
    s = recipe.data.split
    clips = dataset.clips
    check_split_kind(dataset, s.kind, key="data.split.kind")
    if s.kind == "none":
        return None
    if s.kind == "unseen_devices":
        return splits.unseen_device_split(clips, val_devices=s.val_devices,
                                          val_fraction=s.val_fraction, seed=s.seed)
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
    check_split_kind(dataset, recipe.data.cv, key="data.cv")
    if recipe.data.cv == "folds":
        return splits.given_folds(dataset.clips)
    return splits.leave_one_group_out(dataset.clips)


def fingerprint(recipe: Recipe) -> str:
    """Identifies an experiment for --resume: the whole recipe, its data included (but not what
    only changes what is reported: TensorBoard scalars and the published systems it names)."""
    data = recipe.model_dump(mode="json", exclude={"references": True, "train": {"tensorboard"}})
    text = json.dumps(data, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class TrainOutcome:
    """What :func:`train_on_split` wrote; ``result`` is None on the ranks other than 0 of a
    distributed run, which write nothing."""

    out_dir: Path
    result: TrainResult | None

    @property
    def metrics(self) -> dict:
        """The result as the JSON dict written to ``metrics.json``."""
        return self.result.to_json()


def held_out_scores(net, features: FeatureSet, *, labels: list[str], level: str, clips: list,
                    seen_devices: list[str] | None = None, sources_of=None
                    ) -> tuple[Scores, list[Prediction]]:
    """Scores of ``net`` on ``features`` and one prediction per scored example.

    ``clips`` are the clips the features were built from, in the same order. When they carry a
    device the scores gain ``per_device`` rows, marked seen / unseen by ``seen_devices``;
    ``sources_of`` scores stored whole clips with the recipe's test-time crops.
    """
    y_true, probs, positions, windows = scored_probabilities(net, features, level=level,
                                                             sources_of=sources_of)
    example_clips = [clips[int(i)] for i in positions]
    scores, predictions = scores_and_predictions(y_true, probs, labels=labels, clips=example_clips,
                                                 windows=windows)
    devices = [clip.device for clip in example_clips]
    if any(d is not None for d in devices):
        rows = per_device_accuracy(y_true, probs, devices, seen=seen_devices)
        scores = scores.model_copy(update={"per_device": [DeviceScore(**r) for r in rows]})
    return scores, predictions


def without_bad_clips(train_idx: np.ndarray, val_idx: np.ndarray, bad, *, val_name: str | None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """The training and validation clip indices less the ``bad`` ones (left out with --skip-bad).

    Raises DataError when that empties the training part, or the validation part when it is
    one (``val_name`` given: a part named so in the message).
    """
    if not bad:
        return np.asarray(train_idx), np.asarray(val_idx, dtype=np.int64)
    train_idx = np.array([i for i in train_idx if i not in bad], dtype=np.int64)
    val_idx = np.array([i for i in val_idx if i not in bad], dtype=np.int64)
    if not len(train_idx) or (val_name is not None and not len(val_idx)):
        part = "training" if not len(train_idx) else f"validation ('{val_name}')"
        raise DataError(f"every {part} clip is unreadable and was left out (--skip-bad); "
                        "fix the files listed above")
    return train_idx, val_idx


def clip_labels(dataset: Dataset, idx) -> list[str]:
    """The sorted labels of the clips ``idx`` (every label of a multi-label clip): the model's
    classes when it trains on them."""
    return sorted(set().union(*(dataset.clips[i].all_labels for i in idx)))


def train_on_split(recipe: Recipe, dataset: Dataset, split: Split | None, *, out_dir: Path,
                   cache: FeatureCache | None, resume: bool = False, select_best: bool = True,
                   show_progress: bool = True, skip_bad: bool = False,
                   checked: Preflight | None = None, workers: int = 0) -> TrainOutcome:
    """Train one model on ``split.train`` (all clips if None), validate on ``split.val``, and
    write ``model.pt``, ``metrics.json`` and ``log.jsonl`` into ``out_dir``.

    Before any feature is computed every clip the run uses is checked
    (:func:`bitsound.preflight.check_clips`); a bad clip stops it with the whole list, or with
    ``skip_bad`` is left out. ``checked`` is a check already made and enforced by the caller
    (``cv`` checks all folds' clips once). ``workers`` > 1 computes features in that many
    processes (:func:`bitsound.pipeline.build_features`).

    In a distributed run (:mod:`bitsound.train.distributed`) rank 0 checks the clips and fills
    the feature cache while the other ranks wait, every rank trains, and rank 0 alone scores
    the model and writes the files."""
    started = time.perf_counter()
    out_dir = Path(out_dir)
    recipe = for_split(recipe, split.name if split is not None else "all")
    _check_distributed(recipe)  # before any work
    train_idx = np.asarray(split.train if split else np.arange(len(dataset.clips)))
    val_idx = np.asarray(split.val if split else [], dtype=np.int64)
    used = np.concatenate([train_idx, val_idx])
    if checked is None:
        checked = distributed.from_main(
            lambda: _checked(dataset, used, recipe=recipe, cache=cache, skip_bad=skip_bad,
                             show_progress=show_progress, action="nothing was trained"),
            what="checking the clips")
    train_idx, val_idx = without_bad_clips(train_idx, val_idx, checked.bad,
                                           val_name=split.name if split is not None else None)
    labels = clip_labels(dataset, train_idx)
    label_index = {label: i for i, label in enumerate(labels)}
    # With audio.crop the training clips are stored whole and cropped batch by batch.
    crops = recipe.audio.crop is not None
    train_devices = sorted({d for i in train_idx if (d := dataset.clips[i].device) is not None})
    val_devices = [dataset.clips[i].device for i in val_idx] if split is not None else None
    if split is not None:
        val_labels = set().union(*(dataset.clips[i].all_labels for i in val_idx))
        missing = sorted(val_labels - set(labels))
        if missing:
            raise DataError(f"split '{split.name}': validation labels {missing} never occur in "
                            f"training; choose another split seed or split kind")
    main = distributed.current().is_main

    def features():
        train = build_features(dataset, train_idx, recipe=recipe, label_index=label_index,
                               cache=cache, show_progress=show_progress and main,
                               description="train features", view="source" if crops else "windows",
                               workers=workers)
        val = None
        if split is not None:
            val = build_features(dataset, val_idx, recipe=recipe, label_index=label_index,
                                 cache=cache, show_progress=show_progress and main,
                                 description="val features", workers=workers)
        return train, val

    # rank 0 fills the cache once; the other ranks then read it
    train, val = distributed.main_first(features, what="computing features",
                                        enabled=cache is not None)

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
        return score(model, val, labels=labels, level=level, devices=val_devices,
                     seen_devices=train_devices or None)

    augment = FeatureAugment(recipe.augment, input_kind=input_kind(recipe.frontend),
                             audio=recipe.audio)
    result = fit(model=net, task=task, train_x=train.x, train_y=train.y, cfg=recipe.train,
                 out_dir=out_dir, augment=augment,
                 validate=validate if val is not None else None, resume=resume,
                 fingerprint=fingerprint(recipe), select_best=select_best and recipe.train.keep == "best",
                 show_progress=show_progress)
    net.cpu()
    if not main:
        return TrainOutcome(out_dir=out_dir, result=None)
    held, predictions = None, []
    if val is not None:
        held, predictions = held_out_scores(net, val, labels=labels, level=level,
                                            clips=[dataset.clips[i] for i in val_idx],
                                            seen_devices=train_devices or None)
    outcome = TrainResult(
        recipe=recipe.name,
        data=data_name(recipe),
        split=_describe_split(recipe, split),
        n_train_clips=int(train.n_clips),
        n_train_windows=int(len(train.y)),
        labels=labels,
        params=int(sum(p.numel() for p in net.parameters())),
        # "seen" devices of per-device scores (bitsound evaluate); empty without devices
        train_devices=train_devices,
        best_epoch=result.best_epoch,
        epochs_run=result.epochs_run,
        stopped_early=result.stopped_early,
        train_seconds=round(time.perf_counter() - started, 1),
        # Scored in eval mode without augmentation: the "training accuracy" of study tables.
        score_level=level,
        train_accuracy=score(net, train, labels=labels, level=level,
                             sources_of=recipe.audio if crops else None)["accuracy"],
        held_out=held,
        predictions=predictions,
        references=recipe.references,
        # The check before training: clips decoded, cached, generated, and those left out.
        clip_check=checked.summary(used),
    )
    # the model file keeps the scores; the per-clip predictions stay in metrics.json
    save_model(out_dir / "model.pt", recipe=recipe, labels=labels, net=net,
               metrics=outcome.to_json(exclude={"predictions"}))
    outcome.save(out_dir / "metrics.json")
    return TrainOutcome(out_dir=out_dir, result=outcome)


SPLIT_PLACEHOLDER = "{split}"


def _check_distributed(recipe: Recipe) -> None:
    """Refuse a training config the process group cannot run, before any work
    (:func:`bitsound.train.distributed.check_config`); rank 0 reports it, the others stop."""
    distributed.from_main(lambda: distributed.check_config(recipe.train), what="checking the recipe")


def cache_views(recipe: Recipe, dataset: Dataset) -> dict[str, list[int]]:
    """The clips whose features ``train`` and ``cv`` store, per view: every clip's windows, and
    with ``audio.crop`` every clip stored whole as well (a clip trains in one fold, validates in
    another)."""
    every = list(range(len(dataset.clips)))
    views = {"windows": every}
    if recipe.audio.crop is not None:
        views["source"] = every
    return views


def _checked(dataset: Dataset, used, *, recipe: Recipe, cache: FeatureCache | None,
             skip_bad: bool, show_progress: bool, action: str) -> Preflight:
    """The check of the clips a run uses, enforced (see :mod:`bitsound.preflight`)."""
    checked = check_clips(dataset, used, recipe=recipe, cache=cache, show_progress=show_progress)
    enforce(checked, dataset, skip_bad=skip_bad, action=action)
    return checked


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
    augment = recipe.augment
    mixer = None
    if augment.between_class is not None:
        mixer = BetweenClassMixer(sample_rate=recipe.audio.sample_rate,
                                  gain=augment.between_class.gain)
    elif augment.cutmix is not None:
        mixer = CutMixer(alpha=augment.cutmix.alpha, p=augment.cutmix.p)
    common = {"label_smoothing": recipe.train.label_smoothing,
              "mixup_alpha": augment.mixup_alpha, "mixer": mixer, "loss": recipe.train.loss,
              "mixup_per_example": augment.mixup_per_example}
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


def _describe_split(recipe: Recipe, split: Split | None) -> SplitInfo:
    if split is None:
        return SplitInfo(kind="none", note="trained on every clip; nothing held out (see bitsound cv)")
    return SplitInfo(kind=recipe.data.split.kind, name=split.name, n_train=int(len(split.train)),
                     n_val=int(len(split.val)))


def cross_validate(recipe: Recipe, dataset: Dataset, *, out_dir: Path,
                   cache: FeatureCache | None, show_progress: bool = True,
                   skip_bad: bool = False, workers: int = 0) -> CvResult | None:
    """Train one model per fold/group and report each held-out score and their mean.

    Each model trains for the recipe's full epoch count and is scored as it ends: the held-out
    fold never selects an epoch, so the mean is an honest estimate for unseen folds/speakers.
    Every clip is checked once before the first fold (see :func:`train_on_split`). In a
    distributed run every fold trains on all ranks and rank 0 alone returns the result (None
    on the others).
    """
    rows: list[CvFold] = []
    predictions: list[Prediction] = []
    _check_distributed(recipe)  # before the clips are checked
    every_split = cv_splits(recipe, dataset)
    used = np.concatenate([np.concatenate([s.train, s.val]) for s in every_split])
    checked = distributed.from_main(
        lambda: _checked(dataset, used, recipe=recipe, cache=cache, skip_bad=skip_bad,
                         show_progress=show_progress, action="no fold was trained"),
        what="checking the clips")
    for split in every_split:
        log.info("cross-validation: holding out %s (%d clips)", split.name, len(split.val))
        outcome = train_on_split(recipe, dataset, split, out_dir=Path(out_dir) / f"cv-{split.name}",
                                 cache=cache, select_best=False, show_progress=show_progress,
                                 checked=checked, workers=workers)
        if outcome.result is None:  # not rank 0 of a distributed run
            continue
        held = outcome.result.held_out
        rows.append(CvFold(held_out=split.name, n=held.n, accuracy=held.accuracy,
                           balanced_accuracy=held.balanced_accuracy, macro_f1=held.macro_f1,
                           log_loss=held.log_loss))
        predictions += outcome.result.predictions
    if not rows:
        return None
    accs = np.array([r.accuracy for r in rows])
    summary = CvResult(recipe=recipe.name, data=data_name(recipe), split=recipe.data.cv, folds=rows,
                       mean_accuracy=float(accs.mean()), std_accuracy=float(accs.std()),
                       min_accuracy=float(accs.min()), predictions=predictions,
                       references=recipe.references, clip_check=checked.summary(used))
    summary.save(Path(out_dir) / "cv.json")
    return summary


def evaluate_model(model: SoundClassifier, spec: str, *, cache: FeatureCache | None,
                   show_progress: bool = True, skip_bad: bool = False,
                   model_path: str | None = None, workers: int = 0) -> EvaluateResult:
    """Score ``model`` on every clip of the data set ``spec`` with its own front end and windows.

    Labels of the data must be a subset of the model's labels, except for a model trained on a
    class subset (``data.classes``): it is scored on the clips of its classes. When clips carry
    a device the report has ``per_device`` rows, marked seen / unseen by the devices of the
    model's training data (``metrics["train_devices"]``). Every clip is checked before
    scoring (see :mod:`bitsound.preflight`): a bad clip stops the evaluation with the whole
    list, or with ``skip_bad`` is left out and listed in the report's ``clip_check``.
    """
    dataset = open_dataset(spec)
    if model.recipe.data.classes is not None:
        # Trained on a class subset (data.classes, e.g. ESC-50's S20): score that subset.
        known = set(model.labels)
        keep = [i for i, clip in enumerate(dataset.clips) if clip.label in known]
        if not keep:
            raise DataError(f"data set '{spec}' has none of the model's classes {model.labels}")
        dataset = dataset.subset(keep)
    unknown = sorted(set(dataset.labels) - set(model.labels))
    if unknown:
        raise DataError(f"data set '{spec}' has labels {unknown} that the model was not trained "
                        f"on; the model knows {model.labels}. Evaluate on a subset of its labels")
    label_index = {label: i for i, label in enumerate(model.labels)}
    every = range(len(dataset.clips))
    checked = check_clips(dataset, every, recipe=model.recipe, cache=cache,
                          show_progress=show_progress)
    bad = enforce(checked, dataset, skip_bad=skip_bad, action="nothing was evaluated")
    kept = [i for i in every if i not in bad]
    if not kept:
        raise DataError(f"every clip of '{spec}' is unreadable and was left out (--skip-bad); "
                        "fix the files listed above")
    features = build_features(dataset, kept, recipe=model.recipe,
                              label_index=label_index, cache=cache, show_progress=show_progress,
                              description="features", workers=workers)
    level = model.recipe.evaluation.level
    seen = getattr(model, "metrics", {}).get("train_devices")
    scores, predictions = held_out_scores(model.net, features, labels=model.labels, level=level,
                                          clips=[dataset.clips[i] for i in kept],
                                          seen_devices=seen or None)
    return EvaluateResult(**dict(scores), level=level, data=spec, model=model_path,
                          predictions=predictions, clip_check=checked.summary())


@torch.no_grad()
def predict_files(model: SoundClassifier, paths: list[str]) -> list[dict]:
    """Label and class probabilities of each audio file (mean over its windows)."""
    audio = model.recipe.audio
    rows = []
    duplicated_before = duplicated_mono_count()
    for position, path in enumerate(paths):
        try:
            wave = load_audio(path, sample_rate=audio.sample_rate, channels=audio.channels)
        except AudioDecodeError as err:
            if len(paths) == 1:
                raise
            raise AudioDecodeError(err.path, f"{err.problem} (file {position + 1} of "
                                   f"{len(paths)}); fix it or leave it out of the files "
                                   "given") from err
        windows = torch.from_numpy(np.ascontiguousarray(window_audio(wave, audio.sample_rate,
                                                                     audio)))
        probs = torch.softmax(model(windows), dim=-1).mean(dim=0)
        best = int(probs.argmax())
        rows.append({"file": str(path), "label": model.labels[best],
                     "probability": float(probs[best]), "n_windows": int(len(windows)),
                     "probabilities": dict(zip(model.labels, map(float, probs), strict=True))})
    if duplicated_mono_count() > duplicated_before:
        log.info("%d mono files are duplicated to both channels of the model's 2-channel input",
                 duplicated_mono_count() - duplicated_before)
    return rows


__all__ = ["cross_validate", "evaluate_model", "load_model", "predict_files", "train_on_split"]
