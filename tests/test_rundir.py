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


def test_a_new_output_folder_goes_again_when_the_command_fails_and_an_old_one_stays(
        tmp_path: Path) -> None:
    from cutmix_runner.artifacts import new_folder

    with pytest.raises(KeyboardInterrupt), new_folder(tmp_path / "new" / "report") as folder:
        (folder / "half.png").write_bytes(b"")
        raise KeyboardInterrupt
    assert not (tmp_path / "new").exists()  # the folders it made, and what was half-written
    old = tmp_path / "old"
    old.mkdir()
    (old / "keep.md").write_text("a user's file\n")
    with pytest.raises(RuntimeError), new_folder(old / "sub"):
        raise RuntimeError
    assert (old / "keep.md").read_text() == "a user's file\n" and not (old / "sub").exists()
    with pytest.raises(RuntimeError), new_folder(old):
        raise RuntimeError
    assert (old / "keep.md").exists()  # a folder that existed before is kept as it was
    with new_folder(tmp_path / "done") as folder:
        (folder / "result.json").write_text("{}")
    assert (tmp_path / "done" / "result.json").exists()
