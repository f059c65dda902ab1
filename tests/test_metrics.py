"""Diagnostics against hand-computed values on small fixed tensors."""

from __future__ import annotations

import math

import pytest
import torch

from cutmix_runner.evaluation import evaluate, evaluate_flip_averaged, predict
from cutmix_runner.metrics import (
    brier_score,
    calibration,
    expected_calibration_error,
    fit_temperature,
    flip_rate,
    per_class_accuracy,
)
from cutmix_runner.transforms import gaussian_noise, translation


def _logits_for(probabilities: list[list[float]]) -> torch.Tensor:
    return torch.tensor(probabilities).log()


def test_ece_on_a_known_example() -> None:
    # Four predictions: confidences 0.9 (right), 0.9 (wrong), 0.6 (right), 0.6 (right).
    logits = _logits_for([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.4, 0.6]])
    labels = torch.tensor([0, 1, 1, 1])
    # Bin around 0.9: accuracy 0.5, confidence 0.9 -> |0.4| * 2/4; bin around 0.6: accuracy 1,
    # confidence 0.6 -> |0.4| * 2/4. ECE = 0.4.
    assert expected_calibration_error(logits, labels) == pytest.approx(0.4, abs=1e-5)


def test_ece_of_perfectly_calibrated_bins_is_zero() -> None:
    logits = _logits_for([[0.75, 0.25]] * 4)
    labels = torch.tensor([0, 0, 0, 1])
    assert expected_calibration_error(logits, labels) == pytest.approx(0.0, abs=1e-6)


def test_brier_score_by_hand() -> None:
    logits = _logits_for([[0.8, 0.2], [0.5, 0.5]])
    labels = torch.tensor([0, 1])
    expected = ((0.2 ** 2 + 0.2 ** 2) + (0.5 ** 2 + 0.5 ** 2)) / 2
    assert brier_score(logits, labels) == pytest.approx(expected, rel=1e-5)


def test_temperature_is_recovered_from_data_with_a_known_temperature() -> None:
    g = torch.Generator().manual_seed(0)
    true_logits = 3 * torch.randn(20000, 10, generator=g)
    labels = torch.distributions.Categorical(logits=true_logits).sample()
    # A model that is 2.5x overconfident: its logits are the true ones times 2.5.
    assert fit_temperature(2.5 * true_logits, labels) == pytest.approx(2.5, rel=0.05)
    assert fit_temperature(0.5 * true_logits, labels) == pytest.approx(0.5, rel=0.05)


def test_calibration_reports_confidence_split_and_scaled_ece() -> None:
    logits = _logits_for([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.4, 0.6]])
    labels = torch.tensor([0, 1, 1, 1])
    out = calibration(logits, labels, temperature=1.0)
    assert out["confidence_correct"] == pytest.approx((0.9 + 0.6 + 0.6) / 3, rel=1e-5)
    assert out["confidence_wrong"] == pytest.approx(0.9, rel=1e-5)
    assert out["ece_temp_scaled"] == pytest.approx(out["ece"])
    assert out["nll"] == pytest.approx(-(math.log(0.9) + math.log(0.1) + 2 * math.log(0.6)) / 4,
                                       rel=1e-5)


