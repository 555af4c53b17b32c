"""The model registry: ``build_model(name, input_shape=..., n_classes=..., **params)``."""

from __future__ import annotations

from typing import Any

from torch import nn

from bitsound.errors import ConfigError
from bitsound.registry import Registry

MODELS: Registry = Registry("model")


def register_model(name: str, *, description: str = ""):
    """Register a builder ``f(*, input_shape, n_classes, **params) -> nn.Module``."""
    return MODELS.register(name, description=description)


def build_model(name: str, *, input_shape: tuple[int, ...], n_classes: int,
                params: dict[str, Any] | None = None) -> nn.Module:
    """Build a registered model.

    Parameters
    ----------
    name : str
        Registered model name (see ``bitsound list models``).
    input_shape : tuple of int
        Shape of one example as the front end produces it, without the batch axis,
        e.g. ``(channels, n_mels, frames)``.
    n_classes : int
        Number of output logits.
    params : dict, optional
        Family-specific keyword arguments from the recipe's ``model.params``.
    """
    builder = MODELS.get(name)
    try:
        return builder(input_shape=tuple(input_shape), n_classes=n_classes, **(params or {}))
    except TypeError as err:
        raise ConfigError(f"model '{name}': bad model.params {params}: {err}") from None
