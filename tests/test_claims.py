"""claims.verdict: Holm decides support, TOST decides "no effect", nothing else does."""

from __future__ import annotations

import math

import pytest

from cutmix_runner import claims, stats


def _row(sign: int, values: list[float], holm_p: float, tost_holm_p: float) -> claims.Row:
    claim = next(c for c in claims.CLAIMS3 if c.metric == "test_accuracy")
    claim = claims.Claim(claim.text, "test_accuracy", "a − b", sign, claim.effect, claim.design)
    return claims.Row(claim, "1000", stats.mean_ci(values), holm_p=holm_p,
                      tost_holm_p=tost_holm_p)


def test_verdicts_follow_the_adjusted_tests() -> None:
    up = [0.010, 0.012, 0.011]
    assert claims.verdict(_row(+1, up, 0.01, math.nan)) == "supported"
    assert claims.verdict(_row(-1, up, 0.01, math.nan)) == "contradicted"
    assert claims.verdict(_row(0, up, 0.01, math.nan)) == "higher"
    # A raw p below 0.05 is not enough once Holm has raised it.
    assert claims.verdict(_row(+1, up, 0.06, 0.5)) == "inconclusive"
    flat = [0.001, -0.001, 0.0]
    assert claims.verdict(_row(+1, flat, 0.9, 0.01)) == "no effect (within ±0.5 points)"
    assert claims.verdict(_row(+1, [0.01], math.nan, math.nan)).startswith("inconclusive (too")


def test_every_tested_row_gets_holm_and_tost_p_values() -> None:
    """evaluate() on a lookup where the post's recipe equals the unmixed arm in every seed."""
    def values(metric: str) -> claims.Lookup:
        def look(preset: str, stratum: str) -> dict[int, float]:
            if preset in ("study_none", "study_increasing") and stratum == "1000 · study_long":
                return {s: 0.7 + s / 100 + (0.001 if preset == "study_none" and s % 2 else 0)
                        for s in range(5)}
            return {}
        return look

    rows = [r for r in claims.evaluate(values, ["1000 · study_long"]) if r.effect is not None]
    accuracy = next(r for r in rows if r.claim.text == "CutMix improves accuracy")
    assert accuracy.holm_p >= accuracy.effect.p and accuracy.tost_holm_p < 0.05
    assert claims.verdict(accuracy) == "no effect (within ±0.5 points)"
    assert accuracy.last_epoch is not None  # the same contrast on the last epoch's weights


def test_third_design_rows_compare_the_intended_arms_in_their_own_strata() -> None:
    """Increasing vs decreasing, freeze depth, MixUp and the full-data row, end to end through
    evaluate(): each effect is the hand-computed contrast of its arms, in its strata only."""
    offsets = {"study_none": 0.0, "study_increasing": 0.010, "study_decreasing": 0.030,
               "study_frozen_none": -0.020, "study_frozen_increasing": 0.005,
               "study_mixup_increasing": -0.004, "default_run": 0.002,
               "default_no_mixing": 0.006, "default_mixing_off_last": -0.001}
    arms_in = {"1000 · study_long": [a for a in offsets if a.startswith("study_")],
               "full": [a for a in offsets if a.startswith("default_")]}

    def values(metric: str) -> claims.Lookup:
        def look(preset: str, stratum: str) -> dict[int, float]:
            if preset not in arms_in.get(stratum, []):
                return {}
            # Seed-to-seed spread shared by all arms (pairing removes it), plus a little of
            # each arm's own, so that intervals are finite.
            return {s: 0.7 + s / 50 + offsets[preset] + 0.001 * ((s * len(preset)) % 3)
                    for s in range(5)}
        return look

    rows = claims.evaluate(values, ["1000 · study_long", "full"])

    def effect(text: str, stratum: str) -> float:
        found = [r for r in rows if r.claim.text.startswith(text) and r.stratum == stratum]
        assert len(found) == 1 and found[0].effect is not None, (text, stratum)
        return found[0].effect.mean

    def contrast(a: str, b: str, stratum: str = "1000 · study_long") -> float:
        first, second = values("test_accuracy")(a, stratum), values("test_accuracy")(b, stratum)
        assert first and second, (a, b, stratum)
        return sum(first[s] - second[s] for s in range(5)) / 5

    assert effect("More CutMix late beats less", "1000 · study_long") == pytest.approx(
        contrast("study_increasing", "study_decreasing"))
    assert effect("CutMix helps more with most of the backbone frozen",
                  "1000 · study_long") == pytest.approx(
        contrast("study_frozen_increasing", "study_frozen_none")
        - contrast("study_increasing", "study_none"))
    assert effect("MixUp calibrates better", "1000 · study_long") == pytest.approx(
        contrast("study_mixup_increasing", "study_increasing"))
    assert effect("At full data, the default's CutMix helps", "full") == pytest.approx(
        contrast("default_run", "default_no_mixing", "full"))
    assert effect("At full data, mixing in the last epoch", "full") == pytest.approx(
        contrast("default_run", "default_mixing_off_last", "full"))
    # Each claim stays in its own strata: no full-data row in the study's cells and back.
    assert not [r for r in rows if r.stratum == "full" and r.effect is not None
                and not r.claim.text.startswith("At full data")]
    assert not [r for r in rows if r.claim.text.startswith("At full data")
                and r.stratum != "full"]
