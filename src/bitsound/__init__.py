"""bitsound: tiny, deployable sound classifiers (binarized, pruned, quantized, distilled)."""

__version__ = "0.1.0"

__all__ = ["__version__", "load_model"]


def __getattr__(name: str):
    # Imported lazily so that ``import bitsound`` stays cheap for the CLI and light tools.
    if name == "load_model":
        from bitsound.modelfile import load_model

        return load_model
    raise AttributeError(f"module 'bitsound' has no attribute {name!r}")
