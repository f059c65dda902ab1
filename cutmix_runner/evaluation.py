"""Evaluation: passes over a split in eval mode, the per-epoch diagnostics, the test protocol
(flip-averaged or single view), and the test half of `summary.json`.

Validation drives model selection and every diagnostic; the test set is scored once, at the end,
with a temperature fitted on validation (no tuning on the test set).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cutmix_runner.config import TrainerConfig
from cutmix_runner.data import Splits
from cutmix_runner.metrics import (
    accuracy,
    calibration,
    fit_temperature,
    flip_rate,
    per_class_accuracy,
    reliability_bins,
)
from cutmix_runner.transforms import gaussian_noise, translation

# Seeds of the fixed perturbations, so that every run and epoch sees the same noise and shifts.
NOISE_SEED, SHIFT_SEED = 11, 12


@dataclass
class EvalResult:
    loss: float
    accuracy: float
    count: int
    logits: torch.Tensor  # float32, on the CPU: diagnostics are computed from the same pass


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, preprocess: Callable[[torch.Tensor], torch.Tensor],
            batch_size: int, autocast: Callable[[], Any],
            advance: Callable[[int], object] | None = None) -> torch.Tensor:
    """Logits in eval mode; every module's own mode (frozen parts included) is restored.
    `advance(n)` is told of each batch's n images (a progress bar's update)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    out = []
    for start in range(0, len(x), batch_size):
        with autocast():
            out.append(model(preprocess(x[start:start + batch_size])).float().cpu())
        if advance is not None:
            advance(len(out[-1]))
    for module, training in modes:
        module.training = training
    return torch.cat(out) if out else torch.empty(0)


def score(logits: torch.Tensor, y: torch.Tensor) -> EvalResult:
    """Cross entropy and accuracy of given logits."""
    y = y.cpu()
    if len(y) == 0:
        return EvalResult(0.0, 0.0, 0, logits)
    loss = F.cross_entropy(logits, y).item()
    return EvalResult(loss, accuracy(logits, y), len(y), logits)


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             preprocess: Callable[[torch.Tensor], torch.Tensor], batch_size: int,
             autocast: Callable[[], Any],
             advance: Callable[[int], object] | None = None) -> EvalResult:
    """Clean cross entropy and accuracy."""
    return score(predict(model, x, preprocess, batch_size, autocast, advance), y)


def evaluate_flip_averaged(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                           preprocess: Callable[[torch.Tensor], torch.Tensor], batch_size: int,
                           autocast: Callable[[], Any], single_view_logits: torch.Tensor,
                           advance: Callable[[int], object] | None = None) -> EvalResult:
    """Like `evaluate`, on the mean of the logits of each image and its mirror image.

    Training flips images at random, so the mirror is an equally valid view; averaging the two
    is the test-time augmentation airbench uses. `single_view_logits` are `x`'s own logits,
    already computed by the caller's single-view pass.
    """
    return score(flip_averaged(lambda images: predict(model, images, preprocess, batch_size,
                                                      autocast, advance),
                               x, single_view_logits), y)


def flip_averaged(logits_of: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                  single_view: torch.Tensor | None = None) -> torch.Tensor:
    """The mean of the logits of each image and of its mirror image: the test protocol's TTA
    (and cutmix-predict --tta flip). `single_view`: the images' own logits, if already known."""
    own = logits_of(images) if single_view is None else single_view
    return (own + logits_of(images.flip(-1))) / 2


@dataclass
class EpochEvaluation:
    val: EvalResult
    clean: EvalResult  # the fixed clean-train subset
    diagnostics: dict[str, float]  # on validation

    def record(self) -> dict[str, float]:
        """The epoch's evaluation fields of metrics.jsonl."""
        return {"clean_train_accuracy": self.clean.accuracy, "clean_train_loss": self.clean.loss,
                "val_accuracy": self.val.accuracy, "val_loss": self.val.loss,
                "generalization_gap": self.clean.accuracy - self.val.accuracy,
                **{f"val_{k}": v for k, v in self.diagnostics.items()}}


