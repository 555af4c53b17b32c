"""Sound event detection over long recordings: windows, frame scores, events, DCASE metrics.

>>> from bitsound.detect import load_classifier, score_files, detections
>>> clf = load_classifier(model="runs/office-events/model.pt")
>>> run = score_files(clf, ["meeting.wav"], detect=clf.recipe.detect)
>>> events = detections(run, clf.recipe.detect.postprocess)   # {filename: [Detection, ...]}

Modules: :mod:`~bitsound.detect.stream` (bounded-memory windows over a file),
:mod:`~bitsound.detect.frames` (window probabilities as frames), :mod:`~bitsound.detect.postprocess`
(median filter, hysteresis, gaps, minimum length), :mod:`~bitsound.detect.metrics`
(sed_eval, sed_scores_eval), :mod:`~bitsound.detect.ensemble` (several models' probabilities
averaged), :mod:`~bitsound.detect.run` (what the CLI calls).
"""

from bitsound.detect.ensemble import Ensemble
from bitsound.detect.frames import FrameScores, frame_scores
from bitsound.detect.postprocess import Detection, detect_events
from bitsound.detect.run import DetectionRun, detections, load_classifier, score_files, tune, write_events
from bitsound.detect.stream import WindowBatch, stream_windows

__all__ = ["Detection", "DetectionRun", "Ensemble", "FrameScores", "WindowBatch", "detect_events",
           "detections", "frame_scores", "load_classifier", "score_files", "stream_windows", "tune",
           "write_events"]
