"""The shared training step: what it updates, and that a bad loss stops before any update."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from cutmix_runner.mixing import CutMix
from cutmix_runner.step import NonFiniteLoss, StepTally, TrainStep, train_step
from cutmix_runner.transforms import Preprocess
from tests.helpers import SMOKE, train_in_process


def _step(label_smoothing: float = 0.0, grad_clip: float | None = None) -> TrainStep:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 ** s)
    return TrainStep(model, optimizer, scheduler, CutMix(3, prob=1.0, seed=0),
                     Preprocess(4, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),  # x / 255
                     contextlib.nullcontext, label_smoothing,
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


def test_label_smoothing_is_applied_exactly_as_asked() -> None:
    """With smoothing e the targets become (1 - e) * targets + e / classes, so the loss is
    (1 - e) * the plain loss + e * the mean of -log p over images and classes."""
    logits: list[torch.Tensor] = []

    def loss_with(label_smoothing: float) -> torch.Tensor:
        step = _step(label_smoothing=label_smoothing)
        step.model.register_forward_hook(lambda _m, _i, out: logits.append(out.detach()))
        return train_step(step, *_batch()).loss

    plain, smoothed = loss_with(0.0), loss_with(0.3)
    assert torch.equal(logits[0], logits[1])  # the same weights saw the same mixed images
    uniform = -torch.log_softmax(logits[0], dim=-1).mean()
    assert float(smoothed) == pytest.approx(0.7 * float(plain) + 0.3 * float(uniform), rel=1e-5)
    assert float(plain) != pytest.approx(float(smoothed), rel=1e-3)


def test_a_non_finite_loss_stops_before_the_weights_change() -> None:
    step = _step()
    before = [p.detach().clone() for p in step.model.parameters()]
    with pytest.raises(NonFiniteLoss):
        train_step(step, *_batch(), loss_hook=lambda loss: loss * float("inf"))
    assert all(torch.equal(a, b) for a, b in zip(before, step.model.parameters(), strict=True))
    assert step.optimizer.param_groups[0]["lr"] == 0.1


def test_the_tally_weights_by_images_and_keeps_the_loss_on_the_device() -> None:
    tally = StepTally()
    step = _step()
    results = [train_step(step, *_batch()) for _ in range(2)]
    for result in results:
        tally.add(result)
    assert isinstance(tally.loss, torch.Tensor)  # summed where it was computed, not read back
    record = tally.record(seconds=2.0)
    assert record["train_loss"] == pytest.approx(sum(float(r.loss) for r in results) / 2)
    assert record["images_per_second"] == 6.0


def test_read_back_happens_every_n_steps_and_catches_a_non_finite_loss_late() -> None:
    """With check_finite off (trainer.sync_every > 1) a NaN passes the step and is caught at
    the next read-back; in between, nothing is read from the device."""
    step = _step()
    step.check_finite = False
    tally = StepTally()
    reads = []
    for i in range(6):
        hook = (lambda loss: loss * float("nan")) if i == 4 else None
        tally.add(train_step(step, *_batch(), loss_hook=hook))
        try:
            reads.append(tally.read_back(i, every=3))
        except NonFiniteLoss:
            reads.append("stopped")
    assert reads[:2] == [None, None] and reads[3:5] == [None, None]
    assert isinstance(reads[2], float) and reads[5] == "stopped"
    assert tally.first_step_seconds > 0


def test_a_stage_trains_at_its_own_image_size_and_every_evaluation_at_the_models(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """schedule.stages.NAME.image_size (progressive resizing): that stage's training batches
    reach the model at its size; the other stages, and every evaluation, at model.image_size."""
    from cutmix_runner import build

    seen: set[tuple[bool, int]] = set()
    build_model = build.model_and_preprocess

    def watched(*args: Any, **kwargs: Any) -> Any:
        model, preprocess = build_model(*args, **kwargs)
        model.register_forward_pre_hook(lambda m, x: seen.add((m.training, x[0].shape[-1])))
        return model, preprocess
    monkeypatch.setattr(build, "model_and_preprocess", watched)
    train_in_process(tmp_path / "run", *SMOKE, "schedule.stages.adapt.image_size=24")
    assert seen == {(True, 24), (True, 32), (False, 32)}
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert {r["stage"]: r["image_size"] for r in records} == {"head": 32, "adapt": 24, "late": 32}
