"""A wheel built from the repository and installed with pip runs the main command, configs
included: the process and the install are what is tested, so this runs them for real."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT


def _run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_an_installed_wheel_runs_cutmix_train_with_its_configs(tmp_path: Path) -> None:
    wheels, target, work = tmp_path / "wheels", tmp_path / "site", tmp_path / "work"
    work.mkdir()
    # From a clean copy of the sources: pip builds in the tree, and a build/ folder left by an
    # earlier build would carry files that this one leaves out.
    source = tmp_path / "source"
    left_out = {"build", "multirun", "outputs", "data", "docs", "search", "gpu_bundle"}

    def ignore(folder: str, names: list[str]) -> set[str]:
        top = Path(folder) == ROOT  # only the checkout's own work folders, not configs/data
        return {n for n in names if n.startswith(".") or n == "__pycache__"
                or n.endswith(".egg-info") or (top and n in left_out)}

    shutil.copytree(ROOT, source, symlinks=True, ignore=ignore)
    built = _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                 "--quiet", "-w", str(wheels), str(source), cwd=tmp_path)
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next(wheels.glob("cutmix_runner-*.whl"))
    installed = _run(sys.executable, "-m", "pip", "install", "--no-deps", "--quiet",
                     "--target", str(target), str(wheel), cwd=tmp_path)
    assert installed.returncode == 0, installed.stderr[-2000:]
    assert (target / "cutmix_runner" / "configs" / "train.yaml").exists()
    # The installed copy, not this checkout, answers: its own path comes first.
    env = {**os.environ, "PYTHONPATH": str(target), "PYTHONWARNINGS": "ignore"}
    where = _run(sys.executable, "-c", "import cutmix_runner; print(cutmix_runner.__file__)",
                 cwd=work, env=env)
    assert where.stdout.startswith(str(target)), where.stdout
    result = _run(str(target / "bin" / "cutmix-train"), "experiment=smoke",
                  "trainer.progress=false", "hydra.run.dir=run", cwd=work, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (work / "run" / "summary.json").exists()
    assert (work / "run" / ".hydra" / "config.yaml").exists()
