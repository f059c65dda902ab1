"""One optimisation step, shared by the training loop and `make bench`, so that the benchmark
times the step a run takes: preprocess, regularize, forward (under autocast), the soft-target
loss with explicit label smoothing, backward, gradient clipping, optimizer and LR scheduler
steps. (The loop also reads each step's loss back with `StepTally.add`, one device sync per
step; the benchmark does not.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cutmix_runner.mixing import Regularizer, smooth, soft_target_cross_entropy


class NonFiniteLoss(ArithmeticError):
    """The loss is NaN or infinite; raised before backward, so the weights are untouched."""


@dataclass
class StepResult:
    loss: torch.Tensor  # detached scalar, on the training device
    batch_size: int
    mixed_fraction: float  # fraction of the batch the regularizer changed
    lam: float  # mean weight of each image's own label


@dataclass
class TrainStep:
    """What one step needs that stays fixed for a stage."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    regularizer: Regularizer
    preprocess: Callable[[torch.Tensor], torch.Tensor]
    autocast: Callable[[], Any]
    label_smoothing: float = 0.0
    grad_clip: float | None = None


def train_step(step: TrainStep, images: torch.Tensor, labels: torch.Tensor,
               loss_hook: Callable[[torch.Tensor], torch.Tensor] | None = None) -> StepResult:
    """Train on one augmented uint8 batch. `loss_hook` may replace the loss before the finite
    check (the test-only fault injection poisons it there)."""
    mix = step.regularizer(step.preprocess(images), labels)
    with step.autocast():
        logits = step.model(mix.images)
    loss = soft_target_cross_entropy(logits, smooth(mix.targets, step.label_smoothing))
    if loss_hook is not None:
        loss = loss_hook(loss)
    if not torch.isfinite(loss):
        raise NonFiniteLoss
    step.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if step.grad_clip:
        torch.nn.utils.clip_grad_norm_(step.model.parameters(), step.grad_clip)
    step.optimizer.step()
    step.scheduler.step()
    return StepResult(loss.detach(), len(labels), mix.mixed_fraction, mix.lam)


@dataclass
class StepTally:
    """Image-weighted sums over the steps of an epoch, for its metrics record."""

    loss: float = 0.0
    images: int = 0
    mixed_images: float = 0.0
    lam: float = 0.0

    def add(self, result: StepResult) -> float:
        """Count one step; returns its loss as a float (one device sync per step)."""
        loss = result.loss.item()
        self.loss += loss * result.batch_size
        self.images += result.batch_size
        self.mixed_images += result.mixed_fraction * result.batch_size
        self.lam += result.lam * result.batch_size
        return loss

    def record(self, seconds: float) -> dict[str, float]:
        return {"train_loss": self.loss / self.images,
                "mixed_fraction": self.mixed_images / self.images,
                "mean_lambda": self.lam / self.images, "images_per_second": self.images / seconds}
