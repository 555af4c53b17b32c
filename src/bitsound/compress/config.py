"""Typed compression pipelines (``bitsound compress --recipe PIPELINE.yaml``), validated on load.

A pipeline is a list of stages run in order on a trained model; each stage writes a loadable
model and one row of the result table (:mod:`bitsound.compress.pipeline`)::

    name: my-pipeline
    validation: {fraction: 0.15}          # stopping criteria and fine-tuning selection (by group)
    stages:
      - kind: prune                        # structured: channels physically removed
        importance: l1                     # l1 | taylor | hybrid (seed 001)
        per_step: 0.1                      # 10 % of the remaining prunable channels per step
        target: {kb: 100, rule: dcase2020, bits: 16}  # stop at this size (fp16) ...
        min_accuracy: 0.85                 # ... or before validation accuracy drops below this
        finetune: {epochs: 2, train: {optimizer: {lr: 1.0e-4}}}
      - kind: quantize                     # int8: ptq (calibrated) or qat (fine-tuned)
        mode: ptq
      - kind: fp16                         # the layers still float: half-precision weights
      - kind: distill                      # fine-tune from the uncompressed model (the teacher)
        epochs: 5

Every section refuses unknown keys, naming their dotted path. ``finetune.train`` overrides the
model's own recipe ``train`` section (epochs, optimizer, schedule ...): keys are merged into it,
except that a section naming another ``name`` (``schedule: {name: constant}`` over a cosine
schedule) replaces the recipe's section whole. Every stage's merged training section is
validated before the first stage runs.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bitsound.config import PublishedSystems, apply_overrides, format_validation_error, read_yaml
from bitsound.errors import ConfigError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DistillSettings(Section):
    """Distillation from the uncompressed model (Hinton et al. 2015; seed 003)."""

    temperature: float = Field(default=4.0, gt=0)
    alpha: float = Field(default=0.5, ge=0, le=1)


class FinetuneSettings(Section):
    """Training between or after compression steps, through the one training loop.

    ``epochs: 0`` skips it. ``train`` overrides keys of the model recipe's ``train`` section
    (e.g. ``{optimizer: {lr: 1.0e-4}, schedule: {name: constant}}``); ``distill`` makes the
    uncompressed model the teacher.
    """

    epochs: int = Field(default=1, ge=0)
    train: dict[str, Any] = {}
    distill: DistillSettings | None = None


class Target(Section):
    """A size to reach; the first of these met stops a prune stage.

    ``params``: parameters; ``kb``: KB (1024 bytes) under ``rule``, with the float weights at
    ``bits``: 32 counts the network as it is while pruning (seed 001's Micro-ACDNet budget is
    514 KB of 32-bit parameters), 16 counts it as a later fp16 stage stores it (each candidate
    measured with its float weights in half precision, biases and batch-norm float32, as the
    complexity report counts the fp16 model: seed 004's "500 KB in fp16"); ``ratio``: fraction
    of the prunable channels removed (structured) since the stage began.
    """

    params: int | None = Field(default=None, gt=0)
    kb: float | None = Field(default=None, gt=0)
    rule: Literal["storage", "dcase2020", "dcase2022"] = "storage"
    bits: Literal[32, 16] = 32
    ratio: float | None = Field(default=None, gt=0, lt=1)

    @model_validator(mode="after")
    def _one(self) -> Target:
        if self.params is None and self.kb is None and self.ratio is None:
            raise ValueError("target needs params, kb or ratio")
        if self.bits != 32 and self.kb is None:
            raise ValueError("target.bits is the precision the kb target is counted at; give kb too")
        return self


class PruneStage(Section):
    """Structured (channels removed) or unstructured (weights zeroed) pruning.

    Structured: steps of ranking (``importance``), removing ``per_step`` channels (a fraction of
    the remaining prunable channels when < 1, else a count) and fine-tuning, until ``target`` is
    met, or until the next step would take validation accuracy below ``min_accuracy`` (or more
    than ``max_accuracy_drop`` below the uncompressed model's): then that step is undone and the
    last model above it kept (seed 004's "smallest model whose accuracy stays above X"). A
    size target is met exactly: the step that reaches it removes only as many channels as
    needed. ``hybrid`` first sparsifies (``sparsify``, default 0.95 of the weights, seed 001).

    Unstructured: ``amount`` of the weights of ``layers`` zeroed by magnitude (``scope``
    global or per layer), masks kept through every later stage's fine-tuning, then folded.
    ``scope`` applies to structured pruning too: channels ranked across layers (``global``) or
    the same fraction of every layer's channels (``layer``).
    """

    kind: Literal["prune"]
    name: str | None = None
    method: Literal["structured", "unstructured"] = "structured"
    importance: Literal["l1", "taylor", "hybrid"] = "l1"
    sparsify: float | None = Field(default=None, ge=0, lt=1)
    per_step: float = Field(default=0.1, gt=0)
    target: Target | None = None
    min_accuracy: float | None = Field(default=None, gt=0, le=1)
    max_accuracy_drop: float | None = Field(default=None, ge=0, lt=1)
    max_steps: int = Field(default=100, ge=1)
    min_channels: int = Field(default=1, ge=1)
    taylor_examples: int = Field(default=256, ge=1)
    amount: float | None = Field(default=None, gt=0, lt=1)
    layers: Literal["conv", "linear", "all"] = "conv"
    scope: Literal["global", "layer"] = "global"
    exclude: list[str] = []
    finetune: FinetuneSettings = FinetuneSettings()

    @model_validator(mode="after")
    def _check(self) -> PruneStage:
        if self.method == "unstructured":
            if self.amount is None:
                raise ValueError("unstructured pruning needs amount (fraction of weights zeroed)")
            if self.target is not None or self.min_accuracy is not None or self.max_accuracy_drop is not None:
                raise ValueError("unstructured pruning is one-shot with amount; target and accuracy "
                                 "criteria apply to structured pruning")
            return self
        if self.amount is not None:
            raise ValueError("amount is for method: unstructured; structured pruning stops on target, "
                             "min_accuracy or max_accuracy_drop")
        if self.target is None and self.min_accuracy is None and self.max_accuracy_drop is None:
            raise ValueError("structured pruning needs a stopping criterion: target (params, kb or "
                             "ratio), min_accuracy or max_accuracy_drop")
        if self.per_step >= 1 and self.per_step != int(self.per_step):
            raise ValueError(f"per_step {self.per_step}: a fraction below 1 or a whole number of channels")
        if self.sparsify is not None and self.importance != "hybrid":
            raise ValueError("sparsify belongs to importance: hybrid (seed 001)")
        return self


class FinetuneStage(Section):
    """Training of the current model (optionally distilled, see :class:`FinetuneSettings`)."""

    kind: Literal["finetune"]
    name: str | None = None
    epochs: int = Field(default=5, ge=1)
    train: dict[str, Any] = {}
    distill: DistillSettings | None = None

    def settings(self) -> FinetuneSettings:
        return FinetuneSettings(epochs=self.epochs, train=self.train, distill=self.distill)


class DistillStage(FinetuneStage):
    """Fine-tuning distilled from the uncompressed model (teacher), seed 003."""

    kind: Literal["distill"]  # type: ignore[assignment]
    distill: DistillSettings = DistillSettings()


class QuantizeStage(Section):
    """int8 layers: post-training (``ptq``: calibrated on ``calibration_examples`` training
    windows) or quantization-aware (``qat``: calibrated, then fine-tuned with ``finetune``).

    ``layers``: which float layers become int8 (``conv`` for seed 003's 8-bit convolutions);
    ``activations: int8`` quantizes their inputs too (the engine's integer convolutions),
    ``float`` stores int8 weights only. Batch-norm after a float layer is folded into it
    first (``fold_batchnorm``).
    """

    kind: Literal["quantize"]
    name: str | None = None
    mode: Literal["ptq", "qat"] = "ptq"
    layers: Literal["conv", "linear", "all"] = "all"
    activations: Literal["int8", "float"] = "int8"
    per_channel: bool = True
    fold_batchnorm: bool = True
    calibration: Literal["minmax", "percentile"] = "minmax"
    percentile: float = Field(default=99.99, gt=50, le=100)
    calibration_examples: int = Field(default=512, ge=1)
    exclude: list[str] = []
    finetune: FinetuneSettings = FinetuneSettings(epochs=0)

    @model_validator(mode="after")
    def _check(self) -> QuantizeStage:
        if self.mode == "qat" and self.finetune.epochs == 0:
            raise ValueError("mode qat trains the quantized network: give finetune.epochs >= 1")
        if self.mode == "ptq" and self.finetune.epochs > 0:
            raise ValueError("mode ptq does not train; use mode qat (or a finetune stage after it)")
        return self


class Fp16Stage(Section):
    """Half-precision weights for the layers still float (seed 004; seed 003's 16-bit rest)."""

    kind: Literal["fp16"]
    name: str | None = None
    layers: Literal["conv", "linear", "all"] = "all"
    exclude: list[str] = []


Stage = Annotated[PruneStage | FinetuneStage | DistillStage | QuantizeStage | Fp16Stage,
                  Field(discriminator="kind")]


class ValidationSettings(Section):
    """Which data decides (stopping criteria, fine-tuning's best epoch).

    ``use: validation``: ``fraction`` of the training clips, kept out of fine-tuning; the
    held-out split then only measures. ``by: group`` (default) keeps every group (recording,
    speaker) on one side, and a pipeline whose training clips have too few or too large groups
    for about that share (half to twice it) is refused; ``by: clip`` opts in to a stratified
    clip-level split, which puts clips of one recording on both sides (validation then sees
    what fine-tuning trains on). Clips without groups are split by clip. ``use: held_out``: the
    held-out split decides too (its accuracy is then no longer an unbiased estimate; the result
    says so).
    """

    use: Literal["validation", "held_out"] = "validation"
    fraction: float = Field(default=0.15, gt=0, lt=1)
    by: Literal["group", "clip"] = "group"
    seed: int = 0


class Pipeline(Section):
    """A compression pipeline; see the module docstring."""

    name: str
    description: str = ""
    # model families the pipeline was written for (another one only logs a note)
    models: list[str] = []
    # published systems whose points the report shows beside the result
    references: PublishedSystems = []
    validation: ValidationSettings = ValidationSettings()
    # write each stage's model.bsnn and measure its size, engine time and agreement
    export: bool = True
    engine_examples: int = Field(default=32, ge=1)
    stages: list[Stage] = Field(min_length=1)

    def stage_names(self) -> list[str]:
        """Each stage's folder name: its position and its name (or kind), e.g. ``01-prune``."""
        return [f"{i + 1:02d}-{s.name or s.kind}" for i, s in enumerate(self.stages)]


def parse_pipeline(data: dict, *, source: str = "<dict>") -> Pipeline:
    """Validate a dict as a :class:`Pipeline`; ConfigError with the dotted key paths."""
    if not isinstance(data, dict):
        raise ConfigError(f"invalid pipeline {source}: expected a mapping, got {type(data).__name__}")
    try:
        return Pipeline.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source=source)
                          .replace("invalid recipe", "invalid compression pipeline")) from None


def load_pipeline(name_or_path: str, *, overrides: list[str] | None = None) -> Pipeline:
    """A shipped pipeline by name (``bitsound list recipes``) or a YAML file, with ``key=value``
    overrides (``stages.0.target.kb=100``: list items by index; see
    :func:`bitsound.config.apply_overrides`)."""
    from bitsound.recipes import pipeline_path

    path = pipeline_path(name_or_path)
    data = apply_overrides(read_yaml(path), overrides or [])
    return parse_pipeline(data, source=f"'{path}'")
