"""The statistics behind `cutmix-report`: intervals, paired tests, the 2 x 2 contrasts, the
intersection-union test of which effect is larger, equivalence (TOST), Holm's adjustment and the
smallest effect a design could have detected. scipy does the distributions.

Runs that share `trainer.seed` share the validation split, the head's initialisation and the data
order, so two arms are compared seed by seed: the per-seed differences remove the part of the
run-to-run noise both arms have in common (a paired t interval). Arms without common seeds fall
back to Welch's unpaired interval.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats

LEVEL = 0.95  # every interval in the report
POWER = 0.80  # for the minimum detectable effect


@dataclass(frozen=True)
class Estimate:
    """A mean with the half-width of its 95 % interval (nan when n is too small for one)."""

    mean: float
    half_width: float
    n: int
    p: float = math.nan  # two-sided p-value of "the true value is 0"
    mde: float = math.nan  # smallest |effect| detectable with 80 % power at this n and spread
    method: str = ""
    # The per-seed values the estimate is the mean of (empty for Welch and the IUT): what an
    # equivalence test (tost) needs.
    values: tuple[float, ...] = ()

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
    n, kept = len(values), tuple(values)
    mean = statistics.fmean(values)
    if n < 2:
        return Estimate(mean, math.nan, n, method="one run", values=kept)
    sd = statistics.stdev(values)
    se = sd / math.sqrt(n)
    if se == 0:
        return Estimate(mean, 0.0, n, 0.0 if mean else 1.0, 0.0, "t", kept)
    p = float(stats.ttest_1samp(values, 0.0).pvalue)
    return Estimate(mean, t_quantile(n - 1) * se, n, p, min_detectable_effect(se, n - 1), "t",
                    kept)


def paired(a: dict[int, float], b: dict[int, float]) -> Estimate:
    """mean(a - b) over the seeds both have, with a paired t interval."""
    seeds = sorted(set(a) & set(b))
    estimate = mean_ci([a[s] - b[s] for s in seeds]) if seeds else Estimate(math.nan, math.nan, 0)
    return dataclasses.replace(estimate, method=f"paired t, {len(seeds)} common seeds")


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


def one_sided_p(values: Sequence[float], shift: float = 0.0, greater: bool = True) -> float:
    """p of "mean(values) > shift" (or < shift), one-sample t (scipy.stats.ttest_1samp)."""
    if len(values) < 2:
        return math.nan
    diffs = [v - shift for v in values]
    if statistics.pstdev(diffs) == 0:  # no spread: the sign of the mean decides
        mean = statistics.fmean(diffs)
        return 0.0 if (mean > 0 if greater else mean < 0) else 1.0
    alternative = "greater" if greater else "less"
    return float(stats.ttest_1samp(diffs, 0.0, alternative=alternative).pvalue)


def larger_magnitude_iut(first: dict[int, float], second: dict[int, float]) -> Estimate:
    """Whether |mean(first)| > |mean(second)|, by an intersection-union test on paired seeds.

    |a| > |b| exactly when a - b and a + b are both of a's sign. With s the sign of first's
    mean, the test rejects "no larger" when both one-sided paired t tests, s*first - second > 0
    and s*first + second > 0, reject; its p-value is the larger of the two (Berger's IUT: each
    test at level alpha gives a level-alpha test of the union null). Unlike a bootstrap of
    |mean| - |mean|, its p-value can be small with five seeds. The estimate is
    |mean(first)| - |mean(second)|, which is the mean of the paired difference s*first -
    t*second (t the sign of second's mean); its interval is that difference's paired t interval,
    so that effect and interval describe the same quantity."""
    seeds = sorted(set(first) & set(second))
    a = [first[s] for s in seeds]
    b = [second[s] for s in seeds]
    if len(seeds) < 2:
        mean = abs(statistics.fmean(a)) - abs(statistics.fmean(b)) if seeds else math.nan
        return Estimate(mean, math.nan, len(seeds), method="IUT needs >= 2 common seeds")
    sign = 1.0 if statistics.fmean(a) >= 0 else -1.0
    minus = [sign * x - y for x, y in zip(a, b, strict=True)]
    plus = [sign * x + y for x, y in zip(a, b, strict=True)]
    p_minus, p_plus = one_sided_p(minus), one_sided_p(plus)
    shown = mean_ci(minus if statistics.fmean(b) >= 0 else plus)  # mean: |mean a| - |mean b|
    return Estimate(shown.mean, shown.half_width, len(seeds), max(p_minus, p_plus), shown.mde,
                    f"intersection-union paired t, {len(seeds)} seeds "
                    f"(p {p_minus:.2g} for s·first − second, {p_plus:.2g} for s·first + second)")


def tost(values: Sequence[float], margin: float) -> float:
    """Two one-sided tests (TOST) of equivalence: a small p shows that the true mean lies inside
    (-margin, margin). It is the larger of the one-sided p of mean > -margin and of mean <
    margin; p < 0.05 exactly when the 90 % t interval lies inside the margins."""
    if len(values) < 2 or not margin > 0:
        return math.nan
    return max(one_sided_p(values, -margin, greater=True),
               one_sided_p(values, margin, greater=False))


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
