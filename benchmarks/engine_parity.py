"""Label parity of a trained model through PyTorch and through the exported engine, clip by clip.

Usage::

    python benchmarks/engine_parity.py --model runs/digits-xnor/model.pt [--isa auto] PATH...
    python benchmarks/engine_parity.py --model runs/esc10-acdnet/model.pt --held-out [--engine FILE.bsnn]

The model is exported to a temporary ``.bsnn`` (or ``--engine`` names one exported from it). Each
PATH is an audio file or a folder (searched recursively for wav/flac/ogg/mp3); with
``--held-out`` the clips are those the run scored on its held-out split (the ``predictions`` of
the ``metrics.json`` beside the model), so no clip the model trained on is counted. Every clip
goes through the recipe's front end and then both
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


def held_out_clips(metrics: Path, recipe) -> tuple:
    """The clips (records of the recipe's data set) a run scored on its held-out split, in
    order, each once; virtual clips (synthetic data) included."""
    import json

    from bitsound.experiment import open_recipe_data

    if not metrics.is_file():
        raise SystemExit(f"{metrics}: not found; --held-out needs the metrics.json that bitsound train "
                         f"writes beside model.pt")
    predictions = json.loads(metrics.read_text()).get("predictions") or []
    if not predictions:
        raise SystemExit(f"{metrics}: no held-out predictions stored (a run trained on every clip?)")
    dataset = open_recipe_data(recipe)
    by_path = {clip.path: clip for clip in dataset.clips}
    wanted = list(dict.fromkeys(row["clip"] for row in predictions))
    missing = [p for p in wanted if p not in by_path]
    if missing:
        raise SystemExit(f"{len(missing)} held-out clips of {metrics} are not in the recipe's data any more, "
                         f"e.g. {missing[0]}")
    return dataset, [by_path[p] for p in wanted]


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
    ap.add_argument("--engine", metavar="FILE.bsnn",
                    help="the exported model to check (default: export --model to a temporary file)")
    ap.add_argument("--held-out", action="store_true",
                    help="the held-out clips of the run's metrics.json (beside --model)")
    ap.add_argument("paths", nargs="*")
    args = ap.parse_args()
    if bool(args.held_out) == bool(args.paths):
        ap.error("give audio files or folders, or --held-out (not both)")
    model = load_model(args.model)
    audio = model.recipe.audio
    if args.held_out:
        dataset, clips = held_out_clips(Path(args.model).with_name("metrics.json"), model.recipe)
        files = [clip.path for clip in clips]

        def decode(i):
            return dataset.load(clips[i], sample_rate=audio.sample_rate, channels=audio.channels)
    else:
        files = audio_files(args.paths)

        def decode(i):
            return load_audio(files[i], sample_rate=audio.sample_rate, channels=audio.channels)
    n_windows = same_windows = same_clips = 0
    diff = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        eng = load_classifier(args.engine or export_packed(model, Path(tmp) / "model.bsnn"), isa=args.isa)
        for i, path in enumerate(files):
            wave = decode(i)
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
