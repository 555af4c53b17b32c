"""Sound event mixtures with exact ground truth: isolated events placed into real backgrounds.

``bitsound mix`` does what scaper does for our purpose (Salamon et al. 2017, "Scaper: a library
for soundscape synthesis and augmentation"): each mixture is one background recording with
events at random times and random event-to-background ratios (EBR), and its annotation is
where the events were put. We do not use scaper itself: it needs the SoX C library
(``soxbindings``), which does not build without libsox headers, and it pins ``sox==1.4.0``.

Held-out parts are disjoint twice over, as the data's READMEs ask: every isolated event file
and every background *recording* (``meta.txt``'s recording id, not the 10-s clip) belongs to
exactly one part (``train``, ``val``, ``test``), chosen per class and per scene so that each
part has every class and scene. Everything is drawn from ``numpy.random.default_rng`` seeded
with ``(seed, part, mixture index)``: the same seed writes the same files, and mixture ``i``
does not depend on how many others are made.

Mixtures are monophonic: events do not overlap (at least ``min_gap`` seconds apart), so every
moment has one label, the one a single-label window classifier predicts.

Output (``OUT``)::

    OUT/dev/audio/{train,val}_NNNN.wav  OUT/dev/events.tsv  OUT/dev/meta.csv  (fold = part)
    OUT/test/audio/test_NNNN.wav        OUT/test/events.tsv OUT/test/meta.csv
    OUT/{dev,test}/sources.csv          which event file and background each event came from
    OUT/split.json                      the event files and recordings of each part

``sed:OUT/dev`` and ``sed:OUT/test`` open them as data sets.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
from pydantic import BaseModel, ConfigDict, Field, model_validator
from rich.progress import Progress

from bitsound.audio.io import audio_info, load_audio
from bitsound.data.events import write_dcase, write_text_atomic
from bitsound.data.records import Event, format_list
from bitsound.errors import ConfigError, DataError

log = logging.getLogger("bitsound.data.mixtures")

PARTS = ("train", "val", "test")
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")


class MixConfig(BaseModel):
    """What ``bitsound mix`` makes. Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")

    events_dir: str = Field(description="isolated events: one folder per class of audio files")
    backgrounds_dir: str = Field(description="TUT scenes layout: audio/ + meta.txt "
                                             "(file, scene, recording id)")
    scenes: list[str] | None = None  # background scenes to use; None: all
    fractions: dict[str, float] = {"train": 0.6, "val": 0.15, "test": 0.25}
    n_mixtures: dict[str, int] = {"train": 400, "val": 60, "test": 100}
    events_per_mixture: tuple[int, int] = (2, 5)
    ebr_db: tuple[float, float] = (-6.0, 6.0)
    min_gap: float = Field(default=0.3, ge=0)
    sample_rate: int | None = Field(default=None, gt=0)  # None: the backgrounds' rate
    background_label: str = "background"
    # training events only: each placement plays at a random speed in [1 - s, 1 + s] (a tape speed
    # change: pitch and duration together, by resampling), so that 8 recordings of a class sound
    # like more; validation and test events stay as recorded
    speed_perturb: float = Field(default=0.0, ge=0, lt=0.5)
    # the final model, after every choice was made on val: training mixtures draw on the val
    # part's event files and recordings too (the sources are dealt as without it, so the test
    # part is the same), and no val mixtures are made
    val_into_train: bool = False
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> MixConfig:
        for name in (*self.fractions, *self.n_mixtures):
            if name not in PARTS:
                raise ValueError(f"unknown part {name!r}; parts are {', '.join(PARTS)}")
        if any(f < 0 for f in self.fractions.values()) or not 0 < sum(self.fractions.values()) <= 1 + 1e-9:
            raise ValueError(f"fractions {self.fractions} must be >= 0 and sum to at most 1")
        for part, n in self.n_mixtures.items():
            if n < 0:
                raise ValueError(f"n_mixtures[{part}] must be >= 0, got {n}")
            if n and not self.fractions.get(part):
                raise ValueError(f"part {part!r} gets {n} mixtures but no share of the sources "
                                 f"(fractions {self.fractions})")
        if self.val_into_train and self.n_mixtures.get("val"):
            raise ValueError(f"val_into_train gives the val part's sources to the training "
                             f"mixtures; {self.n_mixtures['val']} val mixtures would share them: "
                             "make none (n_mixtures val 0)")
        if self.val_into_train and not (self.fractions.get("val") and self.fractions.get("train")):
            raise ValueError(f"val_into_train needs a train and a val share of the sources "
                             f"(fractions {self.fractions})")
        lo, hi = self.events_per_mixture
        if not 1 <= lo <= hi:
            raise ValueError(f"events_per_mixture {self.events_per_mixture} needs 1 <= min <= max")
        if self.ebr_db[0] > self.ebr_db[1]:
            raise ValueError(f"ebr_db {self.ebr_db} needs min <= max")
        return self


