from __future__ import annotations

import hashlib
import itertools
import logging
import pickle
from pathlib import Path

import pytest
import torch

from cutmix_runner import data
from cutmix_runner import summary as summary_module
from cutmix_runner.data import (
    DataError,
    build_splits,
    load_cifar10,
    steps_per_epoch,
    stratified_split,
    train_batches,
)
from cutmix_runner.transforms import Preprocess
from tests.helpers import SHARED_CIFAR, SMOKE, ArchiveServer, default_part, train_in_process


def test_loads_a_folder_by_structure(cifar_folder: Path) -> None:
    tx, ty, sx, sy = load_cifar10(cifar_folder.parent)
    assert tx.shape == (100, 3, 32, 32) and tx.dtype == torch.uint8
    assert sx.shape == (20, 3, 32, 32) and ty.dtype == torch.int64
    # Both the parent and the batches folder itself are accepted.
    assert torch.equal(load_cifar10(cifar_folder)[0], tx)


def test_missing_folder_without_download(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data.download=true"):
        load_cifar10(tmp_path / "nowhere", download=False)


def test_corrupt_batch_is_named(cifar_folder: Path) -> None:
    (cifar_folder / "data_batch_3").write_bytes(b"\x80\x04not a pickle")
    with pytest.raises(DataError, match="corrupt CIFAR-10 file .*data_batch_3"):
        load_cifar10(cifar_folder.parent)


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_batch_file_carrying_code_is_refused_before_it_runs(cifar_folder: Path,
                                                              tmp_path: Path) -> None:
    import pickle

    with open(cifar_folder / "data_batch_4", "wb") as f:
        pickle.dump({"data": _RunsCode(tmp_path / "PWNED"), "labels": [0]}, f)
    with pytest.raises(DataError, match="data_batch_4: UnpicklingError: posix.system is not"):
        load_cifar10(cifar_folder.parent)
    assert not (tmp_path / "PWNED").exists()


def test_truncated_batch_is_named(cifar_folder: Path) -> None:
    raw = (cifar_folder / "data_batch_2").read_bytes()
    (cifar_folder / "data_batch_2").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="data_batch_2"):
        load_cifar10(cifar_folder.parent)


def test_wrong_shapes_and_labels(cifar_folder: Path) -> None:
    with open(cifar_folder / "test_batch", "wb") as f:
        pickle.dump({"data": torch.zeros(20, 100, dtype=torch.uint8).numpy(),
                     "labels": [0] * 20}, f)
    with pytest.raises(DataError, match=r"shape \(N, 3072\)"):
        load_cifar10(cifar_folder.parent)
    with open(cifar_folder / "test_batch", "wb") as f:
        pickle.dump({"data": torch.zeros(20, 3072, dtype=torch.uint8).numpy(),
                     "labels": [12] * 20}, f)
    with pytest.raises(DataError, match="labels outside"):
        load_cifar10(cifar_folder.parent)


def test_wrong_counts(cifar_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "TRAIN_COUNT", 50000)
    with pytest.raises(DataError, match="expected 50000 train"):
        load_cifar10(cifar_folder.parent)


