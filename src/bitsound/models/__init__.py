"""Model families, found by name through :data:`MODELS` (``bitsound list models``)."""

# importing a family registers its models: cnn2d; bcnn2d; the seed 000 thesis family
from bitsound.models import binary_cnn, cnn, thesis  # noqa: F401
from bitsound.models.registry import MODELS, ModelParams, build_model, model_entry, register_model

__all__ = ["MODELS", "ModelParams", "build_model", "model_entry", "register_model"]
