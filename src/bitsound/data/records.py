"""What a dataset is: a list of :class:`Clip` records and a way to read their audio.

Every source layout (a class-per-folder tree, a CSV manifest, FSDD, ESC, xeno-canto, the
synthetic generator) produces the same :class:`Dataset`, so splits, the feature cache and the
training loop never need to know where the audio came from.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bitsound.errors import DataError

#: How many offending items an error message lists before it summarises the rest.
MAX_LISTED = 20


@dataclass(frozen=True, order=True)
class Event:
    """One annotated sound event inside a recording.

    Parameters
    ----------
    onset, offset : float
        Start and end in seconds from the start of the file (not of a clip's ``start``),
        ``0 <= onset < offset``.
    label : str
        Event class.
    """

    onset: float
    offset: float
    label: str

    def __post_init__(self) -> None:
        if not (np.isfinite(self.onset) and np.isfinite(self.offset)):
            raise DataError(f"event {self.label!r}: onset {self.onset!r} and offset "
                            f"{self.offset!r} must be finite numbers of seconds")
        if self.onset < 0 or self.offset <= self.onset:
            raise DataError(f"event {self.label!r} [{self.onset}, {self.offset}] s: need "
                            "0 <= onset < offset; fix the annotation")

    @property
    def duration(self) -> float:
        return self.offset - self.onset


@dataclass(frozen=True)
class Clip:
    """One labelled piece of audio.

    Parameters
    ----------
    path : str
        Absolute path of the audio file, or a virtual id (``synthetic://...``) for generated data.
    label : str
        Class name.
    fold : str or None
        Predefined cross-validation fold, when the dataset has one.
    group : str or None
        What clips must not be split across (speaker, source recording, location, city).
    device : str or None
        Recording device, when known.
    start, end : float or None
        Part of a long file to use, in seconds; ``None`` means the file's start / end.
    meta : dict
        Anything else the source knows (e.g. xeno-canto metadata). Not part of equality or hash.
    events : tuple of Event or None
        Strong labels: annotated events (times in seconds of the file). ``None``: the clip is
        weakly labelled (``label`` only); ``()``: annotated, and nothing happens in it. Windows
        that no event covers take ``label`` (see :func:`bitsound.data.events.window_labels`).
    """

    path: str
    label: str
    fold: str | None = None
    group: str | None = None
    device: str | None = None
    start: float | None = None
    end: float | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    events: tuple[Event, ...] | None = None

    @property
    def all_labels(self) -> set[str]:
        """The clip label and every event label."""
        return {self.label, *(event.label for event in self.events or ())}


class Dataset:
    """Clips of one source plus the way to read them.

    Parameters
    ----------
    kind : str
        The registered source name (``"folder"``, ``"fsdd"``, ``"synthetic"`` ...).
    root : str
        Where it was opened from (a folder, a CSV file, or a generator spec).
    clips : sequence of Clip
        The records, in a stable order (sources sort them), so indices are reproducible.
    labels : sequence of str, optional
        The class list. Defaults to the sorted unique labels of ``clips``; a longer list keeps
        class indices fixed when some classes have no clips here (see :meth:`subset`).

    Notes
    -----
    Sources that generate audio instead of reading files override :meth:`load` and
    :meth:`identity` and set ``generated = True`` and ``native_rate``.
    """

    #: True for datasets whose audio is computed in :meth:`load` rather than read from files.
    generated: bool = False
    #: For generated datasets: the rate :meth:`load` returns when ``sample_rate`` is None.
    native_rate: int | None = None
    #: A published order of the classes, for ``data.classes: N`` (the first N); None: none.
    class_order: tuple[str, ...] | None = None
    #: ``(split kind, reason)`` when only that kind of split gives honest, comparable scores.
    required_split: tuple[str, str] | None = None

    def __init__(
        self,
        *,
        kind: str,
        root: str,
        clips: Sequence[Clip],
        labels: Sequence[str] | None = None,
    ) -> None:
        self.kind = kind
        self.root = str(root)
        self.clips: list[Clip] = list(clips)
        self.labels: list[str] = sorted(_labels_of(self.clips)) if labels is None else list(labels)
        self._check_labels()

    def _check_labels(self) -> None:
        known = set(self.labels)
        unknown = sorted(_labels_of(self.clips) - known)
        if unknown:
            raise DataError(
                f"{self.kind} dataset at '{self.root}': clips carry labels {unknown} that are not "
                f"in the class list {self.labels}; pass labels=None to derive the list from clips"
            )

    # ---------------------------------------------------------------- container protocol
    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> Clip:
        return self.clips[index]

    def __iter__(self) -> Iterator[Clip]:
        return iter(self.clips)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(kind={self.kind!r}, root={self.root!r}, "
            f"clips={len(self.clips)}, labels={len(self.labels)})"
        )

    # ---------------------------------------------------------------- labels
    @property
    def label_index(self) -> dict[str, int]:
        """Map from class name to its integer target (position in :attr:`labels`)."""
        return {label: i for i, label in enumerate(self.labels)}

    def targets(self) -> np.ndarray:
        """Integer class targets of all clips, shape ``(len(self),)``, dtype int64."""
        index = self.label_index
        return np.array([index[clip.label] for clip in self.clips], dtype=np.int64)

    # ---------------------------------------------------------------- audio
    def load(
        self,
        clip: Clip,
        *,
        sample_rate: int | None = None,
        channels: str | int | None = None,
    ) -> np.ndarray:
        """Read one clip's audio.

        Parameters
        ----------
        clip : Clip
            A clip of this dataset.
        sample_rate : int, optional
            Resample to this rate; ``None`` keeps the file's rate.
        channels : {"mono", "stereo"} or int, optional
            Channel policy as in :class:`bitsound.config.AudioConfig`; ``None`` keeps all.

        Returns
        -------
        audio : np.ndarray [shape=(channels, samples), dtype=float32]

        Raises
        ------
        AudioDecodeError
            The file cannot be decoded.
        """
        from bitsound.audio.io import load_audio  # lazy: keeps `import bitsound.data` light

        return load_audio(
            clip.path, sample_rate=sample_rate, channels=channels, start=clip.start, end=clip.end
        )

    def identity(self, clip: Clip) -> str:
        """A stable key of the clip's audio content, for the feature cache.

        For files it is the absolute path, size and modification time (ns) plus the segment, so
        editing or replacing a file gives a new identity.

        Raises
        ------
        DataError
            The file no longer exists.
        """
        path = os.path.abspath(clip.path)
        try:
            stat = os.stat(path)
        except OSError as exc:
            raise DataError(
                f"cannot stat '{path}' ({exc.strerror}); the dataset changed on disk since it "
                "was opened: open it again"
            ) from exc
        return f"file:{path}|size={stat.st_size}|mtime_ns={stat.st_mtime_ns}|{_span(clip)}"

    def member(self, clip: Clip) -> tuple[Dataset, Clip]:
        """The data set that reads ``clip`` and the clip as that data set knows it.

        A plain data set reads its own clips; a combined one hands each to its source (so a
        check can tell generated clips from files).
        """
        return self, clip

    # ---------------------------------------------------------------- subsets
    def subset(self, indices: Sequence[int] | np.ndarray, *, keep_labels: bool = False) -> Dataset:
        """A dataset of the clips at ``indices`` (same kind, root and loader).

        Parameters
        ----------
        indices : sequence of int
            Positions in :attr:`clips`, in the order wanted.
        keep_labels : bool
            False: :attr:`labels` are the sorted labels of the selected clips (e.g. after
            excluding classes). True: keep this dataset's class list, so that :meth:`targets`
            means the same in every subset (train / validation parts of one split).

        Raises
        ------
        DataError
            An index is out of range.
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        bad = idx[(idx < -len(self.clips)) | (idx >= len(self.clips))]
        if bad.size:
            raise DataError(
                f"subset indices {bad[:MAX_LISTED].tolist()} are out of range for a dataset of "
                f"{len(self.clips)} clips; use indices 0..{len(self.clips) - 1}"
            )
        # A shallow copy keeps subclass state (e.g. generator settings) and overridden loaders.
        child = copy.copy(self)
        child.clips = [self.clips[i] for i in idx.tolist()]
        child.labels = list(self.labels) if keep_labels else sorted(_labels_of(child.clips))
        return child


def _labels_of(clips: Sequence[Clip]) -> set[str]:
    """Clip labels and, for strongly labelled clips, their event labels."""
    labels: set[str] = set()
    for clip in clips:
        labels.add(clip.label)
        if clip.events:
            labels.update(event.label for event in clip.events)
    return labels


def _span(clip: Clip) -> str:
    return f"start={clip.start!r}|end={clip.end!r}"


def format_list(items: Sequence[str], *, limit: int = MAX_LISTED) -> str:
    """Bullet-list ``items`` for an error message, summarising after ``limit`` entries."""
    lines = [f"  - {item}" for item in items[:limit]]
    if len(items) > limit:
        lines.append(f"  ... and {len(items) - limit} more")
    return "\n".join(lines)


def relative_name(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` when it lies inside it, for short messages."""
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)
