"""Typed recipe configuration, loaded from YAML and validated on load.

Every section is a pydantic model with ``extra="forbid"``: an unknown or mistyped key is a
:class:`~bitsound.errors.ConfigError` that quotes its dotted key path, instead of being ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from bitsound.errors import ConfigError


def _check_published(names: list[str]) -> list[str]:
    from bitsound.published import PUBLISHED

    unknown = [n for n in names if n not in PUBLISHED]
    if unknown:
        raise ValueError(f"unknown published systems {unknown}; valid: {', '.join(PUBLISHED)}")
    return names


#: names of seed systems in :mod:`bitsound.published` (recipes' and pipelines' ``references``)
PublishedSystems = Annotated[list[str], AfterValidator(_check_published)]


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

    ``centred``: windows are centred on 0, hop, 2 hop, ... up to the end of the recording, with
    zeros for the half-window before its start and after its end, so the first and last half
    window of a recording are window centres too. Detectors whose windows are named by their
    centre (``data.window_labels.region``) want this: without it an event in a recording's
    first or last half window has no window centred on it and its onset or offset is lost.
    Training and ``bitsound detect`` cut windows the same way.
    """

    length: float = Field(gt=0, le=3600, description="window length in seconds")
    hop: float = Field(gt=0, le=3600, description="hop between window starts in seconds")
    energy_gate_db: float | None = Field(default=None, le=0)
    centred: bool = False

    def first_start(self, sample_rate: int) -> float:
        """Start of the first window in seconds: 0, or minus half a window when ``centred``."""
        return -(round(self.length * sample_rate) // 2) / sample_rate if self.centred else 0.0


class CropConfig(Section):
    """Clips longer than the model input, cropped to it (EnvNet / ACDNet practice).

    Each clip is stored ``source_seconds`` long (centre-cropped or zero-padded), optionally
    reduced to the span between its first and last non-silent sample (``trim_zeros``: the
    digital silence ESC-50's short sounds are padded with, samples that are 0 at 16 bits; the
    authors' data preparation) and padded with ``pad`` x input length zeros at both
    ends. Training crops one window of ``audio.clip_seconds`` per example and batch
    (``augment.random_crop``: at random, else the centre); validation, ``bitsound evaluate`` and
    ``predict`` score ``test_crops`` windows evenly spaced over the padded span and average
    their class probabilities (1: the centre window).
    """

    source_seconds: float = Field(gt=0, le=3600, description="length stored per clip, in seconds")
    pad: float = Field(default=0.5, ge=0, le=4)  # ACDNet / EnvNet: half the input at each end
    trim_zeros: bool = False
    test_crops: int = Field(default=10, ge=1, le=1000)


#: The most samples a clip or model input may hold (256 MB of float32 per channel).
MAX_CLIP_SAMPLES = 2**26


class AudioConfig(Section):
    """How a file becomes model input audio: rate, channels, length or segments."""

    # Upper bounds on sizes (here and in the front ends) are far above any real use; they stop
    # a damaged or hostile recipe or model file from allocating all memory (found by fuzzing).
    sample_rate: int = Field(default=16000, gt=0, le=1_000_000)
    # "mono" mixes channels down, "stereo" keeps two (mono files are duplicated, with one log
    # line per data set), an integer picks one channel by index.
    channels: Literal["mono", "stereo"] | Annotated[int, Field(ge=0)] = "mono"
    # The model input: without segmentation or crop each clip is cropped (centred) or
    # zero-padded to this length; with ``crop`` it is the length of each crop.
    clip_seconds: float = Field(default=1.0, gt=0, le=3600)
    segment: SegmentConfig | None = None
    crop: CropConfig | None = None

    @model_validator(mode="after")
    def _check_crop(self) -> AudioConfig:
        if self.crop is not None and self.segment is not None:
            raise ValueError("audio.crop and audio.segment exclude each other: crop picks windows "
                             "of one stored clip, segment cuts a recording into fixed windows")
        if self.crop is not None and self.crop.source_seconds < self.clip_seconds:
            raise ValueError(f"audio.crop.source_seconds={self.crop.source_seconds} is shorter "
                             f"than the model input audio.clip_seconds={self.clip_seconds}")
        longest = max(self.clip_seconds, self.segment.length if self.segment else 0.0,
                      self.crop.source_seconds if self.crop else 0.0)
        if longest * self.sample_rate > MAX_CLIP_SAMPLES:
            raise ValueError(f"{longest:g} s at {self.sample_rate} Hz is {longest * self.sample_rate:.3g} "
                             f"samples per clip, more than {MAX_CLIP_SAMPLES} (23 minutes at 48 kHz); "
                             "cut long recordings into windows with audio.segment")
        return self

    @property
    def n_channels(self) -> int:
        return 2 if self.channels == "stereo" else 1

    @property
    def window_seconds(self) -> float:
        """Seconds of one model input window: the segment length, else the clip length."""
        return self.segment.length if self.segment is not None else self.clip_seconds

    @property
    def window_samples(self) -> int:
        """Samples per channel of one model input window."""
        return round(self.window_seconds * self.sample_rate)


# --------------------------------------------------------------------------------------------
# front ends (nn.Modules in bitsound.audio.features)
# --------------------------------------------------------------------------------------------
class LogMelConfig(Section):
    """Log-mel spectrogram; the parameters mean what they mean in librosa."""

    kind: Literal["logmel"] = "logmel"
    n_fft: int = Field(default=512, gt=0, le=65536)
    win_length: int | None = Field(default=None, gt=0, le=65536)  # None: n_fft
    hop_length: int = Field(default=160, gt=0, le=65536)
    n_mels: int = Field(default=40, gt=0, le=4096)
    fmin: float = Field(default=0.0, ge=0)
    fmax: float | None = Field(default=None, gt=0)  # None: sample_rate / 2
    mel_scale: Literal["htk", "slaney"] = "slaney"
    # librosa's filter norm: "slaney" (unit area) or "none" (peak 1; seed 002's norm=None)
    mel_norm: Literal["slaney", "none"] = "slaney"
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
    height: int = Field(default=32, gt=0, le=4096)
    width: int = Field(default=32, gt=0, le=4096)


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
    ``val_folds``; ``leave_one_group_out`` holds out ``holdout_group`` (a city for the TAU
    kinds, whose group is the city: leave-one-city-out); ``unseen_devices`` is a ``group`` split
    whose training side also drops every clip of ``val_devices``, so those devices are heard in
    validation only (the DCASE 2020 Task 1a question).
    """

    kind: Literal["none", "stratified", "group", "folds", "leave_one_group_out",
                  "unseen_devices"] = "group"
    val_fraction: float = Field(default=0.2, gt=0, lt=1)
    val_folds: list[str] | None = None
    holdout_group: str | None = None
    val_devices: list[str] | None = None
    seed: int = 0


class SourceConfig(Section):
    """One member of a combined data set (see :mod:`bitsound.data.combine`)."""

    spec: str
    label: str | None = None  # give every clip this label
    relabel: dict[str, str] = {}  # or map original labels to new ones
    exclude_labels: list[str] = []  # original labels to drop first


class WindowLabelConfig(Section):
    """How windows of strongly labelled clips (clips with events) get their training label.

    A window takes the event overlapping its centred ``region`` (seconds; ``None``: the whole
    window) by at least ``min_overlap`` of the region or of the event, whichever is shorter;
    else the clip label (see :func:`bitsound.data.events.window_labels`).
    """

    region: float | None = Field(default=None, gt=0)
    min_overlap: float = Field(default=0.5, gt=0, le=1)


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
    # Keep only these classes: a list of names, or N for the first N of the data set's published
    # class order (esc50: seed 001's subsets, classes: 20 is S20). Applied after exclude_labels.
    classes: Annotated[int, Field(gt=0)] | list[str] | None = None
    # Labels of windows of clips that carry events (strong labels).
    window_labels: WindowLabelConfig = WindowLabelConfig()


# --------------------------------------------------------------------------------------------
# model, augmentation, training
# --------------------------------------------------------------------------------------------
class ModelConfig(Section):
    name: str
    params: dict[str, Any] = {}


class TemporalMaskConfig(Section):
    """Seed 004 section 2.1: keep one window of the waveform, zero the rest (same length).

    The window's length is drawn from a normal distribution (``mean_seconds``, ``std_seconds``;
    its absolute value, at most the clip) and its start from ``positions`` evenly spaced ones.
    """

    p: float = Field(default=0.5, ge=0, le=1)  # share of training examples it is applied to
    mean_seconds: float = Field(default=4.0, gt=0)
    std_seconds: float = Field(default=1.0, ge=0)
    positions: int = Field(default=1000, ge=1)


class FirFiltersConfig(Section):
    """Seed 004 section 2.2: one of eight FIR filters (scipy.signal.firwin, Hamming window) per
    example: low-pass and high-pass at 300, 1000 and 2000 Hz, band-pass 1200-3400 and
    340-3400 Hz."""

    p: float = Field(default=0.5, ge=0, le=1)
    numtaps: int = Field(default=201, ge=3)  # odd: high-pass filters need a centre tap

    @model_validator(mode="after")
    def _check_taps(self) -> FirFiltersConfig:
        if self.numtaps % 2 == 0:
            raise ValueError(f"augment.fir_filters.numtaps={self.numtaps} must be odd "
                             "(a high-pass FIR filter needs a centre tap)")
        return self


class NoiseConfig(Section):
    """Seed 004 section 2.3: white Gaussian noise at an SNR drawn in whole dB from
    ``snr_db`` (inclusive), relative to each example's own power."""

    p: float = Field(default=0.5, ge=0, le=1)
    snr_db: tuple[int, int] = (6, 32)

    @model_validator(mode="after")
    def _check_range(self) -> NoiseConfig:
        if self.snr_db[0] > self.snr_db[1]:
            raise ValueError(f"augment.noise.snr_db={list(self.snr_db)} must be [low, high]")
        return self


