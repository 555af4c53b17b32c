"""``bitsound compress``: a trained model through a pipeline of stages, each measured.

:func:`compress` loads ``DIR/model.pt``, opens the data it was trained on
(:mod:`bitsound.compress.data`), and runs the pipeline's stages in order on one network:

``prune``     structured (channels removed, :mod:`bitsound.compress.prune`) in steps with
              fine-tuning between them until a size target or an accuracy floor, or
              unstructured (weights masked, masks kept through later fine-tuning);
``finetune``  training through the one loop (:func:`bitsound.train.fit`);
``distill``   the same with the uncompressed model as teacher (:class:`DistillationTask`);
``quantize``  int8 layers, post-training (calibrated) or quantization-aware
              (:mod:`bitsound.compress.quantize`);
``fp16``      half-precision weights for the layers still float.

After each stage (and for the input, row 0) the network is saved as ``OUT/STAGE/model.pt``
(masks folded; it reloads with :func:`bitsound.load_model`) and measured on that saved form:
parameters, non-zero parameters, bytes under each size rule, MACs, binary operations, seed 001's
FLOPs, held-out accuracy, the deciding accuracy, the stage's time and, when the network exports,
the ``.bsnn`` size, the engine's time per example and its agreement with PyTorch (labels,
logits, int8 codes). The rows form a :class:`~bitsound.report.results.CompressResult`
(``OUT/compress.json``, ``OUT/compress.md``); ``OUT/model.pt`` is the last stage's model.
Each fine-tuning's ``log.jsonl`` stays in the stage's folder; its checkpoints (weights and
optimizer state, of no use once the stage's model is saved) are deleted when it ends.

Every stage's training section is validated before the data is opened (:func:`check_stages`).
"""

from __future__ import annotations

import copy
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError
from torch import nn

from bitsound.audio.augment import FeatureAugment
from bitsound.complexity import complexity_report
from bitsound.compress import prune as P
from bitsound.compress import quantize as Q
from bitsound.compress.config import (
    DistillStage,
    FinetuneSettings,
    FinetuneStage,
    Fp16Stage,
    Pipeline,
    PruneStage,
    QuantizeStage,
    Target,
)
from bitsound.compress.data import CompressData, open_compress_data
from bitsound.config import Recipe, TrainConfig, format_validation_error, input_kind
from bitsound.data import FeatureCache
from bitsound.errors import ConfigError, ExportError
from bitsound.experiment import make_task
from bitsound.modelfile import load_model, save_model
from bitsound.report.results import CompressResult, CompressRow, CompressStep
from bitsound.train import fit
from bitsound.train.checkpoint import save_text
from bitsound.train.loop import CHECKPOINT_DIR, seed_everything
from bitsound.train.tasks import DistillationTask

log = logging.getLogger("bitsound.compress")

INPUT_STAGE = "00-input"


def _merge(base: dict, update: dict) -> dict:
    """``update``'s keys over ``base``'s, section by section; a section that names another
    ``name`` (``schedule: {name: constant}`` over a cosine schedule) replaces the base's whole,
    so that no key of the other kind (``per_step``, ``warmup_epochs``) is left behind."""
    out = dict(base)
    for k, v in update.items():
        old = out.get(k)
        same_kind = isinstance(old, dict) and v.get("name", old.get("name")) == old.get("name") \
            if isinstance(v, dict) else False
        out[k] = _merge(old, v) if same_kind else v
    return out


def stage_train_config(recipe: Recipe, settings: FinetuneSettings) -> TrainConfig:
    """The model recipe's ``train`` section with a stage's ``finetune`` settings over it."""
    base = recipe.train.model_dump(mode="json", exclude={"task", "distill", "init_from"})
    merged = _merge(base, settings.train)
    merged["epochs"] = settings.epochs
    if "validate_every" in TrainConfig.model_fields and "validate_every" not in settings.train:
        merged["validate_every"] = 1  # short fine-tuning: every epoch may be the best one
    try:
        return TrainConfig.model_validate(merged)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source="(finetune.train of the pipeline)")
                          .replace("invalid recipe", "invalid")) from None


