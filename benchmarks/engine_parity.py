"""Label parity of a trained model through PyTorch and through the exported engine, clip by clip.

Usage::

    python benchmarks/engine_parity.py --model runs/digits-xnor/model.pt [--isa auto] PATH...

Each PATH is an audio file or a folder (searched recursively for wav/flac/ogg/mp3). The model is
exported to a temporary ``.bsnn``; every clip goes through the recipe's front end and then both
the PyTorch network and the engine on the same features. Prints the numbers of clips and
windows, how many got the same label (per window, and per clip from the mean of its windows'
probabilities), the largest difference of class probabilities, and lists any clip whose label
differs. Exit status 1 on any disagreement.
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
    import torch

    from bitsound.audio.io import load_audio
    from bitsound.engine.classifier import load_classifier
    from bitsound.export import export_packed
    from bitsound.modelfile import load_model
    from bitsound.pipeline import window_audio

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="DIR/model.pt written by bitsound train")
    ap.add_argument("--isa", default="auto")
    ap.add_argument("paths", nargs="+")
    args = ap.parse_args()
    files = audio_files(args.paths)
    model = load_model(args.model)
    audio = model.recipe.audio
    n_windows = same_windows = same_clips = 0
    diff = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        eng = load_classifier(export_packed(model, Path(tmp) / "model.bsnn"), isa=args.isa)
        for path in files:
            wave = load_audio(path, sample_rate=audio.sample_rate, channels=audio.channels)
            windows = torch.from_numpy(np.ascontiguousarray(window_audio(wave, audio.sample_rate, audio)))
            features = eng.features(windows)  # one front-end pass feeds both networks
            with torch.no_grad():
                p_torch = torch.softmax(model.net(torch.from_numpy(features)), -1).numpy()
            p_engine = torch.softmax(torch.from_numpy(eng.engine.predict(features)), -1).numpy()
            n_windows += len(features)
            same_windows += int((p_torch.argmax(1) == p_engine.argmax(1)).sum())
            diff = max(diff, float(np.abs(p_torch - p_engine).max()))
            clip_torch, clip_engine = p_torch.mean(0).argmax(), p_engine.mean(0).argmax()
            same_clips += int(clip_torch == clip_engine)
            if clip_torch != clip_engine:
                print(f"  {path}: torch {model.labels[clip_torch]}, engine {model.labels[clip_engine]}")
    print(f"clips {len(files)}  same clip label {same_clips}  windows {n_windows}  same window label "
          f"{same_windows}  max |p_torch - p_engine| {diff:.2e}  isa {eng.engine.isa}")
    return 0 if same_clips == len(files) and same_windows == n_windows else 1


if __name__ == "__main__":
    sys.exit(main())
