"""The model registry: ``build_model(name, input_shape=..., n_classes=..., params=...)``.

Each family declares its ``model.params`` as a pydantic model (:class:`ModelParams`): unknown
keys and wrong types are a :class:`~bitsound.errors.ConfigError` quoting ``model.params.KEY``,
raised before the network is built.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError
from torch import nn

from bitsound.errors import ConfigError
from bitsound.registry import Registry

MODELS: Registry = Registry("model")

# common field types of model params (strict: "yes" is not a bool, True is not an int)
PositiveInt = Annotated[StrictInt, Field(ge=1)]
NonNegativeInt = Annotated[StrictInt, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0.0, lt=1.0, strict=False)]
Flag = StrictBool


class ModelParams(BaseModel):
    """Base of every family's ``model.params``: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def check_recipe(self, recipe: Any) -> None:
        """Raise ConfigError when these params contradict the recipe the network is built for
        (e.g. a sample rate that must equal its ``audio.sample_rate``); the base checks nothing.
        :func:`bitsound.modelfile.build_net` calls it."""


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its builder, params model, an example input shape (for tests, export
    and ``complexity --recipe``), and, for a model the engine cannot run, the reason."""

    builder: Callable[..., nn.Module]
    params: type[ModelParams]
    example_input: tuple[int, ...]
    not_exportable: str | None = None


def register_model(name: str, *, params: type[ModelParams], example_input: tuple[int, ...],
                   description: str = "", not_exportable: str | None = None):
    """Register a builder ``f(*, input_shape, n_classes, **params) -> nn.Module``.

    ``example_input`` is one example's feature shape the family takes (``(c, h, w)`` or ``(c, t)``);
    ``not_exportable`` declares, with the reason, a model that does not lower to the graph (the
    export tests iterate over every registered model and fail for an undeclared one).
    """
    def decorator(builder):
        MODELS.add(name, ModelEntry(builder, params, tuple(example_input), not_exportable),
                   description=description)
        return builder

    return decorator


def model_entry(name: str) -> ModelEntry:
    return MODELS.get(name)


def params_of(name: str) -> type[ModelParams]:
    """The pydantic params model of a registered family."""
    return MODELS.get(name).params


def validate_params(name: str, params: dict[str, Any] | None) -> ModelParams:
    """``params`` checked against the family's model; ConfigError with ``model.params.KEY`` paths."""
    cls = params_of(name)
    if params is not None and not isinstance(params, dict):
        raise ConfigError(f"model '{name}': model.params must be a mapping, got {type(params).__name__}")
    try:
        return cls.model_validate(params or {})
    except ValidationError as err:
        lines = [f"model '{name}': invalid model.params:"]
        for item in err.errors():
            path = ".".join(str(p) for p in ("model.params", *item["loc"]))
            msg = item["msg"]
            if item["type"] == "extra_forbidden":
                valid = ", ".join(sorted(cls.model_fields))
                msg = f"unknown key; valid params: {valid}"
            got = item.get("input")
            lines.append(f"  {path}: {msg}" + ("" if isinstance(got, dict) else f" (got {got!r})"))
        raise ConfigError("\n".join(lines)) from None


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
        The recipe's ``model.params``, validated against the family's params model.
    """
    builder = MODELS.get(name).builder
    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 1:
        raise ConfigError(f"n_classes must be an integer >= 1, got {n_classes!r}")
    checked = validate_params(name, params)
    return builder(input_shape=tuple(input_shape), n_classes=n_classes, **dict(checked))
