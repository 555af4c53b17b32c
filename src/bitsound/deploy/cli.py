"""The ``bitsound deploy`` command (registered by :mod:`bitsound.cli`)."""

from __future__ import annotations

import json
from pathlib import Path

from bitsound.deploy.codegen import TARGETS
from bitsound.deploy.qemu import POPCOUNTS
from bitsound.errors import ConfigError


def add_parser(sub) -> None:
    p = sub.add_parser(
        "deploy",
        help="generate a C project of a model for a microcontroller (Cortex-M4) or the "
        "host, build it, run it on audio files and measure it",
    )
    p.add_argument("--model", required=True, metavar="DIR/model.pt|FILE.bsnn")
    p.add_argument(
        "--target",
        default="cortex-m4",
        choices=TARGETS,
        help="cortex-m4: arm-none-eabi-gcc, run in qemu-system-arm -M mps2-an386; host: the host compiler",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="the generated project's folder")
    p.add_argument(
        "--run",
        nargs="+",
        default=None,
        metavar="FILE",
        help="run the built project on every window of these audio files and compare with the host engine",
    )
    p.add_argument(
        "--report",
        action="store_true",
        help="measure flash, RAM and instructions per clip (Cortex-M4 in QEMU, host build, host engine); "
        "on the --run files, else on synthetic windows; writes DIR/report.json",
    )
    p.add_argument(
        "--popcount",
        default="usada8",
        choices=list(POPCOUNTS),
        help="how binary convolutions count bits (the Cortex-M4 has no popcount instruction)",
    )
    p.add_argument(
        "--acc",
        default=None,
        choices=["float", "double"],
        help="sums of the float convolutions (default: float on the Cortex-M4, where double is emulated in "
        "software; double on the host): double gives the host engine's logits bit for bit",
    )
    p.add_argument(
        "--no-frontend",
        action="store_true",
        help="deploy the network alone (bitsound_network_run takes features)",
    )
    p.add_argument("--no-build", action="store_true", help="only write the project")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=cmd_deploy, quiet=False)


def check_options(args) -> None:
    """A ConfigError for a combination of options that cannot work, before anything is written."""
    if args.run and args.no_build:
        raise ConfigError("--run runs the built project on the files: leave out --no-build")
    if args.run and args.no_frontend:
        raise ConfigError("--run feeds the files' audio to the model's front end: leave out --no-frontend")
    if args.report:
        if args.no_build:
            raise ConfigError("--report measures the built images: leave out --no-build")
        if args.no_frontend:
            raise ConfigError("--report measures the front end with the network: leave out --no-frontend")
        if args.target != "cortex-m4":
            raise ConfigError(
                "--report measures the Cortex-M4 image in QEMU (and the host build beside it): "
                "use --target cortex-m4"
            )


def cmd_deploy(args) -> int:
    from rich.console import Console

    from bitsound.deploy import workflow
    from bitsound.deploy.report import render

    check_options(args)
    out = Console()
    model = workflow.load_graph(args.model)
    build = not args.no_build
    if build:
        workflow.check_target(args.target)
    project, exe = workflow.deploy(
        model,
        args.out,
        target=args.target,
        frontend=not args.no_frontend,
        popcount=args.popcount,
        acc=args.acc,
        build=build,
    )
    result: dict = {
        "project": str(project.out),
        "arena_bytes": project.plan.arena_bytes,
        "peak_live_bytes": project.plan.peak_live_bytes,
        "executable": str(exe) if exe else None,
    }
    if not args.json:
        out.print(
            f"wrote {project.out} ({len(project.plan.steps)} steps, arena {project.plan.arena_bytes:,} B, "
            f"largest live set {project.plan.peak_live_bytes:,} B)" + (f"; built {exe}" if exe else "")
        )
    windows = None
    if args.run:
        fr = workflow.run_files(model, project, exe, args.run, target=args.target, acc=args.acc)
        import numpy as np

        windows = fr.windows
        rows = []
        for f in dict.fromkeys(w[0] for w in fr.where):
            idx = [i for i, w in enumerate(fr.where) if w[0] == f]
            p = np.exp(fr.logits[idx] - fr.logits[idx].max(1, keepdims=True))
            p = (p / p.sum(1, keepdims=True)).mean(0)
            pe = np.exp(fr.engine_logits[idx] - fr.engine_logits[idx].max(1, keepdims=True))
            pe = (pe / pe.sum(1, keepdims=True)).mean(0)
            rows.append(
                {
                    "file": f,
                    "windows": len(idx),
                    "label": fr.labels[int(p.argmax())],
                    "engine_label": fr.labels[int(pe.argmax())],
                    "same_window_labels": int(fr.same_labels[idx].sum()),
                    "bit_exact_windows": int(fr.bit_exact[idx].sum()),
                }
            )
        result["run"] = {"summary": fr.summary(), "files": rows}
        if not args.json:
            from rich.table import Table

            t = Table(title=f"bitsound deploy --run ({args.target})")
            for c in ("file", "windows", "label", "host engine", "same labels", "bit-identical"):
                t.add_column(c)
            for r in rows:
                t.add_row(
                    Path(r["file"]).name,
                    str(r["windows"]),
                    r["label"],
                    r["engine_label"],
                    f"{r['same_window_labels']}/{r['windows']}",
                    f"{r['bit_exact_windows']}/{r['windows']}",
                )
            out.print(t)
            out.print(fr.summary())
    if args.report:
        if windows is None:
            windows = workflow.synthetic_windows(model.recipe)
        rep = workflow.measure(model, project, windows, popcount=args.popcount, acc=args.acc)
        rep.save(Path(project.out) / "report.json")
        result["report"] = rep.model_dump(mode="json")
        if not args.json:
            print(render(rep))  # a wide plain-text table: no console wrapping
            print(f"report: {Path(project.out) / 'report.json'}")
    if args.json:
        print(json.dumps(result))
    return 0


__all__ = ["add_parser", "check_options", "cmd_deploy"]
