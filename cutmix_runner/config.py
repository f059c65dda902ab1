"""Structured config schema: every key the YAML tree may set, with types and value checks.

Hydra merges the YAML files onto these dataclasses, so an unknown or misspelled key, or a value
of the wrong type, fails at composition. Range checks live in each
class's ``validate`` and run from the module-level ``validate``, before any training starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf


class ConfigError(ValueError):
    """A config value that is well-typed but not allowed; the message names the key."""


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def _check_prob(value: float, key: str) -> None:
    _check(0.0 <= value <= 1.0, key, f"must be a probability in [0, 1], got {value}")


@dataclass
class ModelConfig:
    name: str = "tf_efficientnet_lite0"
    # packaged | timm | none | path to a state dict
    weights: str = "packaged"
    # Input resolution; null means the backbone's own pretrained size.
    image_size: int | None = 64
    drop_rate: float = 0.2

    def validate(self) -> None:
        _check(self.image_size is None or self.image_size >= 8, "model.image_size",
               f"must be at least 8 pixels, got {self.image_size}")
        _check(0.0 <= self.drop_rate < 1.0, "model.drop_rate", "must be in [0, 1)")


@dataclass
class DataConfig:
    name: str = "cifar10"  # cifar10 | synthetic
    root: str = "data/cifar10"
    download: bool = False
    val_size: int = 5000
    train_subset: int | None = None
    split_seed: int = 0
    # Batched augmentation: random translation by up to `pad` pixels, horizontal flip.
    pad: int = 4
    hflip: bool = True
    # Only for name=synthetic.
    synthetic_train_size: int = 240
    synthetic_test_size: int = 100
    synthetic_classes: int = 10

    def validate(self) -> None:
        _check(self.name in ("cifar10", "synthetic"), "data.name",
               f"must be 'cifar10' or 'synthetic', got '{self.name}'")
        _check(self.val_size >= 0, "data.val_size", f"must be >= 0, got {self.val_size}")
        _check(self.train_subset is None or self.train_subset > 0, "data.train_subset",
               f"must be positive or null, got {self.train_subset}")
        _check(self.pad >= 0, "data.pad", f"must be >= 0, got {self.pad}")
        _check(self.synthetic_classes >= 2, "data.synthetic_classes", "must be at least 2")


@dataclass
class CutMixConfig:
    """Per-stage CutMix. Patch area bounds are fractions of the image area."""

    prob: float = 0.0
    alpha: float = 1.0
    min_area: float = 0.0
    max_area: float = 1.0

    def validate(self, key: str) -> None:
        _check_prob(self.prob, f"{key}.prob")
        _check(self.alpha > 0, f"{key}.alpha", f"must be > 0, got {self.alpha}")
        _check_prob(self.min_area, f"{key}.min_area")
        _check_prob(self.max_area, f"{key}.max_area")
        _check(self.min_area <= self.max_area, f"{key}.min_area",
               f"must not exceed max_area ({self.min_area} > {self.max_area})")


@dataclass
class StageConfig:
    name: str = MISSING
    epochs: int = 1  # the cap on this stage's epochs
    # >0: end the stage early once validation accuracy has not improved by min_delta
    # for `patience` epochs. 0: always run `epochs` epochs.
    patience: int = 0
    min_delta: float = 0.0
    # How much of the backbone trains: 0 = head only, N = the top N blocks, -1 = everything.
    unfreeze_blocks: int = 0
    lr_head: float = 1e-3
    lr_backbone: float = 1e-4
    warmup_epochs: float = 0.0
    cutmix: CutMixConfig = field(default_factory=CutMixConfig)

    def validate(self, key: str) -> None:
        _check(bool(self.name), f"{key}.name", "must not be empty")
        _check(self.epochs >= 1, f"{key}.epochs", f"must be >= 1, got {self.epochs}")
        _check(self.patience >= 0, f"{key}.patience", f"must be >= 0, got {self.patience}")
        _check(self.min_delta >= 0, f"{key}.min_delta", f"must be >= 0, got {self.min_delta}")
        _check(self.unfreeze_blocks >= -1, f"{key}.unfreeze_blocks",
               f"must be -1 (all), 0 (head only) or a block count, got {self.unfreeze_blocks}")
        _check(self.lr_head >= 0, f"{key}.lr_head", f"must be >= 0, got {self.lr_head}")
        _check(self.lr_backbone >= 0, f"{key}.lr_backbone",
               f"must be >= 0, got {self.lr_backbone}")
        _check(0 <= self.warmup_epochs <= self.epochs, f"{key}.warmup_epochs",
               f"must be in [0, epochs], got {self.warmup_epochs}")
        self.cutmix.validate(f"{key}.cutmix")


@dataclass
class ScheduleConfig:
    name: str = "staged"
    stages: list[StageConfig] = field(default_factory=list)

    def validate(self) -> None:
        _check(len(self.stages) > 0, "schedule.stages", "the stage list is empty")
        names = [s.name for s in self.stages]
        _check(len(set(names)) == len(names), "schedule.stages",
               f"stage names must be unique, got {names}")
        for i, stage in enumerate(self.stages):
            stage.validate(f"schedule.stages.{i}")


@dataclass
class OptimConfig:
    name: str = "adamw"  # adamw | sgd
    weight_decay: float = 0.01
    momentum: float = 0.9  # sgd only
    # Cosine decays each stage's learning rates to this fraction of their peak.
    min_lr_ratio: float = 0.01
    grad_clip: float | None = None

    def validate(self) -> None:
        _check(self.name in ("adamw", "sgd"), "optim.name",
               f"must be 'adamw' or 'sgd', got '{self.name}'")
        _check(self.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
        _check(0 <= self.min_lr_ratio <= 1, "optim.min_lr_ratio", "must be in [0, 1]")
        _check(self.grad_clip is None or self.grad_clip > 0, "optim.grad_clip",
               "must be positive or null")


@dataclass
class TrainerConfig:
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16
    batch_size: int = 128
    eval_batch_size: int = 128
    seed: int = 0
    progress: bool = True
    channels_last: bool = True
    num_threads: int = 0  # 0 leaves torch's default
    # Fixed subset of the training split evaluated clean (eval mode, no augmentation) each epoch.
    clean_train_size: int = 2000

    def validate(self) -> None:
        _check(self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
               "trainer.device", f"must be auto, cpu or cuda, got '{self.device}'")
        _check(self.precision in ("auto", "fp32", "bf16"), "trainer.precision",
               f"must be auto, fp32 or bf16, got '{self.precision}'")
        _check(self.batch_size >= 1, "trainer.batch_size", "must be >= 1")
        _check(self.eval_batch_size >= 1, "trainer.eval_batch_size", "must be >= 1")
        _check(self.num_threads >= 0, "trainer.num_threads", "must be >= 0")
        _check(self.clean_train_size >= 0, "trainer.clean_train_size", "must be >= 0")


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


def register_configs() -> None:
    """Register the schema so that `configs/train.yaml` and each group are checked against it."""
    ConfigStore.instance().store(name="run_schema", node=RunConfig)


def validate(cfg: DictConfig | dict[str, Any]) -> RunConfig:
    """Turn a composed config into checked dataclasses; raises ConfigError naming the key."""
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(cfg)
    merged = OmegaConf.merge(OmegaConf.structured(RunConfig), cfg)
    run = OmegaConf.to_object(merged)
    assert isinstance(run, RunConfig)
    run.validate()
    return run
