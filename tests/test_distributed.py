"""DDP under torchrun, on CPU (gloo) and synthetic data, through `cutmix-torchrun` (torchrun's
own launcher, torch.distributed.run) exactly as a user would start it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.helpers import TIMING, run_cli

# The smoke run: 200 synthetic images, global batch 32 (16 per rank) -> 7 steps per epoch;
# stages head (2 epochs), adapt (1), late (1); CutMix in adapt and late.
SMOKE = ("experiment=smoke", "trainer.progress=false", "trainer.num_threads=1")
# CutMix off everywhere and plain SGD: AdamW divides each gradient by its own running size, so
# the last-bit differences between one all-reduced and one local gradient are amplified on the
# parameters whose gradients are nearly zero; SGD keeps them at rounding level.
NO_MIX = ("schedule.stages.adapt.regularizer.name=none",
          "schedule.stages.late.regularizer.name=none", "optim=sgd")
# Measured: train losses agree to 1e-7 relative, weights to 3e-6 (float32 sums in another order).
LOSS_RTOL, WEIGHT_ATOL = 1e-5, 1e-4


def torchrun(cwd: Path, *args: str, fault: str | None = None,
             fault_rank: int | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("HYDRA_FULL_ERROR", None)
    if fault:
        env["CUTMIX_RUNNER_FAULT"] = fault
    if fault_rank is not None:
        env["CUTMIX_RUNNER_FAULT_RANK"] = str(fault_rank)
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run([sys.executable, "-m", "cutmix_runner.torchrun", "--nproc_per_node=2",
                           *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL)


def _metrics(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k not in TIMING} for x in lines]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=False)["model"]


def _files(run: Path) -> list[str]:
    return sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.name != "cli.log")


def _batchnorm_worker(rank: int, port: int, results: Any) -> None:
    """One rank of test_synced_batchnorm_is_batchnorm_on_the_global_batch."""
    import copy

    import torch.distributed as dist
    from timm.layers import BatchNormAct2d

    from cutmix_runner.distributed import synced

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    try:
        torch.manual_seed(0)
        bn = BatchNormAct2d(8, momentum=0.01, eps=1e-3)  # timm's, with its ReLU
        with torch.no_grad():
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-1, 1)
            bn.running_mean.uniform_(-1, 1)
        x = (torch.randn(16, 8, 5, 5) * 3 + 2).requires_grad_()
        whole = copy.deepcopy(bn)
        reference = whole(x)  # one process, the global batch of 16
        reference.square().mean().backward()
        part = x.detach()[rank * 8:(rank + 1) * 8].requires_grad_()
        out = synced(bn)(part)
        out.square().mean().backward()
        weight_grad = bn.weight.grad.clone()
        dist.all_reduce(weight_grad)  # what DDP does, before dividing by the 2 ranks
        results.put((rank, {
            "out": (out - reference[rank * 8:(rank + 1) * 8]).abs().max().item(),
            "running_mean": (bn.running_mean - whole.running_mean).abs().max().item(),
            "running_var": (bn.running_var - whole.running_var).abs().max().item(),
            "weight_grad": (weight_grad / 2 - whole.weight.grad).abs().max().item(),
            "input_grad": (part.grad / 2 - x.grad[rank * 8:(rank + 1) * 8]).abs().max().item(),
        }))
    finally:
        dist.destroy_process_group()


def test_synced_batchnorm_is_batchnorm_on_the_global_batch() -> None:
    """Two ranks of 8 images each: the outputs, running statistics and (DDP-averaged) gradients
    of one process on all 16, up to float32 rounding."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = mp.get_context("spawn")
    results = context.SimpleQueue()
    mp.start_processes(_batchnorm_worker, args=(port, results), nprocs=2, start_method="spawn")
    for _ in range(2):
        rank, errors = results.get()
        for name, error in errors.items():
            assert error < 1e-5, (rank, name, error)


