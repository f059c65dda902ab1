"""The example grids every run writes (examples_STAGE.png) and the optional TensorBoard logger."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cutmix_runner.loggers import mixed_examples, soft_label
from cutmix_runner.mixing import CutMix, Regularizer
from tests.helpers import compose, train_in_process

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck")


def test_soft_label_names_the_two_largest_weights() -> None:
    target = torch.zeros(10)
    target[3], target[5] = 0.83, 0.17
    assert soft_label(target, CLASSES) == "cat 0.83 / dog 0.17"
    assert soft_label(torch.nn.functional.one_hot(torch.tensor(8), 10).float(), CLASSES) == "ship"


def test_the_grid_mixes_a_copy_and_leaves_the_run_s_regularizer_untouched() -> None:
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(8)
    cutmix = CutMix(10, prob=0.2, min_area=0.1, max_area=0.2, seed=3)
    state = [s.clone() for s in cutmix.rng_state()]
    mixed, targets = mixed_examples(cutmix, images, labels, 10)
    assert all(torch.equal(a, b) for a, b in zip(cutmix.rng_state(), state, strict=True))
    assert cutmix.prob == 0.2
    # prob 0.2, yet the grid shows the stage's mixing applied: soft labels, pasted pixels.
    assert (targets.max(dim=1).values < 1).any()
    assert torch.allclose(targets.sum(dim=1), torch.ones(8))
    assert not torch.equal(mixed, images.float() / 255)
    none = Regularizer(10, prob=0.0)  # a stage without mixing (regularizer: none)
    clean, hard = mixed_examples(none, images, labels, 10)
    assert torch.equal(clean, images.float() / 255) and torch.equal(hard.argmax(1), labels)


def test_every_run_writes_example_grids_and_tensorboard_events(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    train_in_process(out, "experiment=smoke", "trainer.progress=false",
                     "trainer.logger=tensorboard")
    for stage in ("head", "adapt", "late"):
        assert (out / f"examples_{stage}.png").stat().st_size > 5000, stage
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0}).Reload()
    tags = events.Tags()
    assert {"train/loss_step", "epoch/val_accuracy", "epoch/train_loss"} <= set(tags["scalars"])
    assert any(tag.startswith("lr/") for tag in tags["scalars"])
    assert {"examples/head", "examples/adapt", "examples/late"} <= set(tags["images"])
    # Smoke: 200 images, batch 32 -> 7 steps per epoch, 4 epochs; one loss per step on CPU.
    assert len(events.Scalars("train/loss_step")) == 28
    assert [e.step for e in events.Scalars("epoch/val_accuracy")] == [1, 2, 3, 4]
    hparams = EventAccumulator(str(out / "tensorboard" / ".")).Reload()
    assert "hparam/test_accuracy" in hparams.Tags()["scalars"] or any(
        "hparam" in t for t in hparams.Tags().get("tensors", []))
    # Without the logger: the grids alone, and the same numbers (the grid touches no RNG).
    plain = tmp_path / "plain"
    summary = train_in_process(plain, "experiment=smoke", "trainer.progress=false")
    assert (plain / "examples_late.png").exists() and not (plain / "tensorboard").exists()
    logged = (out / "summary.json").read_text()
    assert f'"test_accuracy": {summary["test_accuracy"]}' in logged


def test_tensorboard_missing_is_one_line_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    from cutmix_runner import loggers
    from cutmix_runner.config import ConfigError
    from cutmix_runner.validation import validate

    monkeypatch.setattr(loggers, "tensorboard_available", lambda: False)
    with pytest.raises(ConfigError, match=r"trainer.logger: tensorboard is not installed; pip"):
        validate(compose("trainer.logger=tensorboard"))
    with pytest.raises(ConfigError, match="trainer.logger: must be none or tensorboard"):
        validate(compose("trainer.logger=wandb"))