@dataclass(frozen=True)
class Background:
    path: Path
    scene: str
    recording: str


@dataclass
class SourceSplit:
    """The event files (per class) and background clips of each part."""

    events: dict[str, dict[str, list[Path]]]  # part -> class -> files
    backgrounds: dict[str, list[Background]]  # part -> clips

    def to_json(self, root_events: Path, root_backgrounds: Path) -> dict:
        return {part: {"event_files": {c: [str(p.relative_to(root_events)) for p in files]
                                       for c, files in self.events[part].items()},
                       "recordings": sorted({b.recording for b in self.backgrounds[part]}),
                       "background_files": [str(b.path.relative_to(root_backgrounds))
                                            for b in self.backgrounds[part]]}
                for part in self.events}


# --------------------------------------------------------------------------------------------
# sources and their split
# --------------------------------------------------------------------------------------------
def list_events(events_dir: Path) -> dict[str, list[Path]]:
    """Isolated event files per class (``events_dir/CLASS/*.wav``), sorted."""
    if not events_dir.is_dir():
        raise DataError(f"mix: events folder '{events_dir}' does not exist; expected one folder per "
                        "class of isolated event files")
    classes = {d.name: sorted(p for p in d.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)
               for d in sorted(events_dir.iterdir()) if d.is_dir()}
    empty = [c for c, files in classes.items() if not files]
    if not classes or empty:
        raise DataError(f"mix: '{events_dir}' needs one folder per class with audio files; "
                        f"{'empty: ' + ', '.join(empty) if empty else 'it has no class folders'}")
    return classes