def test_download_path_uses_torchvision_with_md5(tmp_path: Path, cifar_folder: Path,
                                                 archive_server: ArchiveServer,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # The official URL and MD5 are what real users get; a loopback server stands in here.
    assert data.CIFAR10_MD5 == "c58f30108f718f92721af3b95e74349a"
    assert data.CIFAR10_URL == "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    archive, url = archive_server.archive, archive_server.url
    monkeypatch.setattr(data, "CIFAR10_URL", url)
    monkeypatch.setattr(data, "CIFAR10_MD5", hashlib.md5(archive.read_bytes()).hexdigest())
    root = tmp_path / "downloaded"
    tx, _, sx, _ = load_cifar10(root, download=True)
    assert (root / "cifar-10-batches-py" / "data_batch_1").exists()
    assert len(tx) == 100 and len(sx) == 20


def test_download_with_wrong_md5_fails_clearly(tmp_path: Path, cifar_folder: Path,
                                               archive_server: ArchiveServer,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "CIFAR10_URL", archive_server.url)  # official MD5 kept
    with pytest.raises(DataError, match="downloading CIFAR-10"):
        load_cifar10(tmp_path / "downloaded", download=True)


def test_stratified_split_is_balanced_disjoint_and_seeded() -> None:
    labels = torch.arange(1000) % 10
    picked, rest = stratified_split(labels, 200, seed=3)
    assert torch.bincount(labels[picked]).tolist() == [20] * 10
    assert len(set(picked.tolist()) & set(rest.tolist())) == 0
    assert len(picked) + len(rest) == 1000
    assert torch.equal(picked, stratified_split(labels, 200, seed=3)[0])
    assert not torch.equal(picked, stratified_split(labels, 200, seed=4)[0])


def test_build_splits_holds_out_validation_and_subsets() -> None:
    cfg = default_part("data", name="synthetic", val_size=40, train_subset=100,
                       synthetic_train_size=240)
    splits = build_splits(cfg)
    assert len(splits.val_x) == 40 and len(splits.train_x) == 100
    assert torch.bincount(splits.val_y).tolist() == [4] * 10
    assert torch.bincount(splits.train_y).tolist() == [10] * 10
    with pytest.raises(DataError, match="train_subset"):
        build_splits(default_part("data", name="synthetic", val_size=40, train_subset=500))


def _translated(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """`image` moved by (dy, dx) pixels, zeros where nothing moved in: the reference crop."""
    h, w = image.shape[-2:]
    out = torch.zeros_like(image)
    out[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        image[..., max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def test_batched_augmentation_shapes_and_content() -> None:
    """Each image is the original translated by at most `pad` (zeros filled in) or mirrored, and
    a batch holds both moved and unmoved, mirrored and unmirrored images."""
    x = torch.randint(1, 256, (16, 3, 32, 32), dtype=torch.uint8)
    (shifted, y), = train_batches(x, torch.arange(16), 16, torch.Generator().manual_seed(0), 4,
                                  False)
    assert shifted.shape == x.shape and shifted.dtype == torch.uint8
    offsets = []
    for out, label in zip(shifted, y.tolist(), strict=True):
        offsets += [next(d for d in itertools.product(range(-4, 5), repeat=2)
                         if torch.equal(out, _translated(x[label], *d)))]
    assert len(set(offsets)) > 8  # the offsets vary; (0, 0) alone would be no translation
    (flipped, y), = train_batches(x, torch.arange(16), 16, torch.Generator().manual_seed(1), 0,
                                  True)
    mirrored = []
    for out, label in zip(flipped, y.tolist(), strict=True):
        assert torch.equal(out, x[label]) or torch.equal(out, x[label].flip(-1))
        mirrored.append(torch.equal(out, x[label].flip(-1)))
    assert 0 < sum(mirrored) < len(mirrored)
    pre = Preprocess(64, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), channels_last=True)
    out = pre(x)
    assert out.shape == (16, 3, 64, 64) and out.is_contiguous(memory_format=torch.channels_last)
    assert out.min() >= -1.0 and out.max() <= 1.0


def test_translation_moves_pixels_within_pad() -> None:
    x = torch.zeros(1, 1, 8, 8, dtype=torch.uint8)
    x[0, 0, 4, 4] = 255
    moves = set()
    for seed in range(40):
        (out, _), = train_batches(x, torch.zeros(1), 1, torch.Generator().manual_seed(seed), 2,
                                  False)
        r, c = (out[0, 0] == 255).nonzero()[0].tolist()
        moves.add((r - 4, c - 4))
    assert all(abs(dr) <= 2 and abs(dc) <= 2 for dr, dc in moves)
    assert len(moves) >= 15  # of the 25 moves within the pad: translation happens, both ways


def test_train_batches_cover_the_epoch_once() -> None:
    x = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 3, 4, 4).contiguous()
    y = torch.arange(10)
    seen = torch.cat([yb for _, yb in train_batches(x, y, 4, torch.Generator(), 0, False)])
    assert sorted(seen.tolist()) == list(range(10))


def test_rank_slices_of_each_global_batch_are_the_one_process_batch() -> None:
    """Under DDP every rank draws the same order and augmentation and keeps its own slice."""
    x = torch.randint(0, 256, (22, 3, 8, 8), dtype=torch.uint8)
    y = torch.arange(22)
    whole = list(train_batches(x, y, 8, torch.Generator().manual_seed(5), 2, True))
    parts = [list(train_batches(x, y, 8, torch.Generator().manual_seed(5), 2, True, rank, 2))
             for rank in range(2)]
    # 22 = 8 + 8 + 6: the last batch (3 images per rank) is kept.
    assert len(whole) == len(parts[0]) == len(parts[1]) == steps_per_epoch(22, 8, 2) == 3
    for (xb, yb), (x0, y0), (x1, y1) in zip(whole, *parts, strict=True):
        assert torch.equal(torch.cat([x0, x1]), xb) and torch.equal(torch.cat([y0, y1]), yb)
        assert len(y0) == len(y1)


def test_a_last_batch_too_small_to_split_is_dropped() -> None:
    assert steps_per_epoch(19, 8) == 3  # 3 left over: kept in one process
    assert steps_per_epoch(19, 8, parts=2) == 2  # 1 or 2 images per rank: dropped
    assert steps_per_epoch(17, 8) == 2  # one image left over: dropped, as before


@pytest.mark.skipif(not SHARED_CIFAR.exists(), reason="shared CIFAR-10 copy not present")
def test_shared_cifar10_copy_loads_by_structure() -> None:
    tx, ty, sx, sy = load_cifar10(SHARED_CIFAR)
    assert tx.shape == (50000, 3, 32, 32) and sx.shape == (10000, 3, 32, 32)
    assert torch.bincount(ty).tolist() == [5000] * 10
    assert torch.bincount(sy).tolist() == [1000] * 10


def test_the_test_subset_is_stratified_and_the_same_for_every_split() -> None:
    full = build_splits(default_part("data", name="synthetic", val_size=40))
    picks = [build_splits(default_part("data", name="synthetic", val_size=40, split_seed=seed,
                                       test_subset=30)) for seed in (0, 1)]
    assert len(picks[0].test_y) == 30 and torch.bincount(picks[0].test_y).tolist() == [3] * 10
    assert torch.equal(picks[0].test_x, picks[1].test_x)  # not drawn with the split seed
    assert not torch.equal(picks[0].val_x, picks[1].val_x)
    whole = build_splits(default_part("data", name="synthetic", val_size=40, test_subset=100))
    assert torch.equal(whole.test_x, full.test_x)
    with pytest.raises(DataError, match="data.test_subset=101 exceeds the 100 test images"):
        build_splits(default_part("data", name="synthetic", val_size=40, test_subset=101))


class RecordedBar:
    """Stands in for tqdm in summary.py: what a progress bar was told."""

    made: list[RecordedBar] = []

    def __init__(self, *, total: int, disable: bool, **_: object) -> None:
        self.total, self.disable, self.count = total, disable, 0
        RecordedBar.made.append(self)

    def update(self, n: int) -> None:
        self.count += n

    def __enter__(self) -> RecordedBar:
        return self

    def __exit__(self, *_: object) -> None:
        pass


def test_a_run_says_what_scoring_the_test_set_costs_before_it_starts(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """One log line with the count of forward passes and a time estimate, then a progress bar
    (on a terminal) that counts exactly those passes."""
    caplog.set_level(logging.INFO, logger="cutmix_runner.summary")
    RecordedBar.made.clear()
    monkeypatch.setattr(summary_module, "tqdm", RecordedBar)
    monkeypatch.setattr(summary_module.FinishedRun, "show_bars", property(lambda run: True))
    summary = train_in_process(tmp_path / "run", *SMOKE, "data.test_subset=50",
                               "trainer.num_threads=1", "trainer.progress=false")
    assert summary["test_size"] == 50
    line = next(r.getMessage() for r in caplog.records if "scoring the test set" in r.getMessage())
    rescore = summary["best"]["global_epoch"] != sum(s["epochs"] for s in summary["stages"])
    # 50 images x 2 views (x 2 weights when rescored), the flip-rate checks on 2 x 50, and the
    # validation set again (40 images) for the best weights' temperature when rescored.
    passes = 50 * 2 * (2 if rescore else 1) + 2 * 50 + (40 if rescore else 0)
    assert line.startswith("scoring the test set: 50 images, flip-averaged, "), line
    assert f": {passes} forward passes, about " in line, line
    [bar] = RecordedBar.made
    assert not bar.disable and bar.total == bar.count == passes
