"""Snapshot of the complexity report of every registered model (larq's summary snapshots).

Each model in :data:`bitsound.models.MODELS` is built with its default parameters at the
canonical input shape listed in ``CANONICAL_SHAPES`` below, with ``n_classes=10``; its
parameter counts, MACs, binary operations and bytes under every size rule must equal
``tests/snapshots/models.json``. A change in any of them shows up here as a test failure.

When a change is intended, rewrite the snapshot and review the diff before committing:

    BITSOUND_UPDATE_SNAPSHOTS=1 pytest tests/test_model_snapshots.py

A newly registered model fails until it has a canonical shape in ``CANONICAL_SHAPES`` (so no
model escapes the snapshot), and then until the snapshot is rewritten as above.
"""

import json
import math
import os
from pathlib import Path

import pytest
import torch

from bitsound.complexity import RULES, complexity_report
from bitsound.models import MODELS, build_model

SNAPSHOT = Path(__file__).parent / "snapshots" / "models.json"
UPDATE = os.environ.get("BITSOUND_UPDATE_SNAPSHOTS", "") not in ("", "0")
N_CLASSES = 10

# model name -> one example's shape (channels, ...), without the batch axis
CANONICAL_SHAPES: dict[str, tuple[int, ...]] = {
    "cnn2d": (1, 40, 101),  # 40-band log-mel, 1 s at 10 ms hop
    "bcnn2d": (1, 40, 101),
    "thesis": (1, 32, 32),  # seed 000's 32x32 binary mel image
    "thesis_xnor5": (1, 32, 32),
    "thesis_xnor1": (1, 32, 32),
    "thesis_binarynet5": (1, 32, 32),
    "thesis_binarynet1": (1, 32, 32),
    # seed 001: 30,225 samples (1.51 s) at 20 kHz
    "acdnet": (1, 30225),
    "mini-acdnet": (1, 30225),
    "micro-acdnet": (1, 30225),
    "xacdnet": (1, 30225),
    "xmini-acdnet": (1, 30225),
    "xmicro-acdnet": (1, 30225),
    # seed 004: 10 s of two channels at 18 kHz
    "wavecnn-a": (2, 180000),
    "wavecnn-b": (2, 180000),
    "waveresnet-c": (2, 180000),
    "waveresnet-d": (2, 180000),
    # seed 002: 256 log-mel bands x 469 frames of both channels (10 s at 48 kHz, hop 1024)
    "mcdonnell-asc": (2, 256, 469),
    # seed 003: 256 log-mel bands x 334 frames (10 s at 16 kHz, 30 ms hop)
    "bcresnet-asc-1": (1, 256, 334),
    "bcresnet-asc-8": (1, 256, 334),
}

COUNTS = ("params", "nonzero_params", "scale_params", "macs", "bops")


def snapshot_of(name: str) -> dict:
    """The snapshotted part of ``name``'s complexity report at its canonical shape."""
    shape = CANONICAL_SHAPES[name]
    torch.manual_seed(0)
    model = build_model(name, input_shape=shape, n_classes=N_CLASSES)
    report = complexity_report(model, shape)
    return {"input_shape": list(shape), "n_classes": N_CLASSES,
            **{key: report[key] for key in COUNTS},
            "bytes": {rule: report["bytes"][rule] for rule in RULES}}


def _load() -> dict:
    if not SNAPSHOT.exists():
        return {}
    return json.loads(SNAPSHOT.read_text())


@pytest.fixture(scope="module")
def snapshot() -> dict:
    if UPDATE:
        data = {name: snapshot_of(name) for name in MODELS if name in CANONICAL_SHAPES}
        SNAPSHOT.parent.mkdir(parents=True, exist_ok=True)
        SNAPSHOT.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return _load()


@pytest.mark.parametrize("name", list(MODELS))
def test_model_matches_snapshot(name, snapshot):
    if name not in CANONICAL_SHAPES:
        pytest.fail(f"model '{name}' is registered but has no canonical input shape: add it to "
                    f"CANONICAL_SHAPES in tests/{Path(__file__).name}, then run "
                    f"BITSOUND_UPDATE_SNAPSHOTS=1 pytest tests/{Path(__file__).name} and review the diff")
    if name not in snapshot:
        pytest.fail(f"model '{name}' is not in {SNAPSHOT.name}: run BITSOUND_UPDATE_SNAPSHOTS=1 pytest "
                    f"tests/{Path(__file__).name} and review the diff")
    expected, actual = snapshot[name], snapshot_of(name)
    changed = {key: (expected.get(key), actual[key]) for key in actual if key != "bytes"
               and expected.get(key) != actual[key]}
    changed.update({f"bytes.{rule}": (expected["bytes"].get(rule), actual["bytes"][rule]) for rule in RULES
                    if not math.isclose(expected["bytes"].get(rule, math.nan), actual["bytes"][rule],
                                        rel_tol=1e-12)})
    assert not changed, (f"complexity of '{name}' changed (snapshot, now): {changed}; if intended, run "
                         f"BITSOUND_UPDATE_SNAPSHOTS=1 pytest tests/{Path(__file__).name}")


def test_snapshot_has_no_stale_models(snapshot):
    stale = sorted(set(snapshot) - set(MODELS))
    assert not stale, (f"{SNAPSHOT.name} holds models that are no longer registered: {stale}; run "
                       f"BITSOUND_UPDATE_SNAPSHOTS=1 pytest tests/{Path(__file__).name}")


def test_canonical_shapes_name_registered_models():
    unknown = sorted(set(CANONICAL_SHAPES) - set(MODELS))
    assert not unknown, f"CANONICAL_SHAPES names models that are not registered: {unknown}"
