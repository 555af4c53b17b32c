"""Detection internals against slow, obvious twins: streamed windows vs decoding the whole file,
hysteresis vs a frame loop, frame boundaries, post-processing, and the metrics on cases whose
scores are known by hand."""

import numpy as np
import pytest
import soundfile as sf

from bitsound.audio.io import load_audio, segment
from bitsound.config import PostprocessConfig
from bitsound.data.records import Event
from bitsound.detect.frames import FrameScores, frame_boundaries
from bitsound.detect.metrics import event_based, psds, score_frames, segment_based
from bitsound.detect.postprocess import detect_events, hysteresis, merge_and_filter
from bitsound.detect.stream import stream_windows
from bitsound.errors import AudioDecodeError, ConfigError, DataError


def _reference_windows(x, *, win, step):
    """Every start k*step with a whole window, then one padded window if audio remains."""
    n = x.shape[1]
    starts = list(range(0, max(n - win, 0) + 1, step)) if n >= win else []
    if not starts:
        starts.append(0)
    elif starts[-1] + win < n and starts[-1] + step < n:  # audio after the last whole window
        starts.append(starts[-1] + step)
    out = np.zeros((len(starts), x.shape[0], win), dtype=np.float32)
    for i, s in enumerate(starts):
        piece = x[:, s:s + win]
        out[i, :, :piece.shape[1]] = piece
    return out, np.array(starts)


@pytest.mark.parametrize("seconds, block", [(3.0, 0.37), (2.05, 1.0), (0.6, 0.25), (4.0, 30.0)])
def test_streamed_windows_equal_whole_file_windows(tmp_path, seconds, block):
    rng = np.random.default_rng(1)
    x = (0.3 * rng.standard_normal((2, round(22050 * seconds)))).astype(np.float32)
    path = tmp_path / "long.wav"
    sf.write(path, x.T, 22050, subtype="FLOAT")
    whole = load_audio(path, sample_rate=16000, channels="mono")
    got = list(stream_windows(path, sample_rate=16000, channels="mono", length=1.0, hop=0.25,
                              block=block, batch=3))
    windows = np.concatenate([b.windows for b in got])
    starts = np.concatenate([b.starts for b in got])
    want, want_starts = _reference_windows(whole, win=16000, step=4000)
    assert all(len(b.windows) <= 3 for b in got)
    np.testing.assert_allclose(starts, want_starts / 16000)
    # soxr's streaming resampler carries its filter state across blocks: same samples
    np.testing.assert_allclose(windows, want, atol=2e-5)


@pytest.mark.parametrize("hop, block", [(1.5, 0.7), (1.5, 30.0), (2.6, 0.4), (1.0, 0.3)])
def test_windows_with_a_hop_longer_than_the_window_skip_the_gaps(tmp_path, hop, block):
    rate = 8000
    ramp = (np.arange(round(rate * 6.3)) / 1e5).astype(np.float32)[None]  # every sample distinct
    path = tmp_path / "ramp.wav"
    sf.write(path, ramp.T, rate, subtype="FLOAT")
    got = list(stream_windows(path, sample_rate=rate, channels="mono", length=1.0, hop=hop, block=block,
                              batch=2))
    windows = np.concatenate([b.windows for b in got])
    starts = np.concatenate([b.starts for b in got])
    want, want_starts = _reference_windows(ramp, win=rate, step=round(hop * rate))
    np.testing.assert_allclose(starts, want_starts / rate)
    np.testing.assert_array_equal(windows, want)


@pytest.mark.parametrize("seconds, hop, block", [(6.3, 0.25, 0.7), (6.3, 0.1, 30.0), (0.4, 0.25, 0.3),
                                                (3.0, 1.0, 0.45)])
