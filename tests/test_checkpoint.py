"""The run-state record: round trip, format check, config fit, and the resume-path rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from cutmix_runner import checkpoint
from cutmix_runner.checkpoint import Progress, RunState
from cutmix_runner.config import result_config
from cutmix_runner.errors import RunError
from tests.helpers import recipe


def _state(**changes: object) -> RunState:
    fields = dict(model={}, config=result_config(recipe()), precision="fp32",
                  global_epoch=3, global_step=30, best={"val_accuracy": 0.5},
                  records=[{"epoch": 1}], finished_stages=[], rng={}, stage_index=1,
                  stage="adapt", epoch=1, stage_end=None, stage_seconds=1.5,
                  val_accuracy=0.6, optimizer={}, scheduler={}, plateau=(0.6, 0))
    return RunState(**{**fields, **changes})


def test_save_and_load_round_trip_and_best_only_on_a_new_best(tmp_path: Path) -> None:
    state = _state()
    progress = Progress(best={"val_accuracy": 0.5})
    checkpoint.save(state, tmp_path, is_best=progress.note_best(state))
    assert (tmp_path / "best.pt").exists() and progress.best["stage"] == "adapt"
    loaded = checkpoint.load(tmp_path / "last.pt")
    assert loaded.best == progress.best and loaded.plateau == (0.6, 0)
    assert Progress.of(loaded).global_step == 30
    (tmp_path / "best.pt").unlink()
    worse = _state(val_accuracy=0.1)
    checkpoint.save(worse, tmp_path, is_best=progress.note_best(worse))
    assert not (tmp_path / "best.pt").exists()


def test_a_checkpoint_must_fit_the_config_and_precision(tmp_path: Path) -> None:
    state = _state()
    checkpoint.check_fits(state, recipe(), "fp32", tmp_path)
    other = recipe()
    other.trainer.seed = 4
    with pytest.raises(RunError, match="trainer.seed: 0 -> 4"):
        checkpoint.check_fits(state, other, "fp32", tmp_path)
    neutral = recipe()
    neutral.trainer.num_threads = 7  # result-neutral: accepted
    checkpoint.check_fits(state, neutral, "fp32", tmp_path)
    with pytest.raises(RunError, match="trained in fp32"):
        checkpoint.check_fits(state, recipe(), "bf16", tmp_path)


def test_resume_path_rules(tmp_path: Path) -> None:
    folder = tmp_path / "run" / "checkpoints"
    assert checkpoint.resume_path(None, folder) is None
    assert checkpoint.resume_path("auto", folder) is None  # nothing yet: a fresh start
    folder.mkdir(parents=True)
    (folder / "last.pt").write_bytes(b"")
    assert checkpoint.resume_path("auto", folder) == folder / "last.pt"
    assert checkpoint.resume_path(str(tmp_path / "run"), tmp_path) == folder / "last.pt"
    assert checkpoint.resume_path(str(folder / "best.pt"), tmp_path) == folder / "best.pt"
    assert checkpoint.find_checkpoint(tmp_path / "run") == folder / "last.pt"
    (folder / "best.pt").write_bytes(b"")
    assert checkpoint.find_checkpoint(tmp_path / "run") == folder / "best.pt"


def test_a_checkpoint_from_before_a_new_key_still_fits(tmp_path: Path) -> None:
    """Keys added to the schema later take their defaults, or, for a recipe key (no default in
    the schema), its value in the base group file; a changed default is still named."""
    from cutmix_runner.validation import from_result_config

    state = _state()
    del state.config["optim"]["lr_scaling"], state.config["trainer"]["eval_precision"]
    checkpoint.check_fits(state, recipe(), "fp32", tmp_path)
    assert from_result_config(state.config).trainer.eval_precision == "fp32"
    del state.config["trainer"]["frozen_precision"]  # fp32 before the key; the recipe's is auto
    with pytest.raises(RunError, match="trainer.frozen_precision: 'fp32' -> 'auto'"):
        checkpoint.check_fits(state, recipe(), "fp32", tmp_path)
    state.config["model"]["explicit_depthwise_padding"] = True  # the old default; now null
    with pytest.raises(RunError, match="model.explicit_depthwise_padding: True -> None"):
        checkpoint.check_fits(state, recipe(), "fp32", tmp_path)


class _RunsCode:
    """Unpickling this runs `touch MARKER`: what a hostile checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        import os

        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def hostile_run(tmp_path: Path) -> Path:
    """A run directory whose best.pt and last.pt carry code where the weights should be."""
    import torch

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    for name in ("best.pt", "last.pt"):
        torch.save({"format": checkpoint.FORMAT, "model": _RunsCode(tmp_path / "PWNED")},
                   run / "checkpoints" / name)
    return run


