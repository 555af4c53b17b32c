"""`bitsound deploy` from the command line: write, build for the host, run on real clips, compare."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from bitsound.cli import main

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
HAVE_CC = shutil.which("make") is not None and (shutil.which("cc") or shutil.which("gcc")) is not None


@pytest.fixture()
def thesis_model(tmp_path):
    from bitsound.modelfile import build_net, save_model
    from bitsound.recipes import load_recipe

    r = load_recipe("thesis-xnor")
    torch.manual_seed(0)
    save_model(tmp_path / "run" / "model.pt", recipe=r, labels=["bird", "no_bird"], net=build_net(r, 2))
    return tmp_path / "run" / "model.pt"


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_CC, reason="needs make and a host C compiler")
def test_deploy_host_runs_real_clips_like_the_host_engine(tmp_path, thesis_model, capsys):
    clips = sorted((DATA / "esc10").glob("*/*.ogg"))[:2]
    if not clips:
        pytest.skip(f"no ESC-10 clips under {DATA}")
    rc = main(
        [
            "deploy",
            "--model",
            str(thesis_model),
            "--target",
            "host",
            "--out",
            str(tmp_path / "c"),
            "--run",
            *map(str, clips),
            "--json",
        ]
    )
    assert rc == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert Path(out["executable"]).is_file() and out["arena_bytes"] > 0
    rows = out["run"]["files"]
    assert [Path(r["file"]).name for r in rows] == [c.name for c in clips]
    for r in rows:  # double sums on the host: the engine's logits, bit for bit
        assert r["label"] == r["engine_label"] and r["bit_exact_windows"] == r["windows"] >= 1


def test_deploy_writes_without_building(tmp_path, thesis_model, capsys):
    rc = main(["deploy", "--model", str(thesis_model), "--out", str(tmp_path / "c"), "--no-build"])
    assert rc == 0
    assert (tmp_path / "c" / "model.c").is_file() and (tmp_path / "c" / "Makefile").is_file()
    assert "wrote" in capsys.readouterr().out


def test_deploy_errors_name_the_problem(tmp_path, thesis_model, capsys):
    assert main(["deploy", "--model", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "c")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize(
    "options,words",
    [
        (["--no-build", "--run", "x.wav"], "--run runs the built project.*leave out --no-build"),
        (["--no-frontend", "--run", "x.wav"], "--run feeds.*front end: leave out --no-frontend"),
        (["--no-build", "--report"], "--report measures the built images: leave out --no-build"),
        (["--no-frontend", "--report"], "--report measures the front end.*leave out --no-frontend"),
        (["--target", "host", "--report"], "--report measures the Cortex-M4 image.*--target cortex-m4"),
    ],
)
def test_deploy_refuses_option_combinations_before_any_work(tmp_path, thesis_model, capsys, options, words):
    """Refused up front, as an error on stderr, with nothing written or built."""
    out = tmp_path / "c"
    assert main(["deploy", "--model", str(thesis_model), "--out", str(out), *options]) == 2
    cap = capsys.readouterr()
    assert re.search("error:.*" + words, " ".join(cap.err.split())), cap.err
    assert cap.out == "" and not out.exists()