def test_centred_streamed_windows_equal_centred_segments(tmp_path, seconds, hop, block):
    rate = 8000
    ramp = (np.arange(1, round(rate * seconds) + 1) / 1e5).astype(np.float32)[None]
    path = tmp_path / "ramp.wav"
    sf.write(path, ramp.T, rate, subtype="FLOAT")
    got = list(stream_windows(path, sample_rate=rate, channels="mono", length=1.0, hop=hop, block=block,
                              batch=3, centred=True))
    want = segment(ramp, rate, length=1.0, hop=hop, centred=True)
    np.testing.assert_allclose(np.concatenate([b.starts for b in got]), want.starts)
    np.testing.assert_array_equal(np.concatenate([b.windows for b in got]), want.windows)
    # frames then start at the recording's start, one per window, the first centred on 0
    timestamps, n = frame_boundaries(want.starts, length=1.0, duration=seconds)
    assert n == len(want.starts) and timestamps[0] == 0 and timestamps[-1] == seconds
    np.testing.assert_allclose(timestamps[1:-1], (np.arange(n - 1) + 0.5) * hop)


def test_stream_errors_name_the_file(tmp_path):
    with pytest.raises(AudioDecodeError, match="does not exist"):
        next(stream_windows(tmp_path / "gone.wav", sample_rate=16000, channels="mono",
                            length=1.0, hop=0.5))
    bad = tmp_path / "nan.wav"
    x = np.zeros(16000 * 2, dtype=np.float32)
    x[20000] = np.nan
    sf.write(bad, x, 16000, subtype="FLOAT")
    with pytest.raises(AudioDecodeError, match="NaN"):
        list(stream_windows(bad, sample_rate=16000, channels="mono", length=1.0, hop=0.5, block=0.5))
    with pytest.raises(ConfigError, match="hop"):
        next(stream_windows(bad, sample_rate=16000, channels="mono", length=1.0, hop=0.0))


def test_frame_boundaries_cover_the_recording():
    starts = np.arange(0, 9.01, 0.5)  # 1-s windows of a 10-s file
    ts, n = frame_boundaries(starts, length=1.0, duration=10.0)
    assert n == len(starts) and ts[0] == 0 and ts[-1] == 10.0
    np.testing.assert_allclose(np.diff(ts)[1:-1], 0.5)
    # a padded last window whose centre is past the end is dropped
    ts, n = frame_boundaries(np.array([0.0, 0.5, 1.0]), length=1.0, duration=1.4)
    assert n == 2 and ts.tolist() == [0.0, 0.75, 1.4]


def _slow_hysteresis(p, high, low):
    on = np.zeros(len(p), dtype=bool)
    for i in range(len(p)):  # grow every frame above high over neighbours above low
        if p[i] >= high:
            j = i
            while j >= 0 and p[j] >= low:
                on[j] = True
                j -= 1
            j = i
            while j < len(p) and p[j] >= low:
                on[j] = True
                j += 1
    return on


def test_hysteresis_matches_frame_loop():
    rng = np.random.default_rng(3)
    for _ in range(50):
        p = rng.random(rng.integers(1, 60))
        high = rng.uniform(0.4, 0.9)
        low = rng.uniform(0.1, high)
        np.testing.assert_array_equal(hysteresis(p, high=high, low=low), _slow_hysteresis(p, high, low))


def test_merge_and_min_duration():
    runs = [(0.0, 1.0), (1.15, 2.0), (3.0, 3.05), (5.0, 6.0)]
    assert merge_and_filter(runs, max_gap=0.2, min_duration=0.1) == [(0.0, 2.0), (5.0, 6.0)]
    assert merge_and_filter(runs, max_gap=0.0, min_duration=0.0) == runs


def _frames(probs, labels, hop=0.1):
    n = len(probs)
    ts = np.arange(n + 1) * hop
    return FrameScores("a.wav", ts, np.asarray(probs, dtype=np.float32), labels, float(ts[-1]))


def test_detect_events_median_hysteresis_ignore_and_per_class():
    n = 100
    speech = np.zeros(n)
    speech[20:40] = 0.9
    speech[30] = 0.1  # a one-frame dip: the median filter closes it
    speech[70] = 0.95  # a one-frame spike: removed by the median filter
    knock = np.zeros(n)
    knock[50:53] = 0.35  # below the default threshold, above knock's own
    background = 1 - np.maximum(speech, knock)
    frames = _frames(np.stack([background, knock, speech], axis=1), ["background", "knock", "speech"])
    cfg = PostprocessConfig(median=0.3, threshold=0.5, ignore=["background"],
                            per_class={"knock": {"threshold": 0.3, "median": 0.0}})
    found = detect_events(frames, cfg)
    assert [d.event.label for d in found] == ["speech", "knock"]
    assert found[0].event.onset == pytest.approx(2.0) and found[0].event.offset == pytest.approx(4.0)
    assert found[1].event.onset == pytest.approx(5.0) and found[1].event.offset == pytest.approx(5.3)
    assert found[1].confidence == pytest.approx(0.35, abs=1e-6)
    with pytest.raises(ConfigError, match="does not predict"):
        detect_events(frames, PostprocessConfig(ignore=["silence"]))


