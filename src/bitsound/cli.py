"""The ``bitsound`` command line: train, cv, evaluate, predict, detect, evaluate-events, mix, export,
report, list, data check."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table

from bitsound.errors import BitsoundError, ConfigError, DistributedError

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
    from bitsound.train import distributed

    recipe = load_recipe(args.recipe, overrides=args.set)
    _apply_cli_flags(recipe, args)
    if args.nproc > 1:  # checked here, before N processes start
        distributed.check_config(recipe.train, distributed.DistInfo(world_size=args.nproc))
        return distributed.launch(_without_nproc(args.argv), nproc=args.nproc)
    out_dir = Path(args.out or Path("runs") / recipe.name)
    with distributed.session(recipe.train.device):
        main = distributed.quiet_other_ranks()
        dataset = open_recipe_data(recipe)
        split = holdout_split(recipe, dataset)
        log.info("training %s on %s (%d clips) -> %s", recipe.name, data_name(recipe),
                 len(dataset.clips), out_dir)
        outcome = train_on_split(recipe, dataset, split, out_dir=out_dir, cache=_cache(args),
                                 resume=args.resume, show_progress=not args.quiet and main,
                                 skip_bad=args.skip_bad, workers=args.workers)
    if outcome.result is not None:  # rank 0 (or the only process)
        print_train_summary(outcome.result, out_dir)
    return 0


def _without_nproc(argv: list[str]) -> list[str]:
    """The command line for each process that ``--nproc N`` starts: the same, less --nproc."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def _apply_cli_flags(recipe, args) -> None:
    if args.data:  # one data set replaces the recipe's spec or sources
        recipe.data.sources = []
        recipe.data.spec = args.data
    if getattr(args, "tensorboard", False):  # train and cv only
        recipe.train.tensorboard = True


def print_train_summary(result, out_dir: Path) -> None:
    table = Table(title=f"bitsound train: {result.recipe}", show_header=False)
    table.add_row("data", f"{result.data} ({result.n_train_clips} training clips)")
    split = result.split
    held = result.held_out
    if held is None:
        table.add_row("held out", split.note)
    else:
        table.add_row("held-out split", f"{split.kind} '{split.name}' ({held.n} clips "
                                         f"never trained on)")
        table.add_row("held-out accuracy", _percent(held.accuracy))
        table.add_row("balanced accuracy", _percent(held.balanced_accuracy))
        table.add_row("macro F1", _percent(held.macro_f1))
        for row in held.per_device or []:
            seen = {True: "seen", False: "unseen", None: "?"}[row.seen]
            table.add_row(f"  device {row.device} ({seen})", f"{_percent(row.accuracy)} of {row.n} clips")
    table.add_row("parameters", f"{result.params:,}")
    _add_skipped_row(table, result.clip_check)
    table.add_row("best epoch", f"{result.best_epoch} of {result.epochs_run} run")
    table.add_row("training time", f"{result.train_seconds} s")
    table.add_row("model", str(out_dir / "model.pt"))
    table.add_row("report", f"{out_dir / 'metrics.json'}  (log: {out_dir / 'log.jsonl'})")
    out_console.print(table)


def _add_skipped_row(table: Table, clip_check: dict | None) -> None:
    if clip_check and clip_check["n_bad"]:
        table.add_row("left out (--skip-bad)", f"{clip_check['n_bad']} unreadable clip(s), "
                      "listed in the log and the JSON report")


def cmd_cv(args) -> int:
    from bitsound.experiment import cross_validate, open_recipe_data
    from bitsound.recipes import load_recipe
    from bitsound.train import distributed

    recipe = load_recipe(args.recipe, overrides=args.set)
    _apply_cli_flags(recipe, args)
    if args.nproc > 1:
        distributed.check_config(recipe.train, distributed.DistInfo(world_size=args.nproc))
        return distributed.launch(_without_nproc(args.argv), nproc=args.nproc)
    out_dir = Path(args.out or Path("runs") / f"{recipe.name}-cv")
    with distributed.session(recipe.train.device):
        main = distributed.quiet_other_ranks()
        summary = cross_validate(recipe, open_recipe_data(recipe), out_dir=out_dir,
                                 cache=_cache(args), show_progress=not args.quiet and main,
                                 skip_bad=args.skip_bad, workers=args.workers)
    if summary is None:  # not rank 0 of a distributed run
        return 0
    table = Table(title=f"bitsound cv: {recipe.name} ({summary.split})")
    for column in ("held out", "clips", "accuracy", "balanced acc.", "macro F1"):
        table.add_column(column)
    for row in summary.folds:
        table.add_row(row.held_out, str(row.n), _percent(row.accuracy),
                      _percent(row.balanced_accuracy), _percent(row.macro_f1))
    table.add_row("mean", "", f"{_percent(summary.mean_accuracy)} ± "
                  f"{100 * summary.std_accuracy:.2f}", "", "")
    out_console.print(table)
    n_bad = summary.clip_check["n_bad"] if summary.clip_check else 0
    if n_bad:
        out_console.print(f"left out (--skip-bad): {n_bad} unreadable clip(s), listed in the log "
                          "and cv.json")
    out_console.print(f"report: {out_dir / 'cv.json'}")
    return 0


