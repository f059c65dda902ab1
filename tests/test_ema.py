"""trainer.ema_decay: a moving average of the weights that every evaluation scores, kept in the
checkpoints next to the trained weights, and resumed exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cutmix_runner import build, checkpoint
from cutmix_runner.inference import load_trained
from tests.helpers import TIMING, recipe
from tests.test_resume import _metrics, _run

EMA = "trainer.ema_decay=0.9"


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smoke run with the average on, uninterrupted, in this process."""
    out = tmp_path_factory.mktemp("ema") / "run"
    result = _run(out, EMA)
    assert result.returncode == 0, result.stderr[-2000:]
    return out


def _state(run: Path, name: str = "last.pt") -> checkpoint.RunState:
    return checkpoint.load(run / "checkpoints" / name)


def test_the_average_changes_what_is_scored_not_what_is_trained(ema_run: Path,
                                                                smoke_run: Path) -> None:
    """The same steps train the same weights with or without the average; the checkpoints'
    "model" (what the tools load) and every validation number are the average's."""
    averaged, plain = _state(ema_run), _state(smoke_run)
    assert plain.trained is None and averaged.trained is not None
    for key, value in plain.model.items():
        assert torch.equal(averaged.trained[key], value), key
    floats = [k for k, v in plain.model.items() if v.is_floating_point()]
    assert any(not torch.equal(averaged.model[k], plain.model[k]) for k in floats)
    ours, theirs = _metrics(ema_run), _metrics(smoke_run)
    assert [r["train_loss"] for r in ours] == [r["train_loss"] for r in theirs]
    assert [r["val_loss"] for r in ours] != [r["val_loss"] for r in theirs]


def test_the_average_warms_up_then_caps_its_decay() -> None:
    """Hand-computed: the first update copies the weights; at update t (from 0) the decay is
    min(ema_decay, 1 - (1 + t)^(-2/3)): 0.370 at t = 1, 0.5 at t = 7 with a cap of 0.5."""
    model = torch.nn.Linear(1, 1, bias=False)
    ema = build.weight_average(model, recipe("trainer.ema_decay=0.5"))
    assert ema is not None and build.weight_average(model, recipe()) is None
    expected = 0.0
    for step, weight in enumerate([4.0, 2.0, 8.0, 8.0, 8.0, 8.0, 8.0, 0.0], start=1):
        model.weight.data.fill_(weight)
        ema.update(model, step=step)
        t = step - 1
        decay = 0.0 if t == 0 else min(0.5, 1 - (1 + t) ** (-2 / 3))
        expected = decay * expected + (1 - decay) * weight
        assert ema.module.weight.item() == pytest.approx(expected, rel=1e-6), step
    assert decay == 0.5 and expected == pytest.approx(4.0, abs=0.1)


def test_without_warmup_the_decay_is_the_cap_from_the_second_update() -> None:
    """trainer.ema_warmup=false, hand-computed: the first update copies the weights (4), as
    with the warmup; after it every update keeps half of the average (the cap, 0.5):
    0.5 * 4 + 0.5 * 2 = 3, then 0.5 * 3 + 0.5 * 8 = 5.5. The warmup's decay at t = 1 would be
    0.370 instead, giving 2.74."""
    model = torch.nn.Linear(1, 1, bias=False)
    ema = build.weight_average(model, recipe("trainer.ema_decay=0.5", "trainer.ema_warmup=false"))
    assert ema is not None
    for step, (weight, expected) in enumerate([(4.0, 4.0), (2.0, 3.0), (8.0, 5.5)], start=1):
        model.weight.data.fill_(weight)
        ema.update(model, step=step)
        assert ema.module.weight.item() == pytest.approx(expected), step


def test_the_tools_load_the_average(ema_run: Path) -> None:
    trained = load_trained(ema_run / "checkpoints" / "best.pt")
    best = _state(ema_run, "best.pt")
    assert best.trained is not None
    loaded = trained.model.state_dict()
    for key, value in loaded.items():
        assert torch.equal(value, best.model[key]), key
    assert any(not torch.equal(value, best.trained[key]) for key, value in loaded.items()
               if value.is_floating_point())


@pytest.mark.parametrize("fault", ["kill_step:11", "kill_step:15"])
def test_killed_and_resumed_average_matches_uninterrupted(fault: str, ema_run: Path,
                                                          tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert _run(out, EMA, fault=fault).returncode == -9
    resumed = _run(out, EMA, "trainer.resume=auto")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _metrics(out) == _metrics(ema_run)
    ours, theirs = _state(out), _state(ema_run)
    for weights in ("model", "trained"):
        for key, value in getattr(theirs, weights).items():
            assert torch.equal(getattr(ours, weights)[key], value), (weights, key)
    summary = json.loads((out / "summary.json").read_text())
    expected = json.loads((ema_run / "summary.json").read_text())
    assert {k: v for k, v in summary["test"].items() if k not in TIMING} == \
        {k: v for k, v in expected["test"].items() if k not in TIMING}


def test_a_run_without_the_average_does_not_resume_one_with_it(ema_run: Path,
                                                               tmp_path: Path) -> None:
    result = _run(tmp_path / "run", f"trainer.resume={ema_run}")
    assert result.returncode == 2
    assert "different config (trainer.ema_decay: 0.9 -> None)" in result.stderr


def test_a_checkpoint_without_trained_weights_is_refused_in_one_line(ema_run: Path,
                                                                     tmp_path: Path) -> None:
    """A checkpoint made with the average on but lacking the weights under training (edited, or
    from another tool) would resume training from the average: refused."""
    state = torch.load(ema_run / "checkpoints" / "last.pt", weights_only=False)
    del state["trained"]
    bad = tmp_path / "edited.pt"
    torch.save(state, bad)
    result = _run(tmp_path / "run", EMA, f"trainer.resume={bad}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "holds no trained weights beside their average" in result.stderr
