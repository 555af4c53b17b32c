"""Typed results, TensorBoard scalars and the HTML report, rendered in headless Chromium.

The runs are real, small trainings on the built-in synthetic events: a float CNN (quickstart),
its binary twin (bcnn2d, XNOR-Net) with a ``.bsnn`` export beside it and a published system named,
and a two-fold cross-validation.
"""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest
from torch import nn

from bitsound.cli import main
from bitsound.errors import DataError
from bitsound.report.results import ComplexityResult, CvResult, EvaluateResult, TrainResult, load_result

TINY = "synthetic:n_per_class=6,n_locations=4,seed=3"
BINARY = ["--set", "model.name=bcnn2d", "--set", "model.params={channels: [8, 16], mode: xnor}",
          "--set", "references=[seed001-acdnet]"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    cache = str(tmp_path_factory.mktemp("cache"))
    common = ["--data", TINY, "--cache", cache, "--set", "train.epochs=2", "-q"]
    assert main(["train", "--recipe", "quickstart", "--out", str(root / "float"), *common]) == 0
    assert main(["train", "--recipe", "quickstart", "--out", str(root / "binary"), *common, *BINARY,
                 "--tensorboard"]) == 0
    assert main(["export", "--model", str(root / "binary" / "model.pt"),
                 "--out", str(root / "binary" / "model.bsnn")]) == 0
    assert main(["cv", "--recipe", "quickstart", "--out", str(root / "cv"), "--data",
                 "synthetic:n_per_class=4,n_locations=2,seed=3", "--cache", cache,
                 "--set", "train.epochs=1", "-q"]) == 0
    return root


def test_train_result_keeps_its_keys_and_adds_predictions(runs):
    data = json.loads((runs / "float" / "metrics.json").read_text())
    for key in ("recipe", "data", "split", "labels", "params", "best_epoch", "train_accuracy", "held_out"):
        assert key in data
    result = load_result(runs / "float" / "metrics.json", TrainResult)
    held = result.held_out
    assert len(result.predictions) == held.n > 0
    # the stored predictions reproduce the stored scores
    assert np.mean([p.true == p.predicted for p in result.predictions]) == pytest.approx(held.accuracy)
    assert all(p.group is not None and p.device is not None for p in result.predictions)
    # the group split holds whole locations out: no held-out group was trained on
    assert result.split.kind == "group" and len({p.group for p in result.predictions}) >= 1
    assert load_result(runs / "binary" / "metrics.json", TrainResult).references == ["seed001-acdnet"]


def test_cv_result_pools_every_folds_predictions(runs):
    cv = load_result(runs / "cv" / "cv.json", CvResult)
    assert len(cv.folds) == 2
    assert len(cv.predictions) == sum(f.n for f in cv.folds)
    assert {p.group for p in cv.predictions} == {f.held_out for f in cv.folds}


def test_evaluate_and_complexity_print_typed_results(runs, capsys, tmp_path):
    capsys.readouterr()
    assert main(["evaluate", "--model", str(runs / "float" / "model.pt"), "--data", TINY, "--json",
                 "--no-cache", "--out", str(tmp_path / "eval.json")]) == 0
    printed = EvaluateResult.model_validate_json(capsys.readouterr().out)
    assert len(printed.predictions) == printed.n == 48
    assert load_result(tmp_path / "eval.json", EvaluateResult) == printed
    assert main(["complexity", "--model", str(runs / "binary" / "model.pt"), "--json"]) == 0
    report = ComplexityResult.model_validate_json(capsys.readouterr().out)
    assert report.bops > 0 and any(layer.bits_per_weight == 1 for layer in report.layers)


def test_load_result_names_the_file_and_key(tmp_path):
    bad = tmp_path / "metrics.json"
    bad.write_text(json.dumps({"recipe": "x"}))
    with pytest.raises(DataError, match=r"metrics\.json' is not a TrainResult: data: Field required"):
        load_result(bad, TrainResult)
    bad.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_result(bad, TrainResult)


def test_binary_training_logs_sign_flips_to_jsonl_and_tensorboard(runs):
    records = [json.loads(line) for line in (runs / "binary" / "log.jsonl").read_text().splitlines()]
    assert all(0 < r["sign_flip_fraction"] < 1 for r in records)
    floats = [json.loads(line) for line in (runs / "float" / "log.jsonl").read_text().splitlines()]
    assert all("sign_flip_fraction" not in r for r in floats)
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    events = accumulator.EventAccumulator(str(runs / "binary" / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss/train", "loss/val", "lr", "metrics/val_accuracy", "sign_flips/all"} <= tags
    assert any(t.startswith("sign_flips/") and t != "sign_flips/all" for t in tags)
    flips = [e.value for e in events.Scalars("sign_flips/all")]
    assert flips == pytest.approx([r["sign_flip_fraction"] for r in records])


def test_sign_flips_counts_binary_layers_by_declared_bits():
    import torch

    from bitsound.train.scalars import SignFlips

    class Declared(nn.Linear):
        weight_bits = 1  # binary by declaration, whatever its class

    model = nn.Sequential(Declared(4, 2), nn.Linear(4, 2))
    flips = SignFlips(model)
    assert [name for name, _ in flips.layers] == ["0"]
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -1, 2, -2], [0.5, 0.5, -0.5, 0.0]]))
        flips.start()
        model[0].weight.copy_(torch.tensor([[-1.0, -1, 2, -2], [0.5, -0.5, -0.5, 0.1]]))
    assert flips.fractions() == {"0": 2 / 8, "all": 2 / 8}  # 0.0 -> 0.1 keeps sign +1


