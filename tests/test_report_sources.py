"""What ``bitsound report`` reads besides plain train runs: old result files, cv exports, compression.

Result files are written by hand here (typed result objects, as the commands write them), so
that each case is exactly the one under test: a ``metrics.json`` from before predictions were
stored, a ``.bsnn`` beside ``cv.json``, and a ``compress.json`` whose stages must appear in the
comparison table and on the accuracy-versus-size plot.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from bitsound.errors import DataError
from bitsound.report.html import render_report
from bitsound.report.plots import Point, pareto_front
from bitsound.report.results import (
    CompressResult,
    CompressRow,
    CvFold,
    CvResult,
    Scores,
    SplitInfo,
    TrainResult,
)
from bitsound.report.runs import load_runs

LABELS = ["dog", "rain", "siren"]
MATRIX = [[5, 1, 0], [2, 3, 1], [0, 0, 6]]  # 18 held-out examples, 14 right


def scores(matrix=MATRIX, labels=LABELS) -> Scores:
    m = np.array(matrix)
    recall = {label: float(m[i, i] / m[i].sum()) for i, label in enumerate(labels[:len(m)])}
    return Scores(n=int(m.sum()), accuracy=float(np.trace(m) / m.sum()), balanced_accuracy=0.75, macro_f1=0.7,
                  log_loss=0.8, per_class_recall=recall, labels=labels, confusion_matrix=matrix)


def train_result(held_out: Scores | None, *, name="loc1", data="synthetic:n_per_class=6") -> TrainResult:
    return TrainResult(recipe="quickstart", data=data, split=SplitInfo(kind="group", name=name),
                       n_train_clips=30, n_train_windows=30, labels=LABELS, params=1000, best_epoch=2,
                       epochs_run=2, stopped_early=False, train_seconds=1.0, score_level="clip",
                       train_accuracy=0.9, held_out=held_out)


def test_old_metrics_without_predictions_shows_the_stored_confusion_matrix(tmp_path):
    run_dir = tmp_path / "old"
    run_dir.mkdir()
    train_result(scores()).save(run_dir / "metrics.json")  # predictions: [] (written before they were)
    (run,) = load_runs([run_dir])
    assert run.predictions == []
    matrix, recall = run.confusion()
    np.testing.assert_array_equal(matrix, MATRIX)
    np.testing.assert_allclose(recall, [5 / 6, 3 / 6, 1.0])
    page = render_report([run])
    assert "nothing was held out" not in page
    assert "predates stored predictions" in page and 'alt="confusion matrix"' in page
    assert 'alt="per-class recall"' in page

    # nothing held out at all: the page says so
    train_result(None).save(run_dir / "metrics.json")
    (run,) = load_runs([run_dir])
    assert run.confusion() is None and "nothing was held out" in render_report([run])

    # a matrix that does not fit its labels is named, not drawn
    train_result(scores(matrix=[[1, 2], [3, 4]])).save(run_dir / "metrics.json")
    (run,) = load_runs([run_dir])
    with pytest.raises(DataError, match=r"metrics\.json'.*confusion_matrix has shape \(2, 2\) for 3 labels"):
        run.confusion()


def test_cv_folds_stored_matrices_are_summed_in_label_order(tmp_path):
    cv_dir = tmp_path / "cv"
    reordered = ["siren", "dog", "rain"]  # fold 2 stored its matrix in another label order
    other = [[4, 0, 0], [1, 2, 0], [0, 1, 3]]
    folds = [("loc1", scores()), ("loc2", scores(matrix=other, labels=reordered))]
    for name, held in folds:
        (cv_dir / f"cv-{name}").mkdir(parents=True)
        train_result(held, name=name).save(cv_dir / f"cv-{name}" / "metrics.json")
    CvResult(recipe="quickstart", data="synthetic:n_per_class=6", split="group",
             folds=[CvFold(held_out=name, n=held.n, accuracy=held.accuracy, balanced_accuracy=0.7,
                           macro_f1=0.7, log_loss=0.8) for name, held in folds],
             mean_accuracy=0.75, std_accuracy=0.05, min_accuracy=0.7).save(cv_dir / "cv.json")
    (run,) = load_runs([cv_dir])
    matrix, _ = run.confusion()
    # other in LABELS order (dog, rain, siren): dog->dog 2, dog->siren 1 ... as stored under `reordered`
    want = np.array(MATRIX) + np.array([[2, 0, 1], [1, 3, 0], [0, 0, 4]])
    np.testing.assert_array_equal(matrix, want)
    assert matrix.sum() == sum(h.n for _, h in folds)


def _binary_model(path: Path):
    from bitsound.modelfile import build_net, save_model
    from bitsound.recipes import load_recipe

    recipe = load_recipe("digits-xnor")
    torch.manual_seed(0)
    save_model(path, recipe=recipe, labels=[str(d) for d in range(10)], net=build_net(recipe, 10).eval())


def test_bsnn_beside_cv_json_is_timed(tmp_path):
    from bitsound.export import export_packed

    cv_dir = tmp_path / "cv"
    for name in ("loc1", "loc2"):
        (cv_dir / f"cv-{name}").mkdir(parents=True)
        train_result(scores(), name=name).save(cv_dir / f"cv-{name}" / "metrics.json")
    _binary_model(cv_dir / "cv-loc1" / "model.pt")
    CvResult(recipe="digits-xnor", data="fsdd", split="leave_one_group_out",
             folds=[CvFold(held_out=n, n=18, accuracy=0.7, balanced_accuracy=0.7, macro_f1=0.7, log_loss=0.8)
                    for n in ("loc1", "loc2")],
             mean_accuracy=0.7, std_accuracy=0.0, min_accuracy=0.7).save(cv_dir / "cv.json")
    export_packed(cv_dir / "cv-loc1" / "model.pt", cv_dir / "digits.bsnn")  # beside cv.json
    (run,) = load_runs([cv_dir])
    assert run.engine_path == cv_dir / "digits.bsnn"
    assert run.engine["engine_ms"] > 0 and run.engine["file"] == "digits.bsnn"
    assert "Engine (digits.bsnn" in render_report([run])
    (cv_dir / "digits.bsnn").rename(cv_dir / "cv-loc1" / "model.bsnn")  # in the fold folder: still found
    (run,) = load_runs([cv_dir])
    assert run.engine_path == cv_dir / "cv-loc1" / "model.bsnn"


def compress_row(stage: str, kind: str, *, params: int, kb: float, macs: int, accuracy: float,
                 bops: int = 0, **extra) -> CompressRow:
    return CompressRow(stage=stage, kind=kind, model=f"{stage}/model.pt", params=params,
                       nonzero_params=params, bytes={"storage": kb * 1024}, kb={"storage": kb}, macs=macs,
                       bops=bops, flops_seed001=float(macs), held_out_accuracy=accuracy,
                       held_out_balanced_accuracy=accuracy, criterion_accuracy=accuracy, seconds=1.0, **extra)


def test_compress_stages_join_the_table_and_the_pareto_plot(tmp_path):
    base = tmp_path / "digits-cnn"
    base.mkdir()
    train_result(scores(), data="fsdd:x").save(base / "metrics.json")
    comp = tmp_path / "digits-cnn-int8-ptq"
    comp.mkdir()
    rows = [compress_row("00-input", "input", params=220_594, kb=861.7, macs=9_000_000, accuracy=0.80),
            compress_row("01-prune", "prune", params=57_306, kb=223.9, macs=3_000_000, accuracy=0.78,
                         notes=["50 % of the channels removed"]),
            compress_row("02-int8", "quantize", params=57_306, kb=56.2, macs=3_000_000, accuracy=0.77,
                         bsnn_bytes=60_000, engine_ms=1.25,
                         engine={"examples": 64, "labels_equal": 64, "logit_max_rel": 1e-3},
                         notes=["int8 (ptq, int8 activations): features.1"])]
    result = CompressResult(pipeline="int8-ptq", model=str(tmp_path / "other" / "model.pt"),
                            recipe="digits-cnn", data="fsdd:x", criterion="held_out", rows=rows,
                            split=SplitInfo(kind="leave_one_group_out", name="jackson"))
    result.save(comp / "compress.json")
    runs = load_runs([base, comp])
    assert [r.name for r in runs] == ["digits-cnn", *(f"digits-cnn-int8-ptq/{r.stage}" for r in rows)]
    stages = runs[1:]
    assert [r.accuracy for r in stages] == [0.80, 0.78, 0.77]
    assert [r.costs()["kb"] for r in stages] == [861.7, 223.9, 56.2]
    assert all(r.kind == "compress" and not r.binary for r in stages)
    # every stage is on the front: each is smaller and (a little) less accurate than the one before
    points = [Point(r.name, r.accuracy, r.costs()["kb"], r.binary, r.data) for r in stages]
    assert [p.name for p in pareto_front(points)] == [r.name for r in reversed(stages)]

    page = render_report(runs)
    table = page.split('id="comparison"')[1].split("</table>")[0]
    assert table.count("<tr>") == 1 + 4
    for stage in ("00-input", "01-prune", "02-int8"):
        assert f"digits-cnn-int8-ptq/{stage}" in table
    assert "56.20" in table and "77.00 %" in table
    # the size plot's caption lists the front: the int8 stage is on it
    caption = re.search(r"accuracy vs model size.*?Pareto front of each data set \(also marked \*: ([^)]*)\)",
                        page, re.S).group(1)
    assert "digits-cnn-int8-ptq/02-int8" in caption
    # one section for the compress folder, with its stage table
    assert page.count("compression pipeline int8-ptq") == 1
    section = page.split("compression pipeline int8-ptq")[1]
    assert "50 % of the channels removed" in section and "64/64" in section and "58.6" in section

    # compressed from a run of this report: its input stage is that run, drawn once (the section keeps it)
    result.model_copy(update={"model": str(base / "model.pt")}).save(comp / "compress.json")
    runs = load_runs([base, comp])
    assert [r.name for r in runs] == ["digits-cnn", *(f"digits-cnn-int8-ptq/{r.stage}" for r in rows[1:])]
    section = render_report(runs).split("compression pipeline int8-ptq")[1]
    assert "00-input" in section
