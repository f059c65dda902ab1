"""Evaluation passes and the per-epoch metrics log."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cutmix_runner.checkpoint import atomic_write_bytes


@dataclass
class EvalResult:
    loss: float
    accuracy: float
    count: int
    logits: torch.Tensor  # float32, on the CPU: diagnostics are computed from the same pass


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, preprocess: Callable[[torch.Tensor], torch.Tensor],
            batch_size: int, autocast: Callable[[], Any]) -> torch.Tensor:
    """Logits in eval mode; every module's own mode (frozen parts included) is restored."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    out = []
    for start in range(0, len(x), batch_size):
        with autocast():
            out.append(model(preprocess(x[start:start + batch_size])).float().cpu())
    for module, training in modes:
        module.training = training
    return torch.cat(out) if out else torch.empty(0)


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             preprocess: Callable[[torch.Tensor], torch.Tensor], batch_size: int,
             autocast: Callable[[], Any]) -> EvalResult:
    """Clean cross entropy and accuracy."""
    return score(predict(model, x, preprocess, batch_size, autocast), y)


def evaluate_flip_averaged(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                           preprocess: Callable[[torch.Tensor], torch.Tensor], batch_size: int,
                           autocast: Callable[[], Any],
                           single_view_logits: torch.Tensor) -> EvalResult:
    """Like `evaluate`, on the mean of the logits of each image and its mirror image.

    Training flips images at random, so the mirror is an equally valid view; averaging the two
    is the test-time augmentation airbench uses. `single_view_logits` are `x`'s own logits,
    already computed by the caller's single-view pass.
    """
    mirrored = predict(model, x.flip(-1), preprocess, batch_size, autocast)
    return score((single_view_logits + mirrored) / 2, y)


def score(logits: torch.Tensor, y: torch.Tensor) -> EvalResult:
    """Cross entropy and accuracy of given logits."""
    y = y.cpu()
    if len(y) == 0:
        return EvalResult(0.0, 0.0, 0, logits)
    loss = F.cross_entropy(logits, y).item()
    accuracy = (logits.argmax(-1) == y).float().mean().item()
    return EvalResult(loss, accuracy, len(y), logits)


# ---------------------------------------------------------------- calibration and confidence


def expected_calibration_error(logits: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """ECE with `bins` equal-width confidence bins (L1), via torchmetrics."""
    from torchmetrics.functional.classification import multiclass_calibration_error

    return float(multiclass_calibration_error(logits.softmax(-1), labels, logits.shape[-1],
                                              n_bins=bins, norm="l1"))


def reliability_bins(logits: torch.Tensor, labels: torch.Tensor,
                     bins: int = 15) -> dict[str, list[float]]:
    """Per equal-width confidence bin: mean confidence, accuracy and count (reliability diagram)."""
    confidence, predicted = logits.softmax(-1).max(-1)
    correct = (predicted == labels).float()
    index = (confidence * bins).long().clamp(max=bins - 1)
    count = torch.bincount(index, minlength=bins).float()
    mean_conf = torch.bincount(index, confidence, minlength=bins) / count.clamp(min=1)
    accuracy = torch.bincount(index, correct, minlength=bins) / count.clamp(min=1)
    return {"confidence": mean_conf.tolist(), "accuracy": accuracy.tolist(),
            "count": count.tolist()}


def brier_score(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over images of the squared distance between softmax and the one-hot label."""
    one_hot = F.one_hot(labels, logits.shape[-1]).float()
    return float(((logits.softmax(-1) - one_hot) ** 2).sum(-1).mean())


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature T minimising the NLL of logits / T (optimised over log T)."""
    log_t = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return float(log_t.detach().exp())


def calibration(logits: torch.Tensor, labels: torch.Tensor,
                temperature: float | None = None) -> dict[str, float]:
    """NLL, ECE (raw and temperature-scaled), Brier and mean confidence on right/wrong answers.

    `temperature`: use this one (e.g. fitted on validation) instead of fitting on these logits.
    """
    t = fit_temperature(logits, labels) if temperature is None else temperature
    confidence, predicted = logits.softmax(-1).max(-1)
    correct = predicted == labels
    return {
        "nll": F.cross_entropy(logits, labels).item(),
        "ece": expected_calibration_error(logits, labels),
        "temperature": t,
        "ece_temp_scaled": expected_calibration_error(logits / t, labels),
        "brier": brier_score(logits, labels),
        "confidence_correct": float(confidence[correct].mean()) if correct.any() else 0.0,
        "confidence_wrong": float(confidence[~correct].mean()) if (~correct).any() else 0.0,
    }


# ---------------------------------------------------------------- prediction stability


def gaussian_noise(x: torch.Tensor, sigma: float, seed: int) -> torch.Tensor:
    """`x` (0-255) plus noise of std `sigma` on the 0-1 scale; the same noise for the same seed."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(x.shape, generator=g).to(x.device) * sigma * 255
    return (x.float() + noise).clamp(0, 255)


def translation(x: torch.Tensor, max_shift: int, seed: int) -> torch.Tensor:
    """Shift image i by 1..max_shift pixels on each axis (seeded sign and size), zero-filled."""
    g = torch.Generator().manual_seed(seed)
    n, _, h, w = x.shape
    sizes = torch.randint(1, max_shift + 1, (2, n), generator=g)
    signs = torch.randint(0, 2, (2, n), generator=g) * 2 - 1
    dy, dx = (sizes * signs).tolist()
    padded = F.pad(x, (max_shift,) * 4)
    return torch.stack([padded[i, :, max_shift - dy[i]:max_shift - dy[i] + h,
                               max_shift - dx[i]:max_shift - dx[i] + w] for i in range(n)])


def flip_rate(clean_logits: torch.Tensor, perturbed_logits: torch.Tensor) -> float:
    """Fraction of images whose predicted class changes under the perturbation."""
    if len(clean_logits) == 0:
        return 0.0
    return float((clean_logits.argmax(-1) != perturbed_logits.argmax(-1)).float().mean())


def per_class_accuracy(logits: torch.Tensor, labels: torch.Tensor,
                       num_classes: int) -> tuple[list[float], list[list[int]]]:
    """Per-class accuracy and the confusion matrix (rows: true class, columns: predicted)."""
    from torchmetrics.functional.classification import multiclass_confusion_matrix

    matrix = multiclass_confusion_matrix(logits.argmax(-1), labels, num_classes)
    totals = matrix.sum(1).clamp(min=1)
    return (matrix.diag() / totals).tolist(), matrix.tolist()


class MetricsLog:
    """metrics.jsonl: one JSON object per finished epoch, flushed and fsynced line by line."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def rewrite(self, records: list[dict[str, Any]]) -> None:
        """Replace the file atomically with exactly these records (used on resume)."""
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
        atomic_write_bytes(self.path, text.encode())
