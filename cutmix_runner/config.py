"""Structured config schema: every key the YAML tree may set, with types and value checks.

Hydra merges the YAML files onto these dataclasses, so an unknown or misspelled key, or a value
of the wrong type, fails at composition. Range checks live in each class's ``validate`` and run
from the module-level ``parse``, before any training starts. The names a key may take (a
regularizer, an optimizer, a data set) come from the registries of the modules that build them,
so adding an option is one entry in one file.

A value the YAML sets lives in the YAML alone: its field here is MISSING, so a config that is not
composed from the YAML fails instead of training a recipe no run uses. The defaults that remain
are the "off" value of an option (no regularizer, no ramp, no trigger), the result-neutral
settings (device, logging, resume), which a checkpoint's config does not hold, and constants of a
method that no YAML sets (CutMix's and MixUp's alpha, Random Erasing's aspect range, SGD's
momentum, the LR-scaling reference batch).

This module imports no torch, and nothing of this package but its errors: the report uses its
rules (which keys change results) on JSON alone. Whether an option name exists is asked of the
registry that builds it, by validation.py, one layer up.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, ValidationError

from cutmix_runner.errors import ConfigError

# The YAML tree (`configs/` at the repository root links here): package data, so that an
# installed wheel composes the same configs as a checkout.
CONFIG_DIR = Path(__file__).resolve().parent / "configs"

# Keys that do not change results: resume accepts a checkpoint with them changed, the report
# ignores them when it groups runs into arms, and sweep directory names leave them out
# (configs/train.yaml lists the same keys; tests/test_structure.py checks that they agree).
RESULT_NEUTRAL: dict[str, tuple[str, ...]] = {
    "trainer": ("resume", "progress", "device", "num_threads", "eval_batch_size",
                "keep_freed_memory", "sync_every", "cudnn_benchmark", "logger",
                "accuracy_levels", "keep_checkpoints"),
    "data": ("root", "download"),
}


def neutral_keys() -> list[str]:
    """RESULT_NEUTRAL as dotted keys, e.g. 'trainer.resume'."""
    return [f"{group}.{key}" for group, keys in RESULT_NEUTRAL.items() for key in keys]


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def _check_prob(value: float, key: str) -> None:
    _check(0.0 <= value <= 1.0, key, f"must be a probability in [0, 1], got {value}")


@dataclass
class ModelConfig:
    name: str = MISSING  # a timm model name, e.g. tf_efficientnet_lite0
    # a key of model.WEIGHT_SOURCES (packaged | timm | none), or a path to a state dict
    weights: str = MISSING
    # Input resolution; null means the backbone's own pretrained size.
    image_size: int | None = MISSING
    drop_rate: float = MISSING
    # Pad trained depthwise convs before convolving (model.py): same numbers, a different CPU
    # kernel. null = decided per device by runtime.explicit_padding_pays (measured both ways).
    explicit_depthwise_padding: bool | None = None

    def validate(self) -> None:
        _check(self.image_size is None or self.image_size >= 8, "model.image_size",
               f"must be at least 8 pixels, got {self.image_size}")
        _check(0.0 <= self.drop_rate < 1.0, "model.drop_rate", "must be in [0, 1)")


@dataclass
class DataConfig:
    name: str = MISSING  # a key of data.DATASETS: cifar10 | synthetic
    root: str = "data/cifar10"  # holds cifar-10-batches-py/ (or is that folder)
    # true: fetch the official archive (MD5-checked) when the folder is missing
    download: bool = False
    val_size: int = MISSING  # stratified hold-out from the training set, for model selection
    train_subset: int | None = None  # e.g. 5000 for a stratified small-data study
    # A fixed stratified subset of the test set (the same images for every seed and split), for
    # quick runs whose test scoring would outlast their training; null: all of it.
    test_subset: int | None = None
    split_seed: int = MISSING  # fixes the validation split and subset
    # Batched augmentation: random translation by up to `pad` pixels, horizontal flip.
    pad: int = MISSING
    hflip: bool = MISSING
    # Only for name=synthetic: the data set itself (tiny class-coloured images, data.py).
    synthetic_train_size: int = 240
    synthetic_test_size: int = 100
    synthetic_classes: int = 10

    def validate(self) -> None:
        _check(self.val_size >= 0, "data.val_size", f"must be >= 0, got {self.val_size}")
        for key in ("train_subset", "test_subset"):
            value = getattr(self, key)
            _check(value is None or value > 0, f"data.{key}",
                   f"must be positive or null, got {value}")
        _check(self.pad >= 0, "data.pad", f"must be >= 0, got {self.pad}")
        _check(self.synthetic_classes >= 2, "data.synthetic_classes", "must be at least 2")




@dataclass
class RampConfig:
    """How `prob` and the area bounds move across a stage's epochs.

    constant: the regularizer's values hold for every epoch.
    linear: they move linearly from the regularizer's values (first epoch) to the `*_end`
      values (last epoch); a null end keeps the start value.
    step: from stage epoch `at[i]` (1-based) on, they take `prob_steps[i]` (and
      `min_area_steps[i]`, `max_area_steps[i]` where those lists are given).
    """

    kind: str = "constant"
    prob_end: float | None = None
    min_area_end: float | None = None
    max_area_end: float | None = None
    at: list[int] = field(default_factory=list)
    prob_steps: list[float] = field(default_factory=list)
    min_area_steps: list[float] = field(default_factory=list)
    max_area_steps: list[float] = field(default_factory=list)


Values = tuple[float, float, float]  # (prob, min_area, max_area)


def _constant(ramp: RampConfig, start: Values, epoch: int, epochs: int) -> Values:
    return start


def _linear(ramp: RampConfig, start: Values, epoch: int, epochs: int) -> Values:
    t = epoch / (epochs - 1) if epochs > 1 else 0.0

    def lerp(value: float, end: float | None) -> float:
        return value if end is None else value + (end - value) * t

    prob, lo, hi = start
    return lerp(prob, ramp.prob_end), lerp(lo, ramp.min_area_end), lerp(hi, ramp.max_area_end)


def _step(ramp: RampConfig, start: Values, epoch: int, epochs: int) -> Values:
    prob, lo, hi = start
    for i, at in enumerate(ramp.at):
        if epoch + 1 >= at:
            prob = ramp.prob_steps[i]
            lo = ramp.min_area_steps[i] if ramp.min_area_steps else lo
            hi = ramp.max_area_steps[i] if ramp.max_area_steps else hi
    return prob, lo, hi


# ramp.kind -> the stage's (prob, min_area, max_area) at a 0-based epoch.
RAMPS: dict[str, Callable[[RampConfig, Values, int, int], Values]] = {
    "constant": _constant,
    "linear": _linear,
    "step": _step,
}


@dataclass
class RegularizerConfig:
    """One stage's batch regularizer; see cutmix_runner/mixing.py for each kind."""

    # a key of mixing.REGULARIZERS: none | cutmix | mixup | random_erasing | cutmix_or_mixup
    name: str = "none"
    # a key of mixing.MODES. batch: one coin (and one box or lambda) per batch. elem: one per
    # image, as timm's "elem" mode; only for cutmix and mixup (mixing.ELEM_REGULARIZERS).
    mode: str = "batch"
    # cutmix/mixup/cutmix_or_mixup: chance a batch (elem: an image) is mixed; random_erasing:
    # chance per image.
    prob: float = 0.0
    cutmix_alpha: float = 1.0  # Beta shape of the CutMix patch area within its bounds
    mixup_alpha: float = 0.2  # MixUp's lambda ~ Beta(alpha, alpha)
    mixup_per_sample: bool = False
    # Patch area bounds (fractions of the image) for CutMix and Random Erasing.
    min_area: float = 0.0
    max_area: float = 1.0
    min_aspect: float = 0.3  # Random Erasing box aspect range
    max_aspect: float = 3.3
    erase_fill: str = "random"  # random (noise) | zero (the normalised mean)
    switch_prob: float = 0.5  # cutmix_or_mixup: chance a mixed batch uses CutMix
    label_smoothing: float = 0.0  # explicit; never added silently
    ramp: RampConfig = field(default_factory=RampConfig)

    def values_at(self, epoch: int, epochs: int) -> tuple[float, float, float]:
        """(prob, min_area, max_area) for 0-based `epoch` of a stage with `epochs` epochs."""
        start = (self.prob, self.min_area, self.max_area)
        return RAMPS[self.ramp.kind](self.ramp, start, epoch, epochs)

    def validate(self, key: str, epochs: int) -> None:
        _check(self.cutmix_alpha > 0, f"{key}.cutmix_alpha",
               f"must be > 0, got {self.cutmix_alpha}")
        _check(self.mixup_alpha > 0, f"{key}.mixup_alpha", f"must be > 0, got {self.mixup_alpha}")
        _check(0 < self.min_aspect <= self.max_aspect, f"{key}.min_aspect",
               "need 0 < min_aspect <= max_aspect")
        _check(self.erase_fill in ("random", "zero"), f"{key}.erase_fill",
               f"must be random or zero, got '{self.erase_fill}'")
        _check_prob(self.switch_prob, f"{key}.switch_prob")
        _check(0 <= self.label_smoothing < 1, f"{key}.label_smoothing", "must be in [0, 1)")
        ramp = self.ramp
        _check(ramp.kind in RAMPS, f"{key}.ramp.kind",
               f"must be one of {', '.join(RAMPS)}, got '{ramp.kind}'")
        if ramp.kind == "step":
            _check(len(ramp.prob_steps) == len(ramp.at), f"{key}.ramp.prob_steps",
                   "needs one value per entry of ramp.at")
            for name in ("min_area_steps", "max_area_steps"):
                values = getattr(ramp, name)
                _check(not values or len(values) == len(ramp.at), f"{key}.ramp.{name}",
                       "must be empty or have one value per entry of ramp.at")
            _check(list(ramp.at) == sorted(ramp.at) and all(a >= 1 for a in ramp.at),
                   f"{key}.ramp.at", "must be increasing 1-based epochs")
        # Every epoch's effective values must be valid, not just the start values.
        for epoch in range(epochs):
            prob, lo, hi = self.values_at(epoch, epochs)
            where = "" if ramp.kind == "constant" else f" (at stage epoch {epoch + 1})"
            _check(0.0 <= prob <= 1.0, f"{key}.prob",
                   f"must be a probability in [0, 1], got {prob:g}{where}")
            _check(0.0 <= lo <= 1.0, f"{key}.min_area", f"must be in [0, 1], got {lo:g}{where}")
            _check(0.0 <= hi <= 1.0, f"{key}.max_area", f"must be in [0, 1], got {hi:g}{where}")
            _check(lo <= hi, f"{key}.min_area",
                   f"must not exceed max_area ({lo:g} > {hi:g}){where}")


