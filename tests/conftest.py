"""Fixtures shared across test files; helpers live in tests/helpers.py."""

from __future__ import annotations

import os

# One thread per process, for this one and every process a test starts (torchrun's ranks, the
# CLI, gpu_check.sh): the tests' models are tiny, and with torch's default of one thread per core
# their steps spend more time synchronising threads than computing. On a busy 2-core machine the
# default made scripts/gpu_check.sh --dry's benchmark 7.5x slower (55 s against 7.3 s).
os.environ.setdefault("OMP_NUM_THREADS", "1")

from collections.abc import Iterator  # noqa: E402
from pathlib import Path

import pytest  # noqa: E402

from tests.helpers import (  # noqa: E402
    SMOKE,
    ArchiveServer,
    serve_fake_archive,
    train_in_process,
    write_cifar_folder,
)


@pytest.fixture
def cifar_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from cutmix_runner import data

    monkeypatch.setattr(data, "TRAIN_COUNT", 100)
    monkeypatch.setattr(data, "TEST_COUNT", 20)
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    write_cifar_folder(folder)
    return folder


@pytest.fixture
def archive_server(tmp_path: Path) -> Iterator[ArchiveServer]:
    """A fake CIFAR-10 archive on the loopback interface; pair it with `cifar_folder`'s counts."""
    with serve_fake_archive(tmp_path / "served") as server:
        yield server


# A tiny model trained long enough on the synthetic data to classify it well (100 % test
# accuracy in about 5 s): for predict, eval and export, which need a model that knows something.
TRAINED = (*SMOKE, "trainer.num_threads=1", "schedule.stages.head.epochs=6",
           "schedule.stages.head.patience=0", "schedule.stages.late.epochs=3",
           "data.synthetic_train_size=600", "data.synthetic_test_size=300")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("trained") / "run"
    train_in_process(out, *TRAINED)
    return out


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One smoke experiment (tiny model, synthetic data, three stages), run in this process with
    one thread (the golden-output test compares it with a committed record). Read-only."""
    out = tmp_path_factory.mktemp("smoke") / "run"
    train_in_process(out, *SMOKE, "trainer.num_threads=1")
    return out