def cmd_study(args) -> int:
    from bitsound.recipes import study_path
    from bitsound.study import COLUMNS, cell, device_names, load_study, run_study

    study = load_study(study_path(args.study))
    out_dir = Path(args.out or Path("runs") / study.study)
    result = run_study(study, out_dir=out_dir, cache=_cache(args), extra_overrides=args.set,
                       data=args.data, show_progress=not args.quiet, skip_bad=args.skip_bad)
    table = Table(title=f"bitsound study: {study.study}")
    for column in COLUMNS:
        table.add_column(column.replace("_", " "))
    for row in result.rows:
        table.add_row(*(cell(k, getattr(row, k)) for k in COLUMNS))
    out_console.print(table)
    devices = device_names(result)
    if devices:  # held-out accuracy per recording device (seed 003 Table 3)
        seen = {d.device: d.seen for row in result.rows for d in row.per_device}
        per = Table(title="held-out accuracy per device")
        for column in ["row", *(f"{d}{' (unseen)' if seen.get(d) is False else ''}" for d in devices),
                       "overall"]:
            per.add_column(column)
        for row in result.rows:
            accs = {d.device: d.accuracy for d in row.per_device}
            per.add_row(row.row, *(cell("accuracy", accs.get(d)) for d in devices),
                        cell("accuracy", row.val_accuracy))
        out_console.print(per)
    out_console.print(f"tables: {out_dir / 'study.csv'}, {out_dir / 'study.md'} "
                      f"(result: {out_dir / 'study.json'})")
    return 0


def cmd_evaluate(args) -> int:
    from bitsound.experiment import evaluate_model
    from bitsound.modelfile import load_model

    model = load_model(args.model)
    result = evaluate_model(model, args.data, cache=_cache(args),
                            show_progress=not (args.quiet or args.json), skip_bad=args.skip_bad,
                            model_path=str(args.model), workers=args.workers)
    if args.out:
        result.save(Path(args.out))
    if args.json:
        print(json.dumps(result.to_json()))
        return 0
    table = Table(title=f"bitsound evaluate: {args.model} on {args.data}", show_header=False)
    table.add_row("clips", str(result.n))
    table.add_row("accuracy", _percent(result.accuracy))
    table.add_row("balanced accuracy", _percent(result.balanced_accuracy))
    table.add_row("macro f1", _percent(result.macro_f1))
    table.add_row("log loss", f"{result.log_loss:.4f}")
    _add_skipped_row(table, result.clip_check)
    if args.out:
        table.add_row("result", str(args.out))
    out_console.print(table)
    if result.per_device:
        out_console.print(device_table([row.model_dump() for row in result.per_device]))
    return 0


def device_table(rows: list[dict]) -> Table:
    """Accuracy per recording device, each marked seen / unseen in the model's training data."""
    marks = {True: "seen", False: "unseen", None: "?"}
    table = Table(title="per device (seen = in the model's training data)")
    for column in ("device", "clips", "accuracy", "in training"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["device"], str(row["n"]), _percent(row["accuracy"]), marks[row["seen"]])
    return table


def cmd_predict(args) -> int:
    from bitsound.experiment import predict_files
    from bitsound.modelfile import load_model

    if bool(args.model) == bool(args.engine):
        err_console.print("[bold red]error:[/] give --model DIR/model.pt or --engine FILE.bsnn "
                          "(one of them)", highlight=False, soft_wrap=True)
        return 2
    if args.engine:
        from bitsound.engine.classifier import load_classifier

        classifier = load_classifier(args.engine, isa=args.isa, threads=args.threads)
    else:
        if args.threads != 1:
            err_console.print("[bold red]error:[/] --threads sets the C engine's threads: use it with "
                              "--engine FILE.bsnn", highlight=False, soft_wrap=True)
            return 2
        classifier = load_model(args.model)
    rows = predict_files(classifier, args.files)
    if args.json:
        from bitsound.report.results import PredictRow

        print(json.dumps([PredictRow.model_validate(row).to_json() for row in rows]))
        return 0
    table = Table(title="bitsound predict")
    for column in ("file", "label", "probability", "windows"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["file"], row["label"], f"{row['probability']:.3f}", str(row["n_windows"]))
    out_console.print(table)
    return 0


