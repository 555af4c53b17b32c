"""From clips to model inputs: decode, window, front end, cache; and back to clip scores.

Training, evaluation and prediction all go through these functions, so a model always sees its
data exactly as it was trained on: the same sample rate, channels, windows and front end.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from bitsound.audio.codeversion import frontend_code_version
from bitsound.audio.features import build_frontend
from bitsound.audio.io import (
    crop_geometry,
    crop_windows,
    duplicated_mono_count,
    fix_length,
    to_model_windows,
)
from bitsound.config import AudioConfig, Recipe
from bitsound.data import Dataset, FeatureCache, make_key
from bitsound.data.events import window_labels
from bitsound.errors import AudioDecodeError, ConfigError, DataError
from bitsound.extract import check_workers, clip_progress, compute_parallel, raise_failures
from bitsound.metrics import classification_report, per_device_accuracy

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
    """The part of a recipe that determines features: the cache key and the model file keep it.

    ``code`` is the version of the decoding, windowing, loading and front-end code and of the
    libraries they use (a hash of their source and versions, see
    :mod:`bitsound.audio.codeversion`), so that features cached by other code are never served.
    """
    return {"audio": recipe.audio.model_dump(mode="json"),
            "frontend": recipe.frontend.model_dump(mode="json"),
            "format": FEATURE_FORMAT_VERSION, "code": frontend_code_version()}


def cache_config(recipe: Recipe, view: str = "windows") -> dict:
    """What the feature cache keys a clip's features of ``view`` by (with its identity)."""
    config = feature_config(recipe)
    return {**config, "view": view} if view == "source" else config


def window_audio(x: np.ndarray, sample_rate: int, audio: AudioConfig) -> np.ndarray:
    """Decoded clip [shape=(channels, samples)] -> windows [shape=(n, channels, win)]."""
    return to_model_windows(x, sample_rate, audio).windows


#: What :func:`build_features` stores per clip: the model's windows, or (with ``audio.crop``)
#: the whole stored clip that training crops batch by batch.
VIEWS = ("windows", "source")


@torch.no_grad()
def clip_features(dataset: Dataset, clip, *, recipe: Recipe, frontend: nn.Module,
                  stats: dict | None = None, view: str = "windows") -> np.ndarray:
    """Features of every window of one clip [shape=(n_windows, *feature_shape)], float32.

    With ``view="source"`` (``audio.crop`` only) the one "window" is the clip as stored:
    ``crop.source_seconds`` long, centre-cropped or zero-padded. ``stats``, when given,
    accumulates ``windows_dropped`` by the energy gate.
    """
    audio = recipe.audio
    wave = dataset.load(clip, sample_rate=audio.sample_rate, channels=audio.channels)
    if view == "source":
        stored = crop_geometry(audio)[2]
        windows = torch.from_numpy(np.ascontiguousarray(fix_length(wave, stored)[np.newaxis]))
        return frontend(windows).numpy().astype(np.float32)
    segments = to_model_windows(wave, audio.sample_rate, audio)
    if stats is not None:
        stats["windows_dropped"] = stats.get("windows_dropped", 0) + segments.n_dropped
    windows = torch.from_numpy(np.ascontiguousarray(segments.windows))
    return frontend(windows).numpy().astype(np.float32)