class _Constant(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tensor([0.0, 1.0, 0.0]).expand(x.shape[0], 3)


def test_flip_rate_is_zero_for_a_constant_model() -> None:
    x = torch.randint(0, 256, (37, 3, 8, 8), dtype=torch.uint8)
    model = _Constant()
    clean = predict(model, x, lambda b: b.float(), 10, torch.no_grad)
    for perturbed in (gaussian_noise(x, 0.1, seed=1), translation(x, 2, seed=2)):
        assert not torch.equal(perturbed.float(), x.float())  # the inputs did change
        assert flip_rate(clean, predict(model, perturbed, lambda b: b.float(), 10,
                                        torch.no_grad)) == 0.0


class _Brightness(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean(dim=(1, 2, 3))
        return torch.stack([m, 127.5 + torch.zeros_like(m)], 1)


def test_flip_rate_of_a_threshold_model_under_noise() -> None:
    # Images 0.5 above the threshold flip when the mean of 48 noisy pixels (std 12.75 / sqrt(48)
    # = 1.84) drops by 0.5: probability Phi(-0.27) = 0.39. Images far from it never flip.
    x = torch.cat([torch.full((200, 3, 4, 4), 128, dtype=torch.uint8),
                   torch.full((200, 3, 4, 4), 250, dtype=torch.uint8)])
    clean = predict(_Brightness(), x, lambda b: b.float(), 64, torch.no_grad)
    noisy = predict(_Brightness(), gaussian_noise(x, 0.05, seed=0), lambda b: b.float(), 64,
                    torch.no_grad)
    assert flip_rate(clean[200:], noisy[200:]) == 0.0
    assert 0.29 <= flip_rate(clean[:200], noisy[:200]) <= 0.49


def test_flip_rate_counts_changed_predictions() -> None:
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    b = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    assert flip_rate(a, b) == 0.5


def test_perturbations_are_fixed_by_their_seed_and_small() -> None:
    x = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8)
    assert torch.equal(gaussian_noise(x, 0.03, seed=3), gaussian_noise(x, 0.03, seed=3))
    assert (gaussian_noise(x, 0.03, seed=3) - x.float()).abs().max() < 0.03 * 255 * 6
    shifted = translation(x, 2, seed=4)
    assert shifted.shape == x.shape and torch.equal(shifted, translation(x, 2, seed=4))
    assert not torch.equal(shifted, x)
    # Each image moved by 1-2 px on both axes: an interior pixel reappears shifted.
    marker = torch.zeros(1, 1, 10, 10, dtype=torch.uint8)
    marker[0, 0, 5, 5] = 255
    r, c = (translation(marker, 2, seed=5)[0, 0] == 255).nonzero()[0].tolist()
    assert 1 <= abs(r - 5) <= 2 and 1 <= abs(c - 5) <= 2


def test_per_class_accuracy_and_confusion_matrix() -> None:
    logits = torch.eye(3)[torch.tensor([0, 0, 1, 2, 2, 1])]
    labels = torch.tensor([0, 1, 1, 2, 2, 2])
    accuracy, matrix = per_class_accuracy(logits, labels, 3)
    assert accuracy == pytest.approx([1.0, 0.5, 2 / 3])
    assert matrix == [[1, 0, 0], [1, 1, 0], [0, 1, 2]]


class _LeftHalfModel(torch.nn.Module):
    """Logits from the left and right halves of the image: a mirror swaps them."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = x.shape[-1] // 2
        return torch.stack([x[..., :w].mean((1, 2, 3)), x[..., w:].mean((1, 2, 3))], dim=1)


def test_flip_averaged_evaluation_averages_the_mirror_logits() -> None:
    import contextlib

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (12, 3, 4, 4), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 2, (12,), generator=g)
    model, pre = _LeftHalfModel(), (lambda t: t.float())
    single = evaluate(model, x, y, pre, 5, contextlib.nullcontext)
    mirrored = evaluate(model, x.flip(-1), y, pre, 5, contextlib.nullcontext)
    averaged = evaluate_flip_averaged(model, x, y, pre, 5, contextlib.nullcontext, single.logits)
    torch.testing.assert_close(averaged.logits, (single.logits + mirrored.logits) / 2)
    # This model's two views cancel: both logits become the whole-image mean.
    torch.testing.assert_close(averaged.logits[:, 0], averaged.logits[:, 1])
    # Invariant to mirroring the inputs.
    flipped = evaluate_flip_averaged(model, x.flip(-1), y, pre, 5, contextlib.nullcontext,
                                     mirrored.logits)
    torch.testing.assert_close(flipped.logits, averaged.logits)
    expected = (averaged.logits.argmax(-1) == y).float().mean().item()
    assert averaged.accuracy == pytest.approx(expected) and averaged.count == 12

