"""Model families, found by name through :data:`MODELS` (``bitsound list models``)."""

from bitsound.models import cnn  # noqa: F401  (registers the CNN family)
from bitsound.models.registry import MODELS, build_model, register_model

__all__ = ["MODELS", "build_model", "register_model"]