@pytest.mark.parametrize("command", ["predict", "eval", "export", "resume"])
def test_a_checkpoint_carrying_code_is_refused_in_one_line_and_nothing_runs(
        command: str, hostile_run: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    if command == "resume":
        from tests.helpers import SMOKE, train_in_process

        with pytest.raises(RunError, match="holds more than tensors and plain values"):
            train_in_process(tmp_path / "resumed", *SMOKE,
                             f"trainer.resume={hostile_run / 'checkpoints' / 'last.pt'}")
    else:
        from tests.helpers import run_tool

        image = tmp_path / "photo.png"
        image.write_bytes(b"")
        tool, args = {"predict": ("predict", [str(image)]), "eval": ("evaluate", []),
                      "export": ("export", [])}[command]
        result = run_tool(tool, str(hostile_run), *args)
        assert result.returncode == 2 and result.stderr.count("\n") == 1
        assert "holds more than tensors and plain values" in result.stderr
    assert not (tmp_path / "PWNED").exists()


def test_a_checkpoint_with_the_old_numpy_rng_state_still_loads(tmp_path: Path) -> None:
    """Checkpoints written before 2026-12-07 kept NumPy's RNG state as NumPy's own tuple."""
    import numpy as np

    state = _state(rng={"numpy": np.random.get_state()})
    checkpoint.save(state, tmp_path, is_best=False)
    loaded = checkpoint.load(tmp_path / "last.pt")
    assert loaded.rng["numpy"][0] == "MT19937"
    assert np.array_equal(loaded.rng["numpy"][1], state.rng["numpy"][1])


@pytest.mark.parametrize("change, words", [
    ("config", "trainer.from_the_future: no such key"),
    ("weights", "its weights do not fit the model: no tensor"),
    ("shape", "has shape (3,), the model"),
])
def test_a_checkpoint_from_another_version_or_model_is_one_line(
        change: str, words: str, trained_run: Path, tmp_path: Path) -> None:
    """A config key this version does not know, a missing tensor, a tensor of another shape:
    each refused in one line that names it."""
    import torch

    from tests.helpers import run_tool

    state = checkpoint.load(trained_run / "checkpoints" / "best.pt").to_dict()
    first = next(iter(state["model"]))
    if change == "config":
        state["config"]["trainer"]["from_the_future"] = 1
    elif change == "weights":
        del state["model"][first]
    else:
        state["model"][first] = torch.zeros(3)
    torch.save(state, tmp_path / "other.pt")
    image = tmp_path / "photo.png"
    image.write_bytes(b"")
    result = run_tool("predict", str(tmp_path / "other.pt"), str(image))
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert words in result.stderr
    if change != "config":
        assert first in result.stderr


@pytest.mark.parametrize("keep, left", [("best", ["best.pt"]), ("none", [])])
def test_a_finished_run_keeps_the_checkpoints_asked_for(keep: str, left: list[str],
                                                        tmp_path: Path) -> None:
    from tests.helpers import SMOKE, train_in_process

    train_in_process(tmp_path / "run", *SMOKE, "trainer.num_threads=1",
                     f"trainer.keep_checkpoints={keep}")
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == left
    assert (tmp_path / "run" / "summary.json").exists()
