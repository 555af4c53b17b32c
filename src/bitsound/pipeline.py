"""From clips to model inputs: decode, window, front end, cache; and back to clip scores.

Training, evaluation and prediction all go through these functions, so a model always sees its
data exactly as it was trained on: the same sample rate, channels, windows and front end.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from rich.progress import Progress
from torch import nn

from bitsound.audio.features import build_frontend
from bitsound.audio.io import to_model_windows
from bitsound.config import AudioConfig, Recipe
from bitsound.data import Dataset, FeatureCache, make_key
from bitsound.errors import DataError
from bitsound.metrics import classification_report

log = logging.getLogger("bitsound.pipeline")

FEATURE_FORMAT_VERSION = 1


@dataclass
class FeatureSet:
    """Windows of many clips stacked for training or scoring.

    x : Tensor [shape=(n_windows, *feature_shape)]
    y : Tensor [shape=(n_windows,)] int64 label index of each window's clip
    clip_of_window : ndarray [shape=(n_windows,)] position of each window's clip in ``clips``
    clip_y : ndarray [shape=(n_clips,)] label index per clip
    """

    x: torch.Tensor
    y: torch.Tensor
    clip_of_window: np.ndarray
    clip_y: np.ndarray

    @property
    def n_clips(self) -> int:
        return len(self.clip_y)


def feature_config(recipe: Recipe) -> dict:
    """The part of a recipe that determines features: the cache key and the model file keep it."""
    return {"audio": recipe.audio.model_dump(mode="json"),
            "frontend": recipe.frontend.model_dump(mode="json"),
            "format": FEATURE_FORMAT_VERSION}


def window_audio(x: np.ndarray, sample_rate: int, audio: AudioConfig) -> np.ndarray:
    """Decoded clip [shape=(channels, samples)] -> windows [shape=(n, channels, win)]."""
    return to_model_windows(x, sample_rate, audio).windows


@torch.no_grad()
def clip_features(dataset: Dataset, clip, *, recipe: Recipe, frontend: nn.Module,
                  stats: dict | None = None) -> np.ndarray:
    """Features of every window of one clip [shape=(n_windows, *feature_shape)], float32.

    ``stats``, when given, accumulates ``windows_dropped`` by the energy gate.
    """
    audio = recipe.audio
    wave = dataset.load(clip, sample_rate=audio.sample_rate, channels=audio.channels)
    segments = to_model_windows(wave, audio.sample_rate, audio)
    if stats is not None:
        stats["windows_dropped"] = stats.get("windows_dropped", 0) + segments.n_dropped
    windows = torch.from_numpy(np.ascontiguousarray(segments.windows))
    return frontend(windows).numpy().astype(np.float32)


def build_features(dataset: Dataset, indices, *, recipe: Recipe, label_index: dict[str, int],
                   cache: FeatureCache | None, show_progress: bool = True,
                   description: str = "features") -> FeatureSet:
    """Features of the clips ``dataset.clips[i] for i in indices``, through the cache.

    Each clip's features are cached under its file identity and the feature config, so a
    second run (or another split of the same data) decodes nothing.
    """
    frontend = build_frontend(recipe.frontend, sample_rate=recipe.audio.sample_rate).eval()
    config = feature_config(recipe)
    xs, clip_of_window, clip_y = [], [], []
    stats: dict = {}
    indices = list(indices)
    with Progress(transient=True, disable=not show_progress) as progress:
        task = progress.add_task(description, total=len(indices))
        for position, i in enumerate(indices):
            clip = dataset.clips[i]
            if clip.label not in label_index:
                raise DataError(f"clip '{clip.path}' has label {clip.label!r}, which the model "
                                f"does not know; known labels: {sorted(label_index)}")

            def compute(clip=clip):
                return clip_features(dataset, clip, recipe=recipe, frontend=frontend, stats=stats)

            if cache is None:
                feats = compute()
            else:
                feats = cache.get_or_compute(make_key(dataset.identity(clip), config), compute)
            if xs and feats.shape[1:] != xs[0].shape[1:]:
                raise DataError(f"clip '{clip.path}' gives features of shape {feats.shape[1:]} "
                                f"but earlier clips gave {xs[0].shape[1:]}; if the feature cache "
                                f"predates a bitsound upgrade, clear it (--cache DIR / "
                                f"$BITSOUND_CACHE)")
            xs.append(np.asarray(feats))
            clip_of_window.append(np.full(len(feats), position))
            clip_y.append(label_index[clip.label])
            progress.advance(task)
    if stats.get("windows_dropped"):
        log.info("%s: the energy gate dropped %d quiet windows of the clips decoded now "
                 "(cached clips were gated when first decoded)", description,
                 stats["windows_dropped"])
    if not xs:
        raise DataError(f"no clips to compute {description} for; check the data spec and split")
    x = torch.from_numpy(np.concatenate(xs))
    clip_of_window = np.concatenate(clip_of_window)
    clip_y = np.asarray(clip_y, dtype=np.int64)
    y = torch.from_numpy(clip_y[clip_of_window])
    return FeatureSet(x=x, y=y, clip_of_window=clip_of_window, clip_y=clip_y)


@torch.no_grad()
def window_probabilities(net: nn.Module, features: FeatureSet, *,
                         batch_size: int = 256) -> np.ndarray:
    """Class probabilities per window [shape=(n_windows, n_classes)]."""
    device = next(net.parameters()).device
    was_training = net.training
    net.eval()
    probs = []
    for start in range(0, len(features.x), batch_size):
        batch = features.x[start:start + batch_size].to(device, dtype=torch.float32)
        probs.append(torch.softmax(net(batch), dim=-1).cpu())
    net.train(was_training)
    return torch.cat(probs).double().numpy()


def clip_probabilities(net: nn.Module, features: FeatureSet, *, batch_size: int = 256) -> np.ndarray:
    """Class probabilities per clip [shape=(n_clips, n_classes)]: the mean over its windows."""
    window_probs = window_probabilities(net, features, batch_size=batch_size)
    sums = np.zeros((features.n_clips, window_probs.shape[1]))
    np.add.at(sums, features.clip_of_window, window_probs)
    counts = np.bincount(features.clip_of_window, minlength=features.n_clips)
    return sums / counts[:, None]


def score(net: nn.Module, features: FeatureSet, *, labels: list[str], level: str) -> dict:
    """Classification report per clip (window probabilities averaged) or per window."""
    if level == "window":
        return classification_report(features.y.numpy(), window_probabilities(net, features),
                                     labels=labels)
    return classification_report(features.clip_y, clip_probabilities(net, features), labels=labels)
