"""ONNX export of trained models against PyTorch on every clip of a data set.

    python benchmarks/onnx_parity.py runs/digits-cnn/model.pt runs/digits-xnor/model.pt \
        [--data fsdd:../shared/data/fsdd] [--group jackson] [--with-frontend]

Exports each model with :func:`bitsound.export.onnx.export_onnx` (at the model's own precision:
an int8 model from ``bitsound compress`` exports as int8 QDQ) into a temporary folder, runs every
window of every clip of the data set (the recipe's own windows; ``--group``: only the clips of
that group, e.g. the speaker a leave-one-group-out run held out) through onnxruntime and through
PyTorch, and prints per model: clips, label agreement, the largest |logit difference| and
how many windows lie beyond the stated tolerance (:class:`bitsound.export.onnx.OnnxCheck`:
1e-4 + 1e-3 max |logit| per window for float / fp16 networks, 1e-4 + INT8_RTOL max |logit| for
int8 ones).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from bitsound.data import open_dataset
from bitsound.export.onnx import compare_onnx, export_onnx
from bitsound.modelfile import load_model
from bitsound.pipeline import window_audio


def windows_of(model, spec: str, group: str | None) -> tuple[torch.Tensor, int]:
    dataset = open_dataset(spec)
    clips = [c for c in dataset.clips if group is None or c.group == group]
    if not clips:
        groups = sorted({str(c.group) for c in dataset.clips})
        raise SystemExit(f"no clip of group {group!r} in {spec}; its groups: {', '.join(groups)}")
    audio = model.recipe.audio
    parts = [window_audio(dataset.load(clip, sample_rate=audio.sample_rate, channels=audio.channels),
                          audio.sample_rate, audio) for clip in clips]
    return torch.from_numpy(np.concatenate(parts)).float(), len(clips)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", metavar="DIR/model.pt")
    parser.add_argument("--data", help="data spec (default: the model's recipe data)")
    parser.add_argument("--group", help="only the clips of this group (speaker, recording, fold)")
    parser.add_argument("--with-frontend", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    print("| model | recipe | precision | input | clips | windows | labels equal | max abs logit diff "
          "| max diff / max abs logit | beyond tol. |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for path in args.models:
        model = load_model(path)
        spec = args.data or model.recipe.data.spec
        waves, n_clips = windows_of(model, spec, args.group)
        with tempfile.TemporaryDirectory() as tmp:
            result = export_onnx(model, Path(tmp) / "model.onnx", with_frontend=args.with_frontend)
            if args.with_frontend:
                module, inputs = model, waves
            else:
                with torch.no_grad():
                    module, inputs = model.net, torch.cat([model.frontend(waves[i:i + 256])
                                                           for i in range(0, len(waves), 256)])
            check = compare_onnx(module, result.path, inputs)
        print(f"| {path} | {model.recipe.name} | {result.precision} | {result.input_name} | {n_clips} | "
              f"{check.n} | {check.n - check.label_mismatches}/{check.n} | {check.max_abs_diff:.2e} | "
              f"{check.max_rel_diff:.2e} | {check.n_beyond_tolerance} ({check.tolerance}) |")


if __name__ == "__main__":
    main()