def build_features(dataset: Dataset, indices, *, recipe: Recipe, label_index: dict[str, int],
                   cache: FeatureCache | None, show_progress: bool = True,
                   description: str = "features", view: str = "windows",
                   workers: int = 0) -> FeatureSet:
    """Features of the clips ``dataset.clips[i] for i in indices``, through the cache.

    Each clip's features are cached under its file identity and the feature config, so a
    second run (or another split of the same data) decodes nothing. ``view="source"`` stores
    each clip whole for per-batch cropping (``audio.crop``; see :func:`clip_features`).
    ``workers`` > 1 computes the clips that are not cached in that many processes
    (:mod:`bitsound.extract`); the result is the same.
    """
    if view not in VIEWS:
        raise ConfigError(f"view must be one of {VIEWS}, got {view!r}")
    if view == "source" and recipe.audio.crop is None:
        raise ConfigError("view='source' stores whole clips for audio.crop, which is not set")
    check_workers(workers)
    frontend = build_frontend(recipe.frontend, sample_rate=recipe.audio.sample_rate).eval()
    config = cache_config(recipe, view)
    xs, clip_of_window, clip_y, window_y = [], [], [], []
    stats: dict = {}
    indices = list(indices)
    for i in indices:
        clip = dataset.clips[i]
        unknown = sorted(clip.all_labels - set(label_index))
        if unknown:
            raise DataError(f"clip '{clip.path}' has labels {unknown}, which the model "
                            f"does not know; known labels: {sorted(label_index)}")
    duplicated_before = duplicated_mono_count()
    ahead = _compute_ahead(dataset, indices, recipe=recipe, config=config, cache=cache, view=view,
                           workers=workers, show_progress=show_progress, description=description)
    stats["windows_dropped"] = ahead.windows_dropped if ahead else 0
    with clip_progress(disable=not show_progress) as progress:
        task = progress.add_task(description, total=len(indices))
        for position, i in enumerate(indices):
            clip = dataset.clips[i]

            def compute(clip=clip):
                return clip_features(dataset, clip, recipe=recipe, frontend=frontend, stats=stats,
                                     view=view)

            try:
                if ahead is not None and position in ahead.arrays:
                    feats = ahead.arrays.pop(position)
                elif cache is None:
                    feats = compute()
                else:
                    feats = cache.get_or_compute(make_key(dataset.identity(clip), config), compute)
            except AudioDecodeError as err:  # checked before, so the file changed since
                raise AudioDecodeError(err.path, f"{err.problem} (clip {position + 1} of "
                                       f"{len(indices)} of {description}); fix or remove the "
                                       "file, or rerun with --skip-bad to leave unreadable "
                                       "clips out") from err
            if xs and feats.shape[1:] != xs[0].shape[1:]:
                raise DataError(f"clip '{clip.path}' gives features of shape {feats.shape[1:]} "
                                f"but earlier clips gave {xs[0].shape[1:]}; if the feature cache "
                                f"predates a bitsound upgrade, clear it (--cache DIR / "
                                f"$BITSOUND_CACHE)")
            xs.append(np.asarray(feats))
            clip_of_window.append(np.full(len(feats), position))
            clip_y.append(label_index[clip.label])
            window_y.append([label_index[name] for name in
                             strong_window_labels(clip, len(feats), recipe=recipe)])
            progress.advance(task)
    if stats.get("windows_dropped"):
        log.info("%s: the energy gate dropped %d quiet windows of the clips decoded now "
                 "(cached clips were gated when first decoded)", description,
                 stats["windows_dropped"])
    duplicated = duplicated_mono_count() - duplicated_before + (ahead.duplicated if ahead else 0)
    if duplicated:
        log.info("%s: %d mono clips are duplicated to both channels of the 2-channel input "
                 "(audio.channels 'stereo'; clips decoded now, not cached ones)", description,
                 duplicated)
    if not xs:
        raise DataError(f"no clips to compute {description} for; check the data spec and split")
    x = torch.from_numpy(np.concatenate(xs))
    clip_of_window = np.concatenate(clip_of_window)
    clip_y = np.asarray(clip_y, dtype=np.int64)
    y = torch.from_numpy(np.concatenate(window_y).astype(np.int64))
    return FeatureSet(x=x, y=y, clip_of_window=clip_of_window, clip_y=clip_y)


def _compute_ahead(dataset: Dataset, indices: list[int], *, recipe: Recipe, config: dict,
                   cache: FeatureCache | None, view: str, workers: int, show_progress: bool,
                   description: str):
    """With ``workers`` > 1: compute the clips not cached yet in worker processes (into the
    cache, or returned without one); None when there is nothing to do in parallel."""
    if workers <= 1:
        return None
    jobs = []
    for position, i in enumerate(indices):
        key = make_key(dataset.identity(dataset.clips[i]), config) if cache is not None else None
        if key is None or key not in cache:
            jobs.append((position, i, key))
    if len(jobs) < 2:
        return None
    log.info("%s: %d of %d clips to compute, in %d worker processes", description, len(jobs),
             len(indices), workers)
    ahead = compute_parallel(dataset, jobs, recipe=recipe, view=view, cache=cache, workers=workers,
                             show_progress=show_progress, description=description)
    raise_failures(ahead.failures, total=len(indices), description=description)
    return ahead