@dataclass
class TestEvaluation:
    single_view: EvalResult
    headline: EvalResult  # under the test protocol


class Evaluator:
    """Every evaluation of one run: one model, its preprocessing, the trainer's settings."""

    def __init__(self, model: nn.Module, preprocess: Callable[[torch.Tensor], torch.Tensor],
                 cfg: TrainerConfig, autocast: Callable[[], Any]) -> None:
        self.model = model
        self.preprocess = preprocess
        self.cfg = cfg
        self.autocast = autocast
        self.images_per_second: float | None = None  # of the last pass, for time estimates
        self.advance: Callable[[int], object] | None = None  # told of every batch scored

    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> EvalResult:
        start = time.perf_counter()
        result = evaluate(self.model, x, y, self.preprocess, self.cfg.eval_batch_size,
                          self.autocast, self.advance)
        if len(x):
            self.images_per_second = len(x) / max(time.perf_counter() - start, 1e-9)
        return result

    def diagnostics(self, result: EvalResult, x: torch.Tensor, y: torch.Tensor,
                    temperature: float | None = None) -> dict[str, float]:
        """Calibration from the evaluation's own logits, plus flip rates on a fixed subset."""
        out = calibration(result.logits, y.cpu(), temperature)
        n = min(self.cfg.flip_subset, len(x))
        clean = result.logits[:n]
        perturbations = {"noise": gaussian_noise(x[:n], self.cfg.flip_noise_sigma, NOISE_SEED),
                         "shift": translation(x[:n], self.cfg.flip_max_shift, SHIFT_SEED)}
        for name, perturbed_x in perturbations.items():
            perturbed = predict(self.model, perturbed_x, self.preprocess,
                                self.cfg.eval_batch_size, self.autocast, self.advance)
            out[f"flip_rate_{name}"] = flip_rate(clean, perturbed)
        return out

    def epoch(self, data: Splits, clean_x: torch.Tensor,
              clean_y: torch.Tensor) -> EpochEvaluation:
        """Validation with its diagnostics, and the clean-train subset for the gap."""
        val = self.evaluate(data.val_x, data.val_y)
        clean = self.evaluate(clean_x, clean_y)
        return EpochEvaluation(val, clean, self.diagnostics(val, data.val_x, data.val_y))

    def test(self, data: Splits) -> TestEvaluation:
        """The test set under the protocol: flip-averaged when `trainer.test_flip`."""
        single = self.evaluate(data.test_x, data.test_y)
        if not self.cfg.test_flip:
            return TestEvaluation(single, single)
        headline = evaluate_flip_averaged(self.model, data.test_x, data.test_y, self.preprocess,
                                          self.cfg.eval_batch_size, self.autocast, single.logits,
                                          self.advance)
        return TestEvaluation(single, headline)

    def test_summary(self, data: Splits, best: TestEvaluation, final: TestEvaluation,
                     val_logits: torch.Tensor) -> dict[str, Any]:
        """The test fields of summary.json; the model must hold the best-validation weights."""
        # Temperature fitted on validation, applied to test: no tuning on the test set.
        temperature = fit_temperature(val_logits, data.val_y.cpu())
        test_y = data.test_y.cpu()
        logits = best.single_view.logits
        classes, confusion = per_class_accuracy(logits, test_y, data.num_classes)
        return {
            "test_accuracy": best.headline.accuracy, "test_loss": best.headline.loss,
            "test_protocol": "flip-averaged" if self.cfg.test_flip else "single view",
            "test_accuracy_single_view": best.single_view.accuracy,
            "test_loss_single_view": best.single_view.loss,
            "test": {**self.diagnostics(best.single_view, data.test_x, data.test_y, temperature),
                     "per_class_accuracy": dict(zip(data.classes, classes, strict=True)),
                     "reliability": reliability_bins(logits, test_y),
                     "confusion_matrix": confusion},
            "final_test_accuracy": final.headline.accuracy,
            "final_test_loss": final.headline.loss,
        }
