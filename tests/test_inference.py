"""A trained model rebuilt for inference from a run directory or a checkpoint, with no dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cutmix_runner.data import build_splits
from cutmix_runner.errors import RunError
from cutmix_runner.inference import load_trained


def test_a_run_directory_gives_the_best_checkpoint_with_its_preprocessing(smoke_run: Path) -> None:
    trained = load_trained(smoke_run)
    assert trained.source == smoke_run / "checkpoints" / "best.pt"
    assert not trained.model.training
    assert trained.classes == tuple(f"class_{i}" for i in range(10))
    assert trained.image_size == trained.preprocess.image_size == 32
    # The rebuilt model scores the test set exactly as the run did (single view).
    summary = json.loads((smoke_run / "summary.json").read_text())
    data = build_splits(trained.config.data)
    logits = trained.logits(data.test_x, batch_size=trained.config.trainer.eval_batch_size)
    accuracy = (logits.argmax(-1) == data.test_y).float().mean().item()
    assert accuracy == summary["test_accuracy_single_view"]


def test_a_checkpoint_file_loads_too_and_needs_no_data_files(smoke_run: Path,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    from cutmix_runner import data

    def no_data(*args: object) -> None:
        raise AssertionError("inference must not load a data set")

    monkeypatch.setattr(data, "load_cifar10", no_data)
    monkeypatch.setattr(data, "make_synthetic", no_data)
    last = smoke_run / "checkpoints" / "last.pt"
    trained = load_trained(last)
    assert trained.source == last
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    assert trained.logits(images).shape == (5, 10)


@pytest.mark.parametrize("make_bad, pattern", [
    (lambda p: p.write_bytes(b"junk"), "not a readable checkpoint"),
    (lambda p: torch.save({"model": {}}, p), "not a cutmix-runner checkpoint"),
    (lambda p: None, "no checkpoint at"),
])
def test_unusable_paths_are_one_clear_error(make_bad, pattern: str, tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    make_bad(path)
    with pytest.raises(RunError, match=pattern):
        load_trained(path)
