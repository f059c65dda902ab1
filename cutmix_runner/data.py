"""CIFAR-10 (and a synthetic stand-in) as whole-dataset uint8 tensors, split and batched.

Everything stays in memory as one (N, 3, 32, 32) uint8 tensor on the training device; an epoch
is a shuffled sequence of index slices, augmented in torch by `transforms.py`.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cutmix_runner.config import DataConfig
from cutmix_runner.errors import DataError
from cutmix_runner.transforms import flip_where, shift

log = logging.getLogger(__name__)

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_FILENAME = "cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_MB = 170  # the archive's size (170,498,071 bytes), told to the user before downloading
CIFAR10_FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_BATCH = "test_batch"
TRAIN_COUNT, TEST_COUNT = 50000, 10000
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")


@dataclass
class Splits:
    """uint8 images (N, 3, H, W) and int64 labels for each split."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to(self, device: torch.device) -> Splits:
        moved = {k: getattr(self, k).to(device) for k in
                 ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")}
        return Splits(**moved, classes=self.classes)


# ---------------------------------------------------------------- loading


def find_cifar10_folder(root: str | Path) -> Path:
    """`root` may be the batches folder itself or a folder that contains it."""
    root = Path(root)
    if (root / TRAIN_BATCHES[0]).exists():
        return root
    return root / CIFAR10_FOLDER


def download_cifar10(root: str | Path) -> None:
    """Fetch and unpack the official archive; torchvision checks the official MD5."""
    from torchvision.datasets.utils import download_and_extract_archive

    log.info("CIFAR-10 is not in %s: downloading the official archive once (%s, about %d MB, "
             "MD5-checked) from %s", root, CIFAR10_FILENAME, CIFAR10_MB, CIFAR10_URL)
    try:
        download_and_extract_archive(CIFAR10_URL, download_root=str(root),
                                     filename=CIFAR10_FILENAME, md5=CIFAR10_MD5)
    except Exception as exc:  # network errors, MD5 mismatch, bad archive
        raise DataError(f"downloading CIFAR-10 into {root} failed: {exc}") from exc
    if not (Path(root) / CIFAR10_FOLDER / TRAIN_BATCHES[0]).exists():
        raise DataError(f"the downloaded archive did not contain {CIFAR10_FOLDER}/")


class CifarUnpickler(pickle.Unpickler):
    """Unpickles a CIFAR-10 batch and nothing else: a dict of byte strings, lists, numbers and
    one NumPy array. Any other global (a function, a class) is refused before it is built, so a
    doctored batch file cannot run code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"), ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not part of a CIFAR-10 batch")
        return super().find_class(module, name)


def _load_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.exists():
        raise DataError(f"missing CIFAR-10 file {path}")
    try:
        with open(path, "rb") as f:
            entry = CifarUnpickler(f, encoding="latin1").load()
        data = np.asarray(entry["data"], dtype=np.uint8)
        labels = np.asarray(entry.get("labels", entry.get("fine_labels")), dtype=np.int64)
    except Exception as exc:
        raise DataError(f"corrupt CIFAR-10 file {path}: {type(exc).__name__}: {exc}") from exc
    # Validate by structure, not MD5: re-serialised copies are legitimate.
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: expected data of shape (N, 3072), got {data.shape}")
    if labels.shape != (data.shape[0],):
        raise DataError(f"{path}: {labels.shape[0]} labels for {data.shape[0]} images")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{path}: labels outside 0..9")
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar10(root: str | Path, download: bool = False) -> tuple[torch.Tensor, ...]:
    """Return (train_x, train_y, test_x, test_y) as uint8/int64 tensors."""
    folder = find_cifar10_folder(root)
    if not folder.exists():
        if not download:
            raise DataError(f"CIFAR-10 not found at {folder}; set data.root to the folder "
                            "holding cifar-10-batches-py, or data.download=true")
        download_cifar10(root)
        folder = find_cifar10_folder(root)
    parts = [_load_batch(folder / name) for name in TRAIN_BATCHES]
    train_x = np.concatenate([p[0] for p in parts])
    train_y = np.concatenate([p[1] for p in parts])
    test_x, test_y = _load_batch(folder / TEST_BATCH)
    if len(train_x) != TRAIN_COUNT or len(test_x) != TEST_COUNT:
        raise DataError(f"{folder}: expected {TRAIN_COUNT} train and {TEST_COUNT} test images, "
                        f"got {len(train_x)} and {len(test_x)}")
    return (torch.from_numpy(train_x), torch.from_numpy(train_y),
            torch.from_numpy(test_x), torch.from_numpy(test_y))


def make_synthetic(train_size: int, test_size: int, num_classes: int,
                   seed: int = 1234) -> tuple[torch.Tensor, ...]:
    """Class-dependent colour blocks plus noise: learnable in a few epochs, fully deterministic."""
    g = torch.Generator().manual_seed(seed)
    palette = torch.randint(30, 226, (num_classes, 3, 1, 1), generator=g).float()
    # Each class also gets a bright quadrant so that spatial features matter.
    quadrants = torch.arange(num_classes) % 4

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(n) % num_classes
        x = palette[y].expand(n, 3, 32, 32).clone()
        for q in range(4):
            idx = (quadrants[y] == q).nonzero().flatten()
            r, c = divmod(q, 2)
            x[idx, :, r * 16:(r + 1) * 16, c * 16:(c + 1) * 16] += 60
        x += 25 * torch.randn(x.shape, generator=g)
        return x.clamp(0, 255).to(torch.uint8), y

    train_x, train_y = sample(train_size)
    test_x, test_y = sample(test_size)
    return train_x, train_y, test_x, test_y


def stratified_split(labels: torch.Tensor, size: int,
                     seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick `size` indices with (near-)equal counts per class; return (picked, rest), sorted."""
    if size == 0:
        return torch.empty(0, dtype=torch.long), torch.arange(len(labels))
    if size >= len(labels):
        raise DataError(f"cannot hold out {size} of {len(labels)} images")
    g = torch.Generator().manual_seed(seed)
    classes = labels.unique()
    picked = []
    # Give each class its share; the remainder goes to the first classes.
    share, extra = divmod(size, len(classes))
    for i, c in enumerate(classes.tolist()):
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        take = share + (1 if i < extra else 0)
        if take > len(idx):
            raise DataError(f"class {c} has only {len(idx)} images, {take} requested")
        picked.append(idx[:take])
    chosen = torch.cat(picked).sort().values
    mask = torch.ones(len(labels), dtype=torch.bool)
    mask[chosen] = False
    return chosen, mask.nonzero().flatten()


@dataclass(frozen=True)
class Dataset:
    """One entry of DATASETS: how to load it and its class names (known without loading)."""

    load: Callable[[DataConfig], tuple[torch.Tensor, ...]]  # -> train_x, train_y, test_x, test_y
    classes: Callable[[DataConfig], tuple[str, ...]]


def _cifar10(cfg: DataConfig) -> tuple[torch.Tensor, ...]:
    return load_cifar10(os.path.expanduser(cfg.root), cfg.download)


def _synthetic(cfg: DataConfig) -> tuple[torch.Tensor, ...]:
    return make_synthetic(cfg.synthetic_train_size, cfg.synthetic_test_size, cfg.synthetic_classes)


def _synthetic_classes(cfg: DataConfig) -> tuple[str, ...]:
    return tuple(f"class_{i}" for i in range(cfg.synthetic_classes))


# data.name -> its Dataset; config validation takes the allowed names from here.
DATASETS: dict[str, Dataset] = {
    "cifar10": Dataset(_cifar10, lambda cfg: CIFAR10_CLASSES),
    "synthetic": Dataset(_synthetic, _synthetic_classes),
}


def class_names(cfg: DataConfig) -> tuple[str, ...]:
    return DATASETS[cfg.name].classes(cfg)


# The test subset's draw: fixed, so that runs of any seed and split are scored on the same images.
TEST_SUBSET_SEED = 0


def build_splits(cfg: DataConfig) -> Splits:
    """Train, validation (held out from the official training set) and test splits."""
    tx, ty, sx, sy = DATASETS[cfg.name].load(cfg)
    val_idx, train_idx = stratified_split(ty, cfg.val_size, cfg.split_seed)
    if cfg.train_subset is not None:
        if cfg.train_subset > len(train_idx):
            raise DataError(f"data.train_subset={cfg.train_subset} exceeds the "
                            f"{len(train_idx)} training images left after validation")
        if cfg.train_subset < len(train_idx):
            keep, _ = stratified_split(ty[train_idx], cfg.train_subset, cfg.split_seed + 1)
            train_idx = train_idx[keep]
    if cfg.test_subset is not None and cfg.test_subset > len(sy):
        raise DataError(f"data.test_subset={cfg.test_subset} exceeds the {len(sy)} test images")
    if cfg.test_subset is not None and cfg.test_subset < len(sy):
        keep, _ = stratified_split(sy, cfg.test_subset, TEST_SUBSET_SEED)
        sx, sy = sx[keep], sy[keep]
    return Splits(tx[train_idx], ty[train_idx], tx[val_idx], ty[val_idx], sx, sy,
                  class_names(cfg))


# ---------------------------------------------------------------- batching


def steps_per_epoch(n: int, batch_size: int, parts: int = 1) -> int:
    """Batches per epoch: a last partial batch counts unless it holds a single image, or, split
    over `parts` ranks, would leave a rank fewer than 2 (BatchNorm cannot train on one)."""
    full, rest = divmod(n, batch_size)
    return full + (1 if rest >= 2 * parts or (rest == 1 and full == 0) else 0)


def train_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, g: torch.Generator,
                  pad: int, hflip: bool, part: int = 0,
                  parts: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of shuffled, augmented uint8 batches (pad-and-crop by up to `pad`, flips).

    Every random number of the epoch (order, crop offsets, flips) is drawn up front from the CPU
    generator `g` and moved to the data's device once: CPU and CUDA runs augment alike, and a GPU
    never waits on the host for a batch's draws. Which last partial batch is kept: steps_per_epoch.
    Under DDP (`parts` ranks) every rank draws the same numbers and yields slice `part` of each
    global batch, so the ranks together see exactly the batches one process would.
    """
    n = len(x)
    order = torch.randperm(n, generator=g)
    shifts = pad - torch.randint(0, 2 * pad + 1, (2, n), generator=g)  # dy, dx in [-pad, pad]
    flips = torch.rand(n, generator=g) < 0.5
    order, shifts, flips = (t.to(x.device, non_blocking=True) for t in (order, shifts, flips))
    for step in range(steps_per_epoch(n, batch_size, parts)):
        span = slice(step * batch_size, (step + 1) * batch_size)
        # Under DDP: this rank's contiguous slice of the global batch, cut before augmenting.
        idx, dy, dx, flip = (torch.tensor_split(t, parts)[part] for t in
                             (order[span], shifts[0, span], shifts[1, span], flips[span]))
        xb = shift(x[idx], dy, dx, pad) if pad else x[idx]
        if hflip:
            xb = flip_where(xb, flip)
        yield xb, y[idx]