def cmd_detect(args) -> int:
    from bitsound.data.events import read_annotations, write_text_atomic
    from bitsound.detect.metrics import write_frame_scores
    from bitsound.detect.run import (
        detections,
        load_classifier,
        load_postprocess,
        score_files,
        tune,
        write_events,
    )
    from bitsound.detect.stream import fix_mmap_threshold

    # peak memory must not drift with the recordings' length (see fix_mmap_threshold)
    fix_mmap_threshold()
    classifier = load_classifier(model=args.model, engine=args.engine, isa=args.isa)
    detect = classifier.recipe.detect
    updates = {k: v for k, v in (("hop", args.hop), ("block", args.block), ("batch", args.batch))
               if v is not None}
    if updates:
        detect = detect.model_validate({**detect.model_dump(), **updates})
    post = load_postprocess(args.postprocess) if args.postprocess else detect.postprocess
    run = score_files(classifier, args.files, detect=detect, device=args.device,
                      show_progress=not args.quiet)
    if args.frames:
        write_frame_scores([f.select([c for c in f.labels if c not in post.ignore])
                            for f in run.frames], args.frames)
    if args.tune:
        ref = read_annotations(args.tune)
        tuned, report = tune(run, ref, base=post, show_progress=not args.quiet)
        write_text_atomic(args.out, json.dumps({"postprocess": tuned.model_dump(mode="json"),
                                                "tuning": report}, indent=1))
        table = Table(title=f"bitsound detect --tune on {report['n_files']} files ({args.tune})")
        for column in ("class", "median s", "threshold", "low", "max gap s", "event F1"):
            table.add_column(column)
        for label, row in report["per_class"].items():
            table.add_row(label, f"{row['median']:.2f}", f"{row['threshold']:.2f}",
                          f"{row['low_threshold']:.2f}", f"{row['max_gap']:.2f}", _percent(row["f1"]))
        out_console.print(table)
        out_console.print(f"event-based F1 on these files: {_percent(report['event_f1_before'])} with "
                          f"the model's settings, {_percent(report['event_f1_after'])} tuned; "
                          f"written to {args.out} (use it with --postprocess)")
        return 0
    found = detections(run, post)
    json_path = Path(args.json) if args.json else Path(args.out).with_suffix(".json")
    write_events(found, tsv=Path(args.out), json_path=json_path, run=run, cfg=post)
    n_events = sum(len(v) for v in found.values())
    n_models = run.settings.get("models", 1)
    members = f" ({n_models} models averaged)" if n_models > 1 else ""
    out_console.print(f"{n_events} events in {len(found)} files -> {args.out} (confidences: "
                      f"{json_path}{', frame scores: ' + args.frames if args.frames else ''}); "
                      f"{run.audio_seconds:.1f} s of audio in {run.wall_seconds:.1f} s through "
                      f"{run.backend}{members}: real-time factor {run.real_time_factor:.4f}")
    return 0


def cmd_evaluate_events(args) -> int:
    from bitsound.data.events import read_annotations
    from bitsound.detect.metrics import evaluate_events, read_frame_scores

    ref = read_annotations(args.ref)
    est = read_annotations(args.est)
    scores = durations = None
    if args.frames:
        scores, durations = read_frame_scores(args.frames)
    labels = None
    if scores:
        first = next(iter(scores.values()))
        labels = [c for c in first.columns if c not in ("onset", "offset")]
    report = evaluate_events(ref, est, labels=labels, durations=durations, scores=scores,
                             collar=args.collar, offset_fraction=args.offset_fraction,
                             resolution=args.resolution)
    if args.json:
        from bitsound.report.results import EventScoresResult

        print(json.dumps(EventScoresResult.model_validate(report).to_json()))
        return 0
    ev, seg = report["event_based"], report["segment_based"]
    table = Table(title=f"bitsound evaluate-events: {args.est} vs {args.ref} ({ev['n_files']} files)")
    for column in ("class", "event F1", "event ER", "segment F1", "segment ER", "ref events",
                   "PSDS1", "PSDS2"):
        table.add_column(column)

    def rate(value):
        return "-" if value is None else f"{value:.3f}"

    for label in ev["per_class"]:
        e, g = ev["per_class"][label], seg["per_class"][label]
        table.add_row(label, _percent(e["f1"]), rate(e["error_rate"]), _percent(g["f1"]),
                      rate(g["error_rate"]), str(e["n_ref"]),
                      rate(report["psds1"]["per_class"].get(label)) if "psds1" in report else "-",
                      rate(report["psds2"]["per_class"].get(label)) if "psds2" in report else "-")
    table.add_row("overall (micro)", _percent(ev["f1"]), rate(ev["error_rate"]), _percent(seg["f1"]),
                  rate(seg["error_rate"]), "",
                  rate(report["psds1"]["psds"]) if "psds1" in report else "-",
                  rate(report["psds2"]["psds"]) if "psds2" in report else "-")
    table.add_row("class average", _percent(ev["macro_f1"]), "", _percent(seg["macro_f1"]), "", "",
                  "", "")
    out_console.print(table)
    out_console.print(f"event-based: onset collar {args.collar} s, offset max({args.collar} s, "
                      f"{100 * args.offset_fraction:.0f} % of length); segment-based: "
                      f"{args.resolution} s segments")
    return 0


