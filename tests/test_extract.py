"""Feature extraction in worker processes, filling the cache ahead of a run (and resuming it),
and cache keys that follow the front-end code."""

import json
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from bitsound.audio import codeversion
from bitsound.cli import main
from bitsound.data import FeatureCache, open_dataset
from bitsound.errors import AudioDecodeError, ConfigError
from bitsound.experiment import cache_views
from bitsound.extract import check_workers, fill_cache, raise_failures
from bitsound.pipeline import build_features, feature_config
from bitsound.recipes import load_recipe

SPEC = "synthetic:n_per_class=2,n_locations=2"


@pytest.fixture(scope="module")
def recipe():
    return load_recipe("quickstart")


@pytest.fixture(scope="module")
def dataset():
    return open_dataset(SPEC)


def labels(dataset):
    return {label: i for i, label in enumerate(dataset.labels)}


@pytest.fixture(scope="module")
def reference(recipe, dataset):
    return build_features(dataset, range(len(dataset.clips)), recipe=recipe,
                          label_index=labels(dataset), cache=None, show_progress=False)


def assert_same_features(got, want):
    torch.testing.assert_close(got.x, want.x, rtol=0, atol=0)
    assert torch.equal(got.y, want.y)
    np.testing.assert_array_equal(got.clip_of_window, want.clip_of_window)


@pytest.mark.slow
def test_workers_without_a_cache_send_the_same_features_back(recipe, dataset, reference):
    without = build_features(dataset, range(len(dataset.clips)), recipe=recipe,
                             label_index=labels(dataset), cache=None, show_progress=False, workers=2)
    assert_same_features(without, reference)


def test_an_interrupted_fill_continues_where_it_stopped(recipe, dataset, reference, tmp_path):
    cache = FeatureCache(tmp_path)
    views = cache_views(recipe, dataset)
    real_load = dataset.load
    calls = {"n": 0}

    def load(clip, **kwargs):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt  # the user's ^C (or a kill) during the 7th clip
        return real_load(clip, **kwargs)

    dataset.load = load
    try:
        with pytest.raises(KeyboardInterrupt):
            fill_cache(dataset, views, recipe=recipe, cache=cache, show_progress=False)
    finally:
        del dataset.load
    assert len(list(tmp_path.rglob("*.npy"))) == 6
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix != ".npy"]
    report = fill_cache(dataset, views, recipe=recipe, cache=cache, show_progress=False)
    n = len(dataset.clips)
    assert (report.n_clips, report.n_cached, report.n_computed, report.failures) == (n, 6, n - 6, [])
    cached = build_features(dataset, range(n), recipe=recipe, label_index=labels(dataset),
                            cache=cache, show_progress=False)
    assert_same_features(cached, reference)


@pytest.mark.slow
def test_data_cache_command_fills_the_cache_in_workers(recipe, dataset, reference, tmp_path, capsys):
    args = ["data", "cache", "--recipe", "quickstart", "--data", SPEC, "--cache", str(tmp_path),
            "--workers", "2", "--json"]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["n_clips"] == 16 and first["n_computed"] == 16 and first["n_cached"] == 0
    assert first["workers"] == 2 and first["clips_per_second"] > 0
    # what the workers stored is what this process computes
    cached = build_features(dataset, range(len(dataset.clips)), recipe=recipe,
                            label_index=labels(dataset), cache=FeatureCache(tmp_path),
                            show_progress=False, workers=2)  # nothing left to compute
    assert_same_features(cached, reference)
    assert main(args) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["n_cached"] == 16 and second["n_computed"] == 0


@pytest.mark.slow
def test_workers_list_every_unreadable_file_and_cache_the_rest(recipe, tmp_path):
    root = tmp_path / "data"
    for label in ("low", "high"):
        (root / label).mkdir(parents=True)
        for i in range(3):
            t = np.arange(16000) / 16000
            sf.write(root / label / f"{i}.wav", 0.3 * np.sin(2 * np.pi * (200 + 100 * i) * t), 16000)
    (root / "high" / "notes.wav").write_text("not audio\n" * 50)
    (root / "low" / "empty.wav").write_bytes(b"")
    dataset = open_dataset(f"folder:{root}")
    report = fill_cache(dataset, cache_views(recipe, dataset), recipe=recipe,
                        cache=FeatureCache(tmp_path / "cache"), workers=2, show_progress=False)
    assert sorted(p.rsplit("/", 1)[-1] for p, _ in report.failures) == ["empty.wav", "notes.wav"]
    assert report.n_computed == 6 and len(list((tmp_path / "cache").rglob("*.npy"))) == 6


