"""Reliability: exact resume after SIGKILL, no duplicated epochs, NaN stops, bad checkpoints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import ROOT, TIMING, run_cli, train_cli

# Smoke run: 200 synthetic images, batch 32 -> 7 steps per epoch; stages head (2 epochs,
# steps 1-14), adapt (1 epoch, steps 15-21), late (1 epoch, steps 22-28).
SMOKE = ("experiment=smoke", "trainer.progress=false", "trainer.num_threads=1")


def _metrics(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k not in TIMING} for x in lines]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=False)["model"]


def _run(out: Path, *extra: str, fault: str | None = None):
    """The smoke run into `out`: in this process, or, with a `fault` that kills it, in its own."""
    if fault is None:
        return train_cli(*SMOKE, f"hydra.run.dir={out}", *extra)
    env = {"CUTMIX_RUNNER_FAULT": fault}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return run_cli(*SMOKE, f"hydra.run.dir={out}", *extra)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def reference(smoke_run: Path) -> Path:
    """The uninterrupted run: the in-process smoke run, with the same overrides as SMOKE."""
    return smoke_run


@pytest.mark.parametrize("fault", [
    "kill_step:4",              # mid-epoch, before any checkpoint
    "kill_step:11",             # mid-epoch, with an earlier epoch checkpointed
    "kill_step:15",             # first step after a stage boundary
    "kill_write:last.pt:2",     # inside the checkpoint write that ends a stage
    "kill_write:best.pt:1",     # inside the first best-checkpoint write
])
def test_killed_and_resumed_run_matches_uninterrupted(fault: str, reference: Path,
                                                      tmp_path: Path) -> None:
    out = tmp_path / "run"
    killed = _run(out, fault=fault)
    assert killed.returncode == -9, killed.stderr[-2000:]
    resumed = _run(out, "trainer.resume=auto")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _metrics(out) == _metrics(reference)
    ours, theirs = _weights(out), _weights(reference)
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    summary = json.loads((out / "summary.json").read_text())
    expected = json.loads((reference / "summary.json").read_text())
    for key in ("test_accuracy", "test_loss", "best", "test"):
        assert summary[key] == expected[key]
    assert [s["name"] for s in summary["stages"]] == ["head", "adapt", "late"]


def test_resume_from_a_path_into_a_new_directory(reference: Path, tmp_path: Path) -> None:
    first = tmp_path / "first"
    assert _run(first, fault="kill_step:18").returncode == -9
    second = tmp_path / "second"
    result = _run(second, f"trainer.resume={first}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert _metrics(second) == _metrics(reference)
    summary = json.loads((second / "summary.json").read_text())
    assert summary["test"] == json.loads((reference / "summary.json").read_text())["test"]


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = _run(out, fault="nan_step:10")
    assert result.returncode == 2
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert "non-finite loss in stage 'head', epoch 2, step 3" in lines[0]
    last = torch.load(out / "checkpoints" / "last.pt", weights_only=False)
    assert last["global_epoch"] == 1 and last["stage"] == "head"
    assert len(_metrics(out)) == 1
    assert not (out / "summary.json").exists()


@pytest.mark.parametrize("make_bad, pattern", [
    (lambda p: p.write_bytes(b"not a checkpoint"), "not a readable checkpoint"),
    (lambda p: torch.save({"weights": 1}, p), "not a cutmix-runner checkpoint"),
])
def test_corrupt_or_foreign_checkpoint(make_bad, pattern: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    make_bad(bad)
    result = _run(tmp_path / "run", f"trainer.resume={bad}")
    assert result.returncode == 2 and pattern in result.stderr
    assert "Traceback" not in result.stderr


def test_checkpoint_from_a_different_config(reference: Path, tmp_path: Path) -> None:
    result = _run(tmp_path / "run", f"trainer.resume={reference}",
                  "schedule.stages.adapt.regularizer.prob=0.9")
    assert result.returncode == 2
    assert "different config (schedule.stages.adapt.regularizer.prob: 0.3 -> 0.9)" in result.stderr


def test_fresh_run_refuses_a_directory_that_holds_a_run(reference: Path) -> None:
    before = {p: p.read_bytes() for p in [reference / "metrics.jsonl", reference / "summary.json",
                                          *sorted((reference / "checkpoints").iterdir())]}
    result = _run(reference)
    assert result.returncode == 2 and "already holds a run" in result.stderr
    assert {p: p.read_bytes() for p in before} == before


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_keeps_last_epoch_and_says_how_to_resume(sig: int, reference: Path,
                                                          tmp_path: Path) -> None:
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    process = subprocess.Popen(
        [sys.executable, "-m", "cutmix_runner", *SMOKE, f"hydra.run.dir={out}",
         "schedule.stages.late.epochs=30"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "checkpoints" / "last.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr
    assert "interrupted" in lines[0] and "trainer.resume=auto" in lines[0]
    last = torch.load(out / "checkpoints" / "last.pt", weights_only=False)
    assert last["global_epoch"] == len(_metrics(out)) >= 1


def test_a_signal_requests_a_stop_and_a_second_ctrl_c_stops_at_once() -> None:
    import os
    import signal

    from cutmix_runner import interrupts

    with interrupts.handled():
        assert not interrupts.requested()  # nothing requested yet
        os.kill(os.getpid(), signal.SIGINT)  # the handler runs before the next bytecode
        assert interrupts.requested()
        os.kill(os.getpid(), signal.SIGTERM)  # repeated SIGTERMs (SLURM and torchrun): no rush
        for _ in range(1000):  # give the handler a bytecode boundary to run on
            pass
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):
                pass
    with interrupts.handled():
        assert not interrupts.requested()  # a new block starts with no request pending


def test_resume_auto_keeps_a_finished_run_as_it_is(reference: Path, tmp_path: Path) -> None:
    """Re-running an interrupted multirun (trainer.resume=auto in each job's directory) must not
    redo the jobs that had finished, nor take a changed config for them."""
    import shutil

    run = tmp_path / "done"
    shutil.copytree(reference, run)

    def results() -> dict[Path, bytes]:  # Hydra's own .hydra/ and cli.log aside
        return {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()
                and ".hydra" not in p.parts and p.name != "cli.log"}

    before = results()
    assert {p.name for p in before} >= {"metrics.jsonl", "summary.json", "last.pt", "best.pt"}
    result = _run(run, "trainer.resume=auto")
    assert result.returncode == 0, result.stderr
    assert "already finished; kept as it is" in (run / "cli.log").read_text()
    assert results() == before
    changed = _run(run, "trainer.resume=auto", "schedule.stages.adapt.regularizer.prob=0.9")
    assert changed.returncode == 2 and "finished with a different config" in changed.stderr
    assert results() == before


def test_elapsed_time_and_time_to_accuracy_continue_across_a_resume(tmp_path: Path) -> None:
    """Each epoch records the run's elapsed seconds; a resumed run counts on from its last
    checkpointed epoch, so time-to-accuracy spans both sittings."""
    out = tmp_path / "run"
    assert _run(out, fault="kill_step:11").returncode == -9
    before = [json.loads(line)["elapsed_seconds"]
              for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert _run(out, "trainer.resume=auto", "trainer.accuracy_levels=[0.01,0.99]"
                ).returncode == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    elapsed = [r["elapsed_seconds"] for r in records]
    assert elapsed[:len(before)] == before and elapsed == sorted(elapsed)
    assert elapsed[len(before)] > before[-1]  # the second sitting counts on from the first
    summary = json.loads((out / "summary.json").read_text())
    first = next(r["elapsed_seconds"] for r in records if r["val_accuracy"] >= 0.01)
    assert summary["time_to_accuracy"] == {"0.01": first, "0.99": None}