def cmd_mix(args) -> int:
    from bitsound.data.mixtures import MixConfig, make_mixtures

    values = {"events_dir": args.events, "backgrounds_dir": args.backgrounds, "seed": args.seed,
              "background_label": args.background_label, "speed_perturb": args.speed_perturb,
              "val_into_train": args.val_into_train}
    n_val = args.n_val
    if args.val_into_train and n_val is None:
        n_val = 0  # the val sources train; a val mixture would share them
    if args.scenes:
        values["scenes"] = [s.strip() for s in args.scenes.split(",") if s.strip()]
    counts = {part: n for part, n in (("train", args.n_train), ("val", n_val),
                                       ("test", args.n_test)) if n is not None}
    if counts:
        values["n_mixtures"] = {**MixConfig.model_fields["n_mixtures"].default, **counts}
    if args.sample_rate:
        values["sample_rate"] = args.sample_rate
    try:
        cfg = MixConfig(**values)
    except ValueError as err:
        raise_config(err)
    summary = make_mixtures(cfg, args.out, show_progress=not args.quiet)
    table = Table(title=f"bitsound mix -> {args.out} (seed {cfg.seed}, {summary['sample_rate']} Hz)")
    for column in ("part", "mixtures", "events", "event files", "background recordings"):
        table.add_column(column)
    for part, row in summary["parts"].items():
        table.add_row(part, str(row["mixtures"]), str(row["events"]), str(row["event_files"]),
                      str(row["recordings"]))
    out_console.print(table)
    folds = "fold train" if cfg.val_into_train else "folds train, val"
    out_console.print(f"data sets: sed:{Path(args.out) / 'dev'} ({folds}) and "
                      f"sed:{Path(args.out) / 'test'}; sources: {Path(args.out) / 'split.json'}")
    return 0


def raise_config(err: Exception):
    from pydantic import ValidationError

    from bitsound.config import format_validation_error
    from bitsound.errors import ConfigError

    if isinstance(err, ValidationError):
        raise ConfigError(format_validation_error(err, source="(bitsound mix options)")
                          .replace("invalid recipe ", "invalid ")) from None
    raise ConfigError(str(err)) from None


def cmd_complexity(args) -> int:
    from bitsound.complexity import check_budget, complexity_report, render_report
    from bitsound.modelfile import build_net, feature_shape, load_model
    from bitsound.report.results import ComplexityResult

    if (args.model is None) == (args.recipe is None):
        raise ConfigError("complexity takes either --model DIR/model.pt (a trained model) or --recipe NAME "
                          "(the recipe's model, built untrained)")
    if args.model is not None:
        model = load_model(args.model)
        report = complexity_report(model.net, feature_shape(model.recipe))
        described = str(args.model)
    else:
        from bitsound.recipes import load_recipe

        recipe = load_recipe(args.recipe, overrides=args.set)
        n_classes = args.classes if args.classes is not None else _recipe_classes(recipe)
        report = complexity_report(build_net(recipe, n_classes), feature_shape(recipe))
        described = f"recipe {recipe.name} (untrained, {n_classes} classes)"
    violations = check_budget(report, max_kb=args.max_kb, max_macs=args.max_macs,
                              max_params=args.max_params, rule=args.rule)
    result = ComplexityResult.model_validate({**report, "model": described,
                                              "budget_violations": violations})
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        render_report(report, out_console)
    for reason in violations:
        err_console.print(f"[bold red]over budget:[/] {reason}", highlight=False, soft_wrap=True)
    return 1 if violations else 0


def _recipe_classes(recipe) -> int:
    """Number of classes of a recipe's data (opened, not decoded)."""
    from bitsound.experiment import open_recipe_data

    try:
        return len(open_recipe_data(recipe).labels)
    except BitsoundError as err:
        raise ConfigError(f"cannot count the classes of recipe '{recipe.name}' ({err}); "
                          f"pass --classes N") from None


def cmd_export(args) -> int:
    if args.format == "bsnn":
        from bitsound.export import export_packed

        if args.with_frontend or args.opset is not None or args.precision is not None:
            err_console.print("[bold red]error:[/] --with-frontend, --opset and --precision apply to "
                              "--format onnx only; the .bsnn file holds the network and the Python "
                              "front end runs before it", highlight=False, soft_wrap=True)
            return 2
        export_packed(args.model, args.out)
        out_console.print(f"exported {args.model} -> {args.out}")
        return 0
    from bitsound.export.onnx import DEFAULT_OPSET, export_onnx

    result = export_onnx(args.model, args.out, with_frontend=args.with_frontend,
                         opset=args.opset or DEFAULT_OPSET, precision=args.precision)
    shape = "x".join(map(str, result.input_shape))
    out_console.print(f"exported {args.model} -> {result.path} (ONNX opset {result.opset}, "
                      f"{result.precision}, input '{result.input_name}' {shape}, output 'logits')")
    out_console.print(f"onnxruntime vs PyTorch: {result.check.describe()}")
    if result.check.binary:
        out_console.print("binary layers run as float Conv on ±1 values here; their size and speed "
                          "need the bit-packed engine (bitsound export --format bsnn)")
    return 0