def test_every_failure_of_the_workers_is_in_one_error():
    failures = [(3, "/d/a.wav", "is empty"), (7, "/d/b.wav", "is not audio")]
    with pytest.raises(AudioDecodeError, match=r"(?s)'/d/a.wav': is empty; 2 of the 9 clips of "
                       r"train features failed:.*/d/b.wav: is not audio.*--skip-bad"):
        raise_failures(failures, total=9, description="train features")
    raise_failures([], total=9, description="train features")  # nothing failed: no error


def test_worker_count_is_checked():
    assert check_workers(0) == 0 and check_workers(4) == 4
    with pytest.raises(ConfigError, match="--workers -1"):
        check_workers(-1)


# ------------------------------------------------------------------ front-end code version
def test_code_digest_follows_imports_within_the_package(tmp_path, monkeypatch):
    pkg = tmp_path / "fakeaudio"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "io.py").write_text("from fakeaudio import helper\nfrom fakeaudio.tables import T\n"
                               "from . import rel\nimport json\n")
    (pkg / "helper.py").write_text("X = 1\n")
    (pkg / "tables.py").write_text("T = [1, 2]\n")
    (pkg / "rel.py").write_text("R = 0\n")
    (pkg / "augment.py").write_text("A = 1\n")  # not imported by io: not part of the features
    monkeypatch.syspath_prepend(str(tmp_path))

    def digest():
        for name in list(sys.modules):
            if name.startswith("fakeaudio"):
                del sys.modules[name]
        return codeversion.code_digest(["fakeaudio.io"], prefix="fakeaudio")

    base = digest()
    assert base == digest()
    for name, edit in (("helper.py", "X = 2\n"), ("tables.py", "T = [1, 3]\n"), ("rel.py", "R = 1\n"),
                       ("io.py", "import json\n")):
        old = (pkg / name).read_text()
        (pkg / name).write_text(edit)
        assert digest() != base, name
        (pkg / name).write_text(old)
    (pkg / "augment.py").write_text("A = 2\n")
    assert digest() == base
    with pytest.raises(ModuleNotFoundError):
        codeversion.code_digest(["fakeaudio.missing"], prefix="fakeaudio")


def test_the_mp3_decoding_code_is_part_of_the_feature_version(monkeypatch):
    """The MP3 frame walk changed once without a version bump; now any change of it changes keys."""
    base = codeversion.code_digest(codeversion.FEATURE_MODULES, prefix=codeversion.FOLLOW_PREFIX)
    assert codeversion.frontend_code_version() == base
    real = codeversion._source
    for module in ("bitsound.audio.mpeg", "bitsound.audio.ogg", "bitsound.audio.io",
                   "bitsound.audio.features"):
        monkeypatch.setattr(codeversion, "_source", lambda name, module=module: (
            real(name) + b"\n# changed\n" if name == module else real(name)))
        assert codeversion.code_digest(codeversion.FEATURE_MODULES,
                                       prefix=codeversion.FOLLOW_PREFIX) != base, module
    monkeypatch.setattr(codeversion, "_source", lambda name: (
        real(name) + b"\n# changed\n" if name == "bitsound.audio.augment" else real(name)))
    assert codeversion.code_digest(codeversion.FEATURE_MODULES, prefix=codeversion.FOLLOW_PREFIX) == base


def test_other_front_end_code_is_never_served_from_the_cache(recipe, dataset, tmp_path, monkeypatch):
    import bitsound.pipeline as pipeline

    assert feature_config(recipe)["code"] == codeversion.frontend_code_version()
    cache = FeatureCache(tmp_path)
    some = range(4)
    build_features(dataset, some, recipe=recipe, label_index=labels(dataset), cache=cache,
                   show_progress=False)
    assert len(list(tmp_path.rglob("*.npy"))) == 4
    monkeypatch.setattr(pipeline, "frontend_code_version", lambda: "edited-front-end")
    computed = []
    real = pipeline.clip_features
    monkeypatch.setattr(pipeline, "clip_features", lambda *a, **k: computed.append(1) or real(*a, **k))
    build_features(dataset, some, recipe=recipe, label_index=labels(dataset), cache=cache,
                   show_progress=False)
    assert len(computed) == 4 and len(list(tmp_path.rglob("*.npy"))) == 8


def test_code_version_falls_back_without_sources(monkeypatch, caplog):
    monkeypatch.setattr(codeversion, "code_digest", lambda *a, **k: (_ for _ in ()).throw(
        ModuleNotFoundError("no source")))
    codeversion.frontend_code_version.cache_clear()
    try:
        assert codeversion.frontend_code_version().startswith("version:")
        assert "cannot hash the front-end code" in caplog.text
    finally:
        codeversion.frontend_code_version.cache_clear()
