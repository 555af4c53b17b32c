"""Export of a trained model to the engine's ``.bsnn`` file: lower it to the graph, then write it.

:func:`export_packed` takes ``DIR/model.pt`` (or a loaded classifier, or a bare network with its
input shape), lowers the network with :func:`bitsound.graph.lower.lower` (the registry of layer
lowerings and the fusion passes) and writes the graph with :func:`bitsound.export.bsnn.write`. The
file layout is in :mod:`bitsound.export.bsnn`; the ops in :mod:`bitsound.graph.opcodes`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from bitsound.errors import ExportError
from bitsound.export import bsnn
from bitsound.graph.ir import Graph
from bitsound.graph.lower import lower


def model_graph(model, *, input_shape: tuple[int, ...] | None = None, optimize: bool = True) -> Graph:
    """The typed graph of a model: ``DIR/model.pt``, a SoundClassifier, or a network + ``input_shape``.

    The graph's metadata holds the labels, the feature shape and the recipe, so that a back end
    needs nothing else.
    """
    from bitsound.modelfile import SoundClassifier, feature_shape, load_model

    if isinstance(model, (str, Path)):
        model = load_model(model)
    meta: dict[str, Any] = {"format": "bitsound.bsnn", "bitsound": _version()}
    if isinstance(model, SoundClassifier):
        net = model.net
        shape = tuple(feature_shape(model.recipe)) if input_shape is None else tuple(input_shape)
        meta.update(
            labels=list(model.labels),
            recipe=model.recipe.model_dump(mode="json"),
            model=model.recipe.model.name,
        )
    elif isinstance(model, nn.Module):
        if input_shape is None:
            raise ExportError("exporting a bare network needs input_shape=(c, h, w) or (c, t)")
        net, shape = model, tuple(input_shape)
    else:
        raise ExportError(
            f"export takes a model path, a SoundClassifier or an nn.Module, got {type(model).__name__}"
        )
    meta["feature_shape"] = list(shape)
    return lower(net, shape, meta=meta, optimize=optimize)


def export_packed(model, out_path: str | Path, *, input_shape: tuple[int, ...] | None = None) -> Path:
    """Export a trained model to the packed engine format.

    Parameters
    ----------
    model : str, Path, SoundClassifier or nn.Module
        ``DIR/model.pt`` written by ``bitsound train``, a loaded classifier, or a bare network
        (then ``input_shape`` is required).
    out_path : str or Path
        The ``.bsnn`` file to write (atomically).
    input_shape : tuple of int, optional
        Feature shape of one example, ``(c, h, w)`` or ``(c, t)``; read from the recipe otherwise.

    Returns
    -------
    Path
        ``out_path``.

    Raises
    ------
    ExportError
        For a layer the graph cannot express, naming it and the reason.
    """
    return bsnn.write(model_graph(model, input_shape=input_shape), out_path)


def _version() -> str:
    from bitsound import __version__

    return __version__
