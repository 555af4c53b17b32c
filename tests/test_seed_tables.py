"""The seeds' published sizes and operation counts, printed by ``bitsound complexity --recipe``.

Every number comes from ``bitsound complexity --recipe NAME --classes N --json``: the recipe's model
built untrained. Seed 001 Tables 1 and 4 are for ESC-50 (50 classes), seed 004 Table 1 for the
three scene classes. Where our count differs from a seed's table the test states both and the
reason is in the model module's docstring (:mod:`bitsound.models.acdnet`).
"""

from __future__ import annotations

import json

import pytest

from bitsound.cli import main


def complexity(capsys, recipe: str, classes: int) -> dict:
    capsys.readouterr()
    assert main(["complexity", "--recipe", recipe, "--classes", str(classes), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def formula(seed: dict) -> float:
    return seed["a"] + (seed["x"] - (seed["a"] + seed["b"])) / 64 + seed["b"]


def test_acdnet_is_seed_001_table_1(capsys):
    report = complexity(capsys, "esc10-acdnet", 50)
    assert report["params"] == 4_735_378 and round(report["params"] / 1e6, 2) == 4.74
    # Table 1's size: every parameter at 32 bits, batch-norm included (our dcase2022 rule)
    assert round(report["kb"]["dcase2022"]) == 18498
    # Table 1's 544 M FLOPs: the authors' count (MACs, activations, pooling reads)
    assert round(report["flops_seed001"]["x"] / 1e6) == 544
    assert report["bops"] == 0


def test_micro_acdnet_is_the_authors_code_and_table_1s_size_and_flops(capsys):
    report = complexity(capsys, "esc10-micro-acdnet", 50)
    # the authors' code builds 131,474 parameters (Table 1 prints 0.31 M beside 514 KB)
    assert report["params"] == 131_474
    assert round(report["kb"]["dcase2022"]) == 514
    assert round(report["flops_seed001"]["x"] / 1e6, 2) == 14.82


def test_xacdnet_is_table_4(capsys):
    float_report = complexity(capsys, "esc10-acdnet", 50)
    report = complexity(capsys, "esc10-xacdnet", 50)
    assert round(report["params"] / 1e6, 2) == 4.74
    # Table 4's 578 KB counts every parameter at one bit (4.74 M / 8 / 1024, XNOR-Net's estimate);
    # what inference stores is more: conv1 and the classifier in float, batch-norm, the alpha scales
    assert 620 < report["kb"]["storage"] < 630
    seed = report["flops_seed001"]
    assert seed["x"] == float_report["flops_seed001"]["x"]  # x is the full-precision network's
    assert seed["flops"] == pytest.approx(formula(seed))
    # the formula on this network gives 9.58 M; Table 4's 8.88 M is what the authors' calculator
    # prints (it skips the float conv1 and counts conv2 before the stride; see models/acdnet.py)
    assert round(seed["flops"] / 1e6, 2) == 9.58
    assert report["bops"] > 0.99 * (report["macs"] + report["bops"])


def test_mini_acdnet_is_fitted_to_table_4(capsys):
    capsys.readouterr()
    assert main(["complexity", "--recipe", "esc10-acdnet", "--set", "model.name=mini-acdnet",
                 "--classes", "50", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    # Table 4: 1.05 M parameters, 112 M FLOPs (the authors' configuration is unpublished)
    assert report["params"] == 1_016_905
    assert abs(report["params"] / 1.05e6 - 1) < 0.035
    assert abs(report["flops_seed001"]["x"] / 112e6 - 1) < 0.01
    assert main(["complexity", "--recipe", "esc10-acdnet", "--set", "model.name=xmini-acdnet",
                 "--classes", "50", "--json"]) == 0
    xmini = json.loads(capsys.readouterr().out)
    # Table 4: 128.5 KB, its 1.05 M parameters at one bit each. Ours at one bit per parameter is
    # 124.1 KB, not 128.5: the authors' configuration is unpublished and our fitted one has
    # 1,016,711 parameters (3.2 % under 1.05 M; 128.5 KB would be 1,052,672), so 3.4 % fewer KB
    assert xmini["params"] == 1_016_711
    assert round(xmini["params"] / 8 / 1024, 1) == 124.1
    assert abs(xmini["params"] / 8 / 1024 / 128.5 - 1) < 0.035


@pytest.mark.parametrize(("recipe", "params"), [
    ("scenes3-wavecnn-a", 13_632), ("scenes3-wavecnn-b", 30_080),
    ("scenes3-waveresnet-c", 398_400), ("scenes3-waveresnet-d", 373_696)])
def test_wave_models_are_seed_004_table_1(capsys, recipe, params):
    report = complexity(capsys, recipe, 3)
    assert report["params_by_rule"]["dcase2020"] == params
    # every parameter a float32: the dcase2020 bytes are the same count
    assert report["bytes"]["dcase2020"] == 4 * params
    assert report["input_shape"] == [2, 180000]
