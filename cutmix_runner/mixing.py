"""CutMix with bounded patch area, and the soft-target loss it trains with.

Why not timm's ``Mixup``: it asserts an even batch size (it mixes a batch with its flip), it adds
0.1 label smoothing unless told otherwise, and it has no bounds on the patch area, which is what
makes a "mild" stage mild. This module is one small class with explicit parameters instead.

Sampling, per batch (as in the CutMix paper and timm's batch mode):
  with probability ``prob`` the batch is mixed, otherwise returned as is with one-hot targets;
  a patch area fraction ``a = min_area + (max_area - min_area) * Beta(alpha, alpha)`` is drawn
  (with the default bounds [0, 1] this is standard CutMix's ``1 - lambda``);
  a box of side ``sqrt(a)`` times the image side is centred uniformly at random and clipped to the
  image; each image receives that box from a random partner in the batch;
  lambda is recomputed from the clipped box, so the label weights equal the true pasted area.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class MixResult:
    images: torch.Tensor
    targets: torch.Tensor  # soft targets, rows sum to 1
    lam: float  # weight of each image's own label (1.0 when not mixed)
    mixed: bool


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    return F.one_hot(labels, num_classes).float()


def soft_target_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of -sum(target * log_softmax(logits)).

    For targets ``lam * y1 + (1 - lam) * y2`` this equals ``lam * CE(y1) + (1 - lam) * CE(y2)``.
    """
    return torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


def box_for_area(height: int, width: int, area: float, g: torch.Generator) -> tuple[int, ...]:
    """A box of about `area` (fraction of the image) at a uniform centre, clipped to the image.

    Returns (top, bottom, left, right), half-open.
    """
    ratio = area ** 0.5
    cut_h, cut_w = int(round(height * ratio)), int(round(width * ratio))
    cy = int(torch.randint(0, height, (1,), generator=g))
    cx = int(torch.randint(0, width, (1,), generator=g))
    top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h - cut_h // 2, height)
    left, right = max(cx - cut_w // 2, 0), min(cx + cut_w - cut_w // 2, width)
    return top, bottom, left, right


class CutMix:
    """Batch-level CutMix.

    Args:
        num_classes: number of classes for the one-hot targets.
        prob: chance that a batch is mixed (default 1.0).
        alpha: Beta(alpha, alpha) shape of the patch area within its bounds (default 1.0: uniform).
        min_area, max_area: bounds on the patch area as a fraction of the image (default 0, 1).
        seed: seeds this mixer's own generator, so mixing is reproducible and independent of the
            data order.
    """

    def __init__(self, num_classes: int, prob: float = 1.0, alpha: float = 1.0,
                 min_area: float = 0.0, max_area: float = 1.0, seed: int = 0) -> None:
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"prob must be in [0, 1], got {prob}")
        if alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        if not 0.0 <= min_area <= max_area <= 1.0:
            raise ValueError(f"need 0 <= min_area <= max_area <= 1, got {min_area}, {max_area}")
        self.num_classes = num_classes
        self.prob = prob
        self.alpha = alpha
        self.min_area = min_area
        self.max_area = max_area
        self.generator = torch.Generator().manual_seed(seed)

    def sample_area(self) -> float:
        u = _beta_sample(self.alpha, self.generator)
        return self.min_area + (self.max_area - self.min_area) * u

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> MixResult:
        targets = one_hot(labels, self.num_classes).to(images.device)
        if self.prob <= 0 or float(torch.rand(1, generator=self.generator)) >= self.prob:
            return MixResult(images, targets, 1.0, False)
        n, _, h, w = images.shape
        top, bottom, left, right = box_for_area(h, w, self.sample_area(), self.generator)
        partner = torch.randperm(n, generator=self.generator).to(images.device)
        mixed = images.clone()
        mixed[:, :, top:bottom, left:right] = images[partner, :, top:bottom, left:right]
        lam = 1.0 - (bottom - top) * (right - left) / (h * w)
        targets = lam * targets + (1.0 - lam) * targets[partner]
        return MixResult(mixed, targets, lam, True)


def _beta_sample(alpha: float, g: torch.Generator) -> float:
    """Beta(alpha, alpha) drawn from a seeded generator.

    torch.distributions takes no generator, so numpy draws it, seeded from ours.
    """
    if alpha == 1.0:
        return float(torch.rand(1, generator=g))
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=g))
    return float(np.random.default_rng(seed).beta(alpha, alpha))
