"""stats.py against hand-computed and textbook examples."""

from __future__ import annotations

import math

import pytest

from cutmix_runner import stats


def test_mean_ci_matches_a_known_example() -> None:
    est = stats.mean_ci([1.0, 2.0, 3.0])
    # sd = 1, n = 3, t(0.975, 2) = 4.302653 (tables): half-width 4.302653 / sqrt(3).
    assert est.mean == 2.0 and est.half_width == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert math.isnan(stats.mean_ci([5.0]).half_width)


def test_paired_difference_matches_a_hand_computed_example() -> None:
    a = {0: 10.0, 1: 12.0, 2: 11.0, 7: 50.0}  # seed 7 has no partner: left out
    b = {0: 9.0, 1: 10.0, 2: 10.0}
    est = stats.paired(a, b)
    # d = (1, 2, 1): mean 4/3, sd = sqrt(1/3), se = 1/3, t = 4 on 2 df.
    assert est.n == 3 and est.mean == pytest.approx(4 / 3)
    assert est.half_width == pytest.approx(4.302653 / 3, rel=1e-6)
    # Two-sided p for t on 2 df has the closed form 1 - t / sqrt(2 + t^2).
    assert est.p == pytest.approx(1 - 4 / math.sqrt(18), rel=1e-6)
    assert "paired" in est.method
    # Unpaired, the same numbers are far less certain: pairing removes the shared seed noise.
    unpaired = stats.welch([10.0, 12.0, 11.0], [9.0, 10.0, 10.0])
    assert unpaired.half_width > est.half_width
    assert stats.compare(a, b) == est  # compare pairs when two or more seeds are common
    assert "Welch" in stats.compare({0: 1.0, 1: 2.0}, {5: 0.0, 6: 1.0}).method


def test_welch_difference_matches_a_known_example() -> None:
    est = stats.welch([10.0, 12.0, 14.0], [1.0, 2.0, 3.0])
    # se = sqrt(4/3 + 1/3); Welch df = 50/17 = 2.941 and t(0.975, 50/17) = 3.2188.
    assert est.mean == 10.0
    assert est.half_width == pytest.approx(3.2188 * math.sqrt(5 / 3), rel=1e-4)
    assert est.p < 0.05 and stats.welch([1.0, 2.0, 3.0], [1.5, 2.5, 2.0]).p > 0.05


def test_factorial_effects_and_interaction_on_a_known_design() -> None:
    # accuracy = 70 + 1 (mild) + 4 (late) + 2 (late and mild together) + a seed's shared offset
    seeds = {0: 0.0, 1: 0.7, 2: -1.1, 3: 0.3, 4: 2.0}
    cell = {(t, s): {k: 70 + (s == "mild") + 4 * (t == "late") + 2 * (t == "late" and s == "mild")
                     + off for k, off in seeds.items()}
            for t in ("early", "late") for s in ("mild", "strong")}
    result = stats.factorial_2x2(cell[("early", "mild")], cell[("early", "strong")],
                                 cell[("late", "mild")], cell[("late", "strong")])
    # timing = ((77 + 74) - (71 + 70)) / 2 = 5; strength = ((71 + 77) - (70 + 74)) / 2 = 2;
    # interaction = (77 - 71) - (74 - 70) = 2; the seed offsets cancel in every contrast.
    assert result.timing == pytest.approx(dict.fromkeys(seeds, 5.0))
    assert result.strength == pytest.approx(dict.fromkeys(seeds, 2.0))
    assert result.interaction == pytest.approx(dict.fromkeys(seeds, 2.0))


def test_holm_matches_a_textbook_example() -> None:
    # p = (0.01, 0.04, 0.03, 0.005), m = 4: sorted 0.005 x 4 = 0.02, 0.01 x 3 = 0.03,
    # 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> kept monotone: 0.06.
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    adjusted = stats.holm([0.2, math.nan, 0.9])  # nan is neither adjusted nor counted
    assert adjusted[0] == pytest.approx(0.4) and math.isnan(adjusted[1])
    assert adjusted[2] == pytest.approx(0.9)


