"""``bitsound data check``: read every clip of a dataset and report all problems at once.

A data problem found after an hour of feature extraction costs an hour; this opens each file
and checks its structure (:func:`bitsound.audio.io.audio_info`: empty, not audio, zero channels
or frames, truncated WAV/FLAC/Ogg/MP3) or, with ``decode=True``, decodes it fully (also NaN or
infinite samples, damaged compressed streams, a channel policy the file cannot meet). Segments
are checked against the decoded length. Every problem is collected with its path instead of
stopping at the first. It also counts clips per class, fold, group and device, so a skewed or
mislabelled set shows before training.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bitsound.data.records import Clip, Dataset
from bitsound.errors import AudioDecodeError, BitsoundError

ProgressCallback = Callable[[int, int], None]
#: Rows shown per table by :meth:`CheckReport.render` before summarising the rest.
RENDER_ROWS = 40


@dataclass(frozen=True)
class Problem:
    """One clip that cannot be used: its path, what is wrong, and its position in the dataset.

    ``index`` is the clip's position in ``dataset.clips`` of the dataset that was checked.
    """

    path: str
    problem: str
    index: int | None = None


@dataclass
class CheckReport:
    """What :func:`check_dataset` found.

    Attributes
    ----------
    kind, root : str
        The dataset checked.
    n_clips : int
        Clips in the dataset.
    total_duration : float
        Seconds of audio in the readable clips (segments count their own length).
    per_class, per_fold, per_group, per_device : dict of str to int
        Clip counts; a dict is empty when no clip has that attribute, and clips without it
        count under ``"(none)"`` when only some have it.
    sample_rates, channels : dict of int to int
        How many readable clips have each sample rate / channel count.
    problems : list of Problem
        Every unusable clip.
    """

    kind: str
    root: str
    n_clips: int
    total_duration: float = 0.0
    per_class: dict[str, int] = field(default_factory=dict)
    per_fold: dict[str, int] = field(default_factory=dict)
    per_group: dict[str, int] = field(default_factory=dict)
    per_device: dict[str, int] = field(default_factory=dict)
    sample_rates: dict[int, int] = field(default_factory=dict)
    channels: dict[int, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every clip can be read."""
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable summary (integer keys become strings)."""
        return {
            "kind": self.kind,
            "root": self.root,
            "ok": self.ok,
            "n_clips": self.n_clips,
            "total_duration": round(self.total_duration, 3),
            "per_class": dict(self.per_class),
            "per_fold": dict(self.per_fold),
            "per_group": dict(self.per_group),
            "per_device": dict(self.per_device),
            "sample_rates": {str(k): v for k, v in self.sample_rates.items()},
            "channels": {str(k): v for k, v in self.channels.items()},
            "problems": [{"path": p.path, "problem": p.problem} for p in self.problems],
        }

    def render(self, console: Any) -> None:
        """Print the report as rich tables on ``console`` (a :class:`rich.console.Console`)."""
        from rich.table import Table

        summary = Table(title=f"{self.kind} dataset", show_header=False)
        summary.add_row("root", self.root)
        summary.add_row("clips", str(self.n_clips))
        summary.add_row("duration", _format_duration(self.total_duration))
        summary.add_row("sample rates", _format_counts(self.sample_rates, unit=" Hz"))
        summary.add_row("channels", _format_counts(self.channels))
        status = "[green]ok[/green]" if self.ok else f"[red]{len(self.problems)} problem(s)[/red]"
        summary.add_row("status", status)
        console.print(summary)
        for title, counts in (("class", self.per_class), ("fold", self.per_fold),
                              ("group", self.per_group), ("device", self.per_device)):
            if counts:
                console.print(_count_table(title, counts))
        if self.problems:
            console.print(_problem_table(self.problems))


def check_dataset(
    dataset: Dataset,
    *,
    decode: bool = False,
    channels: str | int | None = None,
    progress: ProgressCallback | None = None,
    show_progress: bool = False,
) -> CheckReport:
    """Try to read every clip and collect all problems.

    Parameters
    ----------
    dataset : Dataset
    decode : bool
        Decode each clip fully instead of only opening its file: slower, but also finds NaN or
        infinite samples and streams damaged inside (see the module notes). Generated datasets
        are always generated.
    channels : "mono", "stereo", int or None
        With ``decode``, apply this channel policy (a recipe's ``audio.channels``) so that a
        file the policy cannot serve (e.g. channel 2 of a stereo file) is a problem too.
    progress : callable, optional
        Called as ``progress(done, total)`` after each clip.
    show_progress : bool
        Show a rich progress bar on stderr (for large sets; ``bitsound data check`` uses it).

    Returns
    -------
    CheckReport
        ``problems`` in clip order, each with the clip's index.
    """
    clips = dataset.clips
    report = CheckReport(kind=dataset.kind, root=dataset.root, n_clips=len(clips))
    _count_attributes(report, clips)
    rates: Counter[int] = Counter()
    n_channels: Counter[int] = Counter()
    what = "decoding clips" if decode else "checking clips"
    with _progress(progress, show_progress, len(clips), what) as step:
        for index, clip in enumerate(clips):
            found = _check_clip(dataset, clip, decode=decode, channels=channels)
            if isinstance(found, Problem):
                report.problems.append(dataclasses.replace(found, index=index))
            else:
                rate, n_channel, duration = found
                rates[rate] += 1
                n_channels[n_channel] += 1
                report.total_duration += duration
            step()
    report.sample_rates = dict(sorted(rates.items()))
    report.channels = dict(sorted(n_channels.items()))
    return report


def _check_clip(dataset: Dataset, clip: Clip, *, decode: bool,
                channels: str | int | None) -> Problem | tuple[int, int, float]:
    """``(sample rate, channels, duration)`` of a readable clip, or its problem."""
    owner, original = dataset.member(clip)
    try:
        if owner.generated:
            return _check_generated(owner, original)
        return _check_file(owner, original, decode=decode, channels=channels)
    except AudioDecodeError as exc:  # the path is the row's own: say only what is wrong
        return Problem(clip.path, exc.problem if exc.path == clip.path else str(exc))
    except (BitsoundError, OSError) as exc:
        return Problem(clip.path, str(exc))


def _check_file(dataset: Dataset, clip: Clip, *, decode: bool,
                channels: str | int | None) -> Problem | tuple[int, int, float]:
    from bitsound.audio.io import audio_info

    info = audio_info(clip.path)  # the decoded length, found from the file's structure
    start = clip.start or 0.0
    end = info.duration if clip.end is None else clip.end
    tolerance = 1.0 / info.sample_rate
    if start >= info.duration or end > info.duration + tolerance:
        return Problem(
            clip.path,
            f"segment {start:g}-{end:g} s is not inside the file ({info.duration:.3f} s long); "
            "fix the start/end of this clip",
        )
    if not decode:
        return info.sample_rate, info.channels, min(end, info.duration) - start
    audio = dataset.load(clip, channels=channels)
    return info.sample_rate, info.channels, audio.shape[1] / info.sample_rate


def _check_generated(dataset: Dataset, clip: Clip) -> Problem | tuple[int, int, float]:
    audio = dataset.load(clip)
    rate = dataset.native_rate
    if rate is None:
        return Problem(clip.path, f"{type(dataset).__name__} does not declare its native_rate")
    if audio.ndim != 2 or audio.shape[1] == 0:
        return Problem(clip.path, f"generated audio has shape {audio.shape}, not (channels, n>0)")
    if not np.isfinite(audio).all():
        return Problem(clip.path, "generated audio contains NaN or infinite samples")
    return rate, audio.shape[0], audio.shape[1] / rate


def _count_attributes(report: CheckReport, clips: list[Clip]) -> None:
    report.per_class = _counts([c.label for c in clips])
    report.per_fold = _counts([c.fold for c in clips])
    report.per_group = _counts([c.group for c in clips])
    report.per_device = _counts([c.device for c in clips])


def _counts(values: list[str | None]) -> dict[str, int]:
    if all(v is None for v in values):
        return {}
    counter = Counter("(none)" if v is None else v for v in values)
    return dict(sorted(counter.items()))


@contextmanager
def _progress(
    callback: ProgressCallback | None, show: bool, total: int, what: str = "checking clips"
) -> Iterator[Callable[[], None]]:
    """A ``step()`` function that calls ``callback`` and advances a rich bar when ``show``."""
    done = 0
    with contextlib.ExitStack() as stack:
        advance: Callable[[], None] | None = None
        if show:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TimeElapsedColumn(), TimeRemainingColumn())
            bar = stack.enter_context(Progress(*columns, console=Console(stderr=True),
                                               transient=True))
            task = bar.add_task(what, total=total)
            advance = functools.partial(bar.advance, task)

        def step() -> None:
            nonlocal done
            done += 1
            if advance is not None:
                advance()
            if callback is not None:
                callback(done, total)

        yield step


def _format_duration(seconds: float) -> str:
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{int(hours)}:{int(minutes):02d}:{secs:05.2f} ({seconds:.1f} s)"


def _format_counts(counts: dict[int, int], *, unit: str = "") -> str:
    return ", ".join(f"{k}{unit}: {v}" for k, v in counts.items()) or "-"


def _count_table(title: str, counts: dict[str, int]) -> Any:
    from rich.table import Table

    table = Table(title=f"clips per {title}")
    table.add_column(title)
    table.add_column("clips", justify="right")
    for name, n in list(counts.items())[:RENDER_ROWS]:
        table.add_row(name, str(n))
    if len(counts) > RENDER_ROWS:
        table.add_row(f"... {len(counts) - RENDER_ROWS} more", "")
    return table


def _problem_table(problems: list[Problem]) -> Any:
    from rich.table import Table

    table = Table(title=f"{len(problems)} problem(s)", title_style="red")
    table.add_column("path", overflow="fold")
    table.add_column("problem", overflow="fold")
    for p in problems[:RENDER_ROWS]:
        table.add_row(p.path, p.problem)
    if len(problems) > RENDER_ROWS:
        table.add_row(f"... {len(problems) - RENDER_ROWS} more (see to_dict())", "")
    return table
