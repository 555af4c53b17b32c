"""The data a compression pipeline works on, taken from the model's own training set-up.

The model file keeps its recipe (data spec, split, audio and front end) and the split it was
scored on, so compression uses exactly the clips the model trained on and is measured on
exactly the clips it never saw:

- **held out**: the model's held-out split (``data.split`` of its recipe, or, for a fold of
  ``bitsound cv``, the fold named in its metrics); only measured, never trained on;
- **fine-tuning**: the model's training clips, less the **validation** clips;
- **validation**: a part of the training clips that decides the stopping criteria and the best
  fine-tuning epoch (``validation.use: held_out`` lets the held-out split decide instead, and
  says so). It is group-disjoint, as every split of the project: clips of one recording or
  speaker share its sound, and a validation part holding some of them would score what
  fine-tuning trains on. When the training clips' groups are too few or too large to give a
  share within half to twice ``validation.fraction``, the pipeline is refused; a stratified
  clip-level split is used only when asked for (``validation.by: clip``) or when the clips
  have no groups.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from bitsound.audio.augment import FeatureAugment
from bitsound.compress.config import ValidationSettings
from bitsound.config import AugmentConfig, Recipe, input_kind
from bitsound.data import FeatureCache, Split, splits
from bitsound.data.records import Dataset
from bitsound.errors import ConfigError, DataError
from bitsound.experiment import (
    clip_labels,
    cv_splits,
    data_name,
    holdout_split,
    open_recipe_data,
    without_bad_clips,
)
from bitsound.modelfile import SoundClassifier, feature_shape
from bitsound.pipeline import FeatureSet, build_features, score
from bitsound.preflight import check_clips, enforce
from bitsound.report.results import SplitInfo

log = logging.getLogger("bitsound.compress")


@dataclass
class CompressData:
    """Features of the three parts (see the module docstring) and how to score a network.

    ``train`` holds whole stored clips when the recipe crops (``audio.crop``), windows
    otherwise; ``validation`` and ``held_out`` always hold the model's windows.
    """

    recipe: Recipe
    labels: list[str]
    split: SplitInfo
    train: FeatureSet
    validation: FeatureSet | None
    held_out: FeatureSet
    criterion: str
    data: str

    @property
    def level(self) -> str:
        return self.recipe.evaluation.level

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(feature_shape(self.recipe))

    def example_input(self) -> torch.Tensor:
        return torch.zeros((1, *self.input_shape))

    def score(self, net: torch.nn.Module, part: str) -> dict:
        """Classification report of ``net`` on ``"held_out"`` or ``"validation"``."""
        features = self.held_out if part == "held_out" else self.validation
        if features is None:
            raise ConfigError("no validation clips (validation.use is held_out)")
        return score(net, features, labels=self.labels, level=self.level)

    def criterion_accuracy(self, net: torch.nn.Module) -> float:
        """Accuracy on the data that decides (validation, or held-out when so configured)."""
        return float(self.score(net, "validation" if self.validation is not None else "held_out")
                     ["accuracy"])

    def model_inputs(self, x: torch.Tensor) -> torch.Tensor:
        """Stored training examples as the model's inputs (the centre crop of a stored clip)."""
        if self.recipe.audio.crop is None:
            return x
        crop = FeatureAugment(AugmentConfig(), input_kind=input_kind(self.recipe.frontend),
                              audio=self.recipe.audio)
        return crop(x, torch.Generator().manual_seed(0))

    def batches(self, n: int, *, batch_size: int, seed: int = 0
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Up to ``n`` training examples (random, seeded) in batches of model inputs and labels."""
        order = torch.randperm(len(self.train.y), generator=torch.Generator().manual_seed(seed))[:n]
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            yield self.model_inputs(self.train.x[idx].float()), self.train.y[idx]


def base_split(model: SoundClassifier, dataset: Dataset) -> Split:
    """The split ``model`` was trained and scored on (see the module docstring)."""
    recipe = model.recipe
    # the split the model's metrics name wins: a fold model of ``bitsound cv`` keeps the recipe's
    # data.split (e.g. fold 4) but was held out on its own fold
    name = (getattr(model, "metrics", {}).get("split") or {}).get("name")
    if recipe.data.split.kind != "none":
        split = holdout_split(recipe, dataset)
        if split is not None and (name is None or split.name == name):
            return split
    if name:
        for split in cv_splits(recipe, dataset):
            if split.name == name:
                return split
        raise DataError(f"the model was scored on split '{name}', which its recipe's data "
                        f"({data_name(recipe)}) no longer has; compress it with the data it was trained on")
    raise ConfigError("the model was trained on every clip (data.split.kind none), so nothing is left "
                      "to measure the compressed models on: train it with a held-out split, e.g. "
                      "--set data.split.kind=leave_one_group_out --set data.split.holdout_group=NAME, "
                      "or compress a fold's model from bitsound cv (DIR/cv-FOLD/model.pt)")


def _validation_part(dataset: Dataset, train_idx: np.ndarray, settings: ValidationSettings
                     ) -> tuple[np.ndarray, np.ndarray, str]:
    clips = [dataset.clips[i] for i in train_idx]
    groups = {c.group for c in clips}
    if settings.by == "clip" or groups == {None}:
        part = splits.stratified_split(clips, val_fraction=settings.fraction, seed=settings.seed)
        how = ("stratified by clip: the clips have no groups" if groups == {None} else
               "stratified by clip (validation.by: clip): clips of one group on both sides")
    else:
        part = _group_part(clips, groups, settings)
        how = "group-disjoint"
    described = (f"validation: {len(part.val)} of the {len(clips)} training clips ({how}, seed "
                 f"{settings.seed}), not used for fine-tuning")
    return train_idx[np.asarray(part.train)], train_idx[np.asarray(part.val)], described


def _group_part(clips: list, groups: set, settings: ValidationSettings) -> Split:
    """A group-disjoint validation part of about ``settings.fraction``, or a ConfigError why not."""
    frac = settings.fraction
    if None in groups:
        raise DataError(f"{sum(c.group is None for c in clips)} of the {len(clips)} training clips have no "
                        "group, the others have: a group-disjoint validation part needs every clip's group; "
                        "fix the data set's groups or ask for validation.by: clip")
    reason = None
    if len(groups) < 2:
        reason = f"the training clips come from {len(groups)} group"
    else:
        part = splits.group_split(clips, val_fraction=frac, seed=settings.seed)
        share = len(part.val) / len(clips)
        # a few large groups (3 speakers) cannot give the asked share: one would take a third
        if len(part.train) and 0.5 * frac <= share <= 2 * frac:
            return part
        reason = (f"the {len(groups)} groups of the training clips are too few or too large: the closest "
                  f"group-disjoint part holds {share:.0%} of them, not within half to twice the asked "
                  f"{frac:.0%}")
    raise ConfigError(
        f"validation part: {reason}. Splitting by clip instead would put clips of one group (recording, "
        f"speaker) on both sides, so the deciding accuracy would score clips fine-tuning trains on; "
        f"bitsound splits by group. Let the held-out split decide (--set validation.use=held_out; its "
        f"accuracy is then no longer unbiased), try another validation.fraction, or opt in to the "
        f"clip-level split knowingly (--set validation.by=clip)")


def open_compress_data(model: SoundClassifier, *, validation: ValidationSettings,
                       cache: FeatureCache | None, show_progress: bool = True,
                       skip_bad: bool = False) -> CompressData:
    """Open the model's data set and build the features of its three parts."""
    recipe = model.recipe
    dataset = open_recipe_data(recipe)
    split = base_split(model, dataset)
    train_idx, held_idx = np.asarray(split.train), np.asarray(split.val)
    used = np.concatenate([train_idx, held_idx])
    checked = check_clips(dataset, used, recipe=recipe, cache=cache, show_progress=show_progress)
    bad = enforce(checked, dataset, skip_bad=skip_bad, action="nothing was compressed")
    train_idx, held_idx = without_bad_clips(train_idx, held_idx, bad, val_name=split.name)
    labels = clip_labels(dataset, train_idx)
    if labels != list(model.labels):
        raise DataError(f"the model predicts {model.labels}, but its training clips now have labels "
                        f"{labels}; the data changed since it was trained")
    if validation.use == "validation":
        fit_idx, val_idx, criterion = _validation_part(dataset, train_idx, validation)
    else:
        fit_idx, val_idx = train_idx, np.array([], dtype=np.int64)
        criterion = ("held_out: the held-out split is the deciding data too (accuracy floors, the best "
                     "fine-tuning epoch), so where the pipeline decides anything its accuracy is not an "
                     "unbiased estimate")
    label_index = {label: i for i, label in enumerate(labels)}
    crops = recipe.audio.crop is not None

    def features(idx, description, view="windows"):
        return build_features(dataset, idx, recipe=recipe, label_index=label_index, cache=cache,
                              show_progress=show_progress, description=description, view=view)

    train = features(fit_idx, "fine-tuning features", "source" if crops else "windows")
    val = features(val_idx, "validation features") if len(val_idx) else None
    held = features(held_idx, "held-out features")
    info = SplitInfo(kind=recipe.data.split.kind if recipe.data.split.kind != "none" else recipe.data.cv,
                     name=split.name, n_train=int(len(fit_idx)), n_val=int(len(held_idx)),
                     note=criterion)
    return CompressData(recipe=recipe, labels=labels, split=info, train=train, validation=val,
                        held_out=held, criterion=criterion, data=data_name(recipe))
