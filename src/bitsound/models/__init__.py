"""Model families, found by name through :data:`MODELS` (``bitsound list models``)."""

# importing a family registers its models: cnn2d; bcnn2d; the seed 000 thesis family; seeds 001
# and 004 on raw waveforms (acdnet, wavecnn); seeds 002 and 003 on scenes (mcdonnell, bcresnet)
from bitsound.models import acdnet, bcresnet, binary_cnn, cnn, mcdonnell, thesis, wavecnn  # noqa: F401
from bitsound.models.registry import MODELS, ModelParams, build_model, model_entry, register_model

__all__ = ["MODELS", "ModelParams", "build_model", "model_entry", "register_model"]
