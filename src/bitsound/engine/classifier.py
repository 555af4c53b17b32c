"""Audio in, logits out through the engine: the recipe's Python front end, then the C engine.

:class:`EngineClassifier` mirrors the parts of :class:`bitsound.modelfile.SoundClassifier` that
:func:`bitsound.experiment.predict_files` uses (``recipe``, ``labels``, calling it on a batch of
waveform windows), so ``bitsound predict --engine model.bsnn FILE...`` is
``predict_files(load_classifier("model.bsnn"), files)``. The recipe and labels come from the
``.bsnn`` file's metadata, written by :func:`bitsound.export.export_packed`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bitsound.engine import Engine, EngineFileError, load
from bitsound.errors import DataError


class EngineClassifier:
    """Front end (PyTorch, CPU) + engine.

    Parameters
    ----------
    engine : Engine
        A model exported from a :class:`SoundClassifier` (its metadata holds the recipe).

    Attributes
    ----------
    recipe : Recipe
    labels : list of str
    frontend : nn.Module
    engine : Engine
    """

    def __init__(self, engine: Engine):
        from bitsound.audio.features import build_frontend
        from bitsound.config import parse_recipe

        if "recipe" not in engine.meta or not engine.labels:
            raise EngineFileError(6, "out_of_range", "the file has no recipe/labels metadata; export it "
                                  "from a trained model.pt with `bitsound export`", engine.path)
        self.engine = engine
        self.recipe = parse_recipe(engine.meta["recipe"], source=f"metadata of '{engine.path or '<bytes>'}'")
        self.labels = list(engine.labels)
        self.frontend = build_frontend(self.recipe.frontend, sample_rate=self.recipe.audio.sample_rate).eval()

    def features(self, wave: torch.Tensor) -> np.ndarray:
        """wave : Tensor [shape=(batch, channels, samples)] -> features [shape=(batch, *feature_shape)]"""
        with torch.no_grad():
            f = self.frontend(torch.as_tensor(wave, dtype=torch.float32))
        f = f.cpu().numpy()
        if f.shape[1:] != self.engine.feature_shape:
            raise DataError(f"the front end gives features of shape {f.shape[1:]}, the engine model "
                            f"takes {self.engine.feature_shape}: the windows must be as long as the "
                            f"recipe's segment")
        return f

    def __call__(self, wave: torch.Tensor) -> torch.Tensor:
        """Logits [shape=(batch, n_classes)] of waveform windows [shape=(batch, channels, samples)]."""
        return torch.from_numpy(self.engine.predict(self.features(wave)))


def load_classifier(path: str | Path, *, isa: str = "auto") -> EngineClassifier:
    """Load a ``.bsnn`` file exported from a trained model as an audio classifier."""
    return EngineClassifier(load(path, isa=isa))


__all__ = ["EngineClassifier", "load_classifier"]
