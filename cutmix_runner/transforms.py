"""Batched image transforms on uint8 (N, 3, H, W) tensors: the model's input transform, the
training augmentation, and the fixed perturbations the stability diagnostics use.

Everything works on whole batches in torch, on whatever device the batch is on (airbench style):
no per-image PIL work and no worker processes.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F


class Preprocess:
    """uint8 batch -> float batch at the model's resolution, normalised by the backbone's stats.

    The only transform a trained model needs at inference time; `inference.py` rebuilds it from a
    checkpoint's config.
    """

    def __init__(self, image_size: int, mean: tuple[float, ...], std: tuple[float, ...],
                 channels_last: bool = False) -> None:
        self.image_size = image_size
        self.mean = torch.tensor(mean).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std).view(1, 3, 1, 1) * 255
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def at(self, image_size: int | None) -> Preprocess:
        """The same transform at another resolution (None: this one)."""
        if image_size is None or image_size == self.image_size:
            return self
        other = copy.copy(self)
        other.image_size = image_size
        return other

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean.device != x.device:  # moved once: a copy per batch would sync a GPU
            self.mean, self.std = self.mean.to(x.device), self.std.to(x.device)
        x = x.float()
        if x.shape[-1] != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bilinear", align_corners=False)
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=self.memory_format)


def shift(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, pad: int) -> torch.Tensor:
    """Move image i down by dy[i] and right by dx[i] pixels (|d| <= pad), filling with zeros.

    One gather over the zero-padded batch: the window of image i starts at (pad - dy, pad - dx).
    """
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    top = (pad - dy).to(x.device, non_blocking=True)
    left = (pad - dx).to(x.device, non_blocking=True)
    rows = (top[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (left[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chan = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, chan, rows, cols]


def flip_where(x: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Mirror image i left-right where flip[i] is True."""
    return torch.where(flip.to(x.device)[:, None, None, None], x.flip(-1), x)


def gaussian_noise(x: torch.Tensor, sigma: float, seed: int) -> torch.Tensor:
    """`x` (0-255) plus noise of std `sigma` on the 0-1 scale; the same noise for the same seed."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(x.shape, generator=g).to(x.device) * sigma * 255
    return (x.float() + noise).clamp(0, 255)


def translation(x: torch.Tensor, max_shift: int, seed: int) -> torch.Tensor:
    """Shift image i by 1..max_shift pixels on each axis (seeded sign and size), zero-filled.

    Unlike the training pad-and-crop (`data.train_batches`), never the identity: every image
    moves on both axes.
    """
    g = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    sizes = torch.randint(1, max_shift + 1, (2, n), generator=g)
    signs = torch.randint(0, 2, (2, n), generator=g) * 2 - 1
    dy, dx = sizes * signs
    return shift(x, dy, dx, max_shift)
