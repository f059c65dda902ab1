"""The smoke experiment against its committed golden record (tests/golden.py), and proof that
the comparison catches a changed seed, data order, schedule or loss."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import golden
from tests.helpers import train_in_process


def test_smoke_run_matches_the_golden_record(smoke_run: Path) -> None:
    assert golden.compare(smoke_run) == []


def test_the_comparison_tolerates_rounding_but_not_small_real_changes() -> None:
    record = golden.read_run(golden.GOLDEN)
    first = record["metrics"][0]
    rounded = {**first, "val_loss": first["val_loss"] * (1 + 1e-3),
               "train_loss": first["train_loss"] * (1 + 1e-5)}
    assert golden.differences(first, rounded) == []
    assert golden.differences(first, {**first, "train_loss": first["train_loss"] * 1.004})
    assert golden.differences(first, {**first, "mean_lambda": first["mean_lambda"] - 1e-6})


def _reversed_data_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """Same images, same generators, another order: the data set is handed over reversed."""
    from cutmix_runner import trainer

    original = trainer.train_batches
    monkeypatch.setattr(trainer, "train_batches",
                        lambda x, y, *args: original(x.flip(0), y.flip(0), *args))


@pytest.mark.parametrize("change, overrides", [
    ("seed", ("trainer.seed=1",)),
    ("data order", ()),
    ("schedule", ("schedule.stages.head.lr_head=0.012",)),
    ("loss", ("schedule.stages.adapt.regularizer.label_smoothing=0.1",)),
])
def test_a_deliberate_change_fails_the_comparison(change: str, overrides: tuple[str, ...],
                                                  tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    if change == "data order":
        _reversed_data_order(monkeypatch)
    train_in_process(tmp_path / "run", *golden.OVERRIDES, *overrides)
    assert golden.compare(tmp_path / "run"), f"a changed {change} went unnoticed"