def test_each_stage_lr_schedule_spans_the_steps_a_rank_takes() -> None:
    """66 images at batch 32 leave 2 over: one process trains on them, 2 ranks (1 image each)
    drop them, and the warm-up + cosine schedule must end on the last step either way."""
    from cutmix_runner import build
    from cutmix_runner.config import StageConfig
    from cutmix_runner.data import Splits, make_synthetic, train_batches
    from cutmix_runner.distributed import World
    from cutmix_runner.runtime import Runtime
    from cutmix_runner.validation import validate
    from tests.helpers import compose

    cfg = validate(compose("experiment=smoke"))
    x, y, tx, ty = make_synthetic(66, 8, 10)
    data = Splits(x, y, tx, ty, tx, ty, tuple(str(i) for i in range(10)))
    stage = StageConfig(epochs=1, unfreeze_blocks=1, lr_head=0.01, lr_backbone=0.001)
    for world, steps in ((World(), 3), (World(0, 2), 2)):
        model, preprocess = build.model_and_preprocess(cfg, 10, torch.device("cpu"))
        runtime = Runtime(torch.device("cpu"), "fp32", world=world)
        _, step = build.stage_step(model, cfg, 0, stage, data, preprocess, runtime)
        batches = list(train_batches(x, y, 32, torch.Generator(), 0, False, world.rank,
                                     world.size))
        assert len(batches) == steps
        for _ in batches:
            step.optimizer.step()  # no gradients: the weights stay; the order torch expects
            step.scheduler.step()
        final = step.optimizer.param_groups[0]["lr"] / step.optimizer.param_groups[0]["initial_lr"]
        assert final == pytest.approx(cfg.optim.min_lr_ratio), world


