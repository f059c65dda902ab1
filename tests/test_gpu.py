"""The GPU options and presets, tested on CPU where that means anything; the tests marked
`cuda` run only on a CUDA machine (scripts/gpu_check.sh runs them there)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cutmix_runner import build, runtime
from cutmix_runner.config import RunConfig
from cutmix_runner.data import Splits, make_synthetic, train_batches
from cutmix_runner.errors import RunError
from cutmix_runner.model import PaddedDepthwiseConv2d, build_model
from cutmix_runner.optim import lr_scale
from cutmix_runner.runtime import Runtime
from cutmix_runner.validation import validate
from tests.helpers import ROOT, compose, default_part, train_in_process

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CPU = Runtime(torch.device("cpu"), "fp32")


def _tiny(**trainer: object) -> RunConfig:
    cfg = validate(compose("experiment=smoke"))
    for key, value in trainer.items():
        setattr(cfg.trainer, key, value)
    return cfg


def _splits(n: int = 64) -> Splits:
    x, y, tx, ty = make_synthetic(n, 8, 10)
    return Splits(x, y, tx, ty, tx, ty, tuple(str(i) for i in range(10)))


def test_trainer_gpu_sets_the_batch_the_read_backs_and_scales_the_lrs_by_sqrt() -> None:
    cfg = validate(compose("trainer=gpu"))
    assert (cfg.trainer.batch_size, cfg.trainer.eval_batch_size, cfg.trainer.sync_every) == (
        512, 1024, 50)
    assert cfg.optim.lr_scaling == "sqrt" and lr_scale(cfg.optim, 512) == pytest.approx(2.0)
    # The default trainer scales nothing, whatever the batch.
    assert lr_scale(validate(compose()).optim, 512) == 1.0


def test_the_built_optimizer_uses_the_scaled_lrs() -> None:
    cfg = _tiny(batch_size=32)
    cfg.optim.lr_scaling, cfg.optim.reference_batch_size = "linear", 8
    data = _splits()
    model, preprocess = build.model_and_preprocess(cfg, 10, CPU.device)
    stage = default_part("late", unfreeze_blocks=1, lr_head=0.01, lr_backbone=0.001)
    _, step = build.stage_step(model, cfg, 0, stage, data, preprocess, CPU)
    lrs = {g["name"]: g["initial_lr"] for g in step.optimizer.param_groups}
    assert lrs["head/decay"] == pytest.approx(0.04)
    assert lrs["backbone/decay"] == pytest.approx(0.004)


@pytest.mark.parametrize(("preset", "name", "size", "late_epochs"), [
    ("gpu_lite0_224", "tf_efficientnet_lite0", 224, 14),
    ("gpu_lite2_260", "tf_efficientnet_lite2", 260, 8),
])
def test_gpu_presets_keep_the_staged_recipe_at_native_resolution(
        preset: str, name: str, size: int, late_epochs: int) -> None:
    cfg = validate(compose(f"experiment={preset}"))
    stages = cfg.schedule.stages
    assert (cfg.model.name, cfg.model.weights, cfg.model.image_size) == (name, "packaged", size)
    assert cfg.trainer.batch_size == 512 and cfg.optim.lr_scaling == "sqrt"
    assert list(stages) == ["head", "adapt", "late"]
    assert stages["head"].regularizer.name == "none"
    assert stages["adapt"].regularizer.name == "cutmix" and stages["adapt"].regularizer.prob < 0.5
    assert stages["late"].unfreeze_blocks == -1 and stages["late"].epochs == late_epochs
    assert stages["late"].regularizer.prob > stages["adapt"].regularizer.prob


def test_fused_optimizer_only_on_cuda_unless_asked() -> None:
    cfg = _tiny()
    data = _splits()
    model, preprocess = build.model_and_preprocess(cfg, 10, CPU.device)
    _, step = build.stage_step(model, cfg, 0, default_part("late"), data, preprocess, CPU)
    assert not step.optimizer.defaults["fused"]
    cfg.optim.fused = True
    _, step = build.stage_step(model, cfg, 0, default_part("late"), data, preprocess, CPU)
    assert step.optimizer.defaults["fused"]


@pytest.mark.parametrize(("device", "flags", "explicit"), [
    ("cpu", {"avx2"}, True),                       # measured 1.3-1.8x faster there
    ("cpu", {"avx2", "avx512f", "amx_bf16"}, False),  # measured 0.86-0.88x there
    ("cuda", {"avx2"}, False),                     # only an extra copy on a GPU
])
def test_depthwise_padding_follows_the_device_when_left_null(
        monkeypatch: pytest.MonkeyPatch, device: str, flags: set[str], explicit: bool) -> None:
    monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset(flags))
    cfg = validate(compose())
    cfg.model.weights = "none"
    assert cfg.model.explicit_depthwise_padding is None
    model = build_model(cfg.model, 10, torch.device(device))
    padded = any(isinstance(m, PaddedDepthwiseConv2d) for m in model.modules())
    assert padded == explicit


def test_compile_keeps_the_state_dict_keys() -> None:
    plain, _ = build.model_and_preprocess(_tiny(), 10, CPU.device)
    compiled, _ = build.model_and_preprocess(_tiny(compile=True), 10, CPU.device)
    # Compiled in place (nn.Module.compile), not wrapped: torch.compile(model) would prefix
    # every key with "_orig_mod.", and checkpoints would no longer load into a plain model.
    assert compiled._compiled_call_impl is not None and plain._compiled_call_impl is None
    assert list(compiled.state_dict()) == list(plain.state_dict())


@pytest.mark.parametrize("overrides", [(), ("trainer=cpu",), ("trainer=gpu",),
                                       ("experiment=default_run",)])
def test_compile_is_off_unless_asked(overrides: tuple[str, ...]) -> None:
    """The first step of each stage compiles (`make bench` times it against what compiling
    gains): no trainer turns it on by default."""
    assert validate(compose(*overrides)).trainer.compile is False


def test_sync_every_reads_the_loss_less_often_and_still_stops_a_nan(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUTMIX_RUNNER_FAULT", "nan_step:2")
    with pytest.raises(RunError, match=r"non-finite loss in stage 'head', epoch 1, by step 3"):
        train_in_process(tmp_path / "run", "experiment=smoke", "trainer.sync_every=3",
                         "trainer.progress=false")


def test_a_non_finite_loss_under_compile_names_compile_as_the_fix(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A compiled step can be wrong where eager is not (docs/benchmarks.md: NaN under
    ATEN_CPU_CAPABILITY=avx2): the line then says to run without compile, not only to lower
    the learning rates."""
    monkeypatch.setenv("CUTMIX_RUNNER_FAULT", "nan_step:1")
    with pytest.raises(RunError, match=r"step 1; run without trainer\.compile, or lower"):
        train_in_process(tmp_path / "run", "experiment=smoke", "trainer.compile=true",
                         "trainer.progress=false")


