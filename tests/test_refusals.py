"""A refused command writes nothing: every file that existed is left byte-identical and nothing
is created, for each kind of bad input a user meets (issue 24), in every tool. And Ctrl-C while a
tool works is exit 130 in one line, with no final output left half-written.

Each case runs in-process, in a working folder that holds a finished run (with an earlier
cutmix-eval result), an image, earlier outputs and the bad inputs; the whole folder is compared
byte for byte before and after.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cutmix_runner import checkpoint
from tests.helpers import run_tool

pytest.importorskip("optuna")

SMOKE = ["experiment=smoke", "trainer.progress=false", "trainer.num_threads=1"]
SPACE = "schedule.stages.late.regularizer.prob: {float: [0.0, 0.8]}\n"


@pytest.fixture
def work(trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The working folder (also the working directory, where default outputs would go)."""
    work = tmp_path / "work"
    run = work / "run"
    shutil.copytree(trained_run, run)
    (run / "eval").mkdir(exist_ok=True)
    (run / "eval" / "eval.json").write_text('{"clean_accuracy": 0.5}\n')  # an earlier result
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(work / "photo.png")
    (work / "pred.json").write_text("[]\n")  # an earlier prediction
    (work / "a_folder").mkdir()
    (work / "old_report").mkdir()
    (work / "old_report" / "report.md").write_text("# an earlier report\n")
    state = checkpoint.load(run / "checkpoints" / "best.pt").to_dict()
    newer = {**state, "config": {**state["config"], "trainer": {
        **state["config"]["trainer"], "from_the_future": 1}}}
    torch.save(newer, work / "newer.pt")  # written by a version with one config key more
    partial = {**state, "model": dict(list(state["model"].items())[1:])}
    torch.save(partial, work / "partial.pt")  # weights that do not fit: a tensor missing
    (work / "corrupt" / "eval").mkdir(parents=True)
    (work / "corrupt" / "eval" / "eval.json").write_text('{"clean_accuracy": ')
    (work / "empty_sweep" / "r").mkdir(parents=True)
    (work / "empty_sweep" / "r" / "summary.json").write_text("{}")
    for name, text in {"space.yaml": SPACE,
                       "low_high.yaml": "schedule.stages.late.lr_head: {float: [0.1, 0.01]}\n",
                       "no_choice.yaml":
                           "schedule.stages.late.regularizer.name: {categorical: []}\n",
                       "unknown.yaml": "schedule.stages.late.lr_hed: {float: [0.001, 0.01]}\n",
                       }.items():
        (work / name).write_text(text)
    monkeypatch.chdir(work)
    return work


# (tool, arguments, words of the one line). Paths are relative to the working folder.
REFUSALS = {
    # leftovers after a refusal
    "predict: a missing run, to a new output": (
        "predict", ["typo", "photo.png", "--out", "new/pred.json"], "typo"),
    "predict: an existing output without --force": (
        "predict", ["run", "photo.png", "--out", "pred.json"], "pass --force"),
    "eval: a missing run": ("evaluate", ["runs/typo"], "runs/typo"),
    "export: an existing folder as the output, --force": (
        "export", ["run", "--out", "a_folder", "--force"], "a_folder is a folder"),
    # checkpoints from other versions, and weights that do not fit
    "predict: a checkpoint with a config key more": (
        "predict", ["newer.pt", "photo.png"], "trainer.from_the_future: no such key"),
    "predict: weights with a tensor missing": (
        "predict", ["partial.pt", "photo.png"], "its weights do not fit the model: no tensor"),
    "export: weights with a tensor missing": (
        "export", ["partial.pt"], "its weights do not fit the model: no tensor"),
    # corrupt JSON from an earlier run, and earlier results
    "eval: a corrupt --reference": (
        "evaluate", ["run", "--out", "new_eval", "--reference", "corrupt"], "is not valid JSON"),
    "eval: an existing eval.json without --force": ("evaluate", ["run"], "pass --force"),
    "report: a summary.json of {}": (
        "report", ["empty_sweep", "--out", "new_report"], "lacks test_accuracy"),
    "report: an existing report without --force": (
        "report", ["run", "--out", "old_report"], "pass --force"),
    # values checked before any work
    "eval: severities out of range": ("evaluate", ["run", "--severities", "9", "--force"],
                                      "--severities 9"),
    "export: too few check images": ("export", ["run", "--images", "10"], "--images 10"),
    "search: low above high": ("search", ["--space", "low_high.yaml", *SMOKE],
                               "low 0.1 is above high 0.01"),
    "search: no choices": ("search", ["--space", "no_choice.yaml", *SMOKE],
                           "at least one choice"),
    "search: an unknown key": ("search", ["--space", "unknown.yaml", *SMOKE], "lr_hed"),
    "search: an unusable storage": (
        "search", ["--space", "space.yaml", "--storage", "not a url", *SMOKE], "--storage"),
    "search: --out an existing file": (
        "search", ["--space", "space.yaml", "--out", "pred.json", *SMOKE], "pred.json"),
}