class CutMixConfig(Section):
    """Waveform CutMix (Yun et al. 2019; seed 004 section 2.4): a segment of another example of
    the batch replaces the same segment, lambda ~ Beta(alpha, alpha), the target weighted by the
    kept length. Applied to a batch with probability ``p`` (the authors' code: 0.8)."""

    alpha: float = Field(default=1.0, gt=0)
    p: float = Field(default=0.8, ge=0, le=1)


class BetweenClassConfig(Section):
    """Between-class learning (Tokozume et al. 2018, ACDNet): every example is mixed with one of
    another class, ratio r ~ U(0, 1), at the gain-aware ratio of the BC paper, and trained
    towards r of its label and 1 - r of the other's (use ``train.loss: kl_divergence`` as
    ACDNet does). ``gain``: the level each clip's ratio is corrected by, the loudest frame's
    A-weighted power (the paper) or its RMS power."""

    gain: Literal["a_weighting", "rms"] = "a_weighting"


class AugmentConfig(Section):
    """Augmentations of training batches only, after the feature cache.

    Each key works on the input kinds listed in :data:`bitsound.audio.augment.SUPPORTED`
    (``waveform`` for ``frontend.kind: raw``, ``logmel``, ``binary_image``); a key set for a
    front end it does not support is an error when the recipe loads.
    """

    time_shift: float = Field(default=0.0, ge=0, le=1)  # max circular shift, fraction of frames
    freq_warp: float = Field(default=0.0, ge=0, lt=1)  # max relative stretch of the mel axis
    time_stretch: float = Field(default=0.0, ge=0, lt=1)  # max relative stretch of time
    time_masks: int = Field(default=0, ge=0)  # SpecAugment (Park et al. 2019)
    time_mask_width: float = Field(default=0.1, ge=0, le=1)
    freq_masks: int = Field(default=0, ge=0)
    freq_mask_width: float = Field(default=0.1, ge=0, le=1)
    # random level change, +-gain_db: an offset of log features, a factor of waveforms
    gain_db: float = Field(default=0.0, ge=0)
    mixup_alpha: float = Field(default=0.0, ge=0)  # Zhang et al. 2018; 0 disables
    # one lambda per example (seed 002's code) instead of one per batch
    mixup_per_example: bool = False
    # features: train on a random window of this many frames per example (each example of a
    # mixup pair cropped on its own; seed 002: 469 -> 400); validation sees every frame
    time_crop: int | None = Field(default=None, gt=0)
    # two-channel input: swap left and right with probability 1/2 per example (seed 002)
    channel_swap: bool = False
    # waveforms only
    random_crop: bool = False  # with audio.crop: a random window per example (else the centre)
    temporal_mask: TemporalMaskConfig | None = None
    fir_filters: FirFiltersConfig | None = None
    noise: NoiseConfig | None = None
    cutmix: CutMixConfig | None = None
    between_class: BetweenClassConfig | None = None

    @model_validator(mode="after")
    def _one_mixer(self) -> AugmentConfig:
        mixers = [name for name, on in (("mixup_alpha", self.mixup_alpha > 0),
                                        ("cutmix", self.cutmix is not None),
                                        ("between_class", self.between_class is not None)) if on]
        if len(mixers) > 1:
            raise ValueError(f"augment: {' and '.join(mixers)} both mix pairs of examples; "
                             "choose one")
        return self