def cmd_compress(args) -> int:
    from bitsound.compress import compress, load_pipeline
    from bitsound.compress.pipeline import COLUMNS, published_rows, table_rows

    pipeline = load_pipeline(args.recipe, overrides=args.set)
    out_dir = Path(args.out or Path("runs") / f"{Path(args.model).parent.name}-{pipeline.name}")
    result = compress(pipeline, model_path=args.model, out_dir=out_dir, cache=_cache(args),
                      show_progress=not args.quiet, skip_bad=args.skip_bad)
    table = Table(title=f"bitsound compress: {pipeline.name} on {args.model}")
    for column in COLUMNS:
        table.add_column(column)
    for cells in table_rows(result):
        table.add_row(*cells)
    out_console.print(table)
    out_console.print(f"held out: {result.split.kind} '{result.split.name}' ({result.split.n_val} clips); "
                      f"{result.criterion}")
    for system, name, accuracy, size, data in published_rows(result):
        out_console.print(f"published ({system}): {name}: {accuracy}, {size} ({data})", highlight=False)
    out_console.print(f"models: {out_dir}/STAGE/model.pt (last: {out_dir / 'model.pt'}); table: "
                      f"{out_dir / 'compress.md'} (result: {out_dir / 'compress.json'})")
    return 0


def cmd_report(args) -> int:
    from bitsound.report.html import write_report

    runs = write_report([Path(p) for p in args.runs], Path(args.out), title=args.title,
                        measure_engine=not args.no_engine)
    out_console.print(f"report of {len(runs)} runs -> {args.out}")
    return 0


def cmd_bench_layer(args) -> int:
    from bitsound.engine.bench import bench_layer

    result = bench_layer(args.cin, args.cout, args.size, args.kernel, threads=args.threads,
                         isa=args.isa, bconv=args.bconv)
    if args.json:
        from bitsound.report.results import LayerBenchResult

        print(json.dumps(LayerBenchResult.model_validate(result).to_json()))
        return 0
    threads = f"{args.threads} thread{'s' if args.threads > 1 else ''}"
    table = Table(title=f"binary conv {args.cin}->{args.cout}, {args.kernel}x{args.kernel}, "
                        f"{result['size'][0]}x{result['size'][1]}, {threads} each ({result['cpu']})",
                  show_header=False)
    table.add_row("torch fp32 conv2d", f"{result['torch_ms']:.3f} ms")
    table.add_row(f"engine binary conv ({result['isa']}, {result['form']} form)",
                  f"{result['engine_ms']:.3f} ms")
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
    elif args.what == "quantizers":
        from bitsound.nn import QUANTIZERS

        rows = QUANTIZERS.describe()
    elif args.what == "ops":
        from bitsound.graph.opcodes import OPS

        rows = [(op.name, op.doc) for op in OPS]
    elif args.what == "datasets":
        from bitsound.data import list_datasets

        rows = list_datasets()
    elif args.what == "pipelines":
        from bitsound.recipes import list_pipelines

        rows = list_pipelines()
    else:
        from bitsound.recipes import list_recipes

        rows = list_recipes()
    table = Table(title=f"bitsound {args.what}")
    table.add_column("name")
    table.add_column("description")
    for name, description in rows:  # descriptions hold shapes such as [cout][kh]: not markup
        table.add_row(escape(name), escape(description))
    out_console.print(table)
    return 0


def cmd_data_check(args) -> int:
    from bitsound.data import check_dataset, open_dataset

    report = check_dataset(open_dataset(args.spec), decode=args.decode,
                           show_progress=not (args.quiet or args.json))
    if args.json:
        from bitsound.report.results import DataCheckResult

        print(json.dumps(DataCheckResult.model_validate(report.to_dict()).to_json()))
    else:
        report.render(out_console)
    return 1 if report.problems else 0


def cmd_data_cache(args) -> int:
    from bitsound.experiment import cache_views, open_recipe_data
    from bitsound.extract import fill_cache
    from bitsound.recipes import load_recipe

    recipe = load_recipe(args.recipe, overrides=args.set)
    _apply_cli_flags(recipe, args)
    dataset = open_recipe_data(recipe)
    cache = _cache(args)
    report = fill_cache(dataset, cache_views(recipe, dataset), recipe=recipe, cache=cache,
                        workers=args.workers, show_progress=not (args.quiet or args.json))
    rate = report.clips_per_second
    if args.json:
        from bitsound.report.results import DataCacheResult

        print(json.dumps(DataCacheResult.from_report(report, recipe=recipe.name,
                                                     cache=str(cache.root)).to_json()))
    else:
        table = Table(title=f"bitsound data cache: {recipe.name}", show_header=False)
        table.add_row("cache", str(cache.root))
        table.add_row("clips (per view)", str(report.n_clips))
        table.add_row("already cached", str(report.n_cached))
        table.add_row("computed now", f"{report.n_computed} in {report.seconds:.1f} s"
                      + (f" ({rate:.1f} clips/s, {max(report.workers, 1)} process(es))" if rate else ""))
        table.add_row("cannot be read", str(len(report.failures)))
        out_console.print(table)
        for path, problem in report.failures:
            err_console.print(f"[bold red]unreadable:[/] {path}: {problem}", highlight=False,
                              soft_wrap=True)
    return 1 if report.failures else 0


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache", metavar="DIR", help="feature cache folder (default: "
                        "$BITSOUND_CACHE or ~/.cache/bitsound/features)")
    parser.add_argument("--no-cache", action="store_true", help="compute features in memory only")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars or logs")


