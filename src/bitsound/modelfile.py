"""The self-contained model file (``model.pt``) and :func:`load_model`.

A model file is a plain dict that loads with ``torch.load(weights_only=True)``: the recipe
(audio, front-end, segmentation and model config), the labels, the network weights and the
metrics measured when it was trained. Nothing else is needed to rebuild and run it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from bitsound.audio.features import build_frontend
from bitsound.config import Recipe, parse_recipe
from bitsound.errors import CheckpointError
from bitsound.models import build_model
from bitsound.train.checkpoint import load_torch, save_torch

FORMAT = "bitsound.model"
VERSION = 1


class SoundClassifier(nn.Module):
    """Front end + network: waveform windows in, logits out.

    Attributes
    ----------
    frontend : nn.Module
        Turns waveforms [shape=(batch, channels, samples)] into features.
    net : nn.Module
        Turns features into logits [shape=(batch, n_classes)].
    labels : list of str
        Class name of each logit.
    recipe : Recipe
        The configuration it was trained with.
    example_input : Tensor [shape=(1, channels, samples)]
        A waveform window of the right shape, e.g. for tracing or export.
    """

    def __init__(self, recipe: Recipe, labels: list[str], net: nn.Module):
        super().__init__()
        self.recipe = recipe
        self.labels = list(labels)
        self.frontend = build_frontend(recipe.frontend, sample_rate=recipe.audio.sample_rate)
        self.net = net
        seconds = recipe.audio.segment.length if recipe.audio.segment else recipe.audio.clip_seconds
        samples = round(seconds * recipe.audio.sample_rate)
        self.example_input = torch.zeros(1, recipe.audio.n_channels, samples)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.net(self.frontend(wave))


def feature_shape(recipe: Recipe) -> tuple[int, ...]:
    frontend = build_frontend(recipe.frontend, sample_rate=recipe.audio.sample_rate)
    seconds = recipe.audio.segment.length if recipe.audio.segment else recipe.audio.clip_seconds
    return tuple(frontend.output_shape(recipe.audio.n_channels,
                                       round(seconds * recipe.audio.sample_rate)))


def build_net(recipe: Recipe, n_classes: int) -> nn.Module:
    return build_model(recipe.model.name, input_shape=feature_shape(recipe), n_classes=n_classes,
                       params=recipe.model.params)


def save_model(path: Path, *, recipe: Recipe, labels: list[str], net: nn.Module,
               metrics: dict | None = None) -> None:
    """Write a self-contained model file atomically."""
    save_torch({"format": FORMAT, "version": VERSION, "recipe": recipe.model_dump(mode="json"),
                "labels": list(labels), "state_dict": net.state_dict(), "metrics": metrics or {}},
               path)


def load_model(path: str | Path) -> SoundClassifier:
    """Load a ``model.pt`` written by ``bitsound train``.

    Returns
    -------
    SoundClassifier
        In eval mode, on the CPU, with ``.frontend``, ``.net``, ``.labels``, ``.recipe`` and
        ``.example_input``.
    """
    data = load_torch(Path(path), what="model file")
    if data.get("format") != FORMAT:
        raise CheckpointError(f"'{path}' is not a bitsound model file (format "
                              f"{data.get('format')!r}); pass the DIR/model.pt that train wrote")
    if data.get("version") != VERSION:
        raise CheckpointError(f"model file '{path}' has format version {data.get('version')}; "
                              f"this bitsound reads version {VERSION}: upgrade bitsound")
    recipe = parse_recipe(data["recipe"], source=f"stored in '{path}'")
    net = build_net(recipe, len(data["labels"]))
    net.load_state_dict(data["state_dict"])
    model = SoundClassifier(recipe, data["labels"], net)
    model.metrics = data.get("metrics", {})
    return model.eval()
