"""Label parity of a trained model through PyTorch and through the exported engine, clip by clip.

Usage::

    python benchmarks/engine_parity.py --model runs/digits-xnor/model.pt [--isa auto] PATH...

Each PATH is an audio file or a folder (searched recursively for wav/flac/ogg/mp3). The model is
exported to a temporary ``.bsnn``; every clip goes through the recipe's front end and then both
the PyTorch network and the engine (:func:`bitsound.experiment.predict_files`, the code behind
``bitsound predict``). Prints the number of clips, label agreements and the largest difference
of class probabilities, and lists any clip whose label differs. Exit status 1 on a disagreement.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

AUDIO = {".wav", ".flac", ".ogg", ".mp3"}


def audio_files(paths: list[str]) -> list[str]:
    out: list[str] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(str(f) for f in p.rglob("*") if f.suffix.lower() in AUDIO)
        else:
            out.append(str(p))
    return out


def main() -> int:
    from bitsound.engine.classifier import load_classifier
    from bitsound.experiment import predict_files
    from bitsound.export import export_packed
    from bitsound.modelfile import load_model

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="DIR/model.pt written by bitsound train")
    ap.add_argument("--isa", default="auto")
    ap.add_argument("paths", nargs="+")
    args = ap.parse_args()
    files = audio_files(args.paths)
    model = load_model(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        bsnn = export_packed(model, Path(tmp) / "model.bsnn")
        eng = load_classifier(bsnn, isa=args.isa)
        ref, got = predict_files(model, files), predict_files(eng, files)
    same = [a["label"] == b["label"] for a, b in zip(ref, got, strict=True)]
    probs = lambda row: np.array(list(row["probabilities"].values()))  # noqa: E731
    diff = max((np.abs(probs(a) - probs(b)).max() for a, b in zip(ref, got, strict=True)), default=0.0)
    print(f"clips {len(files)}  same label {sum(same)}  different {len(same) - sum(same)}  "
          f"max |p_torch - p_engine| {diff:.2e}  isa {eng.engine.isa}")
    for a, b, ok in zip(ref, got, same, strict=True):
        if not ok:
            print(f"  {a['file']}: torch {a['label']} ({a['probability']:.4f}), engine {b['label']} "
                  f"({b['probability']:.4f})")
    return 0 if all(same) else 1


if __name__ == "__main__":
    sys.exit(main())