def list_backgrounds(backgrounds_dir: Path, scenes: list[str] | None) -> list[Background]:
    """Background clips from a TUT scenes ``meta.txt`` (file, scene, recording id), filtered."""
    meta = backgrounds_dir / "meta.txt"
    if not meta.is_file():
        raise DataError(f"mix: '{meta}' does not exist; the backgrounds folder needs the TUT "
                        "meta.txt (audio/NAME<TAB>scene<TAB>recording_id)")
    rows = []
    for line_no, line in enumerate(meta.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        cells = line.split("\t")
        if len(cells) < 3:
            raise DataError(f"mix: '{meta}' line {line_no}: expected file<TAB>scene<TAB>recording, "
                            f"got {line!r}")
        rows.append(Background(backgrounds_dir / cells[0].strip(), cells[1].strip(), cells[2].strip()))
    known = sorted({r.scene for r in rows})
    if scenes is not None:
        unknown = sorted(set(scenes) - set(known))
        if unknown:
            raise ConfigError(f"mix: scenes {unknown} are not in '{meta}'; its scenes: {', '.join(known)}")
        rows = [r for r in rows if r.scene in scenes]
    missing = [str(r.path) for r in rows if not r.path.is_file()]
    if missing:
        raise DataError(f"mix: {len(missing)} background files listed in '{meta}' are missing:\n"
                        f"{format_list(missing)}")
    return rows


def _counts(n: int, fractions: dict[str, float]) -> dict[str, int]:
    """Split ``n`` items by ``fractions`` (largest remainder), each used part getting one."""
    parts = [p for p in PARTS if fractions.get(p, 0) > 0]
    total = sum(fractions[p] for p in parts)
    if n < len(parts):
        raise DataError(f"mix: {n} items cannot be split into the {len(parts)} parts {parts}; "
                        "every part needs its own")
    raw = {p: n * fractions[p] / total for p in parts}
    counts = {p: max(1, int(raw[p])) for p in parts}
    while sum(counts.values()) > n:
        counts[max(counts, key=lambda p: counts[p] - raw[p])] -= 1
    while sum(counts.values()) < n:
        counts[max(parts, key=lambda p: raw[p] - counts[p])] += 1
    return counts


def _deal(items: list, fractions: dict[str, float], rng: np.random.Generator) -> dict[str, list]:
    order = [items[i] for i in rng.permutation(len(items))]
    out, at = {}, 0
    for part, count in _counts(len(items), fractions).items():
        out[part] = order[at:at + count]
        at += count
    return out


def split_sources(cfg: MixConfig) -> SourceSplit:
    """Deal event files (per class) and background recordings (per scene) into the parts."""
    rng = np.random.default_rng([cfg.seed, 1000])
    classes = list_events(Path(cfg.events_dir))
    parts = [p for p in PARTS if cfg.fractions.get(p, 0) > 0]
    events: dict[str, dict[str, list[Path]]] = {p: {} for p in parts}
    for name, files in classes.items():
        for part, chosen in _deal(files, cfg.fractions, rng).items():
            events[part][name] = sorted(chosen)
    by_scene: dict[str, dict[str, list[Background]]] = defaultdict(lambda: defaultdict(list))
    for clip in list_backgrounds(Path(cfg.backgrounds_dir), cfg.scenes):
        by_scene[clip.scene][clip.recording].append(clip)
    backgrounds: dict[str, list[Background]] = {p: [] for p in parts}
    for scene in sorted(by_scene):
        recordings = sorted(by_scene[scene])
        try:
            dealt = _deal(recordings, cfg.fractions, rng)
        except DataError as err:
            raise DataError(f"mix: scene {scene!r}: {err}; drop it from scenes") from None
        for part, chosen in dealt.items():
            backgrounds[part] += [c for r in sorted(chosen) for c in by_scene[scene][r]]
    if cfg.val_into_train:
        val_events = events.pop("val")
        events["train"] = {name: sorted(files + val_events[name])
                           for name, files in events["train"].items()}
        backgrounds["train"] += backgrounds.pop("val")
    return SourceSplit(events=events, backgrounds=backgrounds)


# --------------------------------------------------------------------------------------------
# one mixture
# --------------------------------------------------------------------------------------------
@dataclass
class Placed:
    event: Event
    source: Path
    ebr_db: float


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


class Mixer:
    """Makes mixtures at one sample rate, decoding each source file once."""

    def __init__(self, cfg: MixConfig, sample_rate: int):
        self.cfg = cfg
        self.sample_rate = sample_rate
        self._cache: dict[Path, np.ndarray] = {}

    def _audio(self, path: Path) -> np.ndarray:
        if path not in self._cache:
            self._cache[path] = load_audio(path, sample_rate=self.sample_rate, channels="mono")[0]
        return self._cache[path]

    def mixture(self, *, part: str, index: int, events: dict[str, list[Path]],
                backgrounds: list[Background]) -> tuple[np.ndarray, list[Placed], Background]:
        """Mixture ``index`` of ``part``: audio [shape=(samples,)], its events and background."""
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, PARTS.index(part), index])
        background = backgrounds[int(rng.integers(len(backgrounds)))]
        bg = self._audio(background.path).astype(np.float64)
        bg_rms = _rms(bg)
        if bg_rms == 0:
            raise DataError(f"mix: background '{background.path}' is silent; an EBR needs a level")
        total = len(bg) / self.sample_rate
        k = int(rng.integers(cfg.events_per_mixture[0], cfg.events_per_mixture[1] + 1))
        classes = sorted(events)
        picks = []
        for _ in range(k):
            label = classes[int(rng.integers(len(classes)))]
            files = events[label]
            picks.append((label, files[int(rng.integers(len(files)))]))
        ebrs = rng.uniform(*cfg.ebr_db, size=k)
        sounds = [self._audio(path) for _, path in picks]
        if cfg.speed_perturb and part == "train":  # drawn last: without it, mixtures are unchanged
            speeds = rng.uniform(1 - cfg.speed_perturb, 1 + cfg.speed_perturb, size=k)
            sounds = [soxr.resample(x, self.sample_rate, self.sample_rate / f, quality="HQ")
                      for x, f in zip(sounds, speeds, strict=True)]
        # drop events from the end until they fit with their gaps
        def free_time() -> float:
            return total - sum(len(s) for s in sounds) / self.sample_rate - (len(picks) - 1) * cfg.min_gap

        while len(picks) > 1 and free_time() < 0:
            picks.pop(), sounds.pop()
        if free_time() < 0:
            raise DataError(f"mix: event '{picks[0][1]}' is longer than background "
                            f"'{background.path}' ({total:.2f} s)")
        free = free_time()
        gaps = rng.dirichlet(np.ones(len(picks) + 1)) * free
        mix = bg.copy()
        placed, t = [], 0.0
        for j, ((label, path), sound) in enumerate(zip(picks, sounds, strict=True)):
            t += gaps[j] + (cfg.min_gap if j else 0.0)
            start = min(round(t * self.sample_rate), len(mix) - len(sound))
            gain = 10 ** (ebrs[j] / 20) * bg_rms / max(_rms(sound), 1e-12)
            mix[start:start + len(sound)] += gain * sound
            onset = start / self.sample_rate
            offset = (start + len(sound)) / self.sample_rate
            placed.append(Placed(Event(onset, offset, label), path, float(ebrs[j])))
            t = offset
        peak = np.abs(mix).max()
        if peak > 0.99:  # scale the whole mixture, never clip: EBRs stay as drawn
            mix *= 0.99 / peak
        return mix.astype(np.float32), placed, background


