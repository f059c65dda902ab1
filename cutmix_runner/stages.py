"""Per-stage optimisation: a fresh optimizer and LR schedule per stage, and the plateau rule.

Building the optimizer per stage (instead of adding parameter groups mid-run) keeps each
stage's schedule self-contained: warm-up then cosine decay over the stage's own steps.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from cutmix_runner.config import OptimConfig, StageConfig
from cutmix_runner.model import FreezePlan, param_groups


def build_optimizer(model: nn.Module, plan: FreezePlan, stage: StageConfig,
                    cfg: OptimConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, plan, stage.lr_head, stage.lr_backbone, cfg.weight_decay)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=stage.lr_head, momentum=cfg.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=stage.lr_head)


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


class Plateau:
    """Ends a stage once validation accuracy has not improved by `min_delta` for `patience` epochs.

    patience=0 never ends a stage early.
    """

    def __init__(self, patience: int, min_delta: float) -> None:
        self.patience = patience
        self.min_delta = min_delta
        self.best = -math.inf
        self.bad_epochs = 0

    def update(self, val_accuracy: float) -> bool:
        """Record one epoch; True when the stage should end."""
        if val_accuracy > self.best + self.min_delta:
            self.best = val_accuracy
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
        return self.patience > 0 and self.bad_epochs >= self.patience


def gap_exceeded(gap: float, max_gap: float | None) -> bool:
    """The overfitting trigger: clean-train minus validation accuracy above `max_gap`."""
    return max_gap is not None and gap > max_gap