def stage_settings(stage) -> FinetuneSettings | None:
    """The training a stage runs (None: it trains nothing)."""
    if isinstance(stage, FinetuneStage):
        return stage.settings()
    settings = getattr(stage, "finetune", None)
    return settings if settings is not None and settings.epochs > 0 else None


def check_stages(pipeline: Pipeline, recipe: Recipe) -> None:
    """Validate the pipeline's ``references`` and every stage's merged training section before
    any stage runs, so that a typo in the last stage fails at once, not hours in; ConfigError
    naming the stage."""
    from bitsound.published import get_published

    for name in pipeline.references:  # parse_pipeline checks them; a Pipeline built in code too
        get_published(name)
    for stage, name in zip(pipeline.stages, pipeline.stage_names(), strict=True):
        settings = stage_settings(stage)
        if settings is None:
            continue
        try:
            stage_train_config(recipe, settings)
        except ConfigError as err:
            raise ConfigError(f"stage {name}: {err}") from None


class _Run:
    """One pipeline run: the data, the teacher, the output folder and the rows so far."""

    def __init__(self, pipeline: Pipeline, model, data: CompressData, out_dir: Path, *,
                 show_progress: bool):
        self.pipeline = pipeline
        self.data = data
        self.out_dir = out_dir
        self.show_progress = show_progress
        self.teacher = copy.deepcopy(model.net).eval()
        self.example = data.example_input()
        self.base_criterion: float | None = None
        self.rows: list[CompressRow] = []

    # -- training -----------------------------------------------------------------------------
    def train_config(self, settings: FinetuneSettings) -> TrainConfig:
        return stage_train_config(self.data.recipe, settings)

    def make_task(self, recipe: Recipe, settings: FinetuneSettings):
        """The recipe's training task, distilled from the uncompressed model when asked."""
        task = make_task(recipe, self.data.labels)
        if settings.distill is None:
            return task
        return DistillationTask(self.teacher, temperature=settings.distill.temperature,
                                alpha=settings.distill.alpha, label_smoothing=task.label_smoothing,
                                mixup_alpha=task.mixup_alpha, mixer=task.mixer, loss=task.loss,
                                mixup_per_example=task.mixup_per_example)

    def finetune(self, net: nn.Module, settings: FinetuneSettings, out_dir: Path) -> dict | None:
        """Train ``net`` in place through the one loop; returns a summary (None for 0 epochs).

        The fit's checkpoints (best and last weights, optimizer state) are deleted when it is
        done: the stage's ``model.pt`` keeps the result, and a pruning run of dozens of steps
        would otherwise leave gigabytes of them."""
        if settings.epochs == 0:
            return None
        cfg = self.train_config(settings)
        recipe = self.data.recipe.model_copy(update={"train": cfg})
        task = self.make_task(recipe, settings)
        augment = FeatureAugment(recipe.augment, input_kind=input_kind(recipe.frontend), audio=recipe.audio)
        has_val = self.data.validation is not None
        seed_everything(cfg.seed)
        result = fit(model=net, task=task, train_x=self.data.train.x, train_y=self.data.train.y, cfg=cfg,
                     out_dir=out_dir, augment=augment,
                     validate=(lambda m: self.data.score(m, "validation")) if has_val else None,
                     select_best=has_val, show_progress=self.show_progress)
        net.cpu()
        shutil.rmtree(out_dir / CHECKPOINT_DIR, ignore_errors=True)
        return {"epochs": result.epochs_run, "best_epoch": result.best_epoch}

    # -- measuring ----------------------------------------------------------------------------
    def measure(self, net: nn.Module) -> dict:
        return complexity_report(net, self.data.input_shape)

    def target_kb(self, net: nn.Module, target: Target) -> float:
        """KB of ``net`` under the target's rule, its float weights at the target's bits."""
        if target.bits == 16:  # as the fp16 stage will store it: measured on a converted copy
            net = P.copy_network(net)
            P.fold_masks(net)
            Q.to_fp16(net, layers="all")
        return float(self.measure(net)["kb"][target.rule])

    def target_met(self, net: nn.Module, target: Target | None, removed: int, total: int) -> bool:
        if target is None:
            return False
        if target.ratio is not None and removed >= math.ceil(target.ratio * total):
            return True
        if target.params is not None and sum(p.numel() for p in net.parameters()) <= target.params:
            return True
        return target.kb is not None and self.target_kb(net, target) <= target.kb

    def record(self, net: nn.Module, stage: str, kind: str, seconds: float, notes: list[str],
               steps: list[CompressStep] | None = None) -> tuple[CompressRow, nn.Module]:
        """Save the network as this stage's model and measure the saved form."""
        snap = P.copy_network(net).cpu().eval()
        P.fold_masks(snap)
        report = self.measure(snap)
        held = self.data.score(snap, "held_out")
        criterion = (self.data.criterion_accuracy(snap) if self.data.validation is not None
                     else float(held["accuracy"]))
        stage_dir = self.out_dir / stage
        row = CompressRow(stage=stage, kind=kind, model=str(stage_dir / "model.pt"), params=report["params"],
                          nonzero_params=report["nonzero_params"], bytes=report["bytes"], kb=report["kb"],
                          macs=report["macs"], bops=report["bops"],
                          flops_seed001=report["flops_seed001"]["flops"],
                          held_out_accuracy=float(held["accuracy"]),
                          held_out_balanced_accuracy=float(held["balanced_accuracy"]),
                          criterion_accuracy=criterion, seconds=round(seconds, 1), notes=notes,
                          steps=steps or [])
        save_model(stage_dir / "model.pt", recipe=self.data.recipe, labels=self.data.labels, net=snap,
                   metrics=row.to_json())
        if self.pipeline.export:
            row = self.export(snap, stage_dir, row)
            save_model(stage_dir / "model.pt", recipe=self.data.recipe, labels=self.data.labels, net=snap,
                       metrics=row.to_json())
        log.info("%s: %s params, %.1f KB (storage), held-out accuracy %.2f %%", stage, f"{row.params:,}",
                 row.kb["storage"], 100 * row.held_out_accuracy)
        self.rows.append(row)
        return row, snap

    def export(self, net: nn.Module, stage_dir: Path, row: CompressRow) -> CompressRow:
        """Write ``model.bsnn``, time the engine and compare it with PyTorch on held-out windows."""
        from bitsound import engine
        from bitsound.export import export_packed

        path = stage_dir / "model.bsnn"
        try:
            export_packed(stage_dir / "model.pt", path)
        except ExportError as err:
            return row.model_copy(update={"notes": [*row.notes, f"not exported: {err}"]})
        eng = engine.load(path)
        n = min(self.pipeline.engine_examples, len(self.data.held_out.y))
        x = self.data.held_out.x[:n].float()
        eng.predict(x[:1].numpy())  # warm
        runs = []
        for _ in range(3):
            started = time.perf_counter()
            got = eng.predict(x.numpy())
            runs.append(time.perf_counter() - started)
        with torch.no_grad():
            want = net(x).double().numpy()
        scale = np.maximum(np.abs(want).max(axis=1), 1e-12)
        agreement: dict[str, Any] = {
            "examples": n, "labels_equal": int((got.argmax(1) == want.argmax(1)).sum()),
            "logit_max_rel": float((np.abs(got - want).max(axis=1) / scale).max())}
        if Q.activation_quantizers(net):
            k = min(n, 8)
            a = Q.int8_agreement(net, eng, x[:k])
            agreement.update(int8_examples=k, int8_codes=a.codes, int8_equal=a.equal,
                             int8_max_step=a.max_step, int8_layer_equal=a.layer_equal,
                             int8_layer_max_step=a.layer_max_step)
        return row.model_copy(update={"bsnn_bytes": path.stat().st_size,
                                      "engine_ms": round(1000 * min(runs) / n, 4), "engine": agreement})

    # -- stages -------------------------------------------------------------------------------
    def prune(self, net: nn.Module, st: PruneStage, stage_dir: Path):
        if st.method == "unstructured":
            notes = []
            if P.has_masks(net):
                P.fold_masks(net)
            masked = P.apply_magnitude_masks(net, st.amount, layers=st.layers, scope=st.scope,
                                             exclude=st.exclude)
            notes.append(f"{masked:,} weights masked: {st.amount:.0%} of the {st.layers} weights by "
                         f"magnitude ({st.scope}); the masks stay through later fine-tuning")
            self.finetune(net, st.finetune, stage_dir / "finetune")
            return net, notes, []
        return self.prune_structured(net, st, stage_dir)

    def prune_structured(self, net: nn.Module, st: PruneStage, stage_dir: Path):
        notes: list[str] = []
        ex = self.example
        if P.has_masks(net):
            P.fold_masks(net)
            notes.append("unstructured masks folded first")
        floor = None
        if st.min_accuracy is not None or st.max_accuracy_drop is not None:
            drop = st.max_accuracy_drop
            floor = max(st.min_accuracy or 0.0, self.base_criterion - drop if drop is not None else 0.0)
            notes.append(f"accuracy floor {100 * floor:.2f} % on the deciding data")
        # kept when step 1 is undone: the input model, which was checked, not the sparsified one
        unpruned = P.copy_network(net) if floor is not None else None
        if st.importance == "hybrid":
            fraction = 0.95 if st.sparsify is None else st.sparsify
            zeroed = P.sparsify(net, fraction)
            notes.append(f"sparsified: {zeroed:,} weights ({fraction:.0%}) set to zero (l0, seed 001)")
        exclude = list(st.exclude)
        broken = P.unprunable_groups(net, ex, exclude=exclude)
        if broken:
            exclude += list(broken)
            widths = {n: getattr(m, "out_channels", getattr(m, "out_features", "?"))
                      for n, m in net.named_modules() if n in broken}
            notes.append("left unpruned at their channel counts (removing a channel breaks the network, "
                         "e.g. a channel-to-row permute the dependency graph cannot follow): "
                         + "; ".join(f"{k} keeps {widths[k]} ({v})" for k, v in broken.items()))
        total = P.prunable_channels(net, ex, exclude=exclude)
        if total == 0:
            raise ConfigError("prune: no layer of this network has channels the pruner can remove")
        removed, steps = 0, []
        batch = self.data.recipe.train.batch_size
        for step in range(1, st.max_steps + 1):
            if self.target_met(net, st.target, removed, total):
                notes.append(f"target met after {step - 1} steps")
                break
            if st.importance == "l1":
                importance = P.L1Importance()
            else:
                importance = P.TaylorImportance()
                importance.measure(net, self.data.batches(st.taylor_examples, batch_size=batch, seed=step),
                                   torch.nn.functional.cross_entropy)
            plan = P.plan_pruning(net, ex, importance=importance, exclude=exclude, scope=st.scope)
            n = math.ceil(st.per_step * plan.total) if st.per_step < 1 else int(st.per_step)
            if st.target is not None and st.target.ratio is not None:
                n = min(n, math.ceil(st.target.ratio * total) - removed)
            if st.target is not None and (st.target.params is not None or st.target.kb is not None):
                n = self.fewest_for_target(net, plan, n, st, exclude)
            before = (unpruned if step == 1 else P.copy_network(net)) if floor is not None else None
            done = P.apply_plan(net, ex, plan, n, exclude=exclude, min_channels=st.min_channels)
            if done.total == 0:
                notes.append(f"stopped after {step - 1} steps: every layer is at min_channels")
                break
            removed += done.total
            self.finetune(net, st.finetune, stage_dir / f"step{step:03d}")
            acc = self.data.criterion_accuracy(net)
            params = sum(p.numel() for p in net.parameters())
            record = CompressStep(step=step, removed=done.removed, params=params, criterion_accuracy=acc)
            log.info("prune step %d: -%d channels, %s params, accuracy %.2f %%", step, done.total,
                     f"{record.params:,}", 100 * acc)
            if floor is not None and acc < floor:
                steps.append(record.model_copy(update={"reverted": True}))
                kept = "the input model" if step == 1 else f"the model of step {step - 1}"
                notes.append(f"step {step} took accuracy to {100 * acc:.2f} % (< floor): undone, {kept} kept")
                net = before
                removed -= done.total  # the undone step's channels are back
                break
            steps.append(record)
        else:
            notes.append(f"max_steps ({st.max_steps}) reached")
        if st.target is not None and not self.target_met(net, st.target, removed, total):
            notes.append("the size target was not reached")
        return net, notes, steps

    def fewest_for_target(self, net: nn.Module, plan: P.PrunePlan, n: int, st: PruneStage,
                          exclude: list[str]) -> int:
        """The fewest of the first ``n`` planned channels whose removal meets the size target
        (``n`` when even all ``n`` do not)."""
        def meets(k: int) -> bool:
            trial = P.copy_network(net)
            P.apply_plan(trial, self.example, plan, k, exclude=exclude, min_channels=st.min_channels)
            return self.target_met(trial, st.target.model_copy(update={"ratio": None}), 0, 1)

        if n <= 1 or not meets(n):
            return n
        lo, hi = 1, n  # meets(hi) holds
        while lo < hi:
            mid = (lo + hi) // 2
            if meets(mid):
                hi = mid
            else:
                lo = mid + 1
        return lo

    def quantize(self, net: nn.Module, st: QuantizeStage, stage_dir: Path):
        notes = []
        if st.fold_batchnorm:
            folded = Q.fold_batchnorm(net)
            if folded:
                notes.append(f"batch-norm folded into the preceding layer: {', '.join(folded)}")
        names = Q.quantize_int8(net, layers=st.layers, activations=st.activations,
                                per_channel=st.per_channel, exclude=st.exclude)
        if not names:
            raise ConfigError(f"quantize: the network has no float {st.layers} layers left to make int8")
        notes.append(f"int8 ({st.mode}, {st.activations} activations): {', '.join(names)}")
        if st.activations == "int8":
            batch = self.data.recipe.train.batch_size
            Q.calibrate(net, (x for x, _ in self.data.batches(st.calibration_examples, batch_size=batch)),
                        method=st.calibration, percentile=st.percentile)
            notes.append(f"activation ranges calibrated ({st.calibration}) on "
                         f"{min(st.calibration_examples, len(self.data.train.y))} training examples")
        if st.mode == "qat":
            self.finetune(net, st.finetune, stage_dir / "qat")
        return net, notes, []

    def fp16(self, net: nn.Module, st: Fp16Stage, stage_dir: Path):
        names = Q.to_fp16(net, layers=st.layers, exclude=st.exclude)
        if not names:  # e.g. every layer already int8: nothing to do, and the row says so
            return net, [f"fp16: no float {st.layers} layers left; the model is unchanged"], []
        return net, [f"fp16 weights: {', '.join(names)}"], []

    def train_stage(self, net: nn.Module, st: FinetuneStage, stage_dir: Path):
        self.finetune(net, st.settings(), stage_dir / "finetune")
        what = "distilled from the uncompressed model" if st.distill is not None else "fine-tuned"
        return net, [f"{what} for {st.epochs} epochs"], []


