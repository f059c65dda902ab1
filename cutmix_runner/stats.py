"""The statistics behind `cutmix-report`: intervals, paired tests, the 2 x 2 contrasts, Holm's
adjustment and the smallest effect a design could have detected. scipy does the distributions.

Runs that share `trainer.seed` share the validation split, the head's initialisation and the data
order, so two arms are compared seed by seed: the per-seed differences remove the part of the
run-to-run noise both arms have in common (a paired t interval). Arms without common seeds fall
back to Welch's unpaired interval.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats

LEVEL = 0.95  # every interval in the report
POWER = 0.80  # for the minimum detectable effect
MIN_BOOTSTRAP_SEEDS = 4


@dataclass(frozen=True)
class Estimate:
    """A mean with the half-width of its 95 % interval (nan when n is too small for one)."""

    mean: float
    half_width: float
    n: int
    p: float = math.nan  # two-sided p-value of "the true value is 0"
    mde: float = math.nan  # smallest |effect| detectable with 80 % power at this n and spread
    method: str = ""

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    def text(self, scale: float = 1.0, digits: int = 2) -> str:
        if math.isnan(self.half_width):
            return f"{self.mean * scale:.{digits}f}"
        return f"{self.mean * scale:.{digits}f} ± {self.half_width * scale:.{digits}f}"


def t_quantile(df: float, level: float = LEVEL) -> float:
    """The two-sided t quantile; fractional (Welch) df allowed; nan below df 1."""
    return float(stats.t.ppf(0.5 + level / 2, df)) if df >= 1 else math.nan


def min_detectable_effect(se: float, df: float, alpha: float = 1 - LEVEL,
                          power: float = POWER) -> float:
    """The true effect a two-sided t test with this standard error and df detects with the given
    power: solves P(|T'| > t_crit) = power for the noncentral t T' (scipy.stats.nct), in units
    of the noncentrality (effect / se), then scales by se."""
    if df < 1 or not (se > 0 and math.isfinite(se)) or not 0 < alpha < power < 1:
        return math.nan
    crit = float(stats.t.ppf(1 - alpha / 2, df))

    def shortfall(nc: float) -> float:
        # The wrong-sign tail is negligible here, and scipy returns nan for it at large nc.
        wrong_sign = float(np.nan_to_num(stats.nct.cdf(-crit, df, nc)))
        return float(stats.nct.sf(crit, df, nc)) + wrong_sign - power

    high = crit + 3
    while shortfall(high) < 0 and high < 1e6:  # heavy tails at small df need a wider bracket
        high *= 2
    return se * float(optimize.brentq(shortfall, 0.0, high))


def mean_ci(values: Sequence[float]) -> Estimate:
    """Mean with a one-sample t interval and the p-value of mean 0."""
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return Estimate(mean, math.nan, n, method="one run")
    sd = statistics.stdev(values)
    se = sd / math.sqrt(n)
    if se == 0:
        return Estimate(mean, 0.0, n, 0.0 if mean else 1.0, 0.0, "t")
    p = float(stats.ttest_1samp(values, 0.0).pvalue)
    return Estimate(mean, t_quantile(n - 1) * se, n, p, min_detectable_effect(se, n - 1), "t")


def paired(a: dict[int, float], b: dict[int, float]) -> Estimate:
    """mean(a - b) over the seeds both have, with a paired t interval."""
    seeds = sorted(set(a) & set(b))
    estimate = mean_ci([a[s] - b[s] for s in seeds]) if seeds else Estimate(math.nan, math.nan, 0)
    return Estimate(estimate.mean, estimate.half_width, estimate.n, estimate.p, estimate.mde,
                    f"paired t, {len(seeds)} common seeds")


def welch(a: Sequence[float], b: Sequence[float]) -> Estimate:
    """mean(a) - mean(b) with Welch's unpaired interval (scipy.stats.ttest_ind)."""
    diff = statistics.fmean(a) - statistics.fmean(b)
    n = min(len(a), len(b))
    if n < 2:
        return Estimate(diff, math.nan, n, method="Welch, one run in an arm")
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return Estimate(diff, 0.0, n, 0.0 if diff else 1.0, 0.0, "Welch")
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    p = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
    return Estimate(diff, t_quantile(df) * se, n, p, min_detectable_effect(se, df), "Welch")


def compare(a: dict[int, float], b: dict[int, float]) -> Estimate:
    """Paired by seed when at least two seeds are shared, else Welch."""
    if len(set(a) & set(b)) >= 2:
        return paired(a, b)
    return welch(list(a.values()), list(b.values()))


def per_seed(combine: object, *arms: dict[int, float]) -> dict[int, float]:
    """`combine(*values)` for each seed every arm has: a per-seed contrast."""
    seeds = sorted(set.intersection(*(set(arm) for arm in arms)))
    return {s: combine(*(arm[s] for arm in arms)) for s in seeds}  # type: ignore[operator]


@dataclass(frozen=True)
class Factorial:
    """Per-seed effects of a 2 x 2 design on one metric. Cells are named by
    (timing, strength) with timing in {early, late} and strength in {mild, strong}."""

    timing: dict[int, float]  # late - early, averaged over strengths
    strength: dict[int, float]  # mild - strong, averaged over timings
    interaction: dict[int, float]  # (late - early | mild) - (late - early | strong)


def factorial_2x2(early_mild: dict[int, float], early_strong: dict[int, float],
                  late_mild: dict[int, float], late_strong: dict[int, float]) -> Factorial:
    cells = (early_mild, early_strong, late_mild, late_strong)
    return Factorial(
        timing=per_seed(lambda em, es, lm, ls: (lm + ls - em - es) / 2, *cells),
        strength=per_seed(lambda em, es, lm, ls: (em + lm - es - ls) / 2, *cells),
        interaction=per_seed(lambda em, es, lm, ls: (lm - em) - (ls - es), *cells))


def larger_magnitude(first: dict[int, float], second: dict[int, float],
                     resamples: int = 9999, seed: int = 0) -> Estimate:
    """|mean(first)| - |mean(second)| over common seeds, with a paired percentile bootstrap
    interval (seeds resampled with replacement, scipy.stats.bootstrap).

    Why not a per-seed |first_s| - |second_s|: the absolute value of a noisy per-seed effect is
    biased upwards (|noise| > 0 even when the effect is 0), so the magnitudes are taken of the
    means. The p-value is the bootstrap's: twice the smaller share of resamples on either side
    of 0. With n seeds there are at most C(2n-1, n) distinct resamples (126 at n = 5), so the
    interval is coarse, and it is a percentile interval, which undercovers at small n."""
    seeds = sorted(set(first) & set(second))
    a = np.array([first[s] for s in seeds])
    b = np.array([second[s] for s in seeds])

    def statistic(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.abs(x.mean(axis=axis)) - np.abs(y.mean(axis=axis))

    observed = float(statistic(a, b))
    if len(seeds) < MIN_BOOTSTRAP_SEEDS:  # 2 seeds give 3 distinct resamples: no interval
        return Estimate(observed, math.nan, len(seeds),
                        method=f"bootstrap needs >= {MIN_BOOTSTRAP_SEEDS} common seeds")
    result = stats.bootstrap((a, b), statistic, paired=True, vectorized=True,
                             n_resamples=resamples, confidence_level=LEVEL,
                             method="percentile", rng=np.random.default_rng(seed))
    dist = result.bootstrap_distribution
    # Never below the resampling's resolution: with n seeds there are C(2n - 1, n) distinct
    # resamples, so "no resample crossed 0" means p < 1 / C(2n - 1, n), not p = 0.
    floor = max(1 / (resamples + 1), 1 / math.comb(2 * len(seeds) - 1, len(seeds)))
    p = min(1.0, max(2 * min(float((dist <= 0).mean()), float((dist >= 0).mean())), floor))
    low, high = result.confidence_interval
    # Report the interval around the observed value; percentile intervals need not be symmetric,
    # so the half-width is the larger side (conservative for the verdict).
    half = max(observed - float(low), float(high) - observed)
    mde = min_detectable_effect(float(result.standard_error), len(seeds) - 1)
    return Estimate(observed, half, len(seeds), p, mde,
                    f"paired percentile bootstrap, {resamples} resamples, {len(seeds)} seeds")


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order; nan stays nan and is not counted.

    Hand-written (six lines) rather than pulling in statsmodels for it; tests check it against a
    textbook example."""
    order = sorted((p, i) for i, p in enumerate(pvalues) if not math.isnan(p))
    adjusted = [math.nan] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p))
        adjusted[i] = running
    return adjusted


def verdict(effect: Estimate, expected_sign: int, p: float | None = None,
            alpha: float = 1 - LEVEL) -> str:
    """"supported" / "contradicted" when the effect is significant (by its interval, or by the
    given adjusted p-value) in the expected / opposite direction, else "inconclusive"."""
    if math.isnan(effect.half_width) and p is None:
        return ("inconclusive (one run per arm)" if effect.n < 2
                else f"inconclusive (too few seeds for an interval: n = {effect.n})")
    significant = (p < alpha) if p is not None else (effect.low > 0 or effect.high < 0)
    if not significant:
        return "inconclusive"
    return "supported" if (effect.mean > 0) == (expected_sign > 0) else "contradicted"