# --------------------------------------------------------------------------------------------
# writing a corpus
# --------------------------------------------------------------------------------------------
def _write_wav(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    sf.write(tmp, audio, sample_rate, subtype="PCM_16", format="WAV")
    os.replace(tmp, path)


def _csv_text(header: list[str], rows: list[list]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def make_mixtures(cfg: MixConfig, out_dir: str | os.PathLike, *, show_progress: bool = True) -> dict:
    """Split the sources, write every part's mixtures and annotations, return a summary.

    Returns
    -------
    dict
        ``{"parts": {part: {"mixtures", "events", "event_files", "recordings"}}, "sample_rate"}``.
    """
    out = Path(out_dir)
    split = split_sources(cfg)
    first = next(b for part in split.backgrounds.values() for b in part)
    rate = cfg.sample_rate or audio_info(first.path).sample_rate
    mixer = Mixer(cfg, rate)
    folders = {"train": "dev", "val": "dev", "test": "test"}
    tables: dict[str, dict[str, list[Event]]] = defaultdict(dict)
    meta: dict[str, list[list]] = defaultdict(list)
    sources: dict[str, list[list]] = defaultdict(list)
    summary: dict = {"sample_rate": rate, "seed": cfg.seed, "parts": {}}
    jobs = [(part, i) for part in PARTS for i in range(cfg.n_mixtures.get(part, 0))]
    with Progress(transient=True, disable=not show_progress) as progress:
        task = progress.add_task("mixtures", total=len(jobs))
        for part, i in jobs:
            folder = out / folders[part]
            (folder / "audio").mkdir(parents=True, exist_ok=True)
            name = f"{part}_{i:04d}.wav"
            audio, placed, background = mixer.mixture(part=part, index=i, events=split.events[part],
                                                      backgrounds=split.backgrounds[part])
            _write_wav(folder / "audio" / name, audio, rate)
            tables[folders[part]][name] = [p.event for p in placed]
            meta[folders[part]].append([name, cfg.background_label, part, background.recording])
            for p in placed:
                sources[folders[part]].append([name, f"{p.event.onset:.6f}", f"{p.event.offset:.6f}",
                                               p.event.label, str(p.source), str(background.path),
                                               f"{p.ebr_db:.2f}"])
            progress.advance(task)
    for folder, table in tables.items():
        write_dcase(out / folder / "events.tsv", table)
        write_text_atomic(out / folder / "meta.csv", _csv_text(["filename", "label", "fold", "group"],
                                                               meta[folder]))
        write_text_atomic(out / folder / "sources.csv", _csv_text(
            ["filename", "onset", "offset", "event_label", "event_file", "background", "ebr_db"],
            sources[folder]))
    for part in PARTS:
        if part not in split.events:
            continue
        n_events = sum(len(v) for k, v in tables[folders[part]].items() if k.startswith(part + "_"))
        summary["parts"][part] = {
            "mixtures": cfg.n_mixtures.get(part, 0), "events": n_events,
            "event_files": sum(len(v) for v in split.events[part].values()),
            "recordings": len({b.recording for b in split.backgrounds[part]})}
    from bitsound.report.results import MixResult

    record = MixResult(config=cfg.model_dump(mode="json"), summary=summary,
                       split=split.to_json(Path(cfg.events_dir), Path(cfg.backgrounds_dir)))
    write_text_atomic(out / "split.json", json.dumps(record.to_json(), indent=1))
    return summary


__all__ = ["MixConfig", "Mixer", "make_mixtures", "split_sources"]
