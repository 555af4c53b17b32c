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
def test_an_interrupted_pool_cancels_the_queued_clips_and_keeps_the_finished(recipe, dataset, reference,
                                                                             tmp_path, monkeypatch):
    """^C while worker processes compute: the clips not started are cancelled, the running ones
    finish and are stored whole, no worker is left behind, and the next fill does the rest."""
    import multiprocessing

    import bitsound.extract as extract

    monkeypatch.setattr(extract, "_IN_FLIGHT_PER_WORKER", 1)  # 2 clips in flight of 16
    real_wait, calls = extract.wait, {"n": 0}

    def wait(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_wait(*args, **kwargs)

    monkeypatch.setattr(extract, "wait", wait)
    cache = FeatureCache(tmp_path)
    views = cache_views(recipe, dataset)
    with pytest.raises(KeyboardInterrupt):
        fill_cache(dataset, views, recipe=recipe, cache=cache, workers=2, show_progress=False)
    assert not multiprocessing.active_children()
    stored = sorted(tmp_path.rglob("*.npy"))
    n = len(dataset.clips)
    assert 2 <= len(stored) <= 6 < n  # 2 done before the interrupt, at most 2 x 2 running then
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix != ".npy"]
    assert all(cache.get(p.stem) is not None for p in stored)  # whole files only
    monkeypatch.setattr(extract, "wait", real_wait)
    report = fill_cache(dataset, views, recipe=recipe, cache=cache, show_progress=False)
    assert (report.n_cached, report.n_computed) == (len(stored), n - len(stored))
    cached = build_features(dataset, range(n), recipe=recipe, label_index=labels(dataset), cache=cache,
                            show_progress=False)
    assert_same_features(cached, reference)


