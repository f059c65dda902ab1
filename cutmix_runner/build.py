"""Config -> the objects a run trains: its data splits, its model and preprocessing, and each
stage's training step (frozen parts, optimizer, LR schedule, regularizer).

The checks on the data, the model and every stage's freeze depth run here, before any training
time is spent (config values are checked earlier, by validation.validate).
"""

from __future__ import annotations

import torch
from timm.utils import ModelEmaV3
from torch import nn

from cutmix_runner.config import RunConfig, StageConfig
from cutmix_runner.data import Splits, build_splits, steps_per_epoch, stratified_split
from cutmix_runner.distributed import ONE_PROCESS, World, synced
from cutmix_runner.errors import RunError
from cutmix_runner.mixing import build_regularizer
from cutmix_runner.model import (
    FreezePlan,
    apply_freeze,
    build_model,
    build_preprocess,
    compute_frozen_in_bf16,
    plan_freeze,
)
from cutmix_runner.optim import build_optimizer, build_scheduler
from cutmix_runner.runtime import Runtime
from cutmix_runner.step import TrainStep
from cutmix_runner.transforms import Preprocess


def data_splits(cfg: RunConfig, device: torch.device, world: World = ONE_PROCESS) -> Splits:
    # Unequal slices would weight images unequally; BatchNorm needs 2 images per rank.
    if cfg.trainer.batch_size % world.size or cfg.trainer.batch_size < 2 * world.size:
        raise RunError(f"trainer.batch_size={cfg.trainer.batch_size} does not split evenly over "
                       f"{world.size} processes, at least 2 images each; use a multiple of "
                       f"{world.size} of at least {2 * world.size}")
    data = build_splits(cfg.data).to(device)
    if cfg.trainer.batch_size > len(data.train_x):
        raise RunError(f"trainer.batch_size={cfg.trainer.batch_size} is larger than the "
                       f"training set ({len(data.train_x)} images)")
    if len(data.val_x) == 0:
        raise RunError("data.val_size=0: a validation split is needed for model selection")
    return data


def clean_train_subset(data: Splits, cfg: RunConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed subset of the training split, scored clean each epoch for the generalization gap."""
    size = min(cfg.trainer.clean_train_size, len(data.train_x) - 1)
    index, _ = stratified_split(data.train_y.cpu(), size, cfg.data.split_seed + 2)
    index = index.to(data.train_x.device)
    return data.train_x[index], data.train_y[index]


def model_and_preprocess(cfg: RunConfig, num_classes: int, device: torch.device,
                         world: World = ONE_PROCESS) -> tuple[nn.Module, Preprocess]:
    model = build_model(cfg.model, num_classes, device)
    if world.parallel and cfg.trainer.sync_bn:
        synced(model)
    # Check every stage's freeze depth now, not when the stage starts.
    for name, stage in cfg.schedule.stages.items():
        try:
            plan_freeze(model, stage.unfreeze_blocks)
        except Exception as exc:
            raise RunError(f"schedule.stages.{name}.unfreeze_blocks: {exc}") from exc
    preprocess = build_preprocess(model, cfg.model, cfg.trainer.channels_last)
    memory_format = torch.channels_last if cfg.trainer.channels_last else torch.contiguous_format
    model.to(device, memory_format=memory_format)
    if cfg.trainer.compile:
        model.compile()  # in place: the state dict keeps its keys, checkpoints stay portable
    return model, preprocess


def weight_average(model: nn.Module, cfg: RunConfig) -> ModelEmaV3 | None:
    """The moving average of the weights that trainer.ema_decay asks for (a copy of the model,
    updated after every step), or None. timm's warmup (trainer.ema_warmup) lets the decay grow
    with the step count (1 - (1 + t)^(-2/3), capped at ema_decay), so the random head of the
    first steps fades fast."""
    if cfg.trainer.ema_decay is None:
        return None
    return ModelEmaV3(model, decay=cfg.trainer.ema_decay, use_warmup=cfg.trainer.ema_warmup)


def stage_step(model: nn.Module, cfg: RunConfig, index: int, stage: StageConfig,
               data: Splits, preprocess: Preprocess,
               runtime: Runtime) -> tuple[FreezePlan, TrainStep]:
    """Freeze for the stage, then a fresh optimizer, LR schedule and regularizer for it.

    The regularizer's seed depends on the training seed and the stage's index, so that arms which
    differ only in one stage's regularizer share everything else.
    """
    plan = plan_freeze(model, stage.unfreeze_blocks)
    apply_freeze(model, plan)
    compute_frozen_in_bf16(model, plan, runtime.device.type, runtime.frozen_precision == "bf16")
    optimizer = build_optimizer(model, plan, stage, cfg.optim, cfg.trainer.batch_size)
    steps = steps_per_epoch(len(data.train_x), cfg.trainer.batch_size, runtime.world.size)
    scheduler = build_scheduler(optimizer, stage, steps, cfg.optim.min_lr_ratio)
    regularizer = build_regularizer(stage.regularizer, data.num_classes,
                                    seed=runtime.world.seed(cfg.trainer.seed * 1000 + index))
    return plan, TrainStep(model, optimizer, scheduler, regularizer,
                           preprocess.at(stage.image_size), runtime.autocast,
                           stage.regularizer.label_smoothing, cfg.optim.grad_clip,
                           check_finite=cfg.trainer.sync_every == 1,
                           all_agree=runtime.world.all_agree)
