"""Audio in, logits out through the engine: the recipe's front end in C, then the C engine.

The front end is ``engine/frontend.c`` (:mod:`bitsound.engine.frontend`), the same C code the
generated microcontroller projects compile, so ``bitsound predict --engine`` goes from audio to
label in C; ``frontend="torch"`` runs the PyTorch front end instead, and the default ``"auto"``
does so (with one log line saying why) for a front end the C code does not implement, e.g.
BC-ResNet's 2080-point STFT.

:class:`EngineClassifier` mirrors the parts of :class:`bitsound.modelfile.SoundClassifier` that
:func:`bitsound.experiment.predict_files` uses (``recipe``, ``labels``, calling it on a batch of
waveform windows), so ``bitsound predict --engine model.bsnn FILE...`` is
``predict_files(load_classifier("model.bsnn"), files)``. The recipe and labels come from the
``.bsnn`` file's metadata, written by :func:`bitsound.export.export_packed`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from bitsound.engine import Engine, EngineFileError, load
from bitsound.errors import ConfigError, DataError

FRONTENDS = ("auto", "c", "torch")
log = logging.getLogger("bitsound.engine")


class EngineClassifier:
    """Front end (C, or PyTorch on the CPU) + engine.

    Parameters
    ----------
    engine : Engine
        A model exported from a :class:`SoundClassifier` (its metadata holds the recipe).
    frontend : {"auto", "c", "torch"}
        The recipe's front end in C (``engine/frontend.c``) or in PyTorch; ``"auto"`` (default):
        C where it implements the recipe's front end, else PyTorch (logged once).

    Attributes
    ----------
    recipe : Recipe
    labels : list of str
    frontend : nn.Module
    frontend_kind : {"c", "torch"}
        The front end in use.
    engine : Engine

    Raises
    ------
    ConfigError
        An unknown ``frontend``, or ``"c"`` for a front end the C code does not implement.
    """

    def __init__(self, engine: Engine, *, frontend: str = "auto"):
        from bitsound.audio.features import build_frontend
        from bitsound.config import parse_recipe
        from bitsound.engine.frontend import frontend_spec

        if frontend not in FRONTENDS:
            raise ConfigError(f"frontend must be one of {', '.join(FRONTENDS)}, got {frontend!r}")

        if "recipe" not in engine.meta or not engine.labels:
            raise EngineFileError(6, "out_of_range", "the file has no recipe/labels metadata; export it "
                                  "from a trained model.pt with `bitsound export`", engine.path)
        self.engine = engine
        self.recipe = parse_recipe(engine.meta["recipe"], source=f"metadata of '{engine.path or '<bytes>'}'")
        self.labels = list(engine.labels)
        self.frontend = build_frontend(self.recipe.frontend, sample_rate=self.recipe.audio.sample_rate).eval()
        self.frontend_spec = None
        if frontend != "torch":
            try:
                self.frontend_spec = frontend_spec(self.recipe)
            except ConfigError as err:
                if frontend == "c":
                    raise ConfigError(f"{err}; or run the PyTorch front end (frontend='torch')") from None
                log.info("running the PyTorch front end: the C front end cannot compute this recipe's "
                         "(%s)", err)
        self.frontend_kind = "c" if self.frontend_spec is not None else "torch"

    def features(self, wave: torch.Tensor) -> np.ndarray:
        """wave : Tensor [shape=(batch, channels, samples)] -> features [shape=(batch, *feature_shape)]"""
        if self.frontend_spec is not None:
            from bitsound.engine.frontend import run

            x = wave.detach().cpu().numpy() if isinstance(wave, torch.Tensor) else np.asarray(wave)
            f = run(self.frontend_spec, x)  # checks the windows' shape
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
                    frontend: str = "auto") -> EngineClassifier:
    """Load a ``.bsnn`` file exported from a trained model as an audio classifier.

    ``threads``: engine threads (see :func:`bitsound.engine.load`); the windows of a file go to the
    engine as one batch, split over the threads by window. ``frontend``: ``"auto"`` (default),
    ``"c"`` or ``"torch"`` (see :class:`EngineClassifier`).
    """
    return EngineClassifier(load(path, isa=isa, threads=threads), frontend=frontend)


__all__ = ["EngineClassifier", "load_classifier"]
