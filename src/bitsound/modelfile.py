"""The self-contained model file (``model.pt``) and :func:`load_model`.

A model file is a plain dict that loads with ``torch.load(weights_only=True)``: the recipe
(audio, front-end, segmentation and model config), the labels, the network's architecture as
plain data (:mod:`bitsound.modelspec`: every layer's class, attributes and tensor shapes), its
weights and the metrics measured when it was trained. Nothing else is needed to rebuild and run
it, and the architecture is the one that was saved, not the one the recipe would build today: a
network whose channels were removed after construction (pruning) reloads with its real shapes.

Versions: 2 (this one) stores ``module_spec``; version 1 files (bitsound 0.1 before the model
graph) have none and are rebuilt from their recipe, which gives the same network as long as its
shapes were never changed after construction.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from bitsound.audio.features import build_frontend
from bitsound.config import Recipe, parse_recipe
from bitsound.errors import BitsoundError, CheckpointError
from bitsound.models import build_model
from bitsound.models.registry import validate_params
from bitsound.modelspec import build_from_spec, module_spec
from bitsound.train.checkpoint import load_torch, save_torch

FORMAT = "bitsound.model"
VERSION = 2
READABLE_VERSIONS = (1, 2)


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
        self.example_input = torch.zeros(1, recipe.audio.n_channels, recipe.audio.window_samples)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.net(self.frontend(wave))


def feature_shape(recipe: Recipe) -> tuple[int, ...]:
    frontend = build_frontend(recipe.frontend, sample_rate=recipe.audio.sample_rate)
    return tuple(frontend.output_shape(recipe.audio.n_channels, recipe.audio.window_samples))


def build_net(recipe: Recipe, n_classes: int) -> nn.Module:
    """The recipe's untrained network; its params are first checked against the recipe's audio
    and front end (:meth:`~bitsound.models.registry.ModelParams.check_recipe`)."""
    validate_params(recipe.model.name, recipe.model.params).check_recipe(recipe)
    return build_model(recipe.model.name, input_shape=feature_shape(recipe), n_classes=n_classes,
                       params=recipe.model.params)


def save_model(path: Path, *, recipe: Recipe, labels: list[str], net: nn.Module,
               metrics: dict | None = None) -> None:
    """Write a self-contained model file atomically."""
    save_torch({"format": FORMAT, "version": VERSION, "recipe": recipe.model_dump(mode="json"),
                "labels": list(labels), "module_spec": module_spec(net), "state_dict": net.state_dict(),
                "metrics": metrics or {}},
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
    # type checks first: a damaged file may hold a tensor here, which == would compare elementwise
    if not isinstance(data.get("format"), str) or data["format"] != FORMAT:
        raise CheckpointError(f"'{path}' is not a bitsound model file (format "
                              f"{data.get('format')!r}); pass the DIR/model.pt that train wrote")
    version = data.get("version")
    if type(version) is not int or version not in READABLE_VERSIONS:
        raise CheckpointError(f"model file '{path}' has format version {data.get('version')!r}; "
                              f"this bitsound reads versions {READABLE_VERSIONS}: upgrade bitsound")
    _check_fields(data, path)
    recipe = parse_recipe(data["recipe"], source=f"stored in '{path}'")
    try:
        if data["version"] == 1:
            _check_v1_shapes(recipe, data)
            net = build_net(recipe, len(data["labels"]))
        else:
            net = build_from_spec(data["module_spec"])
    except CheckpointError as err:
        raise CheckpointError(f"model file '{path}': {err}") from None
    except RecursionError:
        raise CheckpointError(f"model file '{path}': its architecture is nested too deeply to be a "
                              "bitsound network; the file is damaged or not a bitsound model") from None
    try:
        net.load_state_dict(data["state_dict"])
    except (RuntimeError, TypeError, AttributeError, KeyError) as err:
        hint = ("; a version-1 file is rebuilt from its recipe, so a network whose shapes changed after "
                "construction cannot load from one: re-save it with this bitsound "
                "(bitsound.modelfile.save_model) from the process that holds it"
                if data["version"] == 1 else "")
        raise CheckpointError(f"model file '{path}': its weights do not fit its architecture ({err}){hint}") \
            from None
    model = SoundClassifier(recipe, data["labels"], net)
    model.metrics = data.get("metrics", {})
    return model.eval()


def _check_v1_shapes(recipe: Recipe, data: dict) -> None:
    """A version-1 file's network is rebuilt from its recipe: build it on the meta device first
    (no memory) and compare its shapes with the stored weights, so that a damaged or hostile
    recipe asking for a huge network is refused before anything is allocated. Errors are
    :class:`CheckpointError` without the path, which :func:`load_model` puts in front."""
    try:
        with torch.device("meta"):
            probe = build_net(recipe, len(data["labels"]))
    except BitsoundError as err:  # the recipe's model section is invalid
        raise CheckpointError(f"its recipe builds no network ({err}); the file is damaged: train "
                              "the model again or copy the file again") from None
    # What layer constructors raise for odd sizes, and what an operation the meta device lacks
    # raises: either way the size cannot be checked before allocating, so the file is refused.
    except (RuntimeError, NotImplementedError, ValueError, TypeError) as err:
        first = str(err).splitlines()[0] if str(err) else ""
        raise CheckpointError(f"the network its recipe describes cannot be built ({type(err).__name__}: "
                              f"{first}); the file is damaged (every bitsound network builds on the meta "
                              "device): train the model again or copy the file again") from None
    wanted = {k: tuple(v.shape) for k, v in probe.state_dict().items()}
    stored = {k: tuple(v.shape) for k, v in data["state_dict"].items() if isinstance(v, torch.Tensor)}
    if wanted != stored:
        diff = sorted(set(wanted.items()) ^ set(stored.items()), key=str)[:3]
        raise CheckpointError(f"its weights do not fit the network its recipe "
                              f"builds (e.g. {diff}); a version-1 file is rebuilt from its recipe, so "
                              "the file is damaged, or its network changed shape after it was built: "
                              "re-save it with this bitsound (bitsound.modelfile.save_model)")


#: Fields of a model file and the type each must have.
_FIELDS = {"recipe": dict, "labels": list, "state_dict": dict, "metrics": dict}


def _check_fields(data: dict, path) -> None:
    """A model file whose fields are missing or of the wrong type is damaged: say which."""
    fields = dict(_FIELDS, **({"module_spec": dict} if data.get("version") == 2 else {}))
    for key, kind in fields.items():
        if key == "metrics" and key not in data:
            continue
        if not isinstance(data.get(key), kind):
            found = "missing" if key not in data else f"a {type(data[key]).__name__}"
            raise CheckpointError(f"model file '{path}' is damaged: its '{key}' is {found}, not a "
                                  f"{kind.__name__}; train the model again or copy the file again")
    labels = data["labels"]
    if not labels or not all(isinstance(label, str) for label in labels) or len(set(labels)) != len(labels):
        raise CheckpointError(f"model file '{path}' is damaged: its labels must be distinct strings, "
                              f"got {labels[:10]!r}; train the model again or copy the file again")
