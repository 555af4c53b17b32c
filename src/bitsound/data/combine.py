"""Several data sets as one, with their labels mapped onto a shared task.

Bird presence (seed 000) needs it: xeno-canto recordings become ``bird``, ESC-10 clips other
than Rooster and synthetic non-bird events become ``no_bird``. Groups are prefixed with the
source's position so that a group split never confuses two sources' speakers or recordings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from bitsound.data.records import Clip, Dataset
from bitsound.data.registry import open_dataset
from bitsound.errors import DataError


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

    def load(self, clip: Clip, *, sample_rate=None, channels=None) -> np.ndarray:
        dataset, original = self._origin[clip]
        return dataset.load(original, sample_rate=sample_rate, channels=channels)

    def identity(self, clip: Clip) -> str:
        dataset, original = self._origin[clip]
        return dataset.identity(original)


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