def compress(pipeline: Pipeline, *, model_path: str | Path, out_dir: str | Path, cache: FeatureCache | None,
             show_progress: bool = True, skip_bad: bool = False) -> CompressResult:
    """Run ``pipeline`` on the model at ``model_path``; write every stage into ``out_dir``.

    Returns
    -------
    CompressResult
        Also written to ``out_dir/compress.json`` (and as a table to ``compress.md``).
    """
    out_dir = Path(out_dir)
    model = load_model(model_path)
    if pipeline.models and model.recipe.model.name not in pipeline.models:
        log.warning("pipeline %s was written for %s; compressing a %s model", pipeline.name,
                    ", ".join(pipeline.models), model.recipe.model.name)
    check_stages(pipeline, model.recipe)  # before the data is opened or any stage runs
    data = open_compress_data(model, validation=pipeline.validation, cache=cache,
                              show_progress=show_progress, skip_bad=skip_bad)
    run = _Run(pipeline, model, data, out_dir, show_progress=show_progress)
    net = copy.deepcopy(model.net).cpu().eval()
    run.record(net, INPUT_STAGE, "input", 0.0, [f"the input model {model_path}"])
    run.base_criterion = run.rows[0].criterion_accuracy
    handlers = {PruneStage: run.prune, QuantizeStage: run.quantize, Fp16Stage: run.fp16,
                FinetuneStage: run.train_stage, DistillStage: run.train_stage}
    for stage, name in zip(pipeline.stages, pipeline.stage_names(), strict=True):
        log.info("stage %s", name)
        started = time.perf_counter()
        net, notes, steps = handlers[type(stage)](net, stage, out_dir / name)
        _, final = run.record(net, name, stage.kind, time.perf_counter() - started, notes, steps)
    result = CompressResult(pipeline=pipeline.name, description=pipeline.description, model=str(model_path),
                            recipe=data.recipe.name, data=data.data, split=data.split,
                            criterion=data.criterion, rows=run.rows, references=pipeline.references)
    save_model(out_dir / "model.pt", recipe=data.recipe, labels=data.labels, net=final,
               metrics=run.rows[-1].to_json())
    result.save(out_dir / "compress.json")
    save_text(markdown_table(result), out_dir / "compress.md")
    return result


