"""Bounded fuzzing of the readers of untrusted input (see ``tests/fuzzing.py``).

Each reader must return or raise one BitsoundError naming the file, whatever bytes it gets.
The examples are derandomized, so a run in CI is repeatable; ``benchmarks/fuzz_readers.py``
runs the long, random campaign.
"""

import pytest

pytest.importorskip("hypothesis")

# tests/fuzzing.py: it needs hypothesis, a development extra, so it is not in the package
import fuzzing as fuzz  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402

EXAMPLES = {"model-file-bytes": 150, "model-file-fields": 150, "checkpoint-bytes": 100,
            "checkpoint-fields": 150, "bsnn": 200, "recipe": 150, "recipe-overrides": 150,
            "manifest": 200, "annotations": 300, "cache-file": 200}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(fuzz.TARGETS))
def test_reader_survives_fuzzing(name):
    target = fuzz.TARGETS[name]

    @settings(max_examples=EXAMPLES[name], deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(target.inputs())
    def run(value):
        fuzz.run_target(target, value)

    run()


def test_every_target_has_a_budget():
    assert set(EXAMPLES) == set(fuzz.TARGETS)


def _raise(err):
    raise err


def test_a_reader_that_raises_a_traceback_is_caught():
    """The harness itself can fail: an error that is not a BitsoundError escapes check(), and
    one that names the file by its bare name only (not which folder) is a violation."""
    path = fuzz.workdir() / "x.pt"
    with pytest.raises(KeyError):
        fuzz.check(lambda: {}["missing"], path)
    with pytest.raises(fuzz.ContractViolation, match="does not name the file"):
        fuzz.check(lambda: _raise(fuzz.BitsoundError("bad file")), path)
    with pytest.raises(fuzz.ContractViolation, match="does not name the file"):
        fuzz.check(lambda: _raise(fuzz.BitsoundError("'x.pt' is damaged")), path)
    fuzz.check(lambda: _raise(fuzz.BitsoundError(f"'{path}' is damaged")), path)


def test_fuzzed_files_have_names_of_their_own():
    path = fuzz._write("model.pt", b"")
    assert path.parent == fuzz.workdir() and path.suffix == ".pt"
    assert path.name not in {"model.pt", "x.pt"} and fuzz._TOKEN in path.name


def test_an_override_error_must_name_an_override(monkeypatch):
    assert fuzz.names_an_override("--set 'train': expected key.path=value", ["train"])
    assert fuzz.names_an_override("invalid recipe 'q.yaml':\n  audio.crop.source_seconds: Field "
                                  "required", ["train.epochs=2", "audio.crop.pad=1"])
    assert not fuzz.names_an_override("invalid recipe 'q.yaml'", ["audio.crop.pad=1"])
    assert not fuzz.names_an_override("invalid recipe 'q.yaml':\n  model.name: unknown",
                                      ["audio.crop.pad=1"])
    fuzz.recipe_overrides(["train.epochs=2"])  # valid: nothing raised
    fuzz.recipe_overrides(["train.epochs=abc"])  # an error naming train.epochs

    import bitsound.recipes as recipes
    from bitsound.errors import ConfigError

    # a reader whose error names nothing breaks the contract
    monkeypatch.setattr(recipes, "load_recipe", lambda *a, **k: _raise(ConfigError("the recipe is invalid")))
    with pytest.raises(fuzz.ContractViolation, match="names none of the overrides"):
        fuzz.recipe_overrides(["train.epochs=abc"])


def test_seeds_are_valid_inputs():
    """The mutations start from inputs the readers accept."""
    from bitsound.data import FeatureCache
    from bitsound.export.bsnn import read
    from bitsound.modelfile import load_model

    root = fuzz.workdir()
    (root / "ok.pt").write_bytes(fuzz.seed_model_file())
    assert load_model(root / "ok.pt").labels == ["a", "b"]
    (root / "ok.bsnn").write_bytes(fuzz.seed_bsnn())
    read(root / "ok.bsnn")
    fuzz.cache_file(fuzz.seed_cache_file())
    assert FeatureCache(root / "cache").get("ab" + "0" * 62).shape == (2, 3, 4)


def _hostile(tmp_path, edit) -> str:
    """A model file edited like a hostile one; the error load_model gives for it."""
    import copy

    import torch

    from bitsound.errors import BitsoundError
    from bitsound.modelfile import load_model

    data = copy.deepcopy(fuzz.seed_model_dict())
    edit(data)
    path = tmp_path / "hostile.pt"
    torch.save(data, path)
    with pytest.raises(BitsoundError) as err:
        load_model(path)
    assert str(path) in str(err.value)
    return str(err.value)


def test_model_files_asking_for_huge_inputs_are_refused(tmp_path):
    """Found by the long campaign: a recipe field set to a huge size made loading allocate all
    memory (the model's example input, the mel filter bank) until the OOM killer struck."""
    def long_input(data):
        data["recipe"]["audio"]["clip_seconds"] = 1_000_000
    assert "clip_seconds: Input should be less than or equal to 3600" in _hostile(tmp_path, long_input)

    def long_at_high_rate(data):
        data["recipe"]["audio"].update(clip_seconds=3000, sample_rate=500_000)
    assert "samples per clip" in _hostile(tmp_path, long_at_high_rate)

    def many_mels(data):
        data["recipe"]["frontend"]["n_mels"] = 10**7
    assert "n_mels" in _hostile(tmp_path, many_mels)


def test_a_version_1_file_asking_for_a_huge_network_is_refused_before_building_it(tmp_path, monkeypatch):
    import torch

    import bitsound.modelfile as modelfile

    fuzz.seed_model_dict()  # the valid file the edits start from, built before the patch
    built_on = []
    real = modelfile.build_net

    def build_net(recipe, n_classes):
        net = real(recipe, n_classes)
        built_on.append(next(net.parameters()).device.type)
        return net

    monkeypatch.setattr(modelfile, "build_net", build_net)

    def huge_v1(data):
        data["version"] = 1
        del data["module_spec"]
        data["recipe"]["model"]["params"]["channels"] = [4096, 4096, 4096]

    assert "do not fit the network its recipe builds" in _hostile(tmp_path, huge_v1)
    assert built_on == ["meta"]  # only the probe, which allocates nothing
    assert torch.get_default_device().type == "cpu"


def test_a_version_1_network_that_cannot_be_checked_is_refused_not_built(tmp_path, monkeypatch):
    """The memory guard has no silent way round: a network that cannot be built on the meta
    device (so its size cannot be checked) is refused with the file named, never built for real."""
    import bitsound.modelfile as modelfile

    fuzz.seed_model_dict()  # built before the patch
    built = []

    def build_net(recipe, n_classes):
        built.append(1)
        raise NotImplementedError("an operation the meta device lacks")

    monkeypatch.setattr(modelfile, "build_net", build_net)

    def v1(data):
        data["version"] = 1
        del data["module_spec"]

    message = _hostile(tmp_path, v1)
    assert "cannot be built (NotImplementedError: an operation the meta device lacks)" in message
    assert built == [1]  # the probe only


def test_a_version_1_recipe_that_builds_no_network_names_the_file(tmp_path):
    def bad_model(data):
        data["version"] = 1
        del data["module_spec"]
        data["recipe"]["model"]["params"]["channels"] = "many"

    message = _hostile(tmp_path, bad_model)
    assert "the file is damaged" in message and message.count("hostile.pt") == 1


def test_the_scratch_folder_is_removed_when_the_process_ends():
    import subprocess
    import sys
    from pathlib import Path

    here = Path(__file__).resolve().parent
    done = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(here)!r}); "
                           "import fuzzing; root = fuzzing.workdir(); fuzzing._write('model.pt', b'x'); "
                           "print(root)"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    root = Path(done.stdout.strip())
    assert root.name.startswith("bitsound-fuzz-") and not root.exists()
