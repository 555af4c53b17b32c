"""Feature extraction in worker processes, and filling the feature cache ahead of a run.

Decoding and the front end of 23,040 ten-second clips (TAU 2020) take hours on one core, so
:func:`bitsound.pipeline.build_features` hands the clips that are not cached yet to ``workers``
processes (``--workers N``). Each worker builds the front end once, computes one clip at a
time and stores it in the feature cache; every file is written atomically, so an interrupted
run keeps what it finished, and the next run computes only the rest ("resumes where it
stopped"). Without a cache the workers send the arrays back instead.

Workers are started with ``spawn``: a forked child of a process whose OpenMP pool (torch) is
running can deadlock, and the start cost (importing torch, about 2 s per worker) only matters
for small jobs, which :func:`compute_parallel`'s callers run in-process instead.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field

import numpy as np
import torch
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from bitsound.data.cache import make_key
from bitsound.errors import AudioDecodeError, ConfigError, DataError

log = logging.getLogger("bitsound.pipeline")

#: Jobs handed to the pool at a time, per worker: keeps memory flat for very large data sets.
_IN_FLIGHT_PER_WORKER = 8


class ClipRateColumn(ProgressColumn):
    """Clips per second of a progress bar's task."""

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("- clips/s" if speed is None else f"{speed:.1f} clips/s", style="progress.data.speed")


def clip_progress(*, disable: bool) -> Progress:
    """A transient progress bar with done/total, clips/s and the time left."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    ClipRateColumn(), TimeRemainingColumn(), transient=True, disable=disable)


def check_workers(workers: int) -> int:
    """``workers`` when valid (0 or 1: in this process).

    Raises
    ------
    ConfigError
        A negative count.
    """
    if not isinstance(workers, int) or workers < 0:
        raise ConfigError(f"--workers {workers!r} must be a whole number >= 0 (0 or 1: in this process)")
    return workers


@dataclass
class Extracted:
    """What :func:`compute_parallel` did.

    Attributes
    ----------
    arrays : dict of int to ndarray
        Position -> features [shape=(n_windows, *feature_shape)], only without a cache (with
        one, they are in the cache).
    failures : list of (position, path, problem)
        Clips that could not be decoded; the others were computed all the same.
    windows_dropped, duplicated : int
        Windows the energy gate dropped; mono clips duplicated to two channels.
    seconds : float
    n_computed : int
        Clips computed (the failures not counted).
    """

    arrays: dict[int, np.ndarray] = field(default_factory=dict)
    failures: list[tuple[int, str, str]] = field(default_factory=list)
    windows_dropped: int = 0
    duplicated: int = 0
    seconds: float = 0.0
    n_computed: int = 0


# ------------------------------------------------------------------ worker side
class _ClipComputer:
    """Computes (and, with a cache, stores) one clip's features per call; one per worker."""

    def __init__(self, dataset, recipe, view: str, cache_root: str | None) -> None:
        from bitsound.audio.features import build_frontend
        from bitsound.data import FeatureCache

        self.dataset, self.recipe, self.view = dataset, recipe, view
        self.frontend = build_frontend(recipe.frontend, sample_rate=recipe.audio.sample_rate).eval()
        self.cache = FeatureCache(cache_root) if cache_root is not None else None

    def __call__(self, job: tuple[int, int, str | None]):
        from bitsound.audio.io import duplicated_mono_count
        from bitsound.pipeline import clip_features

        position, index, key = job
        clip = self.dataset.clips[index]
        stats: dict = {}
        before = duplicated_mono_count()
        try:
            feats = clip_features(self.dataset, clip, recipe=self.recipe, frontend=self.frontend,
                                  stats=stats, view=self.view)
        except AudioDecodeError as err:  # sent back as data: its __init__ takes (path, problem)
            return position, None, (err.path, err.problem), stats, 0
        duplicated = duplicated_mono_count() - before
        if self.cache is not None and key is not None:
            self.cache.put(key, feats)
            return position, None, None, stats, duplicated
        return position, np.ascontiguousarray(feats), None, stats, duplicated


_COMPUTER: _ClipComputer | None = None


def _init_worker(dataset, recipe, view: str, cache_root: str | None) -> None:
    global _COMPUTER
    # ^C reaches every process of the terminal's group: only the main process handles it (it
    # cancels the queued clips; the running ones finish and are stored whole).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)  # the parallelism is the workers
    _COMPUTER = _ClipComputer(dataset, recipe, view, cache_root)


def _compute_in_worker(job: tuple[int, int, str | None]):
    return _COMPUTER(job)