COLUMNS = ("stage", "params", "non-zero", "KB storage", "KB dcase2020", "KB dcase2022", "MACs", "BOPs",
           "held-out acc.", "deciding acc.", ".bsnn KB", "engine ms", "time s")


def table_rows(result: CompressResult) -> list[list[str]]:
    """The cells of the result table, one list per stage (columns :data:`COLUMNS`)."""
    def pct(v):
        return "-" if v is None else f"{100 * v:.2f} %"

    return [[r.stage, f"{r.params:,}", f"{r.nonzero_params:,}", f"{r.kb['storage']:.2f}",
             f"{r.kb['dcase2020']:.2f}", f"{r.kb['dcase2022']:.2f}", f"{r.macs:,}", f"{r.bops:,}",
             pct(r.held_out_accuracy), pct(r.criterion_accuracy),
             "-" if r.bsnn_bytes is None else f"{r.bsnn_bytes / 1024:.2f}",
             "-" if r.engine_ms is None else f"{r.engine_ms:.3f}", f"{r.seconds:.1f}"] for r in result.rows]


def published_rows(result: CompressResult) -> list[tuple[str, str, str, str, str]]:
    """The seed systems' own points the pipeline names: (system, model, accuracy, size, data)."""
    from bitsound.published import get_published

    rows = []
    for name in result.references:
        for p in get_published(name).points:
            size = "-" if p.kb is None else f"{p.kb:,.1f} KB"
            rows.append((name, p.name, f"{100 * p.accuracy:.2f} %", size, p.data))
    return rows


def markdown_table(result: CompressResult) -> str:
    """The result as a Markdown table with the notes of each stage below it."""
    lines = [f"# {result.pipeline} on {result.model}", "",
             f"Data {result.data}; held out: {result.split.kind} '{result.split.name}' "
             f"({result.split.n_val} clips); {result.criterion}.", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cells) + " |" for cells in table_rows(result)]
    lines.append("")
    for ref in published_rows(result):
        lines.append(f"- published ({ref[0]}): {ref[1]}: {ref[2]} accuracy, {ref[3]} ({ref[4]})")
    for r in result.rows:
        for note in r.notes:
            lines.append(f"- {r.stage}: {note}")
        if r.engine:
            lines.append(f"- {r.stage}: engine vs PyTorch: {r.engine}")
    return "\n".join(lines) + "\n"


__all__ = ["COLUMNS", "INPUT_STAGE", "check_stages", "compress", "markdown_table", "published_rows",
           "stage_train_config", "table_rows"]