def _add_skip_bad(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--skip-bad", action="store_true",
                        help="leave out clips whose files cannot be read (found by the check "
                        "before the run) instead of stopping; they are listed in the log and "
                        "the JSON report")


def _add_recipe(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", required=True, metavar="NAME|FILE.yaml",
                        help="a shipped recipe (bitsound list recipes) or a YAML file")
    parser.add_argument("--data", metavar="SPEC", help="data set KIND:PATH, overriding the recipe's")
    parser.add_argument("--out", metavar="DIR", help="output folder (default runs/RECIPE)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe value, e.g. --set train.epochs=5 (repeatable)")
    _add_skip_bad(parser)
    parser.add_argument("--tensorboard", action="store_true",
                        help="write TensorBoard scalars to OUT/tensorboard (train.tensorboard: true)")
    parser.add_argument("--nproc", type=_nproc_arg, default=1, metavar="N",
                        help="train in N processes on this machine with torch.distributed (DDP; "
                        "gloo on CPU, NCCL on CUDA); train.batch_size is the global batch. Across "
                        "machines use torchrun -m bitsound (README)")
    _add_workers(parser)
    _add_common(parser)


def _threads_arg(text: str) -> int:
    """--threads N of the engine commands: an integer in [1, 256]."""
    from bitsound.engine import MAX_THREADS

    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= MAX_THREADS:
        raise argparse.ArgumentTypeError(f"threads must be an integer in [1, {MAX_THREADS}], got {text!r}")
    return n


def _count_arg(option: str, low: int, high: int):
    """An argparse type: a whole number in [low, high] for ``option``."""
    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            n = low - 1
        if not low <= n <= high:
            raise argparse.ArgumentTypeError(f"{option} must be a whole number in [{low}, {high}], "
                                             f"got {text!r}")
        return n
    return parse


#: Processes of ``--nproc`` (started on this machine) and ``--workers``: at most this many.
MAX_PROCESSES = 1024
_nproc_arg = _count_arg("--nproc", 1, MAX_PROCESSES)
_workers_arg = _count_arg("--workers", 0, MAX_PROCESSES)


def _add_workers(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=_workers_arg, default=0, metavar="N",
                        help="compute features not in the cache in N processes (default: this one)")