@pytest.fixture(scope="module")
def synced(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-process run with synchronised BatchNorm and no mixing, started in an empty folder."""
    cwd = tmp_path_factory.mktemp("ddp-synced")
    result = torchrun(cwd, *SMOKE, *NO_MIX, "trainer.sync_bn=true", "hydra.run.dir=run")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("cutmix-train: finished") == 1  # rank 0 alone prints
    return cwd


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same run in one process, on the same global batch."""
    run = tmp_path_factory.mktemp("single") / "run"
    result = run_cli(*SMOKE, *NO_MIX, f"hydra.run.dir={run}")
    assert result.returncode == 0, result.stderr[-3000:]
    return run


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-process smoke run with CutMix, each rank mixing within its own slice."""
    run = tmp_path_factory.mktemp("ddp-full") / "run"
    result = torchrun(run.parent, *SMOKE, f"hydra.run.dir={run}")
    assert result.returncode == 0, result.stderr[-3000:]
    return run


def test_only_rank_0_writes_and_each_epoch_is_logged_once(synced: Path, single: Path) -> None:
    # Rank 1 was given no run directory of its own: the folder holds rank 0's run and nothing
    # else, with the same files as a one-process run.
    assert sorted(p.name for p in synced.iterdir()) == ["run"]
    run = synced / "run"
    assert _files(run) == _files(single)
    assert [r["global_epoch"] for r in _metrics(run)] == [1, 2, 3, 4]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["train_size"] == 200


def test_synced_batchnorm_matches_one_process_on_the_global_batch(synced: Path,
                                                                  single: Path) -> None:
    ours, theirs = _metrics(synced / "run"), _metrics(single)
    assert len(ours) == len(theirs) == 4
    loss_gap = max(abs(a["train_loss"] / b["train_loss"] - 1)
                   for a, b in zip(ours, theirs, strict=True))
    weights, reference = _weights(synced / "run"), _weights(single)
    assert weights.keys() == reference.keys()
    weight_gap = max((weights[k].double() - reference[k].double()).abs().max().item()
                     for k in weights)
    print(f"train loss within {loss_gap:.1e} relative, weights within {weight_gap:.1e}")  # -s
    assert loss_gap < LOSS_RTOL and weight_gap < WEIGHT_ATOL


def test_killed_two_process_run_resumes_to_the_same_result(uninterrupted: Path,
                                                           tmp_path: Path) -> None:
    run = tmp_path / "run"
    killed = torchrun(tmp_path, *SMOKE, f"hydra.run.dir={run}", fault="kill_step:11")
    assert killed.returncode != 0
    assert "was killed by signal 9" in killed.stderr
    resumed = torchrun(tmp_path, *SMOKE, f"hydra.run.dir={run}", "trainer.resume=auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _metrics(run) == _metrics(uninterrupted)
    ours, theirs = _weights(run), _weights(uninterrupted)
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key


def test_a_two_process_checkpoint_is_not_resumed_by_one_process(uninterrupted: Path,
                                                               tmp_path: Path) -> None:
    """Its generators and batch slices belong to 2 ranks: an exact resume needs 2 again."""
    result = run_cli(*SMOKE, f"hydra.run.dir={tmp_path / 'run'}",
                     f"trainer.resume={uninterrupted / 'checkpoints' / 'last.pt'}")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "was trained by 2 process(es), this run has 1" in lines[0]
    assert "--nproc_per_node=2" in lines[0]


def test_sigterm_on_one_rank_stops_every_rank_after_the_same_step(uninterrupted: Path,
                                                                  tmp_path: Path) -> None:
    run = tmp_path / "run"
    stopped = torchrun(tmp_path, *SMOKE, f"hydra.run.dir={run}", fault="term_step:11",
                       fault_rank=1)
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    lines = [ln for ln in stopped.stderr.splitlines() if "cutmix" in ln]
    assert len(lines) == 1 and "interrupted" in lines[0] and "trainer.resume=auto" in lines[0]
    assert [r["global_epoch"] for r in _metrics(run)] == [1]  # step 11 lies in epoch 2
    resumed = torchrun(tmp_path, *SMOKE, f"hydra.run.dir={run}", "trainer.resume=auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _metrics(run) == _metrics(uninterrupted)


def test_sigterm_to_the_launcher_stops_the_run_in_one_line(tmp_path: Path) -> None:
    """What SLURM preemption or Ctrl-C does: the signal reaches cutmix-torchrun, which passes it
    on to every rank; they stop after the same step, and the run resumes."""
    import signal
    import time

    run = tmp_path / "run"
    longer = ("data.synthetic_train_size=800", f"hydra.run.dir={run}")  # 25 steps per epoch
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    launcher = subprocess.Popen(
        [sys.executable, "-m", "cutmix_runner.torchrun", "--nproc_per_node=2", *SMOKE, *longer],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (run / "metrics.jsonl").exists() and time.monotonic() < deadline:
        time.sleep(0.1)  # the first epoch is over: a checkpoint to resume from
    launcher.send_signal(signal.SIGTERM)
    _, stderr = launcher.communicate(timeout=120)
    assert launcher.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    lines = [ln for ln in stderr.splitlines() if "cutmix" in ln]
    assert len(lines) == 1 and "interrupted" in lines[0], stderr[-3000:]
    resumed = torchrun(tmp_path, *SMOKE, *longer, "trainer.resume=auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [r["global_epoch"] for r in _metrics(run)] == [1, 2, 3, 4]


def test_a_non_finite_loss_on_one_rank_stops_every_rank(tmp_path: Path) -> None:
    """Rank 1 alone meets a NaN: both stop before the update, with rank 0's one line."""
    run = tmp_path / "run"
    result = torchrun(tmp_path, *SMOKE, f"hydra.run.dir={run}", fault="nan_step:9",
                      fault_rank=1)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [ln for ln in result.stderr.splitlines() if "cutmix" in ln]
    assert len(lines) == 1
    assert "non-finite loss in stage 'head', epoch 2, step 2" in lines[0]
    assert [r["global_epoch"] for r in _metrics(run)] == [1]


@pytest.mark.parametrize("override, message", [
    ("trainer.batch_size=33", "trainer.batch_size=33 does not split evenly over 2 processes"),
    ("trainer.batch_size=2", "use a multiple of 2 of at least 4"),
    ("trainer.batchsize=32", "Key 'batchsize' not in 'TrainerConfig'"),
])
def test_bad_input_under_torchrun_is_one_line(override: str, message: str,
                                              tmp_path: Path) -> None:
    result = torchrun(tmp_path, *SMOKE, override, "hydra.run.dir=run")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr[-3000:]
    assert list(tmp_path.iterdir()) == []  # no run folder, no log: nothing written


def test_a_refused_torchrun_leaves_a_finished_run_byte_identical(uninterrupted: Path,
                                                                tmp_path: Path) -> None:
    """Another seed into a directory that holds a finished run: refused before rank 0 writes
    anything, .hydra/ included (Hydra's own files are written only once the checks pass)."""
    run = tmp_path / "run"
    shutil.copytree(uninterrupted, run)
    before = {str(p.relative_to(run)): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    result = torchrun(tmp_path, *SMOKE, "trainer.seed=7", f"hydra.run.dir={run}")
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "already holds a run" in lines[0], result.stderr[-3000:]
    after = {str(p.relative_to(run)): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert after == before and sorted(p.name for p in tmp_path.iterdir()) == ["run"]


@pytest.mark.parametrize("count, words", [("0", "--nproc_per_node=0: give a number"),
                                          ("two", "--nproc_per_node=two: give a number"),
                                          ("gpu", "no CUDA device here")])
def test_a_bad_process_count_is_one_line_before_anything_launches(
        count: str, words: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    import torch

    from cutmix_runner import torchrun as launcher

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(sys, "argv", ["cutmix-torchrun", f"--nproc_per_node={count}", *SMOKE,
                                      f"hydra.run.dir={tmp_path / 'run'}"])
    with pytest.raises(SystemExit) as exit_:
        launcher.main()
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and words in err
    assert not (tmp_path / "run").exists()