def _tree(folder: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and every folder (None) under `folder`."""
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None
            for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("case", REFUSALS)
def test_a_refused_command_changes_and_creates_nothing(case: str, work: Path) -> None:
    tool, args, words = REFUSALS[case]
    before = _tree(work)
    result = run_tool(tool, *args)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert words in result.stderr and "Traceback" not in result.stderr
    assert _tree(work) == before


# (tool, arguments, what the interrupted work was doing, the output that must not appear)
INTERRUPTED = {
    "predict": ("predict", ["run", "photo.png", "--out", "new.json"],
                "cutmix_runner.inference.TrainedModel.logits", "new.json"),
    "eval, computing": ("evaluate", ["run", "--out", "new_eval", "--corruptions", "fog",
                                     "--severities", "1"],
                        "cutmix_runner.corruption_eval.corrupted_accuracy", "new_eval"),
    "eval, writing": ("evaluate", ["run", "--out", "new_eval", "--corruptions", "fog",
                                   "--severities", "1"],
                      "cutmix_runner.corruption_eval.plot", "new_eval"),
    "export": ("export", ["run", "--out", "new/model.onnx"], "cutmix_runner.export.verify", "new"),
    "report": ("report", ["run", "--out", "new_report"], "cutmix_runner.plots.curves",
               "new_report"),
}


@pytest.mark.parametrize("case", INTERRUPTED)
def test_ctrl_c_while_a_tool_works_is_one_line_and_leaves_no_output(
        case: str, work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tool, args, working, output = INTERRUPTED[case]
    reached: list[str] = []

    def interrupt(*_args: object, **_kwargs: object) -> None:
        reached.append(working)
        raise KeyboardInterrupt

    monkeypatch.setattr(working, interrupt)
    before = _tree(work)
    result = run_tool(tool, *args)
    assert reached, "the tool never reached its work"
    # Progress lines the tool printed while it worked may come first; the interruption is one
    # line, the last, and no traceback.
    lines = result.stderr.splitlines()
    assert result.returncode == 130 and lines[-1].endswith(": interrupted"), result.stderr
    assert sum("interrupted" in line for line in lines) == 1 and "Traceback" not in result.stderr
    assert not (work / output).exists() and _tree(work) == before


def test_ctrl_c_during_a_search_keeps_its_study_and_writes_no_report(
        work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The study database stays (a search resumes from it, as a run from its last.pt); the
    report, written only at the end, does not appear."""
    def interrupt(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("cutmix_runner.trainer.train_stages", interrupt)
    optuna_said: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: optuna_said.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("optuna").addHandler(handler)
    try:
        result = run_tool("search", "--space", "space.yaml", "--out", "new_search", *SMOKE)
    finally:
        logging.getLogger("optuna").removeHandler(handler)
    assert result.returncode == 130 and "cutmix-search: interrupted; " in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert not [m for m in optuna_said if "failed" in m], optuna_said  # no second account of it
    assert (work / "new_search" / "study.db").exists()
    assert not list((work / "new_search").rglob("report.md"))
