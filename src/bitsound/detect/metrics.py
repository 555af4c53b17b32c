"""Sound event detection scores: sed_eval's event- and segment-based metrics, sed_scores_eval's PSDS.

- Event-based F1 and error rate (Mesaros et al. 2016, "Metrics for polyphonic sound event
  detection"), computed by ``sed_eval``: an estimated event matches a reference event of the
  same class when its onset is within ``collar`` seconds (DCASE: 200 ms) and its offset within
  ``max(collar, offset_fraction * reference length)`` (DCASE: 20 %).
- Segment-based F1 and error rate at a ``resolution`` (DCASE: 1 s) over each recording's length.
- PSDS (Bilen et al. 2020, "A framework for the robust evaluation of sound event detection"),
  threshold-independent, from the per-frame scores, computed exactly by ``sed_scores_eval``
  (Ebbers et al. 2022): scenario 1 (dtc = gtc = 0.7, alpha_st = 1, no cross-trigger penalty)
  and scenario 2 (dtc = gtc = 0.1, cttc = 0.3, alpha_ct = 0.5, alpha_st = 1), both to an
  effective false-positive rate of 100 per hour, the DCASE 2021-2023 settings.

Scores are dictionaries of plain numbers (overall and per class), so the CLI, JSON output and
reports read one structure.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from bitsound.data.records import Event, format_list
from bitsound.detect.frames import FrameScores
from bitsound.errors import ConfigError, DataError

log = logging.getLogger("bitsound.detect.metrics")

PSDS_SCENARIOS = {
    "psds1": {"dtc_threshold": 0.7, "gtc_threshold": 0.7, "cttc_threshold": None,
              "alpha_ct": 0.0, "alpha_st": 1.0, "max_efpr": 100.0},
    "psds2": {"dtc_threshold": 0.1, "gtc_threshold": 0.1, "cttc_threshold": 0.3,
              "alpha_ct": 0.5, "alpha_st": 1.0, "max_efpr": 100.0},
}


def _missing(name: str, err: ImportError) -> ConfigError:
    return ConfigError(f"scoring events needs {name} ({err}); install bitsound with its detect "
                       "extra: pip install -e '.[detect]'")


def _sed_eval():
    # dcase_util (sed_eval's container library) imports pkg_resources, which warns on import.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import sed_eval
        except ImportError as err:
            raise _missing("sed_eval", err) from None
    return sed_eval


def _rows(filename: str, events: Sequence[Event]) -> list[dict]:
    return [{"filename": filename, "event_label": e.label, "onset": e.onset, "offset": e.offset}
            for e in events]


def _number(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def check_files(ref: Mapping[str, Sequence[Event]], est: Mapping[str, Sequence[Event]]) -> list[str]:
    """The recordings to score: every reference file. An estimate for a file the reference does
    not list is an error (a missing estimate means nothing was detected there)."""
    extra = sorted(set(est) - set(ref))
    if extra:
        raise DataError(f"the estimates name {len(extra)} files the reference does not annotate:\n"
                        f"{format_list(extra)}\nscore them against a reference that lists them "
                        "(a file with no events is a row with empty times)")
    if not ref:
        raise DataError("the reference annotates no file")
    return sorted(ref)


def _labels(ref, est, labels):
    found = sorted({e.label for t in (ref, est) for events in t.values() for e in events})
    return list(labels) if labels is not None else found


def event_based(ref: Mapping[str, Sequence[Event]], est: Mapping[str, Sequence[Event]], *,
                labels: Sequence[str] | None = None, collar: float = 0.2,
                offset_fraction: float = 0.2) -> dict:
    """Event-based F1 / error rate, overall (micro) and per class (sed_eval).

    Parameters
    ----------
    ref, est : dict of filename to list of Event
    labels : sequence of str, optional
        Classes to score; default every class of ``ref`` and ``est``.
    collar : float
        Onset (and minimum offset) tolerance in seconds.
    offset_fraction : float
        Offset tolerance as a fraction of the reference event's length.

    Returns
    -------
    dict
        ``{"f1", "precision", "recall", "error_rate", "substitution_rate", "deletion_rate",
        "insertion_rate", "macro_f1", "per_class": {label: {"f1", "error_rate", "n_ref",
        "n_est"}}, "n_files", "collar", "offset_fraction"}``.
    """
    sed_eval = _sed_eval()
    files = check_files(ref, est)
    labels = _labels(ref, est, labels)
    metric = sed_eval.sound_event.EventBasedMetrics(
        event_label_list=labels, t_collar=collar, percentage_of_length=offset_fraction,
        evaluate_onset=True, evaluate_offset=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy means of classes without events
        for name in files:
            metric.evaluate(_rows(name, ref[name]), _rows(name, est.get(name, [])))
        return _summary(metric, labels, n_files=len(files),
                        extra={"collar": collar, "offset_fraction": offset_fraction})


def segment_based(ref: Mapping[str, Sequence[Event]], est: Mapping[str, Sequence[Event]], *,
                  labels: Sequence[str] | None = None, resolution: float = 1.0,
                  durations: Mapping[str, float] | None = None) -> dict:
    """Segment-based F1 / error rate at ``resolution`` seconds (sed_eval); see :func:`event_based`.

    ``durations`` (seconds per file) makes every segment of each recording count; without it a
    recording counts up to its last event.
    """
    sed_eval = _sed_eval()
    files = check_files(ref, est)
    labels = _labels(ref, est, labels)
    metric = sed_eval.sound_event.SegmentBasedMetrics(event_label_list=labels,
                                                      time_resolution=float(resolution))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for name in files:
            length = None if durations is None else durations.get(name.rsplit(".", 1)[0],
                                                                   durations.get(name))
            metric.evaluate(_rows(name, ref[name]), _rows(name, est.get(name, [])),
                            evaluated_length_seconds=length)
        return _summary(metric, labels, n_files=len(files), extra={"resolution": resolution})


def _summary(metric, labels, *, n_files: int, extra: dict) -> dict:
    overall = metric.results_overall_metrics()
    per_class_raw = metric.results_class_wise_metrics()
    averages = metric.results_class_wise_average_metrics()
    per_class = {}
    for label in labels:
        row = per_class_raw.get(label, {})
        count = row.get("count", {})
        per_class[label] = {"f1": _number(row.get("f_measure", {}).get("f_measure")),
                            "precision": _number(row.get("f_measure", {}).get("precision")),
                            "recall": _number(row.get("f_measure", {}).get("recall")),
                            # sed_eval divides by a tiny epsilon when a class has no reference
                            "error_rate": (_number(row.get("error_rate", {}).get("error_rate"))
                                           if count.get("Nref", 0) else None),
                            "n_ref": int(count.get("Nref", 0)), "n_est": int(count.get("Nsys", 0))}
    f = overall["f_measure"]
    er = overall["error_rate"]
    return {"f1": _number(f["f_measure"]), "precision": _number(f["precision"]),
            "recall": _number(f["recall"]), "error_rate": _number(er["error_rate"]),
            "substitution_rate": _number(er.get("substitution_rate")),
            "deletion_rate": _number(er.get("deletion_rate")),
            "insertion_rate": _number(er.get("insertion_rate")),
            "macro_f1": _number(averages["f_measure"]["f_measure"]),
            "per_class": per_class, "n_files": n_files, **extra}


# --------------------------------------------------------------------------------------------
# PSDS from frame scores
# --------------------------------------------------------------------------------------------
def _sed_scores_eval():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import sed_scores_eval
        except ImportError as err:
            raise _missing("sed_scores_eval", err) from None
    return sed_scores_eval


def score_frames(frames: Sequence[FrameScores]):
    """``{audio_id: DataFrame}`` in sed_scores_eval's format (onset, offset, one column per class)."""
    sse = _sed_scores_eval()
    out = {}
    for f in frames:
        out[f.audio_id] = sse.base_modules.scores.create_score_dataframe(
            f.probs.astype(np.float64), f.timestamps, f.labels)
    return out


