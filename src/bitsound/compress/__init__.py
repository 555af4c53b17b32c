"""Compression that really shrinks a model: pruning, int8 and fp16, distillation, pipelines.

- :mod:`bitsound.compress.prune`: structured channel removal on Torch-Pruning's dependency
  graph (L1, Taylor and seed 001's hybrid criteria) and unstructured magnitude masks;
- :mod:`bitsound.compress.quantize`: batch-norm folding, int8 conversion and calibration,
  fp16, and the engine's int8 agreement with PyTorch;
- :mod:`bitsound.compress.config` / :mod:`bitsound.compress.pipeline`: typed pipelines of stages
  (``bitsound compress``), each stage a saved, measured model.
"""

from bitsound.compress.config import Pipeline, load_pipeline, parse_pipeline
from bitsound.compress.pipeline import compress

__all__ = ["Pipeline", "compress", "load_pipeline", "parse_pipeline"]
