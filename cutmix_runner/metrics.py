"""Metrics computed from logits and labels: accuracy, calibration (ECE via torchmetrics,
temperature, Brier, confidence), reliability bins, flip rate and per-class accuracy. No model,
no I/O."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy: the one definition every score (validation, test, corruptions) uses."""
    return float((logits.argmax(-1) == labels).float().mean())


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
