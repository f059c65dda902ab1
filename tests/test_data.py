from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import pytest
import torch

from cutmix_runner import data
from cutmix_runner.config import DataConfig
from cutmix_runner.data import (
    DataError,
    build_splits,
    load_cifar10,
    steps_per_epoch,
    stratified_split,
    train_batches,
)
from cutmix_runner.transforms import Preprocess
from tests.helpers import SHARED_CIFAR, ArchiveServer


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
    cfg = DataConfig(name="synthetic", val_size=40, train_subset=100, synthetic_train_size=240)
    splits = build_splits(cfg)
    assert len(splits.val_x) == 40 and len(splits.train_x) == 100
    assert torch.bincount(splits.val_y).tolist() == [4] * 10
    assert torch.bincount(splits.train_y).tolist() == [10] * 10
    with pytest.raises(DataError, match="train_subset"):
        build_splits(DataConfig(name="synthetic", val_size=40, train_subset=500))


def test_batched_augmentation_shapes_and_content() -> None:
    x = torch.randint(0, 256, (9, 3, 32, 32), dtype=torch.uint8)
    (shifted, _), = train_batches(x, torch.arange(9), 9, torch.Generator().manual_seed(0), 4,
                                  False)
    assert shifted.shape == x.shape and shifted.dtype == torch.uint8
    (flipped, y), = train_batches(x, torch.arange(9), 9, torch.Generator().manual_seed(1), 0, True)
    for i, label in enumerate(y.tolist()):  # each image as it was, or mirrored
        assert torch.equal(flipped[i], x[label]) or torch.equal(flipped[i], x[label].flip(-1))
    pre = Preprocess(64, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), channels_last=True)
    out = pre(x)
    assert out.shape == (9, 3, 64, 64) and out.is_contiguous(memory_format=torch.channels_last)
    assert out.min() >= -1.0 and out.max() <= 1.0


def test_translation_moves_pixels_within_pad() -> None:
    x = torch.zeros(1, 1, 8, 8, dtype=torch.uint8)
    x[0, 0, 4, 4] = 255
    for seed in range(20):
        (out, _), = train_batches(x, torch.zeros(1), 1, torch.Generator().manual_seed(seed), 2,
                                  False)
        r, c = (out[0, 0] == 255).nonzero()[0].tolist()
        assert abs(r - 4) <= 2 and abs(c - 4) <= 2


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