def write_frame_scores(frames: Sequence[FrameScores], folder: str | Path) -> Path:
    """Write ``folder/scores/ID.tsv`` (sed_scores_eval format) and ``folder/durations.tsv``.

    ``sed_scores_eval`` reads the scores folder as it is
    (``sed_scores_eval.io.read_sed_scores``), and :func:`read_frame_scores` reads both back.
    """
    folder = Path(folder)
    scores_dir = folder / "scores"
    scores_dir.mkdir(parents=True, exist_ok=True)
    for audio_id, frame in score_frames(frames).items():
        target = scores_dir / f"{audio_id}.tsv"
        tmp = target.with_name(f".{target.name}.tmp")
        frame.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
        tmp.replace(target)
    lines = ["filename\tduration", *(f"{f.filename}\t{f.duration:.6f}" for f in frames)]
    from bitsound.data.events import write_text_atomic

    write_text_atomic(folder / "durations.tsv", "\n".join(lines) + "\n")
    return folder


def read_frame_scores(folder: str | Path) -> tuple[dict, dict[str, float]]:
    """The scores and durations :func:`write_frame_scores` wrote: ``({audio_id: DataFrame},
    {audio_id: seconds})``."""
    folder = Path(folder)
    scores_dir, durations_file = folder / "scores", folder / "durations.tsv"
    if not scores_dir.is_dir() or not durations_file.is_file():
        raise DataError(f"'{folder}' is not a frame-score folder: it needs scores/ and durations.tsv "
                        "(written by bitsound detect --frames DIR)")
    sse = _sed_scores_eval()
    try:
        scores = sse.io.read_sed_scores(scores_dir)
        durations = sse.io.read_audio_durations(durations_file)
    except (ValueError, KeyError, AssertionError) as err:
        raise DataError(f"cannot read frame scores from '{folder}': {err}") from None
    return scores, durations