@dataclass
class StageConfig:
    """One stage; its name is its key under schedule.stages."""

    epochs: int = MISSING  # fixed length, or the cap when a trigger below may end the stage early
    # plateau: end once validation accuracy has not improved by min_delta for `patience` epochs
    # (0 disables).
    patience: int = 0
    min_delta: float = 0.0
    # gap: end once clean-train accuracy minus validation accuracy exceeds this (null disables).
    max_gap: float | None = None
    # How much of the backbone trains: 0 = head only, N = the top N blocks, -1 = everything.
    unfreeze_blocks: int = MISSING
    lr_head: float = MISSING
    lr_backbone: float = MISSING
    warmup_epochs: float = 0.0
    # Training resolution in this stage (null: model.image_size). Evaluation always runs at
    # model.image_size, so a lower size early is progressive resizing: cheaper epochs while the
    # backbone adapts, the final size for the last ones (docs/benchmarks.md, "Default-run levers").
    image_size: int | None = None
    regularizer: RegularizerConfig = field(default_factory=RegularizerConfig)

    def validate(self, key: str) -> None:
        _check(self.epochs >= 1, f"{key}.epochs", f"must be >= 1, got {self.epochs}")
        _check(self.patience >= 0, f"{key}.patience", f"must be >= 0, got {self.patience}")
        _check(self.min_delta >= 0, f"{key}.min_delta", f"must be >= 0, got {self.min_delta}")
        _check(self.max_gap is None or -1 < self.max_gap <= 1, f"{key}.max_gap",
               "must be a fraction in (-1, 1] or null")
        _check(self.unfreeze_blocks >= -1, f"{key}.unfreeze_blocks",
               f"must be -1 (all), 0 (head only) or a block count, got {self.unfreeze_blocks}")
        _check(self.lr_head >= 0, f"{key}.lr_head", f"must be >= 0, got {self.lr_head}")
        _check(self.lr_backbone >= 0, f"{key}.lr_backbone",
               f"must be >= 0, got {self.lr_backbone}")
        _check(0 <= self.warmup_epochs <= self.epochs, f"{key}.warmup_epochs",
               f"must be in [0, epochs], got {self.warmup_epochs}")
        _check(self.image_size is None or self.image_size >= 8, f"{key}.image_size",
               f"must be at least 8 pixels or null, got {self.image_size}")
        self.regularizer.validate(f"{key}.regularizer", self.epochs)


