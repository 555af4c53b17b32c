"""Audio in, logits out through the engine: the recipe's front end in C, then the C engine.

The front end is ``engine/frontend.c`` (:mod:`bitsound.engine.frontend`), the same C code the
generated microcontroller projects compile, so ``bitsound predict --engine`` goes from audio to
label in C; ``frontend="torch"`` runs the PyTorch front end instead.

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

FRONTENDS = ("c", "torch")


class EngineClassifier:
    """Front end (C, or PyTorch on the CPU) + engine.

    Parameters
    ----------
    engine : Engine
        A model exported from a :class:`SoundClassifier` (its metadata holds the recipe).
    frontend : {"c", "torch"}
        The recipe's front end in C (``engine/frontend.c``, default) or in PyTorch.

    Attributes
    ----------
    recipe : Recipe
    labels : list of str
    frontend : nn.Module
    engine : Engine
    """

    def __init__(self, engine: Engine, *, frontend: str = "c"):
        from bitsound.audio.features import build_frontend
        from bitsound.config import parse_recipe
        from bitsound.engine.frontend import frontend_spec
        from bitsound.errors import ConfigError

        if frontend not in FRONTENDS:
            raise ConfigError(f"frontend must be one of {', '.join(FRONTENDS)}, got {frontend!r}")

        if "recipe" not in engine.meta or not engine.labels:
            raise EngineFileError(6, "out_of_range", "the file has no recipe/labels metadata; export it "
                                  "from a trained model.pt with `bitsound export`", engine.path)
        self.engine = engine
        self.recipe = parse_recipe(engine.meta["recipe"], source=f"metadata of '{engine.path or '<bytes>'}'")
        self.labels = list(engine.labels)
        self.frontend = build_frontend(self.recipe.frontend, sample_rate=self.recipe.audio.sample_rate).eval()
        self.frontend_kind = frontend
        self.frontend_spec = frontend_spec(self.recipe) if frontend == "c" else None

    def features(self, wave: torch.Tensor) -> np.ndarray:
        """wave : Tensor [shape=(batch, channels, samples)] -> features [shape=(batch, *feature_shape)]"""
        spec = self.frontend_spec
        if spec is not None:
            from bitsound.engine.frontend import run

            x = wave.detach().cpu().numpy() if isinstance(wave, torch.Tensor) else np.asarray(wave)
            want = (spec.ints["n_channels"], spec.n_samples)
            if x.ndim != 3 or x.shape[1:] != want:
                raise DataError(f"the C front end takes windows of shape (batch, {want[0]}, {want[1]}), got "
                                f"{tuple(x.shape)}: the windows must be as long as the recipe's segment")
            f = run(spec, x)
        else:
            with torch.no_grad():
                f = self.frontend(torch.as_tensor(wave, dtype=torch.float32)).cpu().numpy()
        if f.shape[1:] != self.engine.feature_shape:
            raise DataError(f"the front end gives features of shape {f.shape[1:]}, the engine model "
                            f"takes {self.engine.feature_shape}: the windows must be as long as the "
                            f"recipe's segment")
        return f

    def __call__(self, wave: torch.Tensor) -> torch.Tensor:
        """Logits [shape=(batch, n_classes)] of waveform windows [shape=(batch, channels, samples)]."""
        return torch.from_numpy(self.engine.predict(self.features(wave)))


def load_classifier(path: str | Path, *, isa: str = "auto", threads: int = 1,
                    frontend: str = "c") -> EngineClassifier:
    """Load a ``.bsnn`` file exported from a trained model as an audio classifier.

    ``threads``: engine threads (see :func:`bitsound.engine.load`); the windows of a file go to the
    engine as one batch, split over the threads by window. ``frontend``: ``"c"`` (default) or
    ``"torch"`` (see :class:`EngineClassifier`).
    """
    return EngineClassifier(load(path, isa=isa, threads=threads), frontend=frontend)


__all__ = ["EngineClassifier", "load_classifier"]