def psds(scores: Mapping, ref: Mapping[str, Sequence[Event]], durations: Mapping[str, float], *,
         scenario: str = "psds1") -> dict:
    """PSDS of frame scores against the reference (sed_scores_eval, exact).

    Parameters
    ----------
    scores : dict of audio id to DataFrame
        From :func:`score_frames` or :func:`read_frame_scores`; audio ids are file names
        without extension.
    ref : dict of filename to list of Event
        Only the score columns' classes are scored; reference events of other classes are
        an error.
    durations : dict of audio id to seconds
    scenario : {"psds1", "psds2"}

    Returns
    -------
    dict
        ``{"psds", "per_class": {label: psds}, "scenario", **parameters}``.
    """
    if scenario not in PSDS_SCENARIOS:
        raise ConfigError(f"unknown PSDS scenario {scenario!r}; valid: {', '.join(PSDS_SCENARIOS)}")
    sse = _sed_scores_eval()
    ids = sorted(scores)
    gt = {name.rsplit(".", 1)[0]: [(e.onset, e.offset, e.label) for e in events]
          for name, events in ref.items()}
    missing = sorted(set(gt) - set(ids))
    extra = sorted(set(ids) - set(gt))
    if missing or extra:
        raise DataError(f"frame scores and reference name different recordings: "
                        f"{len(missing)} annotated without scores {missing[:5]}, {len(extra)} scored "
                        f"without annotation {extra[:5]}; score the files the reference lists")
    classes = [c for c in scores[ids[0]].columns if c not in ("onset", "offset")]
    unknown = sorted({label for events in gt.values() for _, _, label in events} - set(classes))
    if unknown:
        raise DataError(f"the reference has classes {unknown} that the frame scores lack "
                        f"({', '.join(classes)})")
    present = sorted({label for events in gt.values() for _, _, label in events})
    if not present:
        raise DataError("the reference holds no event, so PSDS (a rate of detected reference "
                        "events) is undefined")
    absent = [c for c in classes if c not in present]
    if absent:  # PSDS averages per-class ROCs, and a class without reference events has none
        log.warning("%s: classes %s have no reference events and are left out of PSDS", scenario,
                    absent)
        scores = {k: v[["onset", "offset", *present]] for k, v in scores.items()}
    params = PSDS_SCENARIOS[scenario]
    try:
        value, per_class, _, _ = sse.intersection_based.psds(
            scores=dict(scores), ground_truth=gt, audio_durations={k: durations[k] for k in ids},
            unit_of_time="hour", **params)
    except (AssertionError, ValueError, KeyError) as err:
        raise DataError(f"sed_scores_eval could not compute {scenario}: {err}") from None
    return {"psds": float(value), "per_class": {k: float(v) for k, v in per_class.items()},
            "scenario": scenario, "classes_left_out": absent, **params}


def evaluate_events(ref: Mapping[str, Sequence[Event]], est: Mapping[str, Sequence[Event]], *,
                    labels: Sequence[str] | None = None, durations: Mapping[str, float] | None = None,
                    scores: Mapping | None = None, collar: float = 0.2, offset_fraction: float = 0.2,
                    resolution: float = 1.0) -> dict:
    """All scores at once: ``{"event_based", "segment_based", "psds1", "psds2"}`` (PSDS only with
    ``scores``)."""
    out = {"event_based": event_based(ref, est, labels=labels, collar=collar,
                                      offset_fraction=offset_fraction),
           "segment_based": segment_based(ref, est, labels=labels, resolution=resolution,
                                          durations=durations)}
    if scores is not None:
        by_id = {k.rsplit(".", 1)[0]: v for k, v in (durations or {}).items()}
        for scenario in PSDS_SCENARIOS:
            out[scenario] = psds(scores, ref, by_id, scenario=scenario)
    return out


__all__ = ["PSDS_SCENARIOS", "check_files", "evaluate_events", "event_based", "psds",
           "read_frame_scores", "score_frames", "segment_based", "write_frame_scores"]