@dataclass
class ScheduleConfig:
    name: str = MISSING
    # Stages run in the order they are written; keys are stage names.
    stages: dict[str, StageConfig] = field(default_factory=dict)

    def validate(self) -> None:
        _check(len(self.stages) > 0, "schedule.stages", "the stage list is empty")
        for name, stage in self.stages.items():
            stage.validate(f"schedule.stages.{name}")


def expected_dose(schedule: ScheduleConfig) -> float:
    """The expected number of times each training image is mixed over the whole schedule: the
    sum over every epoch of its stage's probability, at the stage's full length (a stage ended
    early by a trigger mixes less; summary.json's `dose` counts what happened). Arms that
    compare timing or direction are built to be equal on this (tests/test_study.py)."""
    return sum(stage.regularizer.values_at(epoch, stage.epochs)[0]
               for stage in schedule.stages.values() if stage.regularizer.name != "none"
               for epoch in range(stage.epochs))


# optim.lr_scaling -> exponent of (batch_size / reference_batch_size) applied to every LR.
LR_SCALING: dict[str, float] = {"none": 0.0, "sqrt": 0.5, "linear": 1.0}


@dataclass
class OptimConfig:
    name: str = MISSING  # a key of optim.OPTIMIZERS: adamw | sgd
    weight_decay: float = MISSING
    momentum: float = 0.9  # sgd only; every checkpoint records it, so it stays as it was
    # Cosine decays each stage's learning rates to this fraction of their peak.
    min_lr_ratio: float = MISSING
    grad_clip: float | None = None
    # The stages' learning rates are tuned at `reference_batch_size`; at another batch size they
    # are multiplied by (batch / reference) ** 0.5 for "sqrt" (the rule for Adam-type optimizers),
    # by batch / reference for "linear" (SGD), or left alone for "none".
    lr_scaling: str = "none"
    reference_batch_size: int = 128
    # null: torch's fused AdamW/SGD kernels on CUDA (one launch per step), its default elsewhere.
    fused: bool | None = None

    def validate(self) -> None:
        _check(self.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
        _check(self.lr_scaling in LR_SCALING, "optim.lr_scaling",
               f"must be one of {', '.join(LR_SCALING)}, got '{self.lr_scaling}'")
        _check(self.reference_batch_size >= 1, "optim.reference_batch_size", "must be >= 1")
        _check(0 <= self.min_lr_ratio <= 1, "optim.min_lr_ratio", "must be in [0, 1]")
        _check(self.grad_clip is None or self.grad_clip > 0, "optim.grad_clip",
               "must be positive or null")


@dataclass
class TrainerConfig:
    device: str = "auto"  # auto | cpu | cuda
    precision: str = MISSING  # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16
    # Evaluation passes (validation, diagnostics, test): fp32 | bf16 | auto (bf16 on CUDA and
    # on CPUs with native bf16). fp32 by default on CPU: bf16 ran 1.3x faster on an AMX CPU but
    # moved single-view test accuracy by 0.2 point on the same weights (docs/benchmarks.md).
    eval_precision: str = MISSING
    # The frozen modules' forward while training (they only extract features): fp32 | bf16 |
    # auto (bf16 on CPUs with native bf16). fp32 by default: `make bench` measures whether bf16
    # pays on your CPU (docs/benchmarks.md).
    frozen_precision: str = MISSING
    batch_size: int = MISSING
    eval_batch_size: int = 128
    seed: int = MISSING
    progress: bool = True  # tqdm bars; also off when stderr is not a TTY
    channels_last: bool = MISSING  # nearly 2x faster fp32 training on CPU
    num_threads: int = 0  # 0 leaves torch's default
    # glibc mallopt: reuse freed activation buffers instead of page-faulting
    keep_freed_memory: bool = True
    # null: a fresh run. auto: continue from this run directory's checkpoints/last.pt if there
    # is one. A path: continue from that checkpoint (or that run directory's last.pt).
    resume: str | None = None
    # Fixed subset of the training split evaluated clean (eval mode, no augmentation) each epoch.
    clean_train_size: int = MISSING
    # Prediction flip rate: the first `flip_subset` validation (and test) images, perturbed by
    # Gaussian noise of std `flip_noise_sigma` on the 0-1 pixel scale, or shifted by 1..
    # `flip_max_shift` pixels per axis; fixed seeds so that runs compare.
    flip_subset: int = MISSING
    flip_noise_sigma: float = MISSING
    flip_max_shift: int = MISSING
    # Final test accuracy and loss on the mean logits of each image and its mirror (the summary
    # also keeps the single-view numbers). Validation, model selection and the diagnostics
    # always use the single view.
    test_flip: bool = MISSING
    # Read the training loss back every N steps (progress bar, non-finite check). 1 checks each
    # loss before its update; on CUDA each read makes the host wait for the GPU, so trainer=gpu
    # reads every 50 steps, and a non-finite loss then stops the run up to 49 updates late.
    sync_every: int = 1
    cudnn_benchmark: bool = True  # CUDA: time cuDNN's algorithms once per shape, keep the fastest
    # torch.compile the model (CUDA mostly); the first step of each stage and the first eval
    # pay the compile time, which each epoch's record reports as first_step_seconds (under
    # trainer.ema_decay the average is evaluated uncompiled). Not result-neutral: compiled
    # kernels round differently (a full CPU run's first loss moved in the 3rd decimal), so a
    # resume must not switch it and the report keeps compiled runs in their own arm.
    compile: bool = False
    # none: metrics.jsonl and the example grids (examples_STAGE.png) only. tensorboard: also
    # event files in RUN_DIR/tensorboard (the optional `tensorboard` extra).
    logger: str = "none"
    # Validation accuracies whose first crossing summary.json times (time_to_accuracy: wall-clock
    # seconds since the run started, set-up included, across resumes): the figure users compare
    # runners by.
    accuracy_levels: list[float] = field(default_factory=lambda: [0.90, 0.91, 0.92])
    # Which checkpoints a finished run keeps: both (last.pt, to resume or check a config, and
    # best.pt, the model the tools use), best (about 41 MB less per run at 80 px), or none.
    keep_checkpoints: str = "both"
    # Under torchrun: BatchNorm statistics over the global batch instead of each rank's slice
    # (distributed.SyncedBatchNorm; one all-reduce per layer and step). No effect in one process.
    sync_bn: bool = False
    # An exponential moving average of the weights (timm's ModelEmaV3 with its warmup: the
    # decay grows from 0 towards this cap, so the early, fast-changing steps fade quickly). When
    # set, the average is what every evaluation scores, what model selection picks, what the
    # stage-end rules (patience, max_gap) and the search's pruning see, and what the
    # checkpoints' "model" holds; null: off.
    ema_decay: float | None = None
    # false: the first update copies the weights and every later one uses ema_decay itself. In
    # a run as short as the default (3,000 steps) the warmup keeps the decay below 0.996, an
    # average over ~200 steps whatever the cap (docs/benchmarks.md, "Default-run levers").
    ema_warmup: bool = True

    def validate(self) -> None:
        _check(self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
               "trainer.device", f"must be auto, cpu or cuda, got '{self.device}'")
        for key in ("precision", "eval_precision", "frozen_precision"):
            value = getattr(self, key)
            _check(value in ("auto", "fp32", "bf16"), f"trainer.{key}",
                   f"must be auto, fp32 or bf16, got '{value}'")
        _check(self.batch_size >= 1, "trainer.batch_size", "must be >= 1")
        _check(self.eval_batch_size >= 1, "trainer.eval_batch_size", "must be >= 1")
        _check(self.num_threads >= 0, "trainer.num_threads", "must be >= 0")
        _check(self.clean_train_size >= 0, "trainer.clean_train_size", "must be >= 0")
        _check(self.flip_subset >= 0, "trainer.flip_subset", "must be >= 0")
        _check(self.flip_noise_sigma >= 0, "trainer.flip_noise_sigma", "must be >= 0")
        _check(self.flip_max_shift >= 1, "trainer.flip_max_shift", "must be >= 1")
        _check(self.sync_every >= 1, "trainer.sync_every", "must be >= 1")
        _check(self.keep_checkpoints in ("both", "best", "none"), "trainer.keep_checkpoints",
               f"must be both, best or none, got '{self.keep_checkpoints}'")
        _check(all(0 < level <= 1 for level in self.accuracy_levels), "trainer.accuracy_levels",
               f"must be accuracies in (0, 1], got {self.accuracy_levels}")
        _check(self.logger in ("none", "tensorboard"), "trainer.logger",
               f"must be none or tensorboard, got '{self.logger}'")
        _check(self.ema_decay is None or 0 < self.ema_decay < 1, "trainer.ema_decay",
               f"must be in (0, 1) or null, got {self.ema_decay}")


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def validate(self) -> None:
        self.model.validate()
        self.data.validate()
        self.schedule.validate()
        self.optim.validate()
        self.trainer.validate()


def result_config(cfg: RunConfig) -> dict[str, Any]:
    """The config as a dict, without the keys that do not affect results."""
    out = asdict(cfg)
    for group, keys in RESULT_NEUTRAL.items():
        for key in keys:
            out[group].pop(key, None)
    return out


# The default option of each group that holds recipe values (configs/train.yaml's defaults):
# where a key the schema leaves MISSING gets its value for a checkpoint saved before it existed.
BASE_GROUP_FILES = {"model": "model/efficientnet_lite0.yaml", "data": "data/cifar10.yaml",
                    "optim": "optim/adamw.yaml", "trainer": "trainer/default.yaml"}


def completed(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved `result_config` with the keys it lacks (added to the schema after it was saved)
    at their values in the base group files, the behaviour before each key existed. Keys with a
    schema default take that default when the result is parsed."""
    return OmegaConf.to_container(OmegaConf.merge(_base_values(), saved))  # type: ignore[return-value]


@functools.cache
def _base_values() -> dict[str, Any]:
    """The base group files' values, read once per process (every resume check and every
    loaded checkpoint asks for them)."""
    return {group: {k: v for k, v in (OmegaConf.to_container(
        OmegaConf.load(CONFIG_DIR / name)) or {}).items() if k != "defaults"}  # type: ignore[union-attr]
        for group, name in BASE_GROUP_FILES.items()}


def with_current_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved `result_config` with the keys added to the schema since then at their defaults."""
    merged = OmegaConf.merge(OmegaConf.structured(RunConfig), completed(saved))
    return result_config(OmegaConf.to_object(merged))  # type: ignore[arg-type]


def config_difference(old: Any, new: Any, prefix: str = "") -> str:
    """The first key whose value differs, as 'key: old -> new'; empty when equal."""
    if isinstance(old, dict) and isinstance(new, dict):
        if set(old) == set(new) and list(old) != list(new):
            return f"{prefix.rstrip('.')}: order {list(old)} -> {list(new)}"
        for key in list(old) + [k for k in new if k not in old]:
            diff = config_difference(old.get(key), new.get(key), f"{prefix}{key}.")
            if diff:
                return diff
        return ""
    return "" if old == new else f"{prefix.rstrip('.')}: {old!r} -> {new!r}"


def register_configs() -> None:
    """Register the schema so that `configs/train.yaml` and each group are checked against it."""
    ConfigStore.instance().store(name="run_schema", node=RunConfig)


def parse(cfg: DictConfig | dict[str, Any]) -> RunConfig:
    """A composed config as checked dataclasses: every key typed, every value in range. Option
    names (which need the registries above this module) are checked by validation.validate."""
    # As plain values: a node Hydra composed is already typed, and a `+key` the schema lacks
    # would ride along on it unchecked; merged from plain values onto the schema, it is refused.
    plain = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    try:
        merged = OmegaConf.merge(OmegaConf.structured(RunConfig), plain)
    except ConfigKeyError as exc:
        raise ConfigError(f"{exc.full_key}: no such key (misspelled, or a +key that the "
                          "schema does not have); `cutmix-train --help` lists the groups") from None
    except ValidationError as exc:
        raise ConfigError(f"{exc.full_key}: {str(exc).splitlines()[0]}") from None
    try:
        run = OmegaConf.to_object(merged)
    except MissingMandatoryValue as exc:  # a config not composed from configs/, e.g. by hand
        raise ConfigError(f"{exc.full_key}: no value; the recipe's YAML (configs/) sets it, so "
                          "compose the config as cutmix-train does") from None
    assert isinstance(run, RunConfig)
    run.validate()
    return run
