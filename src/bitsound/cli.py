"""The ``bitsound`` command line: train, cv, evaluate, predict, list, data check."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from bitsound.errors import BitsoundError

err_console = Console(stderr=True)
out_console = Console()
log = logging.getLogger("bitsound")


def _cache(args):
    from bitsound.data import FeatureCache, default_cache_root

    if args.no_cache:
        return None
    return FeatureCache(Path(args.cache) if args.cache else default_cache_root())


def _percent(value) -> str:
    return "-" if value is None else f"{100 * value:.2f} %"


def cmd_train(args) -> int:
    from bitsound.experiment import data_name, holdout_split, open_recipe_data, train_on_split
    from bitsound.recipes import load_recipe

    recipe = load_recipe(args.recipe, overrides=args.set)
    if args.data:  # one data set replaces the recipe's spec or sources
        recipe.data.sources = []
        recipe.data.spec = args.data
    out_dir = Path(args.out or Path("runs") / recipe.name)
    dataset = open_recipe_data(recipe)
    split = holdout_split(recipe, dataset)
    log.info("training %s on %s (%d clips) -> %s", recipe.name, data_name(recipe),
             len(dataset.clips), out_dir)
    outcome = train_on_split(recipe, dataset, split, out_dir=out_dir, cache=_cache(args),
                             resume=args.resume, show_progress=not args.quiet)
    print_train_summary(outcome.metrics, out_dir)
    return 0


def print_train_summary(metrics: dict, out_dir: Path) -> None:
    table = Table(title=f"bitsound train: {metrics['recipe']}", show_header=False)
    table.add_row("data", f"{metrics['data']} ({metrics['n_train_clips']} training clips)")
    split = metrics["split"]
    held = metrics["held_out"]
    if held is None:
        table.add_row("held out", split["note"])
    else:
        table.add_row("held-out split", f"{split['kind']} '{split['name']}' ({held['n']} clips "
                                         f"never trained on)")
        table.add_row("held-out accuracy", _percent(held["accuracy"]))
        table.add_row("balanced accuracy", _percent(held["balanced_accuracy"]))
        table.add_row("macro F1", _percent(held["macro_f1"]))
    table.add_row("parameters", f"{metrics['params']:,}")
    table.add_row("best epoch", f"{metrics['best_epoch']} of {metrics['epochs_run']} run")
    table.add_row("training time", f"{metrics['train_seconds']} s")
    table.add_row("model", str(out_dir / "model.pt"))
    table.add_row("report", f"{out_dir / 'metrics.json'}  (log: {out_dir / 'log.jsonl'})")
    out_console.print(table)


def cmd_cv(args) -> int:
    from bitsound.experiment import cross_validate, open_recipe_data
    from bitsound.recipes import load_recipe

    recipe = load_recipe(args.recipe, overrides=args.set)
    if args.data:  # one data set replaces the recipe's spec or sources
        recipe.data.sources = []
        recipe.data.spec = args.data
    out_dir = Path(args.out or Path("runs") / f"{recipe.name}-cv")
    summary = cross_validate(recipe, open_recipe_data(recipe), out_dir=out_dir,
                             cache=_cache(args), show_progress=not args.quiet)
    table = Table(title=f"bitsound cv: {recipe.name} ({summary['split']})")
    for column in ("held out", "clips", "accuracy", "balanced acc.", "macro F1"):
        table.add_column(column)
    for row in summary["folds"]:
        table.add_row(row["held_out"], str(row["n"]), _percent(row["accuracy"]),
                      _percent(row["balanced_accuracy"]), _percent(row["macro_f1"]))
    table.add_row("mean", "", f"{_percent(summary['mean_accuracy'])} ± "
                  f"{100 * summary['std_accuracy']:.2f}", "", "")
    out_console.print(table)
    out_console.print(f"report: {out_dir / 'cv.json'}")
    return 0


def cmd_study(args) -> int:
    from bitsound.recipes import study_path
    from bitsound.study import COLUMNS, cell, load_study, run_study

    study = load_study(study_path(args.study))
    out_dir = Path(args.out or Path("runs") / study.study)
    rows = run_study(study, out_dir=out_dir, cache=_cache(args), extra_overrides=args.set,
                     data=args.data, show_progress=not args.quiet)
    table = Table(title=f"bitsound study: {study.study}")
    for column in COLUMNS:
        table.add_column(column.replace("_", " "))
    for row in rows:
        table.add_row(*(cell(k, row[k]) for k in COLUMNS))
    out_console.print(table)
    out_console.print(f"tables: {out_dir / 'study.csv'}, {out_dir / 'study.md'}")
    return 0


def cmd_evaluate(args) -> int:
    from bitsound.experiment import evaluate_model
    from bitsound.modelfile import load_model

    model = load_model(args.model)
    report = evaluate_model(model, args.data, cache=_cache(args),
                            show_progress=not (args.quiet or args.json))
    if args.json:
        print(json.dumps(report))
        return 0
    table = Table(title=f"bitsound evaluate: {args.model} on {args.data}", show_header=False)
    table.add_row("clips", str(report["n"]))
    for key in ("accuracy", "balanced_accuracy", "macro_f1"):
        table.add_row(key.replace("_", " "), _percent(report[key]))
    table.add_row("log loss", f"{report['log_loss']:.4f}")
    out_console.print(table)
    return 0


def cmd_predict(args) -> int:
    from bitsound.experiment import predict_files
    from bitsound.modelfile import load_model

    if bool(args.model) == bool(args.engine):
        err_console.print("[bold red]error:[/] give --model DIR/model.pt or --engine FILE.bsnn "
                          "(one of them)", highlight=False, soft_wrap=True)
        return 2
    if args.engine:
        from bitsound.engine.classifier import load_classifier

        classifier = load_classifier(args.engine, isa=args.isa)
    else:
        classifier = load_model(args.model)
    rows = predict_files(classifier, args.files)
    if args.json:
        print(json.dumps(rows))
        return 0
    table = Table(title="bitsound predict")
    for column in ("file", "label", "probability", "windows"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["file"], row["label"], f"{row['probability']:.3f}", str(row["n_windows"]))
    out_console.print(table)
    return 0


def cmd_complexity(args) -> int:
    from bitsound.complexity import check_budget, complexity_report, render_report
    from bitsound.modelfile import feature_shape, load_model

    model = load_model(args.model)
    report = complexity_report(model.net, feature_shape(model.recipe))
    report["model"] = str(args.model)
    violations = check_budget(report, max_kb=args.max_kb, max_macs=args.max_macs,
                              max_params=args.max_params, rule=args.rule)
    report["budget_violations"] = violations
    if args.json:
        print(json.dumps(report))
    else:
        render_report(report, out_console)
    for reason in violations:
        err_console.print(f"[bold red]over budget:[/] {reason}", highlight=False, soft_wrap=True)
    return 1 if violations else 0


def cmd_export(args) -> int:
    from bitsound.export import export_packed

    export_packed(args.model, args.out)
    out_console.print(f"exported {args.model} -> {args.out}")
    return 0


def cmd_bench_layer(args) -> int:
    from bitsound.engine.bench import bench_layer

    result = bench_layer(args.cin, args.cout, args.size, args.kernel, threads=args.threads,
                         isa=args.isa)
    if args.json:
        print(json.dumps(result))
        return 0
    table = Table(title=f"binary conv {args.cin}->{args.cout}, {args.kernel}x{args.kernel}, "
                        f"{result['size'][0]}x{result['size'][1]}, 1 thread ({result['cpu']})",
                  show_header=False)
    table.add_row("torch fp32 conv2d", f"{result['torch_ms']:.3f} ms")
    table.add_row(f"engine binary conv ({result['isa']})", f"{result['engine_ms']:.3f} ms")
    table.add_row("speed-up", f"{result['speedup']:.1f}x")
    table.add_row("engine binary MACs/s", f"{result['engine_macs_per_s']:.3g}")
    table.add_row("machine XOR+popcount peak", f"{result['peak_macs_per_s']:.3g} binary MACs/s "
                  f"({result['peak_method']})")
    table.add_row("fraction of peak", f"{100 * result['fraction_of_peak']:.0f} %")
    out_console.print(table)
    return 0


def cmd_list(args) -> int:
    if args.what == "models":
        from bitsound.models import MODELS

        rows = MODELS.describe()
    elif args.what == "datasets":
        from bitsound.data import list_datasets

        rows = list_datasets()
    else:
        from bitsound.recipes import list_recipes

        rows = list_recipes()
    table = Table(title=f"bitsound {args.what}")
    table.add_column("name")
    table.add_column("description")
    for name, description in rows:
        table.add_row(name, description)
    out_console.print(table)
    return 0


def cmd_data_check(args) -> int:
    from bitsound.data import check_dataset, open_dataset

    report = check_dataset(open_dataset(args.spec), show_progress=not (args.quiet or args.json))
    if args.json:
        print(json.dumps(report.to_dict()))
    else:
        report.render(out_console)
    return 1 if report.problems else 0


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache", metavar="DIR", help="feature cache folder (default: "
                        "$BITSOUND_CACHE or ~/.cache/bitsound/features)")
    parser.add_argument("--no-cache", action="store_true", help="compute features in memory only")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars or logs")


def _add_recipe(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", required=True, metavar="NAME|FILE.yaml",
                        help="a shipped recipe (bitsound list recipes) or a YAML file")
    parser.add_argument("--data", metavar="SPEC", help="data set KIND:PATH, overriding the recipe's")
    parser.add_argument("--out", metavar="DIR", help="output folder (default runs/RECIPE)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe value, e.g. --set train.epochs=5 (repeatable)")
    _add_common(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bitsound", description="Tiny, deployable sound "
                                     "classifiers: train, evaluate and export them.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a model from a recipe")
    _add_recipe(p)
    p.add_argument("--resume", action="store_true",
                   help="continue from DIR/checkpoints/last.pt after a crash")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("cv", help="cross-validate a recipe over its folds or groups")
    _add_recipe(p)
    p.set_defaults(func=cmd_cv)

    p = sub.add_parser("study", help="train a study's variations and tabulate them")
    p.add_argument("study", metavar="NAME|FILE.yaml", help="a shipped study or a study file")
    p.add_argument("--data", metavar="SPEC", help="data set KIND:PATH for every row")
    p.add_argument("--out", metavar="DIR", help="output folder (default runs/STUDY)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override applied to every row, e.g. --set train.epochs=2")
    _add_common(p)
    p.set_defaults(func=cmd_study)

    p = sub.add_parser("evaluate", help="score a model on every clip of a data set")
    p.add_argument("--model", required=True, metavar="DIR/model.pt")
    p.add_argument("--data", required=True, metavar="SPEC")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _add_common(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="label audio files")
    p.add_argument("--model", metavar="DIR/model.pt", help="run the PyTorch model")
    p.add_argument("--engine", metavar="FILE.bsnn",
                   help="run the exported model in the bit-packed C engine")
    p.add_argument("--isa", default="auto", choices=["auto", "avx512", "avx2", "scalar"],
                   help="engine instruction set (default: the fastest this CPU has)")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--json", action="store_true", help="print one JSON list")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("complexity", help="parameters, bytes, MACs and binary ops of a model")
    p.add_argument("--model", required=True, metavar="DIR/model.pt")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--max-kb", type=float, metavar="KB", help="budget: model size in KB (1024 B)")
    p.add_argument("--max-macs", type=float, metavar="N", help="budget: float MACs, e.g. 30e6")
    p.add_argument("--max-params", type=int, metavar="N", help="budget: number of parameters")
    p.add_argument("--rule", default="storage", choices=["storage", "dcase2020", "dcase2022"],
                   help="which size rule --max-kb applies to (default storage)")
    p.set_defaults(func=cmd_complexity, quiet=False)

    p = sub.add_parser("export", help="export a trained binary model for the C engine")
    p.add_argument("--model", required=True, metavar="DIR/model.pt")
    p.add_argument("--out", required=True, metavar="FILE.bsnn")
    p.set_defaults(func=cmd_export, quiet=False)

    p = sub.add_parser("bench", help="speed benchmarks of the engine")
    bench_sub = p.add_subparsers(dest="bench_command", required=True, metavar="WHAT")
    b = bench_sub.add_parser("layer", help="one binary conv vs torch fp32 conv2d, same run")
    b.add_argument("--cin", type=int, default=256)
    b.add_argument("--cout", type=int, default=256)
    b.add_argument("--size", default="32x32", metavar="HxW")
    b.add_argument("--kernel", type=int, default=3)
    b.add_argument("--threads", type=int, default=1)
    b.add_argument("--isa", default="auto", choices=["auto", "avx512", "avx2", "scalar"])
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_bench_layer, quiet=False)

    p = sub.add_parser("list", help="list registered models, data set kinds or recipes")
    p.add_argument("what", choices=["models", "datasets", "recipes"])
    p.set_defaults(func=cmd_list, quiet=False)

    p = sub.add_parser("data", help="inspect data sets")
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    c = data_sub.add_parser("check", help="counts per class/fold/group and every unreadable file")
    c.add_argument("spec", metavar="SPEC")
    c.add_argument("--json", action="store_true")
    c.add_argument("-q", "--quiet", action="store_true")
    c.set_defaults(func=cmd_data_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.WARNING if getattr(args, "quiet", False) else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", datefmt="[%X]",
                        handlers=[RichHandler(console=err_console, show_path=False)], force=True)
    try:
        return args.func(args)
    except BitsoundError as err:
        err_console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        err_console.print("interrupted; rerun train with --resume to continue")
        return 130


if __name__ == "__main__":
    sys.exit(main())