def test_pareto_front():
    from bitsound.report.plots import Point, pareto_front

    points = [Point("a", 0.9, 100), Point("b", 0.8, 10), Point("c", 0.7, 50), Point("d", 0.95, 1000),
              Point("e", 0.8, 10)]
    assert [p.name for p in pareto_front(points)] == ["b", "e", "a", "d"]


@pytest.fixture(scope="module")
def report(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "report.html"
    assert main(["report", str(runs / "float"), str(runs / "binary"), str(runs / "cv"), "--out", str(out),
                 "-q"]) == 0
    return out


def test_report_is_one_self_contained_file(report):
    page = report.read_text()
    # nothing is fetched: no URL in any src or href, no external script or stylesheet
    for attr in re.findall(r'(?:src|href)="([^"]*)"', page):
        assert attr.startswith(("data:image/png;base64,", "#")), attr
    assert "<link" not in page and "@import" not in page
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) >= 12
    for data in images:
        assert base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"
    # the comparison table has one row per run, the seed system named by the binary run appears
    table = page.split('id="comparison"')[1].split("</table>")[0]
    assert table.count("<tr>") == 1 + 3
    assert "XACDNet (XNOR)" in page and "published points drawn above" in page
    assert "Engine (model.bsnn" in page
    assert "accuracy per device" in page and "accuracy per group" in page


def test_report_of_a_folder_without_results_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no metrics.json, cv.json, study.json or compress.json"):
        from bitsound.report.runs import load_runs

        load_runs([tmp_path])


def _chromium_or_skip():
    from bitsound.report.browser import find_chromium

    if find_chromium() is None:
        pytest.skip("Chromium is not installed and could not be: `make test` installs the Debian package "
                    "'chromium' with apt-get (needs root and the Debian archive)")


SORT_BY_ACCURACY = """(function () {
  var th = document.querySelectorAll('#comparison th')[4];
  th.click(); th.click();  // descending
  return Array.prototype.map.call(document.querySelectorAll('#comparison tbody tr'),
                                  function (r) { return parseFloat(r.cells[4].getAttribute('data-v')); });
})()"""


def test_report_renders_in_headless_chromium(report, tmp_path):
    _chromium_or_skip()
    from bitsound.report.browser import inspect_page

    page = inspect_page(report, full_page=True, scripts=(SORT_BY_ACCURACY,))
    assert page.errors == []
    assert page.title == "bitsound report"
    assert len(page.images) >= 12
    for image in page.images:
        assert image["complete"] and image["natural_width"] > 0 and image["natural_height"] > 0, image
        assert image["width"] > 0 and image["height"] > 0, image
    accuracies = page.evaluated[0]
    assert len(accuracies) == 3 and accuracies == sorted(accuracies, reverse=True)
    assert page.screenshot[:8] == b"\x89PNG\r\n\x1a\n" and len(page.screenshot) > 10_000
    (tmp_path / "report.png").write_bytes(page.screenshot)


def test_chromium_check_sees_errors_and_broken_images(tmp_path):
    """The check above can fail: a page with a script error, console.error and a broken image."""
    _chromium_or_skip()
    from bitsound.report.browser import inspect_page

    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><head><title>bad</title></head><body>'
                   '<img src="data:image/png;base64,AAAA" alt="broken">'
                   '<script>console.error("boom"); undefinedFunction();</script></body></html>')
    page = inspect_page(bad)
    assert any("boom" in e for e in page.errors)
    assert any("undefinedFunction" in e for e in page.errors)
    assert page.images[0]["natural_width"] == 0
