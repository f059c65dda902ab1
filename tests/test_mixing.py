from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F

from cutmix_runner.mixing import CutMix, box_for_area, soft_target_cross_entropy


def _images(n: int, size: int = 16) -> torch.Tensor:
    # Each image is constant at a distinct value, so every pixel tells where it came from.
    return torch.arange(1, n + 1, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, size, size)


@pytest.mark.parametrize("batch", [1, 2, 5, 7, 32])
def test_lambda_equals_true_pasted_area(batch: int) -> None:
    mixer = CutMix(num_classes=batch + 1, prob=1.0, seed=batch)
    x = _images(batch)
    labels = torch.arange(batch)
    for _ in range(50):
        out = mixer(x, labels)
        # Pixels that differ from the image itself came from the box, so each image's own-label
        # weight must equal the fraction of its own pixels left; images paired with themselves
        # (always so for a batch of 1) keep the whole label.
        box = (out.images[:, 0] != x[:, 0])
        assert out.targets.sum(-1).allclose(torch.ones(batch))
        own = torch.tensor([1.0 - box[i].float().mean().item() for i in range(batch)])
        assert out.targets[torch.arange(batch), labels].allclose(own, atol=1e-6)
        assert out.lam == pytest.approx(own.mean().item(), abs=1e-6)
        assert out.mixed_fraction == pytest.approx(box.flatten(1).any(1).float().mean().item())
        if batch == 1:
            assert out.lam == 1.0 and not out.mixed and torch.equal(out.images, x)


def test_clipped_boxes_are_measured_after_clipping() -> None:
    g = torch.Generator().manual_seed(0)
    clipped = 0
    for _ in range(500):
        area = 0.5
        top, bottom, left, right = box_for_area(20, 20, area, g)
        assert 0 <= top <= bottom <= 20 and 0 <= left <= right <= 20
        true_area = (bottom - top) * (right - left) / 400
        if true_area < area - 0.06:
            clipped += 1
    assert clipped > 50  # centres near the border do clip

    mixer = CutMix(num_classes=3, prob=1.0, min_area=0.5, max_area=0.5, seed=3)
    x = _images(3, size=20)
    seen_clipped = False
    for _ in range(100):
        out = mixer(x, torch.arange(3))
        diff = out.images[:, 0] != x[:, 0]
        for i in range(3):
            if diff[i].any():
                pasted = diff[i].float().mean().item()
                assert 1 - out.targets[i, i].item() == pytest.approx(pasted, abs=1e-6)
                seen_clipped |= pasted < 0.45
    assert seen_clipped


def test_patch_area_bounds_hold() -> None:
    mixer = CutMix(num_classes=10, prob=1.0, min_area=0.05, max_area=0.2, seed=1)
    areas = [mixer.sample_area() for _ in range(500)]
    assert min(areas) >= 0.05 and max(areas) <= 0.2
    assert max(areas) - min(areas) > 0.1  # the whole range is used
    x = _images(8, size=32)
    for _ in range(200):
        out = mixer(x, torch.arange(8))
        pasted = 1 - out.targets[torch.arange(8), torch.arange(8)]
        assert pasted.max() <= 0.2 + 1e-6  # clipping only shrinks the box


def test_prob_zero_never_mixes_and_prob_rate() -> None:
    x, y = _images(4), torch.arange(4)
    off = CutMix(num_classes=4, prob=0.0)
    out = off(x, y)
    assert not out.mixed and out.lam == 1.0 and torch.equal(out.images, x)
    assert torch.equal(out.targets, F.one_hot(y, 4).float())
    some = CutMix(num_classes=4, prob=0.3, seed=7)
    rate = sum(some(x, y).mixed for _ in range(2000)) / 2000
    assert abs(rate - 0.3) < 0.04


def test_soft_target_loss_equals_weighted_cross_entropies() -> None:
    torch.manual_seed(0)
    logits = torch.randn(6, 5)
    y1, y2 = torch.randint(0, 5, (6,)), torch.randint(0, 5, (6,))
    lam = 0.37
    targets = lam * F.one_hot(y1, 5).float() + (1 - lam) * F.one_hot(y2, 5).float()
    assert targets.sum(-1).allclose(torch.ones(6))
    expected = lam * F.cross_entropy(logits, y1) + (1 - lam) * F.cross_entropy(logits, y2)
    assert soft_target_cross_entropy(logits, targets).item() == pytest.approx(expected.item(),
                                                                               rel=1e-6)


