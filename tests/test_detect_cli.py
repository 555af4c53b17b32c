"""End to end on tiny real mixtures: bitsound mix -> train (strong labels) -> export -> detect
through PyTorch and through the engine -> evaluate-events (with PSDS) -> detect --tune."""

import json
from pathlib import Path

import numpy as np
import pytest

from bitsound.cli import main
from bitsound.data.events import read_annotations
from bitsound.detect.metrics import read_frame_scores
from bitsound.export import bsnn

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
pytestmark = pytest.mark.skipif(not (DATA / "dcase2016-task2-events").is_dir(),
                                reason=f"{DATA} not present")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("office")
    mixtures = root / "mix"
    assert main(["mix", "--events", str(DATA / "dcase2016-task2-events"), "--backgrounds",
                 str(DATA / "tut2017-scenes"), "--scenes", "office,library,home", "--out", str(mixtures),
                 "--n-train", "12", "--n-val", "3", "--n-test", "2", "--seed", "3", "-q"]) == 0
    out = root / "xnor"
    assert main(["train", "--recipe", "office-events-xnor", "--data", f"sed:{mixtures / 'dev'}",
                 "--out", str(out), "--no-cache", "-q", "--set", "train.epochs=1",
                 "--set", "model.params.channels=[8,16]"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["labels"][0] == "background" and len(metrics["labels"]) == 12
    assert main(["export", "--model", str(out / "model.pt"), "--out", str(out / "model.bsnn")]) == 0
    return mixtures, out


def test_detect_torch_and_engine_then_score(trained, tmp_path, capsys):
    mixtures, model = trained
    files = sorted(str(p) for p in (mixtures / "test/audio").glob("*.wav"))
    post = tmp_path / "post.yaml"
    post.write_text("ignore: [background]\nthreshold: 0.1\nmedian: 0.2\n")
    for backend, flags in (("torch", ["--model", model / "model.pt"]),
                           ("engine", ["--model", model / "model.pt", "--engine", model / "model.bsnn"])):
        assert main(["detect", *map(str, flags), *files, "--out", str(tmp_path / f"{backend}.tsv"),
                     "--frames", str(tmp_path / backend), "--postprocess", str(post), "--hop", "0.25",
                     "-q"]) == 0
    torch_scores, durations = read_frame_scores(tmp_path / "torch")
    engine_scores, _ = read_frame_scores(tmp_path / "engine")
    assert sorted(torch_scores) == ["test_0000", "test_0001"]
    assert durations["test_0000"] == pytest.approx(10.0, abs=1e-3)
    for key in torch_scores:
        t, e = torch_scores[key], engine_scores[key]
        assert list(t.columns) == ["onset", "offset", *json.loads((model / "metrics.json").read_text())
                                   ["labels"][1:]]  # the background class is not scored
        assert t["onset"].iloc[0] == 0 and t["offset"].iloc[-1] == pytest.approx(10.0, abs=1e-3)
        # the engine runs the same network: same probabilities up to float rounding
        np.testing.assert_allclose(e.to_numpy(), t.to_numpy(), atol=2e-3)
    est = read_annotations(tmp_path / "torch.tsv")
    assert sorted(est) == ["test_0000.wav", "test_0001.wav"]  # files without events listed too
    info = json.loads((tmp_path / "torch.json").read_text())
    assert info["backend"] == "pytorch" and info["real_time_factor"] > 0
    assert all(0 < d["confidence"] <= 1 for ds in info["files"].values() for d in ds)

    capsys.readouterr()
    assert main(["evaluate-events", "--ref", str(mixtures / "test/events.tsv"), "--est",
                 str(tmp_path / "torch.tsv"), "--frames", str(tmp_path / "torch"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"event_based", "segment_based", "psds1", "psds2"}
    assert report["event_based"]["collar"] == 0.2 and report["segment_based"]["resolution"] == 1.0
    assert 0 <= report["psds1"]["psds"] <= 1 and report["event_based"]["n_files"] == 2


def test_tune_on_validation_files(trained, tmp_path):
    mixtures, model = trained
    files = sorted(str(p) for p in (mixtures / "dev/audio").glob("val_*.wav"))
    out = tmp_path / "tuned.json"
    assert main(["detect", "--model", str(model / "model.pt"), *files, "--tune",
                 str(mixtures / "dev/events.tsv"), "--out", str(out), "--hop", "0.25", "-q"]) == 0
    tuned = json.loads(out.read_text())
    assert tuned["tuning"]["n_files"] == 3
    assert set(tuned["postprocess"]["per_class"]) == set(json.loads(
        (model / "metrics.json").read_text())["labels"][1:])
    after, before = tuned["tuning"]["event_f1_after"], tuned["tuning"]["event_f1_before"]
    assert (after or 0) >= (before or 0)  # tuned per class on these files: never worse here
    # the tuned file is accepted by --postprocess
    assert main(["detect", "--model", str(model / "model.pt"), files[0], "--out",
                 str(tmp_path / "e.tsv"), "--postprocess", str(out), "--hop", "0.25", "-q"]) == 0


def test_detect_errors(trained, tmp_path, capsys):
    mixtures, model = trained
    wav = str(next((mixtures / "test/audio").glob("*.wav")))
    assert main(["detect", wav, "--out", str(tmp_path / "x.tsv")]) == 2
    assert "or both" in capsys.readouterr().err
    other = tmp_path / "other.bsnn"  # exported from another model: refused with both flags
    graph = bsnn.read(model / "model.bsnn")
    graph.meta = {**graph.meta, "labels": list(reversed(graph.meta["labels"]))}
    bsnn.write(graph, other)
    assert main(["detect", "--model", str(model / "model.pt"), "--engine", str(other), wav, "--out",
                 str(tmp_path / "x.tsv")]) == 2
    assert "was not exported from" in capsys.readouterr().err
    assert main(["detect", "--model", str(model / "model.pt"), wav, "--out", str(tmp_path / "x.tsv"),
                 "--hop", "2.0"]) == 2
    assert "longer than the model's window" in capsys.readouterr().err
    assert main(["evaluate-events", "--ref", str(mixtures / "test/events.tsv"), "--est",
                 str(mixtures / "dev/events.tsv")]) == 2
    assert "does not annotate" in capsys.readouterr().err


def _other_model(model: Path, out: Path) -> Path:
    """A second model of the same classes and windows: the first's weights, perturbed."""
    import torch

    from bitsound.modelfile import load_model, save_model

    first = load_model(model / "model.pt")
    torch.manual_seed(0)
    with torch.no_grad():
        for tensor in first.net.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(0.3 * torch.randn_like(tensor) * (tensor.std() if tensor.numel() > 1 else 1))
    out.mkdir()
    save_model(out / "model.pt", recipe=first.recipe, labels=first.labels, net=first.net)
    assert main(["export", "--model", str(out / "model.pt"), "--out", str(out / "model.bsnn")]) == 0
    return out


def test_an_ensemble_averages_its_members_probabilities(trained, tmp_path, capsys):
    mixtures, model = trained
    other = _other_model(model, tmp_path / "other")
    wav = str(sorted((mixtures / "test/audio").glob("*.wav"))[0])
    runs = {"a": ["--model", model / "model.pt"], "b": ["--model", other / "model.pt"],
            "ab": ["--model", model / "model.pt", "--model", other / "model.pt"],
            "ab-engine": ["--model", model / "model.pt", "--model", other / "model.pt",
                          "--engine", model / "model.bsnn", "--engine", other / "model.bsnn"]}
    scores = {}
    for name, flags in runs.items():
        assert main(["detect", *map(str, flags), wav, "--out", str(tmp_path / f"{name}.tsv"),
                     "--frames", str(tmp_path / name), "--hop", "0.25", "-q"]) == 0
        scores[name] = next(iter(read_frame_scores(tmp_path / name)[0].values())).to_numpy()
    mean = (scores["a"][:, 2:] + scores["b"][:, 2:]) / 2
    assert not np.allclose(scores["a"][:, 2:], scores["b"][:, 2:], atol=1e-2)  # members differ
    np.testing.assert_allclose(scores["ab"][:, 2:], mean, atol=1e-5)
    np.testing.assert_allclose(scores["ab-engine"][:, 2:], mean, atol=2e-3)
    info = json.loads((tmp_path / "ab-engine.json").read_text())
    assert info["backend"] == "engine" and info["settings"]["models"] == 2


def test_ensemble_errors(trained, tmp_path, capsys):
    from bitsound.detect.ensemble import Ensemble
    from bitsound.errors import ConfigError
    from bitsound.modelfile import load_model

    mixtures, model = trained
    wav = str(next((mixtures / "test/audio").glob("*.wav")))
    pt, bsnn_file = str(model / "model.pt"), str(model / "model.bsnn")
    assert main(["detect", "--model", pt, "--model", pt, "--engine", bsnn_file, wav, "--out",
                 str(tmp_path / "x.tsv")]) == 2
    assert "one .bsnn per model.pt" in capsys.readouterr().err
    first = load_model(pt)
    relabelled = load_model(pt)
    relabelled.labels = list(reversed(first.labels))
    with pytest.raises(ConfigError, match="same classes"):
        Ensemble([first, relabelled], ["a.pt", "b.pt"])
    longer = load_model(pt)
    segment = first.recipe.audio.segment.model_copy(update={"length": 2.0})
    longer.recipe = first.recipe.model_copy(update={"audio": first.recipe.audio.model_copy(
        update={"segment": segment})})
    with pytest.raises(ConfigError, match="b.pt' reads windows"):
        Ensemble([first, longer], ["a.pt", "b.pt"])
    from bitsound.engine.classifier import load_classifier as load_engine

    with pytest.raises(ConfigError, match="all in the engine"):
        Ensemble([first, load_engine(bsnn_file)], ["a.pt", "a.bsnn"])
    with pytest.raises(ConfigError, match="two or more"):
        Ensemble([first], ["a.pt"])
