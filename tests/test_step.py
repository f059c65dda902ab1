"""The shared training step: what it updates, and that a bad loss stops before any update."""

from __future__ import annotations

import contextlib

import pytest
import torch

from cutmix_runner.mixing import CutMix
from cutmix_runner.step import NonFiniteLoss, StepTally, TrainStep, train_step


def _step(label_smoothing: float = 0.0, grad_clip: float | None = None) -> TrainStep:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 ** s)
    return TrainStep(model, optimizer, scheduler, CutMix(3, prob=1.0, seed=0),
                     lambda x: x.float() / 255, contextlib.nullcontext, label_smoothing,
                     grad_clip)


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return (torch.randint(0, 256, (6, 3, 4, 4), dtype=torch.uint8, generator=g),
            torch.arange(6) % 3)


def test_a_step_updates_weights_and_the_schedule_and_reports_the_mix() -> None:
    step = _step()
    before = [p.detach().clone() for p in step.model.parameters()]
    result = train_step(step, *_batch())
    assert all(not torch.equal(a, b) for a, b in zip(before, step.model.parameters(),
                                                     strict=True))
    assert step.optimizer.param_groups[0]["lr"] == pytest.approx(0.05)
    assert result.batch_size == 6 and 0 < result.mixed_fraction <= 1 and 0 < result.lam < 1
    assert not result.loss.requires_grad


def test_label_smoothing_is_applied_only_when_asked() -> None:
    plain = train_step(_step(), *_batch()).loss
    smoothed = train_step(_step(label_smoothing=0.3), *_batch()).loss
    assert not torch.equal(plain, smoothed)


def test_a_non_finite_loss_stops_before_the_weights_change() -> None:
    step = _step()
    before = [p.detach().clone() for p in step.model.parameters()]
    with pytest.raises(NonFiniteLoss):
        train_step(step, *_batch(), loss_hook=lambda loss: loss * float("inf"))
    assert all(torch.equal(a, b) for a, b in zip(before, step.model.parameters(), strict=True))
    assert step.optimizer.param_groups[0]["lr"] == 0.1


def test_the_tally_weights_by_images() -> None:
    tally = StepTally()
    step = _step()
    losses = [tally.add(train_step(step, *_batch())) for _ in range(2)]
    record = tally.record(seconds=2.0)
    assert record["train_loss"] == pytest.approx(sum(losses) / 2)
    assert record["images_per_second"] == 6.0