def test_mixed_targets_match_loss_from_cutmix() -> None:
    mixer = CutMix(num_classes=10, prob=1.0, seed=5)
    x, y = _images(7), torch.arange(7)
    out = mixer(x, y)
    assert out.targets.sum(-1).allclose(torch.ones(7))
    logits = torch.randn(7, 10)
    own = out.targets[torch.arange(7), y]
    # The rest of each row sits on one partner label (or nowhere, for self-pairs).
    rest = out.targets.clone()
    rest[torch.arange(7), y] = 0
    y2 = torch.where(rest.max(-1).values > 0, rest.argmax(-1), y)
    ce1 = F.cross_entropy(logits, y, reduction="none")
    ce2 = F.cross_entropy(logits, y2, reduction="none")
    expected = (own * ce1 + (1 - own) * ce2).mean()
    assert soft_target_cross_entropy(logits, out.targets).item() == pytest.approx(
        expected.item(), rel=1e-5)


@pytest.mark.parametrize("override, words", [
    ("prob=1.5", "prob: must be a probability in [0, 1], got 1.5"),
    ("cutmix_alpha=0", "cutmix_alpha: must be > 0"),
    ("min_area=0.5", "min_area: must not exceed max_area"),
    ("mode=pair", "mode"),
    ("switch_prob=2", "switch_prob"),
])
def test_bad_regularizer_values_are_refused_once_in_the_config(override: str, words: str) -> None:
    """The one layer of value checks: the config, naming the key (the classes trust it)."""
    from cutmix_runner.config import ConfigError
    from tests.helpers import recipe

    with pytest.raises(ConfigError, match=re.escape(words)):
        recipe(f"schedule.stages.late.regularizer.{override}")


# ---------------------------------------------------------------- the regularizer family


def test_mixup_targets_and_loss() -> None:
    from cutmix_runner.mixing import MixUp

    torch.manual_seed(0)
    x = torch.randn(6, 3, 8, 8)
    y = torch.arange(6)
    mixup = MixUp(num_classes=6, prob=1.0, alpha=0.4, seed=2)
    out = mixup(x, y)
    assert out.mixed and 0 < out.lam < 1
    assert out.targets.sum(-1).allclose(torch.ones(6))
    # One batch lambda; images paired with themselves keep their whole label.
    own = out.targets[torch.arange(6), y]
    lam = float(own[own < 1][0])
    # Recover the partner of each image from the pixels: x_mixed = lam*x + (1-lam)*x[j].
    for i in range(6):
        candidates = [j for j in range(6)
                      if torch.allclose(out.images[i], lam * x[i] + (1 - lam) * x[j], atol=1e-5)]
        assert candidates, i
        j = candidates[0]
        expected = lam * F.one_hot(y[i], 6).float() + (1 - lam) * F.one_hot(y[j], 6).float()
        assert out.targets[i].allclose(expected, atol=1e-6)
    logits = torch.randn(6, 6)
    y2 = torch.tensor([next(j for j in range(6) if torch.allclose(
        out.images[i], lam * x[i] + (1 - lam) * x[j], atol=1e-5)) for i in range(6)])
    expected_loss = lam * F.cross_entropy(logits, y) + (1 - lam) * F.cross_entropy(logits, y[y2])
    assert soft_target_cross_entropy(logits, out.targets).item() == pytest.approx(
        expected_loss.item(), rel=1e-5)


def test_mixup_per_sample_lambdas_differ() -> None:
    from cutmix_runner.mixing import MixUp

    x = _images(16, size=4)
    out = MixUp(num_classes=16, prob=1.0, alpha=1.0, per_sample=True, seed=0)(x, torch.arange(16))
    own = out.targets[torch.arange(16), torch.arange(16)]
    assert out.targets.sum(-1).allclose(torch.ones(16))
    assert own.unique().numel() > 4


