"""The `optim` group: each stage's optimizer (head and backbone parameter groups) and its LR
schedule, linear warm-up then cosine decay over the stage's own steps.

Both are built fresh per stage (instead of adding parameter groups to a live optimizer when more
blocks unfreeze), so each stage's schedule is self-contained and a resumed stage rebuilds exactly
the optimizer it saved.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from cutmix_runner.config import LR_SCALING, OptimConfig, StageConfig
from cutmix_runner.model import FreezePlan


def param_groups(model: nn.Module, plan: FreezePlan, lr_head: float, lr_backbone: float,
                 weight_decay: float) -> list[dict[str, Any]]:
    """Head and backbone groups of the trainable parameters; biases and norms get no decay."""
    head_ids = {id(p) for m in plan.head for p in m.parameters()}
    buckets: dict[tuple[str, str], list[nn.Parameter]] = {}
    for p in model.parameters():
        if p.requires_grad:
            part = "head" if id(p) in head_ids else "backbone"
            buckets.setdefault((part, "decay" if p.ndim > 1 else "no_decay"), []).append(p)
    lrs = {"head": lr_head, "backbone": lr_backbone}
    return [{"params": params, "lr": lrs[part], "name": f"{part}/{kind}",
             "weight_decay": weight_decay if kind == "decay" else 0.0}
            for (part, kind), params in sorted(buckets.items())]


def _fused(groups: list[dict[str, Any]], cfg: OptimConfig) -> bool | None:
    """optim.fused=null: fused kernels when the parameters are on CUDA; torch's default else."""
    if cfg.fused is not None:
        return cfg.fused
    return True if groups and groups[0]["params"][0].is_cuda else None


def _adamw(groups: list[dict[str, Any]], lr: float, cfg: OptimConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=lr, fused=_fused(groups, cfg))


def _sgd(groups: list[dict[str, Any]], lr: float, cfg: OptimConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=True,
                           fused=_fused(groups, cfg))


# optim.name -> factory; config validation takes the allowed names from here.
OPTIMIZERS: dict[str, Callable[[list[dict[str, Any]], float, OptimConfig],
                               torch.optim.Optimizer]] = {
    "adamw": _adamw,
    "sgd": _sgd,
}


def lr_scale(cfg: OptimConfig, batch_size: int) -> float:
    """The factor on every stage LR at `batch_size` (optim.lr_scaling; 1 at the reference)."""
    return (batch_size / cfg.reference_batch_size) ** LR_SCALING[cfg.lr_scaling]


def build_optimizer(model: nn.Module, plan: FreezePlan, stage: StageConfig, cfg: OptimConfig,
                    batch_size: int) -> torch.optim.Optimizer:
    scale = lr_scale(cfg, batch_size)
    groups = param_groups(model, plan, stage.lr_head * scale, stage.lr_backbone * scale,
                          cfg.weight_decay)
    return OPTIMIZERS[cfg.name](groups, stage.lr_head * scale, cfg)


def lr_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Linear warm-up to 1, then cosine decay to `min_ratio` at `total_steps`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / span, 1.0)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, stage: StageConfig, steps_per_epoch: int,
                    min_ratio: float) -> torch.optim.lr_scheduler.LambdaLR:
    total = stage.epochs * steps_per_epoch
    warmup = int(round(stage.warmup_epochs * steps_per_epoch))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, warmup, total, min_ratio))