# ------------------------------------------------------------------ main side
def compute_parallel(dataset, jobs: list[tuple[int, int, str | None]], *, recipe, view: str,
                     cache, workers: int, show_progress: bool = True,
                     description: str = "features") -> Extracted:
    """Compute the features of ``jobs`` in ``workers`` processes (0 or 1: in this one).

    Parameters
    ----------
    dataset : Dataset
        Picklable (every bitsound source is).
    jobs : list of (position, clip index, cache key or None)
        ``position`` is the clip's place in the caller's list; ``dataset.clips[index]`` is
        computed and, with a ``cache``, stored under ``key``.
    recipe : Recipe
    view : {"windows", "source"}
        See :func:`bitsound.pipeline.clip_features`.
    cache : FeatureCache or None
    workers : int

    Returns
    -------
    Extracted
        Decode failures are collected, not raised: the caller lists them all at once.
    """
    result = Extracted()
    started = time.perf_counter()
    cache_root = str(cache.root) if cache is not None else None
    workers = check_workers(workers)

    def collect(output) -> None:
        position, array, failure, stats, duplicated = output
        if failure is not None:
            result.failures.append((position, *failure))
        elif array is not None:
            result.arrays[position] = array
        result.windows_dropped += stats.get("windows_dropped", 0)
        result.duplicated += duplicated
        result.n_computed += failure is None

    label = f"{description} ({workers} workers)" if workers > 1 else description
    with clip_progress(disable=not show_progress) as progress:
        bar = progress.add_task(label, total=len(jobs))
        if workers <= 1:
            computer = _ClipComputer(dataset, recipe, view, cache_root)
            for job in jobs:
                collect(computer(job))
                progress.advance(bar)
        else:
            _run_pool(jobs, workers=workers, initargs=(dataset, recipe, view, cache_root),
                      collect=collect, advance=lambda: progress.advance(bar))
    result.seconds = time.perf_counter() - started
    result.failures.sort()
    if workers > 1:
        rate = result.n_computed / result.seconds if result.seconds else float("nan")
        log.info("%s: computed %d clips in %d worker processes in %.1f s (%.1f clips/s)",
                 description, result.n_computed, workers, result.seconds, rate)
    return result


def _run_pool(jobs, *, workers: int, initargs, collect, advance) -> None:
    context = multiprocessing.get_context("spawn")
    pending: set[Future] = set()
    todo = iter(jobs)
    limit = workers * _IN_FLIGHT_PER_WORKER
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker,
                             initargs=initargs) as pool:
        try:
            while True:
                while len(pending) < limit:
                    job = next(todo, None)
                    if job is None:
                        break
                    pending.add(pool.submit(_compute_in_worker, job))
                if not pending:
                    return
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    collect(future.result())
                    advance()
        except BaseException:
            for future in pending:  # do not start what is queued; running clips finish
                future.cancel()
            raise


@dataclass
class FillReport:
    """What :func:`fill_cache` found and did."""

    n_clips: int
    n_cached: int
    n_computed: int
    seconds: float
    failures: list[tuple[str, str]]
    workers: int

    @property
    def clips_per_second(self) -> float | None:
        return self.n_computed / self.seconds if self.n_computed and self.seconds else None


def fill_cache(dataset, views: dict[str, list[int]], *, recipe, cache, workers: int = 0,
               show_progress: bool = True) -> FillReport:
    """Store the features of ``dataset.clips[i]`` for each view's indices in ``cache``.

    Clips already cached (a complete, readable file: :meth:`FeatureCache.__contains__`) are
    skipped, so a run that was interrupted continues where it stopped.
    Clips that cannot be decoded are listed in the report; the others are stored all the same.

    Parameters
    ----------
    views : dict of str to list of int
        ``{"windows": [...], "source": [...]}``: the clips to store in each view (see
        :func:`bitsound.pipeline.clip_features`).
    recipe : Recipe
    cache : FeatureCache
    workers : int
        Processes computing features (0 or 1: this one).
    """
    from bitsound.pipeline import cache_config  # the pipeline imports this module

    if cache is None:
        raise ConfigError("filling the feature cache needs a cache; leave out --no-cache")
    started = time.perf_counter()
    n_clips = n_cached = n_computed = 0
    failures: list[tuple[str, str]] = []
    for view, indices in views.items():
        config = cache_config(recipe, view)
        jobs = []
        cached_here = 0
        for position, index in enumerate(indices):
            n_clips += 1
            clip = dataset.clips[index]
            try:
                key = make_key(dataset.identity(clip), config)
            except DataError as err:
                failures.append((str(clip.path), str(err)))
                continue
            if key in cache:  # read and checked: a damaged file is removed and recomputed
                cached_here += 1
            else:
                jobs.append((position, index, key))
        n_cached += cached_here
        if cached_here:
            log.info("%s view: %d of %d clips already cached", view, cached_here, len(indices))
        if jobs:
            done = compute_parallel(dataset, jobs, recipe=recipe, view=view, cache=cache,
                                    workers=workers, show_progress=show_progress,
                                    description=f"features ({view})")
            n_computed += done.n_computed
            failures += [(path, problem) for _, path, problem in done.failures]
    return FillReport(n_clips=n_clips, n_cached=n_cached, n_computed=n_computed,
                      seconds=time.perf_counter() - started, failures=failures, workers=workers)


def raise_failures(failures: list[tuple[int, str, str]], *, total: int, description: str) -> None:
    """One error naming every clip that could not be decoded (the first in its headline)."""
    if not failures:
        return
    from bitsound.data.records import format_list

    _, path, problem = failures[0]
    others = ""
    if len(failures) > 1:
        others = (f"; {len(failures)} of the {total} clips of {description} failed:\n"
                  + format_list([f"{p}: {why}" for _, p, why in failures]) + "\n")
    raise AudioDecodeError(path, f"{problem}{others} (fix or remove the files, or rerun with "
                           "--skip-bad to leave unreadable clips out)")
