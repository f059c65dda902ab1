"""Batch regularizers (CutMix, MixUp, Random Erasing, CutMix-or-MixUp) and the soft-target loss.

Why not timm's ``Mixup``: it asserts an even batch size (it mixes a batch with its flip), it adds
0.1 label smoothing unless told otherwise, and it has no bounds on the patch area, which is what
makes a "mild" stage mild. Here each regularizer is one small class with explicit parameters and
its own seeded generator; all run in the main process on whole batches.

Every regularizer maps (images, labels) to a ``MixResult`` with soft targets whose rows sum to 1.
``prob``, ``min_area`` and ``max_area`` are plain attributes so that a stage's ramp can change
them between epochs.

CutMix and MixUp take a ``mode``, as timm's ``Mixup`` does: ``batch`` tosses one coin per batch
and mixes the whole batch with one box (or one lambda); ``elem`` tosses a coin per image, and each
mixed image gets its own box (or lambda). With ``elem`` the number of mixed images per epoch is
about ``prob`` times the images seen, however few batches there are, which is what makes a dose
comparable between short and long runs and small and large data.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from cutmix_runner.config import RegularizerConfig


@dataclass
class MixResult:
    images: torch.Tensor
    targets: torch.Tensor  # soft targets, rows sum to 1
    lam: float  # mean weight of each image's own label (1.0 when nothing was mixed)
    mixed_fraction: float  # fraction of images that were changed

    @property
    def mixed(self) -> bool:
        return self.mixed_fraction > 0


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    return F.one_hot(labels, num_classes).float()


def smooth(targets: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """Explicit label smoothing (default 0 everywhere: nothing is smoothed silently)."""
    if label_smoothing == 0:
        return targets
    return targets * (1 - label_smoothing) + label_smoothing / targets.shape[-1]


def soft_target_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of -sum(target * log_softmax(logits)).

    For targets ``lam * y1 + (1 - lam) * y2`` this equals ``lam * CE(y1) + (1 - lam) * CE(y2)``.
    """
    return torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


def beta_sample(alpha: float, g: torch.Generator, size: int | None = None) -> np.ndarray | float:
    """Beta(alpha, alpha) from a seeded torch generator (torch.distributions takes none)."""
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=g))
    draw = np.random.default_rng(seed).beta(alpha, alpha, size=size)
    return draw if size is not None else float(draw)