def test_a_damaged_cache_file_does_not_count_as_cached(recipe, dataset, tmp_path, caplog):
    cache = FeatureCache(tmp_path)
    some = {"windows": [0, 1, 2]}
    assert fill_cache(dataset, some, recipe=recipe, cache=cache, show_progress=False).n_computed == 3
    files = sorted(tmp_path.rglob("*.npy"))
    good = files[0].read_bytes()
    files[0].write_bytes(good[: len(good) // 2])  # cut short: a copy or a disk that failed
    report = fill_cache(dataset, some, recipe=recipe, cache=cache, show_progress=False)
    assert (report.n_cached, report.n_computed) == (2, 1)
    assert files[0].read_bytes() == good and "removing it and recomputing" in caplog.text


def test_each_view_reports_its_own_cached_count(dataset, tmp_path, caplog):
    import logging

    cropped = load_recipe("quickstart", overrides=["frontend={kind: raw}", "audio.crop.source_seconds=1.0",
                                                   "augment.time_masks=0", "augment.freq_masks=0"])
    cache = FeatureCache(tmp_path)
    views = cache_views(cropped, dataset)
    assert set(views) == {"windows", "source"}
    fill_cache(dataset, views, recipe=cropped, cache=cache, show_progress=False)
    n = len(dataset.clips)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="bitsound"):
        report = fill_cache(dataset, views, recipe=cropped, cache=cache, show_progress=False)
    assert (report.n_clips, report.n_cached, report.n_computed) == (2 * n, 2 * n, 0)
    assert f"windows view: {n} of {n} clips already cached" in caplog.text
    assert f"source view: {n} of {n} clips already cached" in caplog.text


@pytest.mark.slow
def test_data_cache_command_fills_the_cache_in_workers(recipe, dataset, reference, tmp_path, capsys):
    from bitsound.report.results import DataCacheResult

    args = ["data", "cache", "--recipe", "quickstart", "--data", SPEC, "--cache", str(tmp_path),
            "--workers", "2", "--json"]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert DataCacheResult.model_validate(first).recipe == "quickstart"
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


def test_worker_count_is_checked(tmp_path, capsys):
    assert check_workers(0) == 0 and check_workers(4) == 4
    with pytest.raises(ConfigError, match="--workers -1"):
        check_workers(-1)
    # on the command line, before anything is opened (even when every clip is cached)
    for bad in ("-1", "two", "1.5"):
        with pytest.raises(SystemExit) as exit_:
            main(["data", "cache", "--recipe", "quickstart", "--data", SPEC, "--cache", str(tmp_path),
                  "--workers", bad])
        assert exit_.value.code == 2
        assert f"--workers must be a whole number in [0, 1024], got '{bad}'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


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
    assert codeversion.feature_version_parts()["modules"] == base
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


def _version_with(monkeypatch, **patches) -> str:
    """frontend_code_version() with parts of codeversion replaced."""
    for name, value in patches.items():
        monkeypatch.setattr(codeversion, name, value)
    codeversion.frontend_code_version.cache_clear()
    try:
        return codeversion.frontend_code_version()
    finally:
        monkeypatch.undo()
        codeversion.frontend_code_version.cache_clear()


@pytest.mark.parametrize("spec", codeversion.FEATURE_FUNCTIONS)
def test_windowing_gating_cropping_and_loaders_are_part_of_the_feature_version(spec, monkeypatch):
    """Code outside bitsound.audio that shapes a clip (the pipeline's windows, energy gate and
    crops, each data set's load) changes the cache keys when it changes."""
    codeversion.frontend_code_version.cache_clear()
    base = codeversion.frontend_code_version()
    module = spec.partition(":")[0]
    real = codeversion._source
    source = codeversion.function_source(spec)
    assert source.lstrip().startswith(b"def ") and len(source) > 80
    assert base != _version_with(monkeypatch, _source=lambda name: (
        real(name).replace(source, source.replace(b"def ", b"def  ", 1)) if name == module else real(name)))
    assert base == _version_with(monkeypatch, _source=lambda name: (  # elsewhere in the module
        real(name) + b"\n# changed\n" if name == module else real(name)))


def test_every_data_set_loader_is_part_of_the_feature_version():
    import bitsound.data  # noqa: F401  (registers every data set class)
    from bitsound.data.records import Dataset

    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    loaders = {f"{c.__module__}:{c.__qualname__}.load" for c in [Dataset, *subclasses(Dataset)]
               if "load" in vars(c)}
    assert len(loaders) >= 3 and loaders <= set(codeversion.FEATURE_FUNCTIONS)
    with pytest.raises(LookupError, match="defines no Dataset.missing"):
        codeversion.function_source("bitsound.data.records:Dataset.missing")


@pytest.mark.parametrize("library", [*codeversion.FEATURE_LIBRARIES, "libsndfile"])
def test_library_versions_are_part_of_the_feature_version(library, monkeypatch):
    """An upgrade of a decoder, the resampler, numpy or torch never serves the old features."""
    import soundfile

    versions = codeversion.library_versions()
    assert versions["libsndfile"] == soundfile.__libsndfile_version__
    assert versions["torch"] == torch.__version__ and versions["numpy"] == np.__version__
    codeversion.frontend_code_version.cache_clear()
    base = codeversion.frontend_code_version()
    upgraded = {**versions, library: versions[library] + ".1"}
    assert base != _version_with(monkeypatch, library_versions=lambda: upgraded)
    assert base == _version_with(monkeypatch, library_versions=lambda: dict(versions))


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
        fallback = codeversion.frontend_code_version()
        assert fallback.startswith("version:")
        assert "cannot hash the feature code" in caplog.text
        versions = codeversion.library_versions()  # the libraries still count without sources
        monkeypatch.setattr(codeversion, "library_versions", lambda: {**versions, "soxr": "0.0.1"})
        codeversion.frontend_code_version.cache_clear()
        assert codeversion.frontend_code_version() != fallback
    finally:
        codeversion.frontend_code_version.cache_clear()
