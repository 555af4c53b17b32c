"""Typed recipe configuration, loaded from YAML and validated on load.

Every section is a pydantic model with ``extra="forbid"``: an unknown or mistyped key is a
:class:`~bitsound.errors.ConfigError` that quotes its dotted key path, instead of being ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bitsound.errors import ConfigError


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------------------------
# audio: decoding, channels, length and segmentation
# --------------------------------------------------------------------------------------------
class SegmentConfig(Section):
    """Cut long recordings into fixed windows.

    ``energy_gate_db`` drops windows whose RMS level (dB relative to the loudest window of the
    same recording) is below the value; ``None`` keeps every window.
    """

    length: float = Field(gt=0, description="window length in seconds")
    hop: float = Field(gt=0, description="hop between window starts in seconds")
    energy_gate_db: float | None = Field(default=None, le=0)


class AudioConfig(Section):
    """How a file becomes model input audio: rate, channels, length or segments."""

    sample_rate: int = Field(default=16000, gt=0)
    # "mono" mixes channels down, "stereo" keeps two (mono files are duplicated),
    # an integer picks one channel by index.
    channels: Literal["mono", "stereo"] | Annotated[int, Field(ge=0)] = "mono"
    # Without segmentation each clip is cropped (centred) or zero-padded to this length.
    clip_seconds: float = Field(default=1.0, gt=0)
    segment: SegmentConfig | None = None

    @property
    def n_channels(self) -> int:
        return 2 if self.channels == "stereo" else 1


# --------------------------------------------------------------------------------------------
# front ends (nn.Modules in bitsound.audio.features)
# --------------------------------------------------------------------------------------------
class LogMelConfig(Section):
    """Log-mel spectrogram; the parameters mean what they mean in librosa."""

    kind: Literal["logmel"] = "logmel"
    n_fft: int = Field(default=512, gt=0)
    win_length: int | None = Field(default=None, gt=0)  # None: n_fft
    hop_length: int = Field(default=160, gt=0)
    n_mels: int = Field(default=40, gt=0)
    fmin: float = Field(default=0.0, ge=0)
    fmax: float | None = Field(default=None, gt=0)  # None: sample_rate / 2
    mel_scale: Literal["htk", "slaney"] = "slaney"
    power: float = Field(default=2.0, gt=0)
    log_offset: float = Field(default=1e-6, gt=0)  # log(mel + log_offset)
    center: bool = True


class BinaryImageConfig(LogMelConfig):
    """A log-mel image thresholded to {0, 1} and resized to height x width (seed 000)."""

    kind: Literal["binary_image"] = "binary_image"  # type: ignore[assignment]
    threshold: Literal["fixed", "mean", "otsu"] = "otsu"
    # "band_median" subtracts each mel band's median over time before thresholding, so a
    # recording's steady background (wind, hum, a noisy microphone) does not turn rows on
    denoise: Literal["none", "band_median"] = "none"
    threshold_value: float = 0.0  # used by "fixed", in the log-mel domain
    height: int = Field(default=32, gt=0)
    width: int = Field(default=32, gt=0)


class RawConfig(Section):
    """The waveform itself, shape (batch, channels, samples)."""

    kind: Literal["raw"] = "raw"


FrontEndConfig = Annotated[LogMelConfig | BinaryImageConfig | RawConfig, Field(discriminator="kind")]


# --------------------------------------------------------------------------------------------
# data and splits
# --------------------------------------------------------------------------------------------
class SplitConfig(Section):
    """How clips are divided into training and held-out validation data.

    kinds: ``none`` trains on everything (no held-out score); ``stratified`` random per class;
    ``group`` keeps every group (speaker, recording, location) on one side; ``folds`` holds out
    ``val_folds``; ``leave_one_group_out`` holds out ``holdout_group``.
    """

    kind: Literal["none", "stratified", "group", "folds", "leave_one_group_out"] = "group"
    val_fraction: float = Field(default=0.2, gt=0, lt=1)
    val_folds: list[str] | None = None
    holdout_group: str | None = None
    seed: int = 0


class SourceConfig(Section):
    """One member of a combined data set (see :mod:`bitsound.data.combine`)."""

    spec: str
    label: str | None = None  # give every clip this label
    relabel: dict[str, str] = {}  # or map original labels to new ones
    exclude_labels: list[str] = []  # original labels to drop first


class DataConfig(Section):
    # One data set ``KIND:PATH``, or several combined under ``sources`` (then spec is unset).
    spec: str | None = "synthetic"
    sources: list[SourceConfig] = []
    # The held-out split ``bitsound train`` validates on.
    split: SplitConfig = SplitConfig()
    # The cross-validation ``bitsound cv`` runs: each fold, or each group, held out in turn.
    cv: Literal["folds", "leave_one_group_out"] = "leave_one_group_out"
    # Drop these labels from the dataset before anything else (e.g. "Rooster" for bird absence).
    exclude_labels: list[str] = []


# --------------------------------------------------------------------------------------------
# model, augmentation, training
# --------------------------------------------------------------------------------------------
class ModelConfig(Section):
    name: str
    params: dict[str, Any] = {}


class AugmentConfig(Section):
    """Augmentations applied to front-end features of training batches only."""

    time_shift: float = Field(default=0.0, ge=0, le=1)  # max circular shift, fraction of frames
    freq_warp: float = Field(default=0.0, ge=0, lt=1)  # max relative stretch of the mel axis
    time_stretch: float = Field(default=0.0, ge=0, lt=1)  # max relative stretch of time
    time_masks: int = Field(default=0, ge=0)  # SpecAugment (Park et al. 2019)
    time_mask_width: float = Field(default=0.1, ge=0, le=1)
    freq_masks: int = Field(default=0, ge=0)
    freq_mask_width: float = Field(default=0.1, ge=0, le=1)
    gain_db: float = Field(default=0.0, ge=0)  # random level change, +-gain_db (log features)
    mixup_alpha: float = Field(default=0.0, ge=0)  # Zhang et al. 2018; 0 disables


class OptimizerConfig(Section):
    name: Literal["adam", "adamw", "sgd"] = "adamw"
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)  # sgd only
    nesterov: bool = False


class ScheduleConfig(Section):
    """Learning-rate schedule, stepped once per epoch.

    ``step``: multiply by ``gamma`` every ``step_size`` epochs. ``cosine``: linear warm-up for
    ``warmup_epochs`` then cosine decay to ``min_lr``. ``sgdr``: cosine warm restarts at the
    given ``restarts`` epochs (Loshchilov & Hutter 2017, used by seed 002). ``plateau``: multiply
    by ``gamma`` when the monitored validation metric stalls for ``patience`` epochs.
    ``inverse_time``: Keras's classic ``decay``, lr / (1 + decay * iterations), as used by the
    seed-000 thesis; iterations are counted at epoch ends (one value per epoch).
    """

    name: Literal["constant", "step", "cosine", "sgdr", "plateau", "inverse_time"] = "cosine"
    warmup_epochs: int = Field(default=0, ge=0)
    min_lr: float = Field(default=0.0, ge=0)
    step_size: int = Field(default=10, gt=0)
    gamma: float = Field(default=0.1, gt=0, le=1)
    restarts: list[int] = []
    patience: int = Field(default=3, ge=1)
    decay: float = Field(default=0.0, ge=0)  # inverse_time only, per iteration


class EarlyStoppingConfig(Section):
    metric: str = "val_accuracy"
    mode: Literal["max", "min"] = "max"
    patience: int | None = Field(default=None, ge=1)  # None: never stop early


class DistillConfig(Section):
    """Distillation from a trained teacher (``train.task: distillation``)."""

    # path of a model.pt with the same labels and feature config; "{split}" in it becomes the
    # split's name, so each cross-validation fold distils from the teacher of that fold
    teacher: str
    temperature: float = Field(default=4.0, gt=0)
    alpha: float = Field(default=0.5, ge=0, le=1)


class TrainConfig(Section):
    task: Literal["classification", "distillation"] = "classification"
    distill: DistillConfig | None = None
    # Start from the weights of another model.pt of the same architecture (two-stage
    # training of binary networks: stage 2 starts from stage 1). "{split}" as in the teacher.
    init_from: str | None = None
    epochs: int = Field(default=20, gt=0)
    batch_size: int = Field(default=64, gt=0)
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    balanced_sampling: bool = False  # class-balanced batches (seed 002)
    seed: int = 0
    device: str = "auto"  # "auto" picks CUDA when present
    num_threads: int | None = Field(default=None, gt=0)


class EvaluationConfig(Section):
    """How held-out scores count: per clip (its windows' probabilities averaged) or per window
    (each segment is one example, as in segment-level detection such as seed 000)."""

    level: Literal["clip", "window"] = "clip"


class Recipe(Section):
    """A whole experiment: data, audio, front end, model, augmentation and training."""

    name: str
    description: str = ""
    data: DataConfig = DataConfig()
    audio: AudioConfig = AudioConfig()
    frontend: FrontEndConfig = LogMelConfig()
    model: ModelConfig
    augment: AugmentConfig = AugmentConfig()
    train: TrainConfig = TrainConfig()
    evaluation: EvaluationConfig = EvaluationConfig()

    @model_validator(mode="after")
    def _check_data(self) -> Recipe:
        if bool(self.data.spec) == bool(self.data.sources):
            raise ValueError("data needs either spec (one data set) or sources (several), not "
                             "both; write spec: null when you give sources")
        return self

    @model_validator(mode="after")
    def _check_task(self) -> Recipe:
        if (self.train.task == "distillation") != (self.train.distill is not None):
            raise ValueError("train.task 'distillation' and train.distill go together: give "
                             "train.distill.teacher (a model.pt) with task distillation")
        return self

    @model_validator(mode="after")
    def _check_split(self) -> Recipe:
        split = self.data.split
        if split.kind == "folds" and not split.val_folds:
            raise ValueError("data.split.kind 'folds' needs data.split.val_folds, e.g. ['4']")
        return self


# --------------------------------------------------------------------------------------------
# loading, overrides and error messages
# --------------------------------------------------------------------------------------------
def format_validation_error(err: ValidationError, *, source: str) -> str:
    lines = [f"invalid recipe {source}:"]
    for item in err.errors():
        path = ".".join(str(p) for p in item["loc"]) or "(top level)"
        got = item.get("input")
        got_text = "" if isinstance(got, dict) else f" (got {got!r})"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key; check its spelling against the documented keys"
        lines.append(f"  {path}: {message}{got_text}")
    return "\n".join(lines)


def parse_recipe(data: dict, *, source: str = "<dict>") -> Recipe:
    """Validate a plain dict as a :class:`Recipe`, raising ConfigError with key paths."""
    if not isinstance(data, dict):
        raise ConfigError(f"invalid recipe {source}: expected a mapping of keys, got {type(data).__name__}")
    try:
        return Recipe.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source=source)) from None


def read_yaml(path: Path) -> dict:
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ConfigError(f"cannot read recipe file '{path}': {err.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"recipe file '{path}' is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"recipe file '{path}' must hold a mapping of keys at the top level")
    return data


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``key.path=value`` overrides (value parsed as YAML) to a nested dict copy."""
    import copy

    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set '{item}': expected key.path=value, e.g. train.epochs=5")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set '{item}': '{part}' is a value, not a section")
            node = child
        node[parts[-1]] = value
    return data
