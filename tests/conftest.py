from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_CIFAR = ROOT.parent / "shared" / "data" / "cifar10"


def write_cifar_folder(folder: Path, per_batch: int = 20, test: int = 20, seed: int = 0) -> None:
    """A small folder in the cifar-10-batches-py format (counts are patched by the tests)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = test if name == "test_batch" else per_batch
        entry = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 "labels": [int(v) for v in np.arange(n) % 10]}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f)


def run_cli(*args: str, cwd: Path = ROOT, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run `python -m cutmix_runner` as a user would, without a TTY."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, "-m", "cutmix_runner", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture
def cifar_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from cutmix_runner import data

    monkeypatch.setattr(data, "TRAIN_COUNT", 100)
    monkeypatch.setattr(data, "TEST_COUNT", 20)
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    write_cifar_folder(folder)
    return folder