def test_event_based_collars_by_hand():
    ref = {"a.wav": [Event(1.0, 2.0, "cough"), Event(5.0, 9.0, "speech")], "b.wav": []}
    assert event_based(ref, ref)["f1"] == pytest.approx(1.0)
    # onset 0.15 s late: inside the 200 ms collar; offset 0.7 s early: inside 20 % of 4 s
    near = {"a.wav": [Event(1.15, 2.1, "cough"), Event(5.1, 8.3, "speech")]}
    assert event_based(ref, near)["f1"] == pytest.approx(1.0)
    # onset 0.3 s late: a miss and a false alarm (F1 of that class 0; overall 1 of 2)
    far = {"a.wav": [Event(1.3, 2.0, "cough"), Event(5.0, 9.0, "speech")]}
    scores = event_based(ref, far)
    assert scores["f1"] == pytest.approx(0.5)
    assert scores["per_class"]["cough"]["f1"] == 0 and scores["per_class"]["speech"]["f1"] == 1
    assert scores["error_rate"] == pytest.approx(1.0)  # 1 deletion + 1 insertion over 2 events
    with pytest.raises(DataError, match="does not annotate"):
        event_based(ref, {"c.wav": []})


def test_segment_based_by_hand():
    ref = {"a.wav": [Event(0.0, 2.0, "speech")]}
    est = {"a.wav": [Event(1.0, 3.0, "speech")]}
    # 1-s segments: ref active in [0,1), [1,2); est in [1,2), [2,3): TP 1, FN 1, FP 1
    scores = segment_based(ref, est, durations={"a": 4.0})
    assert scores["f1"] == pytest.approx(0.5)
    assert scores["error_rate"] == pytest.approx(1.0)


def test_psds_perfect_scores_beat_flat_ones():
    rng = np.random.default_rng(0)
    labels = ["cough", "speech"]
    ref, frames = {}, []
    for i in range(6):
        probs = np.full((100, 2), 0.01)
        events = []
        for j, label in enumerate(labels):
            onset = rng.integers(5, 60)
            length = rng.integers(10, 30)
            probs[onset:onset + length, j] = 0.99
            events.append(Event(onset / 10, (onset + length) / 10, label))
        ref[f"f{i}.wav"] = sorted(events)
        frames.append(FrameScores(f"f{i}.wav", np.arange(101) / 10, probs.astype(np.float32), labels, 10.0))
    durations = {f"f{i}": 10.0 for i in range(6)}
    good = psds(score_frames(frames), ref, durations, scenario="psds1")
    assert good["psds"] > 0.9
    # flat scores: every detection spans the whole file, far more than its event (dtc 0.7 fails)
    flat = [FrameScores(f.filename, f.timestamps, np.full_like(f.probs, 0.5), labels, 10.0) for f in frames]
    bad = psds(score_frames(flat), ref, durations, scenario="psds1")
    assert bad["psds"] < 0.1 < good["psds"]
    assert psds(score_frames(frames), ref, durations, scenario="psds2")["psds"] > 0.9


def test_a_class_threshold_below_the_sections_low_threshold_is_refused_when_the_recipe_loads():
    with pytest.raises(ValueError, match=r"per_class\.door\.threshold 0\.2 is below the low_threshold 0\.3"):
        PostprocessConfig.model_validate({"threshold": 0.5, "low_threshold": 0.3,
                                          "per_class": {"door": {"threshold": 0.2}}})
    ok = PostprocessConfig.model_validate({"threshold": 0.5, "low_threshold": 0.3,
                                           "per_class": {"door": {"threshold": 0.2, "low_threshold": 0.1}}})
    assert ok.per_class["door"].low_threshold == 0.1
