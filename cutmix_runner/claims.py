"""The post's claims, each as a metric, a contrast between arms and the sign the post expects.

Arms are experiment presets (configs/experiment/). A stratum is what the runs hold fixed while
the arms vary: the data size (`data.train_subset`) and, for the third study, the regime
(`schedule`). A contrast turns per-seed metric values into one estimate (stats.py): a paired
difference of two arms, a difference of differences, a 2 x 2 main effect, or an
intersection-union test of |timing| > |strength|. Claims about one stratum are tested in every
stratum where their arms ran; claims across sizes compare the smallest with the largest within
a regime. Every tested row goes into one Holm family.

Two designs are known: the third study (issue 21, `study_*` presets, DESIGN3) and the second
(issue 12, DESIGN2), whose 90 runs are re-read with the same tests. A design's rows appear only
when some of its arms ran.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

from cutmix_runner import stats
from cutmix_runner.stats import Estimate

# (preset, stratum) -> {seed: value}; empty when the arm has no runs there.
Lookup = Callable[[str, str], dict[int, float]]
# An effect needs the lookup and the strata it compares (one, or the smallest and the largest).
Effect = Callable[[Lookup, list[str]], Estimate | None]

# The margin of "no effect" for a TOST, in the metric's own units (fractions): stated before
# the runs (docs/study.md). Metrics without one are never called equivalent.
EQUIVALENCE_MARGIN = {"test_accuracy": 0.005, "final_test_accuracy": 0.005,
                      "clean_train_accuracy": 0.005, "generalization_gap": 0.005,
                      "test_ece": 0.005, "flip_rate_noise": 0.005,
                      "test_confidence_wrong": 0.005, "mean_corruption_accuracy": 0.005}
# Accuracy claims are also shown on the last epoch's weights, beside the best-validation ones.
LAST_EPOCH = {"test_accuracy": "final_test_accuracy"}
CELL_ORDER = (("early", "mild"), ("early", "strong"), ("late", "mild"), ("late", "strong"))


@dataclass(frozen=True)
class Design:
    """A study's arms by role; `cells` are the 2 x 2's, (timing, strength) -> preset."""

    name: str
    none: str
    cutmix: tuple[str, ...]  # the CutMix arm compared with `none`, first present wins
    cells: dict[tuple[str, str], str]


DESIGN3 = Design("third study (issue 21)", "study_none", ("study_increasing",),
                 {(t, s): f"study_{t}_{s}" for t, s in CELL_ORDER})
DESIGN2 = Design("second study (issue 12)", "baseline", ("cutmix_staged", "cutmix_late_mild"),
                 {(t, s): f"cutmix_{t}_{s}" for t, s in CELL_ORDER})


@dataclass(frozen=True)
class Claim:
    text: str
    metric: str
    contrast: str  # what is subtracted from what, for the table
    expected_sign: int  # the sign of the effect the post predicts; 0: no direction predicted
    effect: Effect
    design: Design
    across_strata: bool = False
    only: str = ""  # tested only in strata whose label contains this (e.g. "study_long")


def first_present(look: Lookup, presets: tuple[str, ...], *strata: str) -> str | None:
    """The first preset that ran in every one of `strata`."""
    return next((p for p in presets if all(look(p, s) for s in strata)), None)


def difference(a: tuple[str, ...] | str, b: str) -> Effect:
    """mean(A - B), paired by seed (Welch without common seeds)."""
    candidates = (a,) if isinstance(a, str) else a

    def effect(look: Lookup, strata: list[str]) -> Estimate | None:
        arm = first_present(look, candidates, strata[0])
        if arm is None or not look(b, strata[0]):
            return None
        estimate = stats.compare(look(arm, strata[0]), look(b, strata[0]))
        return replace(estimate, method=f"{estimate.method}; {arm} − {b}")
    return effect


def _difference_of_differences(w: float, x: float, y: float, z: float) -> float:
    return (w - x) - (y - z)


def difference_of_differences(a1: str, b1: str, a2: tuple[str, ...] | str, b2: str) -> Effect:
    """(A1 - B1) - (A2 - B2) per seed, in one stratum: an interaction, paired t."""
    second = (a2,) if isinstance(a2, str) else a2

    def effect(look: Lookup, strata: list[str]) -> Estimate | None:
        arm = first_present(look, second, strata[0])
        if arm is None:
            return None
        arms = [look(name, strata[0]) for name in (a1, b1, arm, b2)]
        values = stats.per_seed(_difference_of_differences, *arms)
        if not values:
            return None
        estimate = stats.mean_ci(list(values.values()))
        return replace(estimate, method=f"t on per-seed contrasts; ({a1} − {b1}) − ({arm} − {b2})")
    return effect


def size_interaction(a: tuple[str, ...], b: str) -> Effect:
    """(A - B at the smallest size) - (A - B at the largest), per seed."""
    def effect(look: Lookup, strata: list[str]) -> Estimate | None:
        small, large = strata[0], strata[-1]
        arm = first_present(look, a, small, large)
        if arm is None:
            return None
        values = stats.per_seed(_difference_of_differences, look(arm, small),
                                look(b, small), look(arm, large), look(b, large))
        if not values:
            return None
        estimate = stats.mean_ci(list(values.values()))
        return replace(estimate, method=f"t on per-seed contrasts; {arm} − {b}")
    return effect


def factorial(look: Lookup, stratum: str, design: Design) -> stats.Factorial | None:
    cells = [look(design.cells[key], stratum) for key in CELL_ORDER]
    if not all(cells):
        return None
    result = stats.factorial_2x2(*cells)
    return result if result.timing else None


def main_effect(which: str, design: Design) -> Effect:
    """A 2 x 2 effect's per-seed values ("timing", "strength" or "interaction"), one-sample t."""
    def effect(look: Lookup, strata: list[str]) -> Estimate | None:
        result = factorial(look, strata[0], design)
        if result is None:
            return None
        estimate = stats.mean_ci(list(getattr(result, which).values()))
        return replace(estimate, method=f"t on per-seed contrasts ({which}), "
                                        f"{estimate.n} seeds with all four cells")
    return effect


