"""One optimisation step, shared by the training loop and `make bench`, so that the benchmark
times the step a run takes: preprocess, regularize, forward (under autocast), the soft-target
loss with explicit label smoothing, backward, gradient clipping, optimizer and LR scheduler
steps. The loss stays on the device: `StepTally` sums it there and the loop reads it back every
`trainer.sync_every` steps, so a GPU is never made to wait for the host mid-epoch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from cutmix_runner.mixing import Regularizer, smooth, soft_target_cross_entropy
from cutmix_runner.transforms import Preprocess


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
    preprocess: Preprocess  # at the stage's training size (schedule.stages.NAME.image_size)
    autocast: Callable[[], Any]
    label_smoothing: float = 0.0
    grad_clip: float | None = None
    # Check each loss before its update (a host sync per step: free on CPU, costly on CUDA).
    # Off, the loop checks the summed loss at each read-back instead (trainer.sync_every).
    check_finite: bool = True
    # Whether every process agrees that a check holds: under DDP a NaN on one rank must stop all
    # of them (World.all_agree), or the others would wait for it in the gradient all-reduce.
    all_agree: Callable[[bool], bool] = bool


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
    if step.check_finite and not step.all_agree(bool(torch.isfinite(loss))):
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
    """Image-weighted sums over the steps of an epoch, for its metrics record. The loss sum stays
    a device tensor; `mean_loss` is the only read-back (one host sync)."""

    started: float = 0.0  # time.perf_counter() before the first step
    loss: torch.Tensor | float = 0.0
    images: int = 0
    mixed_images: float = 0.0
    lam: float = 0.0
    # Wall time of the epoch's first step, device work included: where torch.compile, cuDNN's
    # algorithm search and the optimizer's state allocation show up.
    first_step_seconds: float = 0.0

    def read_back(self, step_index: int, every: int,
                  all_agree: Callable[[bool], bool] = bool) -> float | None:
        """After 0-based step `step_index`: every `every` steps, the mean loss so far (one host
        sync), or NonFiniteLoss once it is NaN or infinite; else None. Times the first step."""
        if step_index == 0:
            self.mean_loss()  # waits for the device
            self.first_step_seconds = time.perf_counter() - self.started
        if (step_index + 1) % every:
            return None
        loss = self.mean_loss()
        if not all_agree(math.isfinite(loss)):
            raise NonFiniteLoss
        return loss

    def combined(self, sums: Callable[[list[float]], list[float]]) -> StepTally:
        """The tally over every rank, `sums` adding lists across them (World.sum); one read-back."""
        loss, images, mixed, lam = sums([float(self.loss), self.images, self.mixed_images,
                                         self.lam])
        return replace(self, loss=loss, images=round(images), mixed_images=mixed, lam=lam)

    def add(self, result: StepResult) -> None:
        self.loss = self.loss + result.loss * result.batch_size
        self.images += result.batch_size
        self.mixed_images += result.mixed_fraction * result.batch_size
        self.lam += result.lam * result.batch_size

    def mean_loss(self) -> float:
        """The mean loss so far (NaN or inf once any step's loss was)."""
        return float(self.loss) / max(self.images, 1)

    def record(self, seconds: float) -> dict[str, float]:
        return {"train_loss": self.mean_loss(), "train_images": self.images,
                "mixed_images": round(self.mixed_images),
                "mixed_fraction": self.mixed_images / self.images,
                "mean_lambda": self.lam / self.images, "images_per_second": self.images / seconds,
                "first_step_seconds": round(self.first_step_seconds, 4)}
