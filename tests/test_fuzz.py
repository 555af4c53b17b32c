"""Bounded fuzzing of the readers of untrusted input (see :mod:`bitsound.fuzz`).

Each reader must return or raise one BitsoundError naming the file, whatever bytes it gets.
The examples are derandomized, so a run in CI is repeatable; ``benchmarks/fuzz_readers.py``
runs the long, random campaign.
"""

import pytest

pytest.importorskip("hypothesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402

from bitsound import fuzz  # noqa: E402

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


def test_a_reader_that_raises_a_traceback_is_caught():
    """The harness itself can fail: an error that is not a BitsoundError escapes check()."""
    path = fuzz.workdir() / "x"
    with pytest.raises(KeyError):
        fuzz.check(lambda: {}["missing"], path)
    with pytest.raises(fuzz.ContractViolation, match="does not name the file"):
        fuzz.check(lambda: (_ for _ in ()).throw(fuzz.BitsoundError("bad file")), path)


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