def test_random_erasing_changes_only_the_box_and_keeps_one_hot_labels() -> None:
    from cutmix_runner.mixing import RandomErasing

    x = torch.full((20, 3, 16, 16), 7.0)
    y = torch.arange(20) % 10
    erasing = RandomErasing(num_classes=10, prob=0.5, min_area=0.05, max_area=0.3, seed=4)
    out = erasing(x, y)
    assert torch.equal(out.targets, F.one_hot(y, 10).float())
    changed = out.images != x
    erased_images = 0
    for i in range(20):
        mask = changed[i].any(0)
        if not mask.any():
            continue
        erased_images += 1
        rows, cols = mask.nonzero(as_tuple=True)
        # The changed pixels form one solid rectangle, the same in every channel.
        box = torch.zeros_like(mask)
        box[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = True
        assert torch.equal(mask, box)
        assert torch.equal(changed[i], box.expand(3, -1, -1))
        assert 0.02 <= box.float().mean() <= 0.4
    assert 4 <= erased_images <= 16
    assert out.mixed_fraction == pytest.approx(erased_images / 20)
    zero = RandomErasing(num_classes=10, prob=1.0, fill="zero", seed=1)(x, y)
    assert set(zero.images.unique().tolist()) == {0.0, 7.0} and zero.mixed_fraction == 1.0


def test_switch_picks_cutmix_at_the_configured_rate() -> None:
    from cutmix_runner.mixing import CutMixOrMixUp, MixUp

    switch = CutMixOrMixUp(CutMix(64, seed=1), MixUp(64, seed=2), prob=0.8, switch_prob=0.3,
                           seed=3)
    # 64 images: a batch whose every image is paired with itself (left unchanged) never occurs.
    x, y = _images(64, size=8), torch.arange(64)
    mixed = sum(switch(x, y).mixed for _ in range(3000))
    assert abs(mixed / 3000 - 0.8) < 0.03
    assert abs(switch.cutmix_batches / mixed - 0.3) < 0.03


def test_ramps_give_the_configured_values_at_each_epoch() -> None:
    from cutmix_runner.config import RampConfig, RegularizerConfig
    from cutmix_runner.mixing import build_regularizer, set_epoch_values

    linear = RegularizerConfig(name="cutmix", prob=0.2, max_area=0.2,
                               ramp=RampConfig(kind="linear", prob_end=0.6, max_area_end=0.6))
    assert [round(linear.values_at(e, 5)[0], 6) for e in range(5)] == [0.2, 0.3, 0.4, 0.5, 0.6]
    assert linear.values_at(4, 5)[2] == pytest.approx(0.6)
    step = RegularizerConfig(name="cutmix", prob=0.1,
                             ramp=RampConfig(kind="step", at=[2, 4], prob_steps=[0.3, 0.7]))
    assert [step.values_at(e, 5)[0] for e in range(5)] == [0.1, 0.3, 0.3, 0.7, 0.7]
    constant = RegularizerConfig(name="cutmix", prob=0.25)
    assert {constant.values_at(e, 5)[0] for e in range(5)} == {0.25}
    reg = build_regularizer(linear, 10, seed=0)
    set_epoch_values(reg, linear, 2, 5)
    assert reg.prob == pytest.approx(0.4) and reg.max_area == pytest.approx(0.4)


def test_label_smoothing_is_explicit() -> None:
    from cutmix_runner.mixing import smooth

    t = F.one_hot(torch.tensor([1, 2]), 4).float()
    assert torch.equal(smooth(t, 0.0), t)
    s = smooth(t, 0.1)
    assert s.sum(-1).allclose(torch.ones(2)) and s[0, 1].item() == pytest.approx(0.925)


# ---------------------------------------------------------------- mode=elem (per image)


@pytest.mark.parametrize("batch", [1, 2, 7, 33])
def test_elem_cutmix_gives_each_image_its_own_box_and_lambda(batch: int) -> None:
    """Each image's own-label weight is exactly the share of its own pixels left, whatever its
    partner; a batch of 1 is its own partner and is never changed."""
    mixer = CutMix(num_classes=batch + 1, prob=0.5, min_area=0.05, max_area=0.6, seed=batch,
                   mode="elem")
    x = _images(batch, size=20)
    labels = torch.arange(batch)
    most_areas_in_a_batch = 0
    for _ in range(40):
        out = mixer(x, labels)
        pasted = (out.images[:, 0] != x[:, 0]).flatten(1).float().mean(1)
        assert out.targets.sum(-1).allclose(torch.ones(batch))
        assert out.targets[torch.arange(batch), labels].allclose(1 - pasted, atol=1e-6)
        assert out.mixed_fraction == pytest.approx((pasted > 0).float().mean().item())
        areas = {round(a, 4) for a in pasted.tolist() if a > 0}
        most_areas_in_a_batch = max(most_areas_in_a_batch, len(areas))
    # Boxes differ from image to image within a batch (batch mode pastes one box into all).
    assert most_areas_in_a_batch == 0 if batch == 1 else most_areas_in_a_batch >= min(batch, 3)


@pytest.mark.parametrize("kind", ["cutmix", "mixup"])
def test_elem_mode_mixes_a_share_prob_of_the_images(kind: str) -> None:
    """Over many images the mixed share is about prob (binomial, 4 standard errors), for odd
    batch sizes too, while batch mode mixes all or none of a batch."""
    from cutmix_runner.mixing import MixUp

    def build(mode: str):
        if kind == "cutmix":  # a minimum area: every mixed image is visibly changed
            return CutMix(num_classes=8, prob=0.3, min_area=0.1, max_area=0.3, seed=5, mode=mode)
        return MixUp(num_classes=8, prob=0.3, alpha=1.0, seed=5, mode=mode)

    x, labels = _images(7, size=12), torch.arange(7)
    elem, batch = build("elem"), build("batch")
    # Each image is its own partner with chance 1/7; it is then left whole. prob * 6/7 remains.
    changed = [elem(x, labels).mixed_fraction for _ in range(600)]
    expected = 0.3 * 6 / 7
    se = math.sqrt(expected * (1 - expected) / (600 * 7))
    assert abs(sum(changed) / len(changed) - expected) < 4 * se
    # One coin per batch leaves about 1 - prob of the batches whole; one per image, about
    # (1 - prob * 6/7) ** 7 = 0.17 of them.
    untouched_batches = sum(batch(x, labels).mixed_fraction == 0 for _ in range(600)) / 600
    assert untouched_batches > 0.6 and sum(f == 0 for f in changed) / len(changed) < 0.3


@pytest.mark.parametrize("kind", ["cutmix", "mixup"])
def test_elem_mode_mixes_each_image_at_rate_prob(kind: str) -> None:
    """Per image, not only on average: every position of the batch is changed in about
    prob * 6/7 of the draws (4 binomial standard errors), the odd last position included."""
    from cutmix_runner.mixing import MixUp

    mixer = (CutMix(num_classes=8, prob=0.3, min_area=0.1, max_area=0.3, seed=9, mode="elem")
             if kind == "cutmix" else MixUp(num_classes=8, prob=0.3, alpha=1.0, seed=9,
                                             mode="elem"))
    x, labels, draws = _images(7, size=12), torch.arange(7), 1500
    changed = sum((mixer(x, labels).images != x).flatten(1).any(1).float()
                  for _ in range(draws))
    expected = 0.3 * 6 / 7
    se = math.sqrt(expected * (1 - expected) / draws)
    assert ((changed / draws - expected).abs() < 4 * se).all(), changed / draws


def test_elem_mixup_blends_each_image_by_its_own_label_weight() -> None:
    """Each image's pixels are lam * its own + (1 - lam) * its partner's, with lam the weight its
    own label gets: the pixel blend and the label blend agree image by image."""
    from cutmix_runner.mixing import MixUp

    n = 9
    mixer = MixUp(num_classes=n, prob=0.7, alpha=1.0, seed=2, mode="elem")
    x, labels = _images(n, size=4), torch.arange(n)
    lambdas = set()
    for _ in range(30):
        out = mixer(x, labels)
        own = out.targets[labels, labels]
        partner_weights = out.targets.clone()
        partner_weights[labels, labels] = -1
        partner = torch.where(own < 1, partner_weights.argmax(1), labels)
        expected = own.view(n, 1, 1, 1) * x + (1 - own.view(n, 1, 1, 1)) * x[partner]
        assert out.images.allclose(expected, atol=1e-5)
        lambdas |= {round(v, 4) for v in own.tolist() if v < 1}
    assert len(lambdas) > 30  # one lambda per image, not one per batch


def test_elem_mode_is_refused_where_it_has_no_meaning() -> None:
    from cutmix_runner.config import ConfigError
    from tests.helpers import recipe

    late = "schedule.stages.late.regularizer"
    with pytest.raises(ConfigError, match="mode: elem works with none, cutmix, mixup"):
        recipe(f"{late}.name=random_erasing", f"{late}.mode=elem")
