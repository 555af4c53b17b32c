"""Several data sets as one, with their labels mapped onto a shared task.

Bird presence (seed 000) needs it: xeno-canto recordings become ``bird``, ESC-10 clips other
than Rooster and synthetic non-bird events become ``no_bird``. Groups are prefixed with the
source's position so that a group split never confuses two sources' speakers or recordings.

:func:`relabel` maps one data set's labels onto fewer classes and keeps everything else (folds,
groups, devices, loader): the 3-class scene kinds (``tut2017-3class``, ``tau2020-3class``) use
it with the DCASE 2020 Task 1b mapping.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from bitsound.data.records import Clip, Dataset
from bitsound.data.registry import open_dataset
from bitsound.errors import ConfigError, DataError


@dataclasses.dataclass(frozen=True)
class Source:
    """One member of a combined data set.

    Parameters
    ----------
    spec : str
        ``KIND:PATH`` of the member.
    label : str, optional
        Give every kept clip this label (e.g. ``bird``).
    relabel : mapping, optional
        Map original labels to new ones; labels not in the map stay as they are.
    exclude_labels : sequence of str
        Original labels to drop before relabelling (e.g. ``Rooster``).
    """

    spec: str
    label: str | None = None
    relabel: Mapping[str, str] = dataclasses.field(default_factory=dict)
    exclude_labels: Sequence[str] = ()


class CombinedDataset(Dataset):
    """Clips of several data sets; each clip is read by the data set it came from."""

    def __init__(self, members: Sequence[tuple[Dataset, Source]]):
        clips: list[Clip] = []
        self._origin: dict[Clip, tuple[Dataset, Clip]] = {}
        seen: set[tuple] = set()
        for position, (dataset, source) in enumerate(members):
            _check_labels_exist(dataset, source)
            for clip in dataset.clips:
                if clip.label in source.exclude_labels:
                    continue
                label = source.label or source.relabel.get(clip.label, clip.label)
                group = f"{position}:{clip.group if clip.group is not None else clip.path}"
                mapped = dataclasses.replace(clip, label=label, group=group,
                                             meta={**clip.meta, "source": source.spec,
                                                   "source_label": clip.label})
                span = (clip.path, clip.start, clip.end)
                if span in seen:
                    raise DataError(f"clip '{clip.path}' occurs twice in the combined data set; "
                                    f"list each source once")
                seen.add(span)
                self._origin[mapped] = (dataset, clip)
                clips.append(mapped)
        specs = " + ".join(source.spec for _, source in members)
        super().__init__(kind="combined", root=specs, clips=clips)
        # A member that only splits honestly by its folds keeps that rule in the combination.
        for dataset, source in members:
            if dataset.required_split is not None:
                kind, reason = dataset.required_split
                self.required_split = (kind, f"source '{source.spec}': {reason}")

    def load(self, clip: Clip, *, sample_rate=None, channels=None) -> np.ndarray:
        dataset, original = self._origin[clip]
        return dataset.load(original, sample_rate=sample_rate, channels=channels)

    def identity(self, clip: Clip) -> str:
        dataset, original = self._origin[clip]
        return dataset.identity(original)

    def member(self, clip: Clip) -> tuple[Dataset, Clip]:
        return self._origin[clip]


def _check_labels_exist(dataset: Dataset, source: Source) -> None:
    named = set(source.exclude_labels) | set(source.relabel)
    unknown = sorted(named - set(dataset.labels))
    if unknown:
        raise DataError(f"source '{source.spec}': labels {unknown} named in exclude_labels/relabel "
                        f"do not occur; its labels are {dataset.labels}")


def open_combined(sources: Sequence[Source]) -> CombinedDataset:
    """Open every source's data set and combine them (see :class:`CombinedDataset`)."""
    if not sources:
        raise DataError("a combined data set needs at least one source")
    return CombinedDataset([(open_dataset(source.spec), source) for source in sources])


def relabel(dataset: Dataset, mapping: Mapping[str, str], *, kind: str) -> Dataset:
    """The same clips with every label mapped through ``mapping``.

    Parameters
    ----------
    dataset : Dataset
        Read by its own loader (only labels change, so paths and spans stay valid).
    mapping : mapping of str to str
        Original label -> new label; it must cover every label of ``dataset``.
    kind : str
        The kind of the result (e.g. ``"tut2017-3class"``).

    Returns
    -------
    Dataset
        ``meta["source_label"]`` of each clip keeps its original label.

    Raises
    ------
    DataError
        Some label of ``dataset`` has no entry in ``mapping``.
    """
    if isinstance(dataset, CombinedDataset):
        raise DataError(f"{kind}: relabel the members of a combined data set through their "
                        "sources' relabel maps, not the combined set")
    unmapped = sorted(set(dataset.labels) - set(mapping))
    if unmapped:
        raise DataError(f"{kind}: labels {unmapped} of '{dataset.root}' have no entry in the "
                        f"mapping {dict(mapping)}; only these labels can be mapped")
    child = copy.copy(dataset)
    child.kind = kind
    child.clips = [dataclasses.replace(clip, label=mapping[clip.label],
                                       meta={**clip.meta, "source_label": clip.label})
                   for clip in dataset.clips]
    child.labels = sorted({mapping[label] for label in dataset.labels})
    child.class_order = None
    return child


def select_classes(dataset: Dataset, classes: int | Sequence[str], *, what: str = "data.classes"
                   ) -> Dataset:
    """The clips of some classes only, with their labels as the class list.

    Parameters
    ----------
    dataset : Dataset
    classes : int or sequence of str
        N: the first N classes of ``dataset.class_order`` (ESC-50: seed 001's S_N); or names.
    what : str
        The config key, for messages.

    Raises
    ------
    ConfigError
        N without a class order or beyond it; names the data set does not have.
    DataError
        No clip left.
    """
    if isinstance(classes, int):
        order = dataset.class_order
        if order is None:
            raise ConfigError(f"{what}: {classes} asks for the first {classes} classes of a "
                              f"published order, which the {dataset.kind} data set does not "
                              f"define (esc50 does); list the class names instead")
        if classes > len(order):
            raise ConfigError(f"{what}: {classes} is more than the {len(order)} classes of "
                              f"{dataset.kind}")
        wanted = list(order[:classes])
    else:
        wanted = list(classes)
        known = set(dataset.class_order or ()) | set(dataset.labels)
        unknown = sorted(set(wanted) - known)
        if unknown:
            raise ConfigError(f"{what}: {unknown} are not classes of {dataset.kind}; its "
                              f"classes: {sorted(known)}")
    keep = set(wanted)
    indices = [i for i, clip in enumerate(dataset.clips) if clip.label in keep]
    if not indices:
        raise DataError(f"{what}: no clip of '{dataset.root}' has one of the classes {wanted}")
    return dataset.subset(indices)