def box_for_area(height: int, width: int, area: float, g: torch.Generator) -> tuple[int, ...]:
    """A square-ratio box of about `area` (fraction of the image) at a uniform centre, clipped.

    Returns (top, bottom, left, right), half-open.
    """
    ratio = area ** 0.5
    cut_h, cut_w = int(round(height * ratio)), int(round(width * ratio))
    cy = int(torch.randint(0, height, (1,), generator=g))
    cx = int(torch.randint(0, width, (1,), generator=g))
    top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h - cut_h // 2, height)
    left, right = max(cx - cut_w // 2, 0), min(cx + cut_w - cut_w // 2, width)
    return top, bottom, left, right


# regularizer.mode: one coin, box and lambda per batch, or one per image (timm's "elem").
MODES = ("batch", "elem")


def _own_share(partner: torch.Tensor, lam: torch.Tensor) -> tuple[float, float]:
    """(mean weight of each image's own label, fraction of images actually changed).

    An image paired with itself, or given an empty box, keeps its whole label. Takes the CPU
    draws, before they move to the batch's device, so that no step waits on the GPU for them.
    """
    changed = (partner != torch.arange(len(partner))) & (lam < 1)
    own = torch.where(changed, lam, torch.ones_like(lam))
    return float(own.mean()), float(changed.float().mean())


class Regularizer:
    """Base: holds the shared knobs and the generator; subclasses implement ``apply``. Values
    are checked once, by config.RegularizerConfig.validate (and the mode against MODES by
    validation.py), before any regularizer is built."""

    def __init__(self, num_classes: int, prob: float = 1.0, alpha: float = 1.0,
                 min_area: float = 0.0, max_area: float = 1.0, seed: int = 0,
                 mode: str = "batch") -> None:
        self.mode = mode
        self.num_classes = num_classes
        self.prob = prob
        self.alpha = alpha
        self.min_area = min_area
        self.max_area = max_area
        self.generator = torch.Generator().manual_seed(seed)

    def generators(self) -> list[torch.Generator]:
        return [self.generator]

    def rng_state(self) -> list[torch.Tensor]:
        """Every generator's state, for exact resume."""
        return [g.get_state() for g in self.generators()]

    def set_rng_state(self, states: list[torch.Tensor]) -> None:
        for g, state in zip(self.generators(), states, strict=True):
            g.set_state(state)

    def _coin(self) -> bool:
        return self.prob > 0 and float(torch.rand(1, generator=self.generator)) < self.prob

    def _coins(self, n: int) -> torch.Tensor:
        """elem mode: which of `n` images are mixed, each with probability `prob`."""
        return torch.rand(n, generator=self.generator) < self.prob

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> MixResult:
        targets = one_hot(labels, self.num_classes).to(images.device)
        return self.apply(images, targets)

    def apply(self, images: torch.Tensor, targets: torch.Tensor) -> MixResult:
        return MixResult(images, targets, 1.0, 0.0)


class CutMix(Regularizer):
    """CutMix, per batch (``mode="batch"``) or per image (``mode="elem"``).

    batch: with probability ``prob`` the batch is mixed. A patch area fraction
    ``min_area + (max_area - min_area) * Beta(alpha, alpha)`` is drawn (with the default bounds
    [0, 1] this is standard CutMix's ``1 - lambda``); a box of side ``sqrt(area)`` times the image
    side is centred uniformly and clipped to the image; each image receives that box from a random
    partner in the batch. Lambda is recomputed from the clipped box, so the label weights equal the
    true pasted area. Works for any batch size (a batch of 1 is its own partner).

    elem: each image is mixed with probability ``prob``; each mixed image draws its own area and
    centre, and receives that box from its partner, so each image's lambda is its own true pasted
    area.
    """

    def sample_area(self) -> float:
        u = beta_sample(self.alpha, self.generator)
        return self.min_area + (self.max_area - self.min_area) * u

    def apply(self, images: torch.Tensor, targets: torch.Tensor) -> MixResult:
        if self.mode == "elem":
            return self.apply_elem(images, targets)
        if not self._coin():
            return MixResult(images, targets, 1.0, 0.0)
        n, _, h, w = images.shape
        top, bottom, left, right = box_for_area(h, w, self.sample_area(), self.generator)
        partner = torch.randperm(n, generator=self.generator)
        lam = 1.0 - (bottom - top) * (right - left) / (h * w)
        share = _own_share(partner, torch.full((n,), lam))
        partner = partner.to(images.device, non_blocking=True)
        mixed = images.clone()
        mixed[:, :, top:bottom, left:right] = images[partner, :, top:bottom, left:right]
        return MixResult(mixed, lam * targets + (1.0 - lam) * targets[partner], *share)

    def boxes(self, n: int, h: int, w: int) -> torch.Tensor:
        """(n, H, W) bool masks: one square-ratio box per image, of an area drawn within the
        bounds, centred uniformly and clipped to the image (as `box_for_area`, vectorised)."""
        g = self.generator
        u = torch.from_numpy(np.asarray(beta_sample(self.alpha, g, n), dtype=np.float64))
        ratio = (self.min_area + (self.max_area - self.min_area) * u).sqrt()
        cut_h, cut_w = (h * ratio).round().long(), (w * ratio).round().long()
        cy, cx = torch.randint(0, h, (n,), generator=g), torch.randint(0, w, (n,), generator=g)
        top, bottom = (cy - cut_h // 2).clamp(min=0), (cy + cut_h - cut_h // 2).clamp(max=h)
        left, right = (cx - cut_w // 2).clamp(min=0), (cx + cut_w - cut_w // 2).clamp(max=w)
        rows = torch.arange(h)[None, :, None]
        cols = torch.arange(w)[None, None, :]
        return ((rows >= top[:, None, None]) & (rows < bottom[:, None, None])
                & (cols >= left[:, None, None]) & (cols < right[:, None, None]))

    def apply_elem(self, images: torch.Tensor, targets: torch.Tensor) -> MixResult:
        if self.prob <= 0:
            return MixResult(images, targets, 1.0, 0.0)
        n, _, h, w = images.shape
        # Every draw is taken whether or not an image is mixed, so the stream does not depend
        # on the coins: two arms with the same seed see the same partners and boxes.
        mixed = self._coins(n)
        mask = self.boxes(n, h, w) & mixed[:, None, None]
        partner = torch.randperm(n, generator=self.generator)
        lam = 1.0 - mask.flatten(1).float().mean(1)
        share = _own_share(partner, lam)
        lam = lam.to(images.device, non_blocking=True)
        partner = partner.to(images.device, non_blocking=True)
        mask = mask.to(images.device, non_blocking=True)[:, None]
        out = torch.where(mask, images[partner], images)
        return MixResult(out, lam[:, None] * targets + (1 - lam[:, None]) * targets[partner],
                         *share)


class MixUp(Regularizer):
    """MixUp: a global pixel blend ``lam * x + (1 - lam) * x[partner]`` with the same label blend.

    batch: with probability ``prob`` the batch is mixed; lambda ~ Beta(alpha, alpha), one per
    batch or, with ``per_sample=True``, one per image. elem: each image is mixed with probability
    ``prob``, with its own lambda. Area bounds do not apply.
    """

    def __init__(self, num_classes: int, prob: float = 1.0, alpha: float = 0.2,
                 per_sample: bool = False, seed: int = 0, mode: str = "batch") -> None:
        super().__init__(num_classes, prob, alpha, seed=seed, mode=mode)
        self.per_sample = per_sample

    def apply(self, images: torch.Tensor, targets: torch.Tensor) -> MixResult:
        n = images.shape[0]
        if self.mode == "elem":
            if self.prob <= 0:
                return MixResult(images, targets, 1.0, 0.0)
            mixed = self._coins(n)
            lam = torch.from_numpy(beta_sample(self.alpha, self.generator, n)).float()
            lam = torch.where(mixed, lam, torch.ones_like(lam))
        elif not self._coin():
            return MixResult(images, targets, 1.0, 0.0)
        elif self.per_sample:
            lam = torch.from_numpy(beta_sample(self.alpha, self.generator, n)).float()
        else:
            lam = torch.full((n,), float(beta_sample(self.alpha, self.generator)))
        partner = torch.randperm(n, generator=self.generator)
        share = _own_share(partner, lam)
        lam = lam.to(images.device, non_blocking=True)
        partner = partner.to(images.device, non_blocking=True)
        mixed = lam.view(n, 1, 1, 1) * images + (1 - lam.view(n, 1, 1, 1)) * images[partner]
        mixed_targets = lam[:, None] * targets + (1 - lam[:, None]) * targets[partner]
        return MixResult(mixed.to(images.dtype), mixed_targets, *share)


class RandomErasing(Regularizer):
    """Random Erasing: each image, with probability ``prob``, has one box removed.

    The box covers U(min_area, max_area) of the image with a log-uniform aspect ratio in
    [min_aspect, max_aspect] (a box taller or wider than the image is clipped to it, so very large
    areas at extreme aspects come out smaller) and is filled with noise (``fill="random"``, per
    pixel, as timm's "pixel" mode) or with zeros, the data mean after normalisation
    (``fill="zero"``). Nothing is pasted in, so labels stay one-hot: erasing removes information
    instead of replacing it.
    """

    def __init__(self, num_classes: int, prob: float = 0.5, min_area: float = 0.02,
                 max_area: float = 0.33, min_aspect: float = 0.3, max_aspect: float = 3.3,
                 fill: str = "random", seed: int = 0) -> None:
        super().__init__(num_classes, prob, 1.0, min_area, max_area, seed)
        self.min_aspect = min_aspect
        self.max_aspect = max_aspect
        self.fill = fill

    def boxes(self, n: int, h: int, w: int) -> torch.Tensor:
        """(n, H, W) bool mask of the erased pixels; all-False rows for images left alone."""
        g = self.generator
        erase = torch.rand(n, generator=g) < self.prob
        span = self.max_area - self.min_area
        area = (self.min_area + span * torch.rand(n, generator=g)) * h * w
        log_lo, log_hi = math.log(self.min_aspect), math.log(self.max_aspect)
        aspect = torch.exp(log_lo + (log_hi - log_lo) * torch.rand(n, generator=g))
        bh = torch.sqrt(area * aspect).round().clamp(1, h).long()
        bw = torch.sqrt(area / aspect).round().clamp(1, w).long()
        top = (torch.rand(n, generator=g) * (h - bh + 1)).long()
        left = (torch.rand(n, generator=g) * (w - bw + 1)).long()
        rows = torch.arange(h)[None, :, None]
        cols = torch.arange(w)[None, None, :]
        inside = ((rows >= top[:, None, None]) & (rows < (top + bh)[:, None, None])
                  & (cols >= left[:, None, None]) & (cols < (left + bw)[:, None, None]))
        return inside & erase[:, None, None]

    def apply(self, images: torch.Tensor, targets: torch.Tensor) -> MixResult:
        if self.prob <= 0:
            return MixResult(images, targets, 1.0, 0.0)
        n, _, h, w = images.shape
        mask = self.boxes(n, h, w)
        fraction = float(mask.flatten(1).any(1).float().mean())  # on the CPU: no device sync
        mask = mask.to(images.device, non_blocking=True)[:, None]
        if self.fill == "random":
            noise = torch.randn(images.shape, generator=self.generator).to(images)
        else:
            noise = torch.zeros_like(images)
        erased = torch.where(mask, noise, images)
        return MixResult(erased, targets, 1.0, fraction)


class CutMixOrMixUp(Regularizer):
    """With probability ``prob`` a batch is mixed: by CutMix with ``switch_prob``, else MixUp."""

    def __init__(self, cutmix: CutMix, mixup: MixUp, prob: float = 1.0, switch_prob: float = 0.5,
                 seed: int = 0) -> None:
        super().__init__(cutmix.num_classes, prob, seed=seed)
        # The branches always mix once chosen; this object's `prob` decides whether to mix.
        cutmix.prob = mixup.prob = 1.0
        self.cutmix, self.mixup, self.switch_prob = cutmix, mixup, switch_prob
        self.min_area, self.max_area = cutmix.min_area, cutmix.max_area
        self.cutmix_batches = 0

    def generators(self) -> list[torch.Generator]:
        return [self.generator, self.cutmix.generator, self.mixup.generator]

    def apply(self, images: torch.Tensor, targets: torch.Tensor) -> MixResult:
        if not self._coin():
            return MixResult(images, targets, 1.0, 0.0)
        self.cutmix.min_area, self.cutmix.max_area = self.min_area, self.max_area
        if float(torch.rand(1, generator=self.generator)) < self.switch_prob:
            self.cutmix_batches += 1
            return self.cutmix.apply(images, targets)
        return self.mixup.apply(images, targets)


def _none(cfg: RegularizerConfig, num_classes: int, seed: int) -> Regularizer:
    return Regularizer(num_classes, prob=0.0, seed=seed)


def _cutmix(cfg: RegularizerConfig, num_classes: int, seed: int) -> Regularizer:
    return CutMix(num_classes, cfg.prob, cfg.cutmix_alpha, cfg.min_area, cfg.max_area, seed=seed,
                  mode=cfg.mode)


def _mixup(cfg: RegularizerConfig, num_classes: int, seed: int) -> Regularizer:
    return MixUp(num_classes, cfg.prob, cfg.mixup_alpha, cfg.mixup_per_sample, seed=seed,
                 mode=cfg.mode)


def _random_erasing(cfg: RegularizerConfig, num_classes: int, seed: int) -> Regularizer:
    return RandomErasing(num_classes, cfg.prob, cfg.min_area, cfg.max_area, cfg.min_aspect,
                         cfg.max_aspect, cfg.erase_fill, seed=seed)


def _cutmix_or_mixup(cfg: RegularizerConfig, num_classes: int, seed: int) -> Regularizer:
    # Independent streams for the two branches (seed + 1 would be the next stage's seed).
    cutmix_seed, mixup_seed = np.random.SeedSequence(seed).generate_state(2).tolist()
    cutmix = CutMix(num_classes, 1.0, cfg.cutmix_alpha, cfg.min_area, cfg.max_area,
                    seed=cutmix_seed)
    mixup = MixUp(num_classes, 1.0, cfg.mixup_alpha, cfg.mixup_per_sample, seed=mixup_seed)
    return CutMixOrMixUp(cutmix, mixup, cfg.prob, cfg.switch_prob, seed=seed)


# regularizer.name -> factory; config validation takes the allowed names from here.
# regularizer.mode=elem applies to these; the others are per image already (random_erasing) or
# choose per batch between two mixers (cutmix_or_mixup).
ELEM_REGULARIZERS = ("none", "cutmix", "mixup")
REGULARIZERS: dict[str, Callable[[RegularizerConfig, int, int], Regularizer]] = {
    "none": _none,
    "cutmix": _cutmix,
    "mixup": _mixup,
    "random_erasing": _random_erasing,
    "cutmix_or_mixup": _cutmix_or_mixup,
}


def build_regularizer(cfg: RegularizerConfig, num_classes: int, seed: int) -> Regularizer:
    """The regularizer a stage asks for, at its first epoch's values (`set_epoch_values` moves
    them along the stage's ramp)."""
    prob, lo, hi = cfg.values_at(0, 1)
    start = dataclasses.replace(cfg, prob=prob, min_area=lo, max_area=hi)
    return REGULARIZERS[cfg.name](start, num_classes, seed)


def set_epoch_values(regularizer: Regularizer, cfg: RegularizerConfig, epoch: int,
                     epochs: int) -> None:
    """Apply the stage's ramp for 0-based `epoch`; the state lives in the main process."""
    regularizer.prob, regularizer.min_area, regularizer.max_area = cfg.values_at(epoch, epochs)
