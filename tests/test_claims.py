"""claims.verdict: Holm decides support, TOST decides "no effect", nothing else does."""

from __future__ import annotations

import math

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