def larger_effect(first: str, second: str, design: Design) -> Effect:
    """|mean `first` effect| > |mean `second` effect| of the 2 x 2, by the intersection-union
    paired t (stats.larger_magnitude_iut)."""
    def effect(look: Lookup, strata: list[str]) -> Estimate | None:
        result = factorial(look, strata[0], design)
        if result is None:
            return None
        return stats.larger_magnitude_iut(getattr(result, first), getattr(result, second))
    return effect


def common_claims(d: Design) -> list[Claim]:
    """The claims both designs test, on their own arms."""
    cutmix = f"CutMix − {d.none}"
    return [
        Claim("CutMix reduces training accuracy slightly", "clean_train_accuracy", cutmix, -1,
              difference(d.cutmix, d.none), d),
        Claim("CutMix shrinks the generalization gap", "generalization_gap", cutmix, -1,
              difference(d.cutmix, d.none), d),
        Claim("CutMix penalizes overconfident predictions", "test_confidence_wrong", cutmix, -1,
              difference(d.cutmix, d.none), d),
        Claim("CutMix makes predictions stable under small perturbations", "flip_rate_noise",
              cutmix, -1, difference(d.cutmix, d.none), d),
        Claim("CutMix improves accuracy", "test_accuracy", cutmix, +1,
              difference(d.cutmix, d.none), d),
        Claim("CutMix hurts while the backbone is still adapting (timing)", "test_accuracy",
              "late − early, mean over strengths (2 × 2)", +1, main_effect("timing", d), d),
        Claim("Less is more: mild CutMix beats strong", "test_accuracy",
              "mild − strong, mean over timings (2 × 2)", +1, main_effect("strength", d), d),
        Claim("Timing matters more than strength", "test_accuracy",
              "abs(timing) − abs(strength) (2 × 2)", +1, larger_effect("timing", "strength", d), d),
        Claim("Strength matters more than timing (the reverse)", "test_accuracy",
              "abs(strength) − abs(timing) (2 × 2)", -1, larger_effect("strength", "timing", d), d),
        Claim("CutMix struggles when the dataset is extremely small", "test_accuracy",
              "(CutMix − none, smallest size) − (same, largest size)", -1,
              size_interaction(d.cutmix, d.none), d, across_strata=True),
    ]


def arm_difference(text: str, metric: str, a: str, b: str, sign: int, design: Design,
                   only: str = "") -> Claim:
    """A claim that is the paired difference of two named presets."""
    return Claim(text, metric, f"{a} − {b}", sign, difference(a, b), design, only=only)


CLAIMS3 = [*common_claims(DESIGN3), *[
    arm_difference("More CutMix late beats the same dose throughout (direction, equal dose)",
                   "test_accuracy", "study_increasing", "study_constant", +1, DESIGN3,
                   "study_long"),
    arm_difference("More CutMix late beats less CutMix late (practitioners' decreasing, equal "
                   "dose)", "test_accuracy", "study_increasing", "study_decreasing", +1, DESIGN3,
                   "study_long"),
    Claim("CutMix helps more with most of the backbone frozen", "test_accuracy",
          "(last block only: CutMix − none) − (3, then 5 blocks: CutMix − none)", +1,
          difference_of_differences("study_frozen_increasing", "study_frozen_none",
                                    "study_increasing", "study_none"), DESIGN3,
          only="study_long"),
    arm_difference("MixUp calibrates better than CutMix", "test_ece", "study_mixup_increasing",
                   "study_increasing", -1, DESIGN3, "study_long"),
    arm_difference("MixUp and CutMix differ under corruptions (no direction claimed)",
                   "mean_corruption_accuracy", "study_mixup_increasing", "study_increasing", 0,
                   DESIGN3, "study_long"),
    arm_difference("At full data, the default's CutMix helps", "test_accuracy", "default_run",
                   "default_no_mixing", +1, DESIGN3, "full"),
    arm_difference("At full data, mixing in the last epoch beats turning it off (timm's "
                   "practice)", "test_accuracy", "default_run", "default_mixing_off_last", +1,
                   DESIGN3, "full"),
]]

