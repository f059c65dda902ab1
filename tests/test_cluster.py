"""Sweeps through hydra-submitit-launcher (the [cluster] extra): our `local` and `slurm`
launcher configs compose, the SLURM one turns into a valid sbatch script with its partition,
GPUs, time limit and requeue settings, and a 2-job sweep runs through submitit's local
executor."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("hydra_plugins.hydra_submitit_launcher")

from omegaconf import OmegaConf  # noqa: E402

from tests.helpers import ROOT  # noqa: E402


def _launcher(*overrides: str):
    from hydra import compose, initialize_config_dir

    from cutmix_runner.cli import CONFIG_DIR
    from cutmix_runner.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    return OmegaConf.to_container(cfg.hydra.launcher, resolve=False)


def test_slurm_launcher_config_composes_into_a_valid_sbatch_script(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same translation the plugin's launch() makes, up to the sbatch text submitit would
    submit; submitit rejects unknown parameters, so this validates every key."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from submitit.slurm.slurm import SlurmExecutor

    monkeypatch.setattr(SlurmExecutor, "affinity", classmethod(lambda cls: 1))  # no srun here

    params = _launcher("hydra/launcher=slurm", "hydra.launcher.partition=gpu")
    assert params["_target_"].endswith("SlurmLauncher")
    params.pop("_target_")
    executor = submitit.AutoExecutor(folder=tmp_path, cluster="slurm",
                                     slurm_max_num_timeout=params.pop("max_num_timeout"))
    params.pop("submitit_folder")
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    params["name"] = "cutmix-train"
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    text = executor._executor._make_submission_file_text("python -m x", "uid")
    for line in ("#SBATCH --partition=gpu", "#SBATCH --requeue", "#SBATCH --time=240",
                 "#SBATCH --gpus-per-node=1", "#SBATCH --signal=USR2@120"):
        assert line in text, line
    assert executor._executor.max_num_timeout == 3


def test_local_launcher_config_composes() -> None:
    params = _launcher("hydra/launcher=local")
    assert params["_target_"].endswith("LocalLauncher")
    assert params["gpus_per_node"] == 1 and params["timeout_min"] == 240


def test_a_two_job_sweep_through_submitit_local(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    result = subprocess.run(
        [sys.executable, "-m", "cutmix_runner", "-m", "hydra/launcher=local",
         "hydra.launcher.gpus_per_node=0", "hydra.launcher.cpus_per_task=1",
         "experiment=smoke", "trainer.progress=false", "trainer.num_threads=1",
         "trainer.seed=0,1", f"hydra.sweep.dir={sweep}"],
        capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    runs = sorted(p.parent for p in sweep.glob("*/summary.json"))
    assert len(runs) == 2
    for run in runs:
        summary = json.loads((run / "summary.json").read_text())
        assert 0 <= summary["test_accuracy"] <= 1
        assert (run / "checkpoints" / "best.pt").exists()
        assert len((run / "metrics.jsonl").read_text().splitlines()) == 4
    assert (sweep / ".submitit").is_dir()  # the jobs went through submitit