def strong_window_labels(clip, n_windows: int, *, recipe: Recipe) -> list[str]:
    """Label names of a clip's ``n_windows`` windows: from its events, else its clip label.

    Windows of a segmented clip start at ``clip.start + k * hop`` (less half a window when the
    segments are centred); an energy gate would drop some of them unseen, so strong labels need
    a recipe without one.
    """
    if clip.events is None:
        return [clip.label] * n_windows
    seg = recipe.audio.segment
    if seg is None:
        raise ConfigError(f"clip '{clip.path}' carries events, which label windows; give the "
                          "recipe audio.segment (length, hop) to cut it into windows")
    if seg.energy_gate_db is not None:
        raise ConfigError(f"clip '{clip.path}' carries events, but audio.segment.energy_gate_db "
                          f"({seg.energy_gate_db}) drops windows, so their times are unknown; set "
                          "audio.segment.energy_gate_db: null")
    starts = (clip.start or 0.0) + seg.first_start(recipe.audio.sample_rate) + seg.hop * np.arange(n_windows)
    wl = recipe.data.window_labels
    return window_labels(clip.events, starts, length=seg.length, clip_label=clip.label,
                         region=wl.region, min_overlap=wl.min_overlap)


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


@torch.no_grad()
def source_clip_probabilities(net: nn.Module, sources: FeatureSet, audio: AudioConfig, *,
                              batch_clips: int = 32) -> np.ndarray:
    """Clip probabilities [shape=(n_clips, n_classes)] of stored whole clips (``view="source"``)
    with the test-time crops of ``audio.crop``, chunk by chunk (never all crops at once)."""
    length, pad, _ = crop_geometry(audio)
    crop = audio.crop
    device = next(net.parameters()).device
    was_training = net.training
    net.eval()
    out = []
    for start in range(0, len(sources.x), batch_clips):
        chunk = sources.x[start:start + batch_clips].numpy()
        windows = np.concatenate([
            crop_windows(clip[0] if clip.ndim == 3 else clip, length=length, pad=pad,
                         trim_zeros=crop.trim_zeros, n_crops=crop.test_crops)[0]
            for clip in chunk])
        probs = torch.softmax(net(torch.from_numpy(windows).to(device)), dim=-1).cpu()
        out.append(probs.double().view(len(chunk), crop.test_crops, -1).mean(dim=1))
    net.train(was_training)
    return torch.cat(out).numpy()


def scored_probabilities(net: nn.Module, features: FeatureSet, *, level: str,
                         sources_of: AudioConfig | None = None
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """The examples a score counts, at clip or window level.

    Returns
    -------
    y_true : ndarray [shape=(n,)] of int
    probs : ndarray [shape=(n, n_classes)]
        Per clip the mean of its windows' probabilities (or of its test-time crops, for stored
        whole clips with ``sources_of``), or per window.
    clip_position : ndarray [shape=(n,)] of int
        Each example's clip, as a position in the clips the features were built from.
    window : ndarray [shape=(n,)] of int or None
        Each example's window index within its clip (window level), else None.
    """
    if sources_of is not None:
        return (features.clip_y, source_clip_probabilities(net, features, sources_of),
                np.arange(features.n_clips), None)
    if level == "window":
        positions = features.clip_of_window
        first = np.searchsorted(positions, positions)  # windows of a clip are contiguous
        return (features.y.numpy(), window_probabilities(net, features), positions,
                np.arange(len(positions)) - first)
    return (features.clip_y, clip_probabilities(net, features), np.arange(features.n_clips), None)


def score(net: nn.Module, features: FeatureSet, *, labels: list[str], level: str,
          devices: list[str | None] | None = None, seen_devices: list[str] | None = None,
          sources_of: AudioConfig | None = None) -> dict:
    """Classification report per clip (window probabilities averaged) or per window.

    Parameters
    ----------
    devices : list of str or None, optional
        The recording device of each clip of ``features``; when any is set the report gains
        ``per_device`` (see :func:`bitsound.metrics.per_device_accuracy`).
    seen_devices : list of str, optional
        Devices of the model's training data, to mark each device seen or unseen.
    sources_of : AudioConfig, optional
        ``features`` hold whole stored clips (``view="source"``): score them with the
        test-time crops of this config.
    """
    y, probs, example_clip, _ = scored_probabilities(net, features, level=level, sources_of=sources_of)
    report = classification_report(y, probs, labels=labels)
    if devices is not None and any(d is not None for d in devices):
        report["per_device"] = per_device_accuracy(
            y, probs, [devices[i] for i in example_clip.tolist()], seen=seen_devices)
    return report