def test_minimum_detectable_effect() -> None:
    # Large df: the normal-theory value (z_0.975 + z_0.8) * se = 2.80 * se.
    assert stats.min_detectable_effect(1.0, 10_000) == pytest.approx(2.8016, abs=2e-3)
    # Few seeds detect only larger effects; the MDE shrinks as seeds are added.
    mdes = [stats.min_detectable_effect(1.0, df) for df in (1, 2, 4, 9)]
    assert mdes == sorted(mdes, reverse=True) and mdes[2] == pytest.approx(3.761, rel=1e-3)
    assert math.isnan(stats.min_detectable_effect(0.0, 4))
    assert math.isnan(stats.min_detectable_effect(math.inf, 4))
    # Scale-free: tiny and huge standard errors give the same multiple of se.
    assert stats.min_detectable_effect(1e-300, 4) == pytest.approx(3.761e-300, rel=1e-3)
    assert stats.min_detectable_effect(1e6, 4) == pytest.approx(3.761e6, rel=1e-3)


def _one_sided_p_2df(t: float) -> float:
    """P(T > t) for Student's t on 2 df, in closed form (t > 0)."""
    return (1 - t / math.sqrt(2 + t * t)) / 2


def test_intersection_union_test_matches_a_hand_computed_example() -> None:
    first, second = {0: 4.0, 1: 5.0, 2: 6.0}, {0: 1.0, 1: 3.0, 2: 2.0}
    # first is positive: first - second = (3, 2, 4), t = 3 / (1 / sqrt 3) = 3 sqrt 3;
    # first + second = (5, 8, 8), t = 7 / (sqrt 3 / sqrt 3) = 7. The IUT's p is the larger one.
    est = stats.larger_magnitude_iut(first, second)
    assert est.mean == pytest.approx(5 - 2)
    assert est.p == pytest.approx(_one_sided_p_2df(3 * math.sqrt(3)), rel=1e-6)
    assert est.p > _one_sided_p_2df(7.0)
    # A negative first is judged by its magnitude: the mirror image gives the same p.
    mirrored = stats.larger_magnitude_iut({k: -v for k, v in first.items()}, second)
    assert mirrored.p == pytest.approx(est.p) and mirrored.mean == pytest.approx(est.mean)
    # The other way round, the smaller magnitude cannot be shown larger.
    assert stats.larger_magnitude_iut(second, first).p > 0.5
    # The interval is that of the effect shown, |mean a| - |mean b| = mean of (a - b) here:
    # (4, 4, 4) has no spread, though the other difference, a + b = (4, 6, 8), decides the p.
    exact = stats.larger_magnitude_iut(first, {0: 0.0, 1: 1.0, 2: 2.0})
    assert exact.mean == pytest.approx(4.0) and exact.half_width == pytest.approx(0.0)
    assert exact.p == pytest.approx(_one_sided_p_2df(6 / (2 / math.sqrt(3))), rel=1e-6)
    assert est.half_width == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5)  # (3, 2, 4)


def test_tost_matches_a_hand_computed_example() -> None:
    # mean 0.2, sd 0.1, se 0.1 / sqrt 3: against +0.5, t = -0.3 / se = -3 sqrt 3 (binding);
    # against -0.5, t = 0.7 / se = 7 sqrt 3.
    p = stats.tost([0.1, 0.2, 0.3], 0.5)
    assert p == pytest.approx(_one_sided_p_2df(3 * math.sqrt(3)), rel=1e-6)
    # A margin at the mean itself: t = 0 against it, p = 1/2, not shown equivalent.
    assert stats.tost([0.1, 0.2, 0.3], 0.2) == pytest.approx(0.5)
    assert math.isnan(stats.tost([0.1], 0.5))
