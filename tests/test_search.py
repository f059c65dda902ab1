"""cutmix-search: a 3-trial Optuna search on synthetic data writes its study and report; a second
invocation resumes the study; the test set is scored once, for the best trial only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import ToolResult, run_tool

pytest.importorskip("optuna")

SPACE = """\
schedule.stages.head.epochs: {int: [1, 2]}
schedule.stages.adapt.regularizer.prob: {float: [0.0, 0.5]}
schedule.stages.late.regularizer.prob: {float: [0.0, 0.8]}
schedule.stages.late.lr_backbone: {float: [1.0e-4, 2.0e-3], log: true}
"""
SMOKE = ["experiment=smoke", "trainer.progress=false", "trainer.num_threads=1"]


def _search(tmp_path: Path, *args: str) -> ToolResult:
    return run_tool("search", *args, "--out", str(tmp_path / "search"), "--space",
                    str(tmp_path / "space.yaml"), *SMOKE)


def test_search_writes_its_study_resumes_it_and_tests_the_best_trial_once(
        tmp_path: Path) -> None:
    import optuna

    (tmp_path / "space.yaml").write_text(SPACE)
    first = _search(tmp_path, "--trials", "3")
    assert first.returncode == 0, first.stderr
    storage = f"sqlite:///{tmp_path / 'search' / 'study.db'}"
    study = optuna.load_study(study_name="cutmix-search", storage=storage)
    assert len(study.trials) == 3
    sampled = [t.params for t in study.trials]
    second = _search(tmp_path, "--trials", "2")
    assert second.returncode == 0, second.stderr
    study = optuna.load_study(study_name="cutmix-search", storage=storage)
    assert len(study.trials) == 5  # added to, not started over
    assert [t.params for t in study.trials[:3]] == sampled
    # Trials trained and validated only: no test metrics, no summary.json, in any trial.
    for trial in study.trials:
        run = Path(trial.user_attrs["run_dir"])
        assert not (run / "summary.json").exists()
        if trial.state.name == "COMPLETE":
            record = json.loads((run / "trial.json").read_text())
            assert record["best"]["val_accuracy"] == pytest.approx(trial.value)
            assert "test" not in json.dumps(record)
    out = tmp_path / "search" / "cutmix-search"  # OUT/STUDY_NAME: trial numbers are per study
    assert Path(study.trials[0].user_attrs["run_dir"]) == (out / "trial_0").resolve()
    report = (out / "report.md").read_text()
    assert report.count("test accuracy") == 1
    assert f"## Best trial: #{study.best_trial.number}" in report
    assert "| parameter | importance |" in report
    assert (out / "optimization_history.png").stat().st_size > 1000


def test_bad_space_and_bad_overrides_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "space.yaml").write_text("schedule.stages.head.epochs: {uniform: [1, 2]}\n")
    result = _search(tmp_path, "--trials", "1")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "needs exactly one of int, float, categorical" in result.stderr
    (tmp_path / "space.yaml").write_text("- not a mapping\n")
    result = _search(tmp_path, "--trials", "1")
    assert result.returncode == 2 and "expected a mapping" in result.stderr
    (tmp_path / "space.yaml").write_text(SPACE)
    result = _search(tmp_path, "--trials", "1", "trainer.bach_size=3")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "bach_size" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("space, words", [
    ("schedule.stages.head.lr_head: {float: [0.01, 0.001]}", "low 0.01 is above high 0.001"),
    ("schedule.stages.head.lr_head: {float: [0.0, 0.1], log: true}", "log scale needs low > 0"),
    ("schedule.stages.head.regularizer.name: {categorical: []}", "at least one choice"),
    ("schedule.stages.head.lr_hed: {float: [0.001, 0.01]}", "lr_hed"),
])
def test_impossible_space_values_and_unknown_keys_fail_before_any_trial(
        space: str, words: str, tmp_path: Path) -> None:
    (tmp_path / "space.yaml").write_text(space + "\n")
    result = _search(tmp_path, "--trials", "1")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert words in result.stderr
    assert not (tmp_path / "search" / "cutmix-search").exists()  # no trial ran


@pytest.mark.parametrize("storage", ["not a url", "sqlite:////proc/no/such/dir/study.db"])
def test_an_unusable_storage_is_one_line(storage: str, tmp_path: Path) -> None:
    (tmp_path / "space.yaml").write_text(SPACE)
    result = _search(tmp_path, "--trials", "1", "--storage", storage)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "--storage" in result.stderr and "unusable" in result.stderr
    assert not (tmp_path / "search").exists()  # nothing written