CLAIMS2 = [*common_claims(DESIGN2), *[
    # cutmix_from_start also unfreezes earlier, so this row cannot isolate timing; the 2 x 2's
    # timing effect does.
    arm_difference("CutMix from the start, with earlier unfreezing, hurts (confounded: two "
                   "changes)", "test_accuracy", "cutmix_from_start", "cutmix_staged", -1,
                   DESIGN2),
    arm_difference("MixUp calibrates better than CutMix", "test_ece", "mixup_staged",
                   "cutmix_staged", -1, DESIGN2),
    arm_difference("MixUp is more robust than CutMix", "flip_rate_noise", "mixup_staged",
                   "cutmix_staged", -1, DESIGN2),
    Claim("CutMix improves robustness to corruptions", "mean_corruption_accuracy",
          f"CutMix − {DESIGN2.none}", +1, difference(DESIGN2.cutmix, DESIGN2.none), DESIGN2),
    Claim("CutMix helps more with most of the backbone frozen", "test_accuracy",
          "(frozen: CutMix − none) − (unfrozen: CutMix − none)", +1,
          difference_of_differences("frozen_cutmix_mild", "frozen_baseline",
                                    "unfrozen_cutmix_mild", "unfrozen_baseline"), DESIGN2),
]]
CLAIMS = CLAIMS3 + CLAIMS2


@dataclass
class Row:
    claim: Claim
    stratum: str  # the stratum, or "small vs large"
    effect: Estimate | None
    last_epoch: Estimate | None = None  # the same contrast on the last epoch's weights
    holm_p: float = math.nan
    tost_p: float = math.nan  # equivalence within the claim metric's margin
    tost_holm_p: float = math.nan

    @property
    def margin(self) -> float:
        return EQUIVALENCE_MARGIN.get(self.claim.metric, math.nan)


def size_pairs(strata: list[str]) -> list[tuple[str, str]]:
    """(smallest, largest) size within each regime: strata are "SIZE" or "SIZE · REGIME"."""
    groups: dict[str, list[str]] = {}
    for stratum in strata:
        size, _, regime = stratum.partition(" · ")
        if size.isdigit():
            groups.setdefault(regime, []).append(stratum)
    return [(g[0], g[-1]) for g in groups.values() if len(g) > 1]


def _rows(claim: Claim, look: Callable[[str], Lookup], strata: list[str]) -> list[Row]:
    def row(label: str, where: list[str]) -> Row:
        effect = claim.effect(look(claim.metric), where)
        last = LAST_EPOCH.get(claim.metric)
        return Row(claim, label, effect, claim.effect(look(last), where) if last else None)

    if claim.across_strata:
        rows = [row(f"{small} vs {large}", [small, large]) for small, large in size_pairs(strata)]
    else:
        rows = [row(s, [s]) for s in strata if not claim.only or claim.only in s.split(" · ")]
    measured = [r for r in rows if r.effect is not None]
    # A claim none of whose strata has its arms gets one row that says so.
    return measured or [Row(claim, "needs two sizes" if claim.across_strata else "–", None)]


def evaluate(values: Callable[[str], Lookup], strata: list[str]) -> list[Row]:
    """Every claim in every stratum where its arms ran (`values(metric)` looks up per-seed
    values), for each design with at least one measured row; Holm-adjusts the tested rows
    together, and their equivalence tests as a second family."""
    rows = []
    for design in (DESIGN3, DESIGN2):
        ours = [r for claim in CLAIMS if claim.design is design
                for r in _rows(claim, values, strata)]
        if any(r.effect is not None for r in ours):
            rows += ours
    tested = [r for r in rows if r.effect is not None]
    for row, p in zip(tested, stats.holm([r.effect.p for r in tested]), strict=True):
        row.holm_p = p
    for row in tested:
        row.tost_p = stats.tost(row.effect.values, row.margin)
    for row, p in zip(tested, stats.holm([r.tost_p for r in tested]), strict=True):
        row.tost_holm_p = p
    return rows


def verdict(row: Row, alpha: float = 1 - stats.LEVEL) -> str:
    """supported / contradicted: the Holm-adjusted test rejects 0 in / against the post's
    direction; "no effect (within ±m)": the Holm-adjusted TOST shows the effect inside the
    stated margin; inconclusive otherwise: the data allow both an effect and none."""
    effect, sign = row.effect, row.claim.expected_sign
    if effect is None:
        return "not measured (arms missing)"
    if effect.n < 2 or math.isnan(row.holm_p):
        return f"inconclusive (too few seeds: n = {effect.n})"
    if row.holm_p < alpha:
        if sign == 0:
            return "higher" if effect.mean > 0 else "lower"
        return "supported" if (effect.mean > 0) == (sign > 0) else "contradicted"
    if row.tost_holm_p < alpha:
        return f"no effect (within ±{row.margin * 100:g} points)"
    return "inconclusive"
