"""Microcontroller deployment, measured: flash, RAM and instructions per clip of each model.

For each model (a trained ``DIR/model.pt``, or a recipe name: that recipe's network with random
weights, which costs the same instructions and bytes, only its labels are meaningless) this
writes and builds its C project, runs it in QEMU (Cortex-M4F, mps2-an386) on real clips of the
model's kind, compares every window with the host engine and prints the report of
``bitsound deploy --report``: the Cortex-M4 image, the host build of the same code, the host
engine; instructions per step; the network's instructions with each way of counting bits.

    python benchmarks/bench_deploy.py                       # the three models of the issue, random weights
    python benchmarks/bench_deploy.py runs/deploy-thesis-xnor/model.pt --clips 30

Needs the Cortex-M4 toolchain (``make mcu-deps``). About a minute per model on 2 cores.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CLIPS = {  # real clips of each model's kind
    "binary_image": lambda: sorted((DATA / "xeno-canto-acrocephalus" / "mp3").glob("*.mp3"))[:2]
    + sorted((DATA / "esc10").glob("*/*.ogg"))[::40],
    "logmel": lambda: sorted((DATA / "fsdd" / "recordings").glob("*.wav"))[::100],
    "raw": lambda: sorted((DATA / "esc10").glob("*/*.ogg"))[::40],
}
DEFAULT = ["thesis-xnor", "digits-xnor-kd", "esc10-xmicro-acdnet"]


def random_model(recipe_name: str, out: Path) -> Path:
    from bitsound.modelfile import build_net, save_model
    from bitsound.recipes import load_recipe

    r = load_recipe(recipe_name)
    n = {"thesis-xnor": 2}.get(recipe_name, 10)
    torch.manual_seed(0)
    net = build_net(r, n).eval()
    for m in net.modules():  # batch-norm statistics away from the identity
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            with torch.no_grad():
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    path = out / recipe_name / "model.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_model(path, recipe=r, labels=[f"c{i}" for i in range(n)], net=net)
    return path


def main() -> None:
    from bitsound.deploy import workflow
    from bitsound.deploy.report import render

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*", default=DEFAULT, help="DIR/model.pt files or recipe names")
    ap.add_argument("--clips", type=int, default=20, help="windows per model (at most)")
    ap.add_argument("--out", type=Path, default=None, help="projects folder (default: temporary)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        for spec in args.models:
            path = Path(spec) if spec.endswith((".pt", ".bsnn")) else random_model(spec, root / "models")
            model = workflow.load_graph(path)
            project, exe = workflow.deploy(model, root / "projects" / model.name, target="cortex-m4")
            files = [str(f) for f in CLIPS[model.recipe.frontend.kind]()]
            if files:
                fr = workflow.run_files(model, project, exe, files, target="cortex-m4")
                windows = fr.windows[: args.clips]
                print(fr.summary())
            else:
                windows = workflow.synthetic_windows(model.recipe)
                print(f"no clips under {DATA}: synthetic windows")
            rep = workflow.measure(model, project, windows)
            print(render(rep))
            print(f"(weights: {'trained, ' + str(path) if spec.endswith('.pt') else 'random'}; "
                  f"mean of {len(windows)} windows; arena {project.plan.arena_bytes:,} B)\n")


if __name__ == "__main__":
    main()
