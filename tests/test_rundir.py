"""The run directory's layout and summary.json, read and written in one place."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cutmix_runner.errors import UserError
from cutmix_runner.rundir import RunDir


def test_a_checkpoint_and_its_run_name_the_same_run_directory(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    run.checkpoints.mkdir(parents=True)
    run.last.write_bytes(b"")
    assert RunDir.of(run.last) == RunDir.of(run.path) == run
    assert run.model_checkpoint() == run.last  # no best.pt yet
    run.best.write_bytes(b"")
    assert run.model_checkpoint() == run.best
    assert run.holds_a_run() and not RunDir(tmp_path / "other").holds_a_run()


def test_summary_round_trip_and_what_is_no_summary(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    assert run.read_summary() is None  # not finished
    summary = {"test_accuracy": 0.9, "best": {"stage": "late", "epoch": 2, "global_epoch": 5,
                                              "val_accuracy": 0.91}}
    run.summary_file.write_text(json.dumps(summary))
    assert run.read_summary() == summary
    run.summary_file.write_text("{}")
    with pytest.raises(UserError, match="lacks test_accuracy, best"):
        run.read_summary()
    run.summary_file.write_text('{"test_accuracy": ')
    with pytest.raises(UserError, match="summary.json is not valid JSON"):
        run.read_summary()