class OptimizerConfig(Section):
    name: Literal["adam", "adamw", "sgd"] = "adamw"
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    # "conv": only convolution weights decay (seed 002: "on all convolutional layers")
    weight_decay_on: Literal["all", "conv"] = "all"
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

    ``plateau`` counts like torch's ReduceLROnPlateau: the rate changes at the end of the
    ``patience + 1``-th epoch in a row without improvement of ``monitor``.
    """

    name: Literal["constant", "step", "cosine", "sgdr", "plateau", "inverse_time"] = "cosine"
    warmup_epochs: int = Field(default=0, ge=0)
    min_lr: float = Field(default=0.0, ge=0)
    step_size: int = Field(default=10, gt=0)
    gamma: float = Field(default=0.1, gt=0, le=1)
    restarts: list[int] = []
    patience: int = Field(default=3, ge=1)
    # plateau only: the validation metric watched (default: train.early_stopping's) and whether
    # larger is better; seed 004 halves the rate on val_log_loss (mode min)
    monitor: str | None = None
    monitor_mode: Literal["max", "min"] | None = None
    decay: float = Field(default=0.0, ge=0)  # inverse_time only, per iteration
    # cosine and sgdr: set the rate before every batch (fractional epochs; seed 002's code,
    # which reaches min_lr at the end of each cycle) instead of once per epoch
    per_step: bool = False

    @model_validator(mode="after")
    def _check_per_step(self) -> ScheduleConfig:
        if self.per_step and self.name not in ("cosine", "sgdr"):
            raise ValueError(f"train.schedule.per_step applies to the cosine and sgdr schedules, "
                             f"not {self.name!r}")
        return self


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
    # the weights `train` keeps: "best", the epoch with the best early_stopping.metric on the
    # held-out split (the thesis's validation accuracy), or "last", so that the held-out split
    # never picks the model and its score is unbiased (`cv` always keeps the last)
    keep: Literal["best", "last"] = "best"
    # score the held-out data every N epochs and after the last one (multi-crop validation of a
    # large waveform model costs as much as an epoch); early-stopping and plateau patience
    # then count validations, not epochs
    validate_every: int = Field(default=1, ge=1)
    # an exponential moving average of the weights (and batch-norm statistics), updated after
    # every optimiser step with this decay (0.999: about the last 1000 steps); validation,
    # checkpoints and the kept model use the average, which smooths the epoch-to-epoch noise
    # of small noisy batches
    weight_average: float | None = Field(default=None, gt=0, lt=1)
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    # kl_divergence: KL(target || softmax), ACDNet's loss for between-class targets; it differs
    # from cross-entropy by the targets' entropy only (same gradients)
    loss: Literal["cross_entropy", "kl_divergence"] = "cross_entropy"
    # true: class-balanced draws with replacement; "undersample": seed 002's epochs of
    # n_classes x min(class count), batches filled one example per class in turn
    balanced_sampling: bool | Literal["undersample"] = False
    seed: int = 0
    device: str = "auto"  # "auto" picks CUDA when present
    num_threads: int | None = Field(default=None, gt=0)
    # TensorBoard scalars in OUT/tensorboard (needs the optional extra bitsound[tensorboard])
    tensorboard: bool = False


class EvaluationConfig(Section):
    """How held-out scores count: per clip (its windows' probabilities averaged) or per window
    (each segment is one example, as in segment-level detection such as seed 000)."""

    level: Literal["clip", "window"] = "clip"


class ClassPostprocess(Section):
    """Per-class overrides of :class:`PostprocessConfig` (unset keys take the defaults)."""

    median: float | None = Field(default=None, ge=0)
    threshold: float | None = Field(default=None, gt=0, lt=1)
    low_threshold: float | None = Field(default=None, gt=0, lt=1)
    min_duration: float | None = Field(default=None, ge=0)
    max_gap: float | None = Field(default=None, ge=0)


class PostprocessConfig(Section):
    """From window probabilities to events (``bitsound detect``; :mod:`bitsound.detect.postprocess`).

    Per class: a median filter of ``median`` seconds over the probability track, then hysteresis
    (an event starts where the probability rises above ``threshold`` and lasts while it stays
    above ``low_threshold``, default ``threshold``), then events closer than ``max_gap``
    seconds are merged and those shorter than ``min_duration`` dropped. ``per_class`` overrides
    any of these for one class, e.g. ``{speech: {threshold: 0.3}}``. Classes in ``ignore`` (a
    background class, a "no bird" class) are never reported as events.
    """

    median: float = Field(default=0.0, ge=0)
    threshold: float = Field(default=0.5, gt=0, lt=1)
    low_threshold: float | None = Field(default=None, gt=0, lt=1)
    min_duration: float = Field(default=0.0, ge=0)
    max_gap: float = Field(default=0.0, ge=0)
    ignore: list[str] = []
    per_class: dict[str, ClassPostprocess] = {}

    @model_validator(mode="after")
    def _check_low(self) -> PostprocessConfig:
        # the same resolution as detect.postprocess.class_rules: a class's own value, else the
        # section's; low defaults to the threshold
        for name, cfg in [("", self), *((f"per_class.{k}.", v) for k, v in self.per_class.items())]:
            high = cfg.threshold if cfg.threshold is not None else self.threshold
            low = cfg.low_threshold if cfg.low_threshold is not None else self.low_threshold
            if low is not None and low > high:
                where = "" if cfg.low_threshold is not None or not name else " (the section's)"
                raise ValueError(f"{name}threshold {high} is below the low_threshold {low}{where}; "
                                 f"hysteresis needs low_threshold <= threshold")
        return self


class DetectConfig(Section):
    """How ``bitsound detect`` runs the model over long recordings.

    ``hop``: seconds between window starts (the window length is the recipe's segment or clip
    length); ``block``: seconds of audio decoded at a time (memory does not grow with the file);
    ``batch``: windows per model call.
    """

    hop: float = Field(default=0.1, gt=0)
    block: float = Field(default=30.0, gt=0)
    batch: int = Field(default=256, gt=0)
    postprocess: PostprocessConfig = PostprocessConfig()


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
    # Seed systems (bitsound.published) whose published points the report draws beside this run.
    references: PublishedSystems = []
    # Event detection over long recordings (bitsound detect); the defaults when absent.
    detect: DetectConfig = DetectConfig()

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
        if split.kind == "unseen_devices" and not split.val_devices:
            raise ValueError("data.split.kind 'unseen_devices' needs data.split.val_devices, "
                             "e.g. [S4, S5, S6]")
        return self

    @model_validator(mode="after")
    def _check_augment(self) -> Recipe:
        # Raises ConfigError itself (not ValueError), naming the key and the front end.
        from bitsound.audio.augment import check_supported

        check_supported(self.augment, input_kind=input_kind(self.frontend))
        if self.audio.crop is not None and self.frontend.kind != "raw":
            raise ValueError(f"audio.crop crops waveforms for frontend.kind 'raw'; with "
                             f"'{self.frontend.kind}' set audio.clip_seconds or audio.segment")
        if self.audio.crop is not None and self.evaluation.level == "window":
            raise ValueError("audio.crop scores a clip by the mean of its test crops: use "
                             "evaluation.level 'clip'")
        if self.augment.random_crop and self.audio.crop is None:
            raise ValueError("augment.random_crop needs audio.crop (the stored clip length "
                             "source_seconds from which windows of audio.clip_seconds are cut)")
        if self.augment.channel_swap and self.audio.n_channels != 2:
            raise ValueError(f"augment.channel_swap swaps the two channels of stereo input, but "
                             f"audio.channels is {self.audio.channels!r}; set audio.channels: stereo")
        if self.augment.mixup_per_example and self.augment.mixup_alpha <= 0:
            raise ValueError("augment.mixup_per_example needs augment.mixup_alpha > 0")
        return self


def input_kind(frontend: LogMelConfig | BinaryImageConfig | RawConfig) -> str:
    """What a front end gives a model: ``waveform``, ``logmel`` or ``binary_image``."""
    return {"raw": "waveform"}.get(frontend.kind, frontend.kind)


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
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read recipe file '{path}': {err.strerror}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"recipe file '{path}' is not UTF-8 text (byte {err.start}: {err.reason}); "
                          "save it as UTF-8") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"recipe file '{path}' is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"recipe file '{path}' must hold a mapping of keys at the top level")
    return data


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``key.path=value`` overrides (value parsed as YAML) to a nested dict copy.

    A part of the path that is a whole number indexes a list (``stages.0.per_step=0.2``);
    missing sections are created. Every bad override (no ``=``, an empty part, a value that is
    not YAML, a path through a value or past the end of a list) is a ConfigError quoting it.
    """
    import copy

    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set '{item}': expected key.path=value, e.g. train.epochs=5")
        parts = key.split(".")
        if not all(parts):
            raise ConfigError(f"--set '{item}': '{key}' has an empty part; write key.path=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except (yaml.YAMLError, ValueError) as err:  # ValueError: a date YAML cannot build
            problem = str(err).splitlines()[0]
            raise ConfigError(f"--set '{item}': the value of '{key}' is not valid YAML ({problem}); "
                              f"quote it to pass a string, e.g. {key}='\"{raw}\"'") from None
        node: Any = data
        for part in parts[:-1]:
            node = _override_child(node, part, item)
        last = parts[-1]
        if isinstance(node, list):
            node[_override_index(node, last, item)] = value
        else:
            node[last] = value
    return data


def _override_index(node: list, part: str, item: str) -> int:
    if not (part.isascii() and part.isdigit()) or int(part) >= len(node):
        valid = f"0 to {len(node) - 1}" if node else "it is empty"
        raise ConfigError(f"--set '{item}': '{part}' is not an index of a {len(node)}-item list ({valid})")
    return int(part)


def _override_child(node: Any, part: str, item: str) -> Any:
    """The section ``part`` of ``node`` (created when missing): a dict, or a list to index."""
    if isinstance(node, list):
        child = node[_override_index(node, part, item)]
    else:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
    if not isinstance(child, (dict, list)):
        raise ConfigError(f"--set '{item}': '{part}' is a value, not a section")
    return child