def test_epoch_records_carry_the_first_step_time(smoke_run: Path) -> None:
    records = [json.loads(line) for line in (smoke_run / "metrics.jsonl").read_text().splitlines()]
    assert all(r["first_step_seconds"] > 0 for r in records)


def test_gpu_check_runs_every_step_in_dry_mode_on_cpu(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable, "TMPDIR": str(tmp_path),
           "PYTHONWARNINGS": "ignore"}
    docs = (ROOT / "docs" / "benchmarks.md").read_text()
    result = subprocess.run(["bash", "scripts/gpu_check.sh", "--dry"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    out = next(tmp_path.rglob("benchmarks.md")).read_text()
    assert "ours / standard" in out and "ours / model-only" in out
    assert "gpu_lite0_224-synthetic" in out and "gpu_lite2_260-synthetic" in out
    assert "first step s" in out
    assert (ROOT / "docs" / "benchmarks.md").read_text() == docs  # a dry run writes no docs


@cuda
@pytest.mark.cuda
def test_augmentation_draws_are_the_same_on_cpu_and_cuda() -> None:
    data = _splits(40)
    cpu = list(train_batches(data.train_x, data.train_y, 16, torch.Generator().manual_seed(3),
                             2, True))
    gpu = list(train_batches(data.train_x.cuda(), data.train_y.cuda(), 16,
                             torch.Generator().manual_seed(3), 2, True))
    assert all(torch.equal(a.cpu(), b.cpu()) and torch.equal(ya.cpu(), yb.cpu())
               for (a, ya), (b, yb) in zip(cpu, gpu, strict=True))


@cuda
@pytest.mark.cuda
def test_a_gpu_trainer_run_on_cuda(tmp_path: Path) -> None:
    summary = train_in_process(tmp_path / "run", "experiment=smoke", "trainer=gpu",
                               "trainer.device=cuda", "trainer.batch_size=32",
                               "trainer.progress=false")
    assert summary["device"].startswith("cuda") and summary["precision"] == "bf16"
    records = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(records) == 4
