"""One exception hierarchy for everything a user can get wrong.

Messages name the value, the rule it broke and the fix, so that a user never has to read a
traceback to know what to change.
"""

from __future__ import annotations


class BitsoundError(Exception):
    """Base class of every error bitsound raises on purpose."""


class ConfigError(BitsoundError):
    """A recipe, a ``--set`` override or an argument is malformed or out of range."""


class DataError(BitsoundError):
    """A dataset is missing, malformed, or inconsistent with a model (e.g. an unknown label)."""


class AudioDecodeError(DataError):
    """An audio file cannot be decoded: empty, truncated, not audio, NaN samples, zero length.

    Parameters
    ----------
    path : str or Path
        The offending file.
    problem : str
        What is wrong with it, in words a user can act on.
    """

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"cannot read audio file '{self.path}': {problem}")


class CheckpointError(BitsoundError):
    """A model or checkpoint file is missing, corrupt, or of an unknown format version."""


class ExportError(BitsoundError):
    """A model cannot be exported to the requested format."""


class RegistryError(ConfigError):
    """A name is not registered, or is registered twice."""


class DistributedError(BitsoundError):
    """A process of a distributed run stops because another one (rank 0) failed."""


class DeployError(ExportError):
    """A generated microcontroller project cannot be built or run (a missing cross compiler or
    QEMU, a compiler error, a failed or timed-out run)."""