class _Parser(argparse.ArgumentParser):
    """No abbreviated options (``--npr 2`` would reach the processes --nproc starts, which could
    not strip it): every option is spelt in full. Subcommands' parsers inherit the class."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bitsound", description="Tiny, deployable sound "
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
    _add_skip_bad(p)
    _add_common(p)
    p.set_defaults(func=cmd_study)

    p = sub.add_parser("evaluate", help="score a model on every clip of a data set")
    p.add_argument("--model", required=True, metavar="DIR/model.pt")
    p.add_argument("--data", required=True, metavar="SPEC")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _add_skip_bad(p)
    p.add_argument("--out", metavar="FILE.json",
                   help="also write the result (scores and every clip's prediction) to this file")
    _add_workers(p)
    _add_common(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="label audio files")
    p.add_argument("--model", metavar="DIR/model.pt", help="run the PyTorch model")
    p.add_argument("--engine", metavar="FILE.bsnn",
                   help="run the exported model in the bit-packed C engine")
    p.add_argument("--isa", default="auto", choices=["auto", "avx512", "avx2", "scalar"],
                   help="engine instruction set (default: the fastest this CPU has)")
    p.add_argument("--threads", type=_threads_arg, default=1, metavar="N",
                   help="engine threads: a file's windows are split over them (default 1)")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--json", action="store_true", help="print one JSON list")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("detect", help="sound events in (long) recordings: DCASE TSV, JSON, frame scores")
    p.add_argument("--model", metavar="DIR/model.pt", action="append",
                   help="run the PyTorch model; given more than once, the models' probabilities are "
                   "averaged (an ensemble; the first model's detect settings apply)")
    p.add_argument("--engine", metavar="FILE.bsnn", action="append",
                   help="run the network in the C engine (with --model: the .bsnn exported from it; "
                   "more than once, as --model)")
    p.add_argument("--isa", default="auto", choices=["auto", "avx512", "avx2", "scalar"])
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--out", required=True, metavar="EVENTS.tsv",
                   help="DCASE TSV of the events (with --tune: the tuned settings, JSON)")
    p.add_argument("--json", metavar="FILE.json", help="events with confidences and the throughput "
                   "(default: --out with .json)")
    p.add_argument("--frames", metavar="DIR", help="write per-frame class probabilities "
                   "(DIR/scores/*.tsv, sed_scores_eval format, and DIR/durations.tsv)")
    p.add_argument("--hop", type=float, metavar="S", help="seconds between windows (default: the "
                   "recipe's detect.hop)")
    p.add_argument("--block", type=float, metavar="S", help="seconds decoded at a time")
    p.add_argument("--batch", type=int, metavar="N", help="windows per model call")
    p.add_argument("--postprocess", metavar="FILE", help="post-processing settings (JSON/YAML, e.g. "
                   "from --tune) instead of the recipe's detect.postprocess")
    p.add_argument("--tune", metavar="REF.tsv", help="pick per-class median filter lengths and "
                   "thresholds that maximise event-based F1 against REF.tsv on FILE... (validation "
                   "recordings) and write them to --out")
    p.add_argument("--device", default="cpu", help="torch device of a PyTorch model (cpu, cuda)")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_detect)

    p = sub.add_parser("evaluate-events", help="event- and segment-based F1/ER (sed_eval), PSDS "
                       "(sed_scores_eval)")
    p.add_argument("--ref", required=True, metavar="REF.tsv", help="reference annotations (DCASE TSV, "
                   "Audacity, Raven, .ann)")
    p.add_argument("--est", required=True, metavar="EST.tsv", help="detected events (bitsound detect)")
    p.add_argument("--frames", metavar="DIR", help="frame scores from detect --frames: adds PSDS1/2")
    p.add_argument("--collar", type=float, default=0.2, help="onset collar in seconds (default 0.2)")
    p.add_argument("--offset-fraction", type=float, default=0.2,
                   help="offset collar as a fraction of the event length (default 0.2)")
    p.add_argument("--resolution", type=float, default=1.0, help="segment length, s (default 1)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_evaluate_events, quiet=False)

    p = sub.add_parser("mix", help="synthesize event mixtures (isolated events in real backgrounds) "
                       "with exact annotations, split by event file and background recording")
    p.add_argument("--events", required=True, metavar="DIR", help="one folder per class of isolated "
                   "events, e.g. ../shared/data/dcase2016-task2-events")
    p.add_argument("--backgrounds", required=True, metavar="DIR", help="TUT scenes layout (audio/ + "
                   "meta.txt), e.g. ../shared/data/tut2017-scenes")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--scenes", metavar="A,B,...", help="background scenes to use (default all)")
    p.add_argument("--n-train", type=int)
    p.add_argument("--n-val", type=int)
    p.add_argument("--n-test", type=int)
    p.add_argument("--sample-rate", type=int, help="Hz (default: the backgrounds' rate)")
    p.add_argument("--background-label", default="background",
                   help="label of the time no event covers (default background)")
    p.add_argument("--speed-perturb", type=float, default=0.0, metavar="S",
                   help="training mixtures only: play each event at a random speed in [1-S, 1+S] "
                   "(pitch and duration together; default 0: as recorded)")
    p.add_argument("--val-into-train", action="store_true",
                   help="for a final model, once every choice is made on val: training mixtures "
                   "also use the val part's event files and recordings (the test part stays the "
                   "same); no val mixtures are made, so train it with data.split.kind=none")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_mix)

    p = sub.add_parser("complexity", help="parameters, bytes, MACs and binary ops of a model")
    p.add_argument("--model", metavar="DIR/model.pt", help="a trained model")
    p.add_argument("--recipe", metavar="NAME|FILE.yaml", help="a recipe's model, built untrained")
    p.add_argument("--classes", type=int, metavar="N", help="with --recipe: classes (default: its data's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="with --recipe: override")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--max-kb", type=float, metavar="KB", help="budget: model size in KB (1024 B)")
    p.add_argument("--max-macs", type=float, metavar="N", help="budget: float MACs, e.g. 30e6")
    p.add_argument("--max-params", type=int, metavar="N", help="budget: number of parameters")
    p.add_argument("--rule", default="storage", choices=["storage", "dcase2020", "dcase2022"],
                   help="which size rule --max-kb applies to (default storage)")
    p.set_defaults(func=cmd_complexity, quiet=False)

    p = sub.add_parser("export", help="export a trained model: .bsnn for the C engine, or ONNX")
    p.add_argument("--model", required=True, metavar="DIR/model.pt")
    p.add_argument("--out", required=True, metavar="FILE.bsnn|FILE.onnx")
    p.add_argument("--format", default="bsnn", choices=["bsnn", "onnx"],
                   help="bsnn: packed model for the bit-packed engine (default); onnx: any ONNX runtime")
    p.add_argument("--with-frontend", action="store_true",
                   help="onnx: include the front end (input: waveform windows instead of features)")
    p.add_argument("--opset", type=int, metavar="N", help="onnx: opset (default 18; >= 17 with the "
                   "front end)")
    p.add_argument("--precision", choices=["float", "fp16", "int8"],
                   help="onnx: default the model's own (a compressed int8 model exports as int8 QDQ, an fp16 "
                   "one with FLOAT16 weights); fp16 rounds a float model's weights; int8 of a float model "
                   "is refused (needs calibration: bitsound compress --recipe int8-ptq)")
    p.set_defaults(func=cmd_export, quiet=False)

    from bitsound.deploy.cli import add_parser as add_deploy_parser

    add_deploy_parser(sub)  # bitsound deploy

    p = sub.add_parser("compress", help="prune, quantize, distill a trained model through a pipeline "
                       "of stages, each saved and measured")
    p.add_argument("--model", required=True, metavar="DIR/model.pt")
    p.add_argument("--recipe", required=True, metavar="PIPELINE|FILE.yaml",
                   help="a shipped pipeline (bitsound list pipelines) or a pipeline YAML file")
    p.add_argument("--out", metavar="DIR", help="output folder (default runs/MODELDIR-PIPELINE)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a pipeline value, e.g. --set stages.0.per_step=0.2 (repeatable)")
    _add_skip_bad(p)
    _add_common(p)
    p.set_defaults(func=cmd_compress)

    p = sub.add_parser("report", help="one self-contained HTML page over train, cv and study runs")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="folders written by train, cv or study")
    p.add_argument("--out", required=True, metavar="report.html")
    p.add_argument("--title", default="bitsound report")
    p.add_argument("--no-engine", action="store_true",
                   help="do not time the .bsnn files found beside the runs")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("bench", help="speed benchmarks of the engine")
    bench_sub = p.add_subparsers(dest="bench_command", required=True, metavar="WHAT")
    b = bench_sub.add_parser("layer", help="one binary conv vs torch fp32 conv2d, same run")
    b.add_argument("--cin", type=int, default=256)
    b.add_argument("--cout", type=int, default=256)
    b.add_argument("--size", default="32x32", metavar="HxW")
    b.add_argument("--kernel", type=int, default=3)
    b.add_argument("--threads", type=_threads_arg, default=1, metavar="N",
                   help="threads of each side: torch's, and the engine's pixel blocks (default 1)")
    b.add_argument("--isa", default="auto", choices=["auto", "avx512", "avx2", "scalar"])
    b.add_argument("--bconv", default="auto", choices=["auto", "word", "serial", "slice"],
                   help="the engine's binary conv form (default: the one it picks for the shape)")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_bench_layer, quiet=False)

    p = sub.add_parser("list", help="list models, quantizers, graph ops, data set kinds or recipes")
    p.add_argument("what", choices=["models", "quantizers", "ops", "datasets", "recipes", "pipelines"])
    p.set_defaults(func=cmd_list, quiet=False)

    p = sub.add_parser("data", help="inspect data sets")
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    c = data_sub.add_parser("check", help="counts per class/fold/group and every unreadable file")
    c.add_argument("spec", metavar="SPEC")
    c.add_argument("--decode", action="store_true",
                   help="decode every file fully (slower): also finds NaN/inf samples and "
                   "streams damaged inside; the default opens each file and checks its structure")
    c.add_argument("--json", action="store_true")
    c.add_argument("-q", "--quiet", action="store_true")
    c.set_defaults(func=cmd_data_check)
    c = data_sub.add_parser("cache", help="compute and cache the features a recipe's training uses "
                            "(in --workers processes; an interrupted run continues where it stopped)")
    c.add_argument("--recipe", required=True, metavar="NAME|FILE.yaml")
    c.add_argument("--data", metavar="SPEC", help="data set KIND:PATH, overriding the recipe's")
    c.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    c.add_argument("--cache", metavar="DIR", help="feature cache folder (default: $BITSOUND_CACHE "
                   "or ~/.cache/bitsound/features)")
    _add_workers(c)
    c.add_argument("--json", action="store_true")
    c.add_argument("-q", "--quiet", action="store_true")
    c.set_defaults(func=cmd_data_cache, no_cache=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # for train/cv --nproc, which start this command line again
    level = logging.WARNING if getattr(args, "quiet", False) else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", datefmt="[%X]",
                        handlers=[RichHandler(console=err_console, show_path=False)], force=True)
    try:
        return args.func(args)
    except BitsoundError as err:
        # rank 0 prints the error that stopped the other ranks of a distributed run
        if not (isinstance(err, DistributedError) and _other_rank()):
            err_console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        if not _other_rank():
            err_console.print("interrupted; rerun train with --resume to continue")
        return 130


def _other_rank() -> bool:
    """This process is a rank other than 0 of a distributed run (torchrun or --nproc)."""
    from bitsound.train.distributed import env_info

    try:
        info = env_info()
    except ConfigError:
        return False
    return info.active and not info.is_main


if __name__ == "__main__":
    sys.exit(main())
