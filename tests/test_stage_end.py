"""Stage-end rules (stage_end.py) and the per-stage LR schedule (optim.py)."""

from __future__ import annotations

import pytest

from cutmix_runner.config import StageConfig
from cutmix_runner.optim import lr_factor
from cutmix_runner.stage_end import Plateau, StageEnd


def test_lr_factor_warms_up_then_decays_to_floor() -> None:
    factors = [lr_factor(s, warmup_steps=10, total_steps=110, min_ratio=0.01) for s in range(111)]
    assert factors[0] == pytest.approx(0.1)
    assert factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:], strict=False))
    assert factors[110] == pytest.approx(0.01)
    assert factors[60] == pytest.approx(0.01 + 0.99 * 0.5)


def test_plateau_ends_exactly_when_patience_runs_out() -> None:
    plateau = Plateau(patience=2, min_delta=0.01)
    scripted = [0.50, 0.60, 0.605, 0.609, 0.70]
    stops = [plateau.update(v) for v in scripted]
    # 0.605 and 0.609 do not beat 0.60 by 0.01: the second of them exhausts patience.
    assert stops == [False, False, False, True, False]


def test_plateau_with_zero_patience_never_stops() -> None:
    plateau = Plateau(patience=0, min_delta=0.0)
    assert not any(plateau.update(0.5) for _ in range(10))


def test_stage_end_names_the_trigger_and_the_last_epoch_wins() -> None:
    plateau = StageEnd(StageConfig(epochs=5, patience=1, min_delta=0.1))
    assert [plateau.after_epoch(e, 0.5, 0.0) for e in range(2)] == [None, "plateau"]
    gap = StageEnd(StageConfig(epochs=3, max_gap=0.05))
    assert [gap.after_epoch(e, 0.5, g) for e, g in enumerate([0.01, 0.2])] == [None, "gap"]
    # On the last epoch a trigger that fires is reported as the epoch cap.
    last = StageEnd(StageConfig(epochs=2, patience=1, min_delta=0.1, max_gap=0.0))
    assert [last.after_epoch(e, 0.5, 0.5 if e else -1.0) for e in range(2)] == [None, "epochs"]


def test_stage_end_state_round_trips() -> None:
    first = StageEnd(StageConfig(epochs=9, patience=2))
    first.after_epoch(0, 0.7, 0.0)
    first.after_epoch(1, 0.6, 0.0)
    second = StageEnd(StageConfig(epochs=9, patience=2))
    second.load_state(first.state())
    assert second.after_epoch(2, 0.6, 0.0) == first.after_epoch(2, 0.6, 0.0) == "plateau"
