"""The full check of the clips a run is about to use, before its first epoch.

``train``, ``cv`` and ``evaluate`` decode every clip whose features are not in the feature
cache yet (:func:`bitsound.data.check_dataset` with ``decode=True``, under the recipe's channel
policy) and collect every problem before any feature is computed, so that a bad file 10,000
clips in stops the run at once, with the whole list, instead of after an hour. A clip whose
features are cached was decoded without error when they were computed; generated clips are not
files. With ``--skip-bad`` the bad clips are left out instead, and the run says how many and
which in its log and its ``metrics.json``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from bitsound.config import Recipe
from bitsound.data import FeatureCache, make_key
from bitsound.data.check import Problem, check_dataset
from bitsound.data.records import Clip, Dataset, format_list
from bitsound.errors import DataError
from bitsound.pipeline import feature_config

log = logging.getLogger("bitsound.preflight")

#: Bad clips an error message lists before it points to ``bitsound data check``.
LISTED = 100


class BadClipsError(DataError):
    """Clips a run needs cannot be read; ``problems`` lists every one."""

    def __init__(self, message: str, problems: list[Problem]):
        super().__init__(message)
        self.problems = problems


@dataclass
class Preflight:
    """What the check of a run's clips found.

    Attributes
    ----------
    n_clips : int
        Clips the run uses.
    n_decoded, n_cached, n_generated : int
        Of those: decoded now, skipped because their features are cached, generated.
    problems : list of Problem
        Every clip that cannot be used; ``index`` is its position in ``dataset.clips``.
    """

    n_clips: int
    n_decoded: int = 0
    n_cached: int = 0
    n_generated: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def bad(self) -> set[int]:
        """Positions in ``dataset.clips`` of the clips that cannot be used."""
        return {p.index for p in self.problems}

    def summary(self, indices: Iterable[int] | None = None) -> dict:
        """JSON for ``metrics.json``: the counts and the bad clips (of ``indices`` when given)."""
        wanted = None if indices is None else {int(i) for i in indices}
        bad = [p for p in self.problems if wanted is None or p.index in wanted]
        return {"n_decoded": self.n_decoded, "n_cached": self.n_cached,
                "n_generated": self.n_generated, "n_bad": len(bad),
                "bad": [{"path": p.path, "problem": p.problem} for p in bad]}


def check_clips(dataset: Dataset, indices: Iterable[int], *, recipe: Recipe,
                cache: FeatureCache | None, show_progress: bool = True) -> Preflight:
    """Decode every clip of ``dataset.clips[i] for i in indices`` not yet in the cache.

    Parameters
    ----------
    dataset : Dataset
    indices : iterable of int
        Positions of the clips the run uses (duplicates are checked once).
    recipe : Recipe
        Gives the feature configuration (the cache key) and the channel policy.
    cache : FeatureCache or None
        Clips whose features it holds count as checked; None checks every clip.
    show_progress : bool
        A rich progress bar while decoding.

    Returns
    -------
    Preflight
    """
    used = sorted({int(i) for i in indices})
    config = feature_config(recipe)
    report = Preflight(n_clips=len(used))
    to_decode: list[int] = []
    for i in used:
        clip = dataset.clips[i]
        owner, _ = dataset.member(clip)
        if owner.generated:
            report.n_generated += 1
        elif cache is not None and _is_cached(cache, dataset, clip, config):
            report.n_cached += 1
        else:
            to_decode.append(i)
    report.n_decoded = len(to_decode)
    if to_decode:
        checked = check_dataset(dataset.subset(to_decode, keep_labels=True), decode=True,
                                channels=recipe.audio.channels, show_progress=show_progress)
        report.problems = [dataclasses.replace(p, index=to_decode[p.index])
                           for p in checked.problems]
    log.info("checked the %d clips to use: %d decoded, %d with cached features, "
             "%d generated; %d cannot be used", report.n_clips, report.n_decoded,
             report.n_cached, report.n_generated, len(report.problems))
    return report


def enforce(report: Preflight, dataset: Dataset, *, skip_bad: bool, action: str) -> set[int]:
    """Stop with every bad clip listed, or (``skip_bad``) log them and return their positions.

    Parameters
    ----------
    report : Preflight
    dataset : Dataset
        The data set checked (named in the message, with the edit that leaves a clip out).
    skip_bad : bool
        Leave the bad clips out instead of stopping.
    action : str
        What was not done because of them ("nothing was trained").

    Returns
    -------
    set of int
        Positions in ``dataset.clips`` to leave out (empty when every clip is fine).

    Raises
    ------
    BadClipsError
        Some clips cannot be used and ``skip_bad`` is False.
    """
    problems = report.problems
    if not problems:
        return set()
    listed = format_list([f"{p.path}: {p.problem}" for p in problems], limit=LISTED)
    if skip_bad:
        log.warning("--skip-bad: leaving out %d of the %d clips, which cannot be read:\n%s",
                    len(problems), report.n_clips, listed)
        return report.bad
    more = ""
    if len(problems) > LISTED:
        more = f"\n(bitsound data check {dataset.kind}:{dataset.root} --decode --json lists all)"
    row_edit = ""
    if dataset.kind == "manifest":
        row_edit = f", or delete their rows from '{dataset.root}'"
    raise BadClipsError(
        f"{len(problems)} of the {report.n_clips} clips of '{dataset.root}' cannot be read, so "
        f"{action}:\n{listed}{more}\nfix or replace these files{row_edit}; or rerun with "
        "--skip-bad to leave them out (the log and the run's JSON report then list them)",
        problems,
    )


def _is_cached(cache: FeatureCache, dataset: Dataset, clip: Clip, config: dict) -> bool:
    try:
        key = make_key(dataset.identity(clip), config)
    except DataError:  # the file is gone: decoding it names the problem
        return False
    return key in cache
