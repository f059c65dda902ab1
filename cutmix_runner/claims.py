"""The post's claims, each as a metric, a contrast between arms and the sign the post expects.

Arms are experiment presets (configs/experiment/); a stratum is a data size (`data.train_subset`).
A contrast turns per-seed metric values into one estimate (stats.py): a paired difference of two
arms, a difference of differences, a 2 x 2 main effect, or |timing| - |strength|. Claims about
one data size are tested in every stratum; claims across sizes compare the smallest with the
largest. Every tested row goes into one Holm family.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from cutmix_runner import stats
from cutmix_runner.stats import Estimate

# (preset, stratum) -> {seed: value}; empty when the arm has no runs there.
Lookup = Callable[[str, str], dict[int, float]]
# An effect needs the lookup and the strata it compares (one, or the smallest and the largest).
Effect = Callable[[Lookup, list[str]], Estimate | None]

# The 2 x 2 cells, (timing, strength) -> preset, in stats.factorial_2x2's argument order.
CELLS = {("early", "mild"): "cutmix_early_mild", ("early", "strong"): "cutmix_early_strong",
         ("late", "mild"): "cutmix_late_mild", ("late", "strong"): "cutmix_late_strong"}
CELL_ORDER = (("early", "mild"), ("early", "strong"), ("late", "mild"), ("late", "strong"))
# The recipe's CutMix arm; the study's nearest arm stands in when cutmix_staged did not run.
CUTMIX = ("cutmix_staged", "cutmix_late_mild")


@dataclass(frozen=True)
class Claim:
    text: str
    metric: str
    contrast: str  # what is subtracted from what, for the table
    expected_sign: int  # the sign of the effect the post predicts
    effect: Effect
    across_strata: bool = False


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


def difference_of_differences(a1: str, b1: str, a2: str, b2: str) -> Effect:
    """(A1 - B1) - (A2 - B2) per seed, in one stratum: an interaction, paired t."""
    def effect(look: Lookup, strata: list[str]) -> Estimate | None:
        arms = [look(arm, strata[0]) for arm in (a1, b1, a2, b2)]
        values = stats.per_seed(_difference_of_differences, *arms)
        return stats.mean_ci(list(values.values())) if values else None
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


def factorial(look: Lookup, stratum: str) -> stats.Factorial | None:
    cells = [look(CELLS[key], stratum) for key in CELL_ORDER]
    if not all(cells):
        return None
    result = stats.factorial_2x2(*cells)
    return result if result.timing else None


def main_effect(which: str) -> Effect:
    """A 2 x 2 effect's per-seed values ("timing", "strength" or "interaction"), one-sample t."""
    def effect(look: Lookup, strata: list[str]) -> Estimate | None:
        result = factorial(look, strata[0])
        return None if result is None else stats.mean_ci(list(getattr(result, which).values()))
    return effect


def timing_vs_strength(look: Lookup, strata: list[str]) -> Estimate | None:
    result = factorial(look, strata[0])
    return None if result is None else stats.larger_magnitude(result.timing, result.strength)


CLAIMS: list[Claim] = [
    Claim("CutMix reduces training accuracy slightly", "clean_train_accuracy",
          "CutMix − baseline", -1, difference(CUTMIX, "baseline")),
    Claim("CutMix shrinks the generalization gap", "generalization_gap",
          "CutMix − baseline", -1, difference(CUTMIX, "baseline")),
    Claim("CutMix penalizes overconfident predictions", "test_confidence_wrong",
          "CutMix − baseline", -1, difference(CUTMIX, "baseline")),
    Claim("CutMix makes predictions stable under small perturbations", "flip_rate_noise",
          "CutMix − baseline", -1, difference(CUTMIX, "baseline")),
    Claim("CutMix improves accuracy when data is small", "test_accuracy",
          "CutMix − baseline", +1, difference(CUTMIX, "baseline")),
    # cutmix_from_start also unfreezes earlier, so this row cannot isolate timing; the 2 x 2's
    # timing effect below does.
    Claim("CutMix from the start, with earlier unfreezing, hurts (confounded: two changes)",
          "test_accuracy", "cutmix_from_start − cutmix_staged", -1,
          difference("cutmix_from_start", "cutmix_staged")),
    Claim("MixUp calibrates better than CutMix", "test_ece",
          "mixup_staged − cutmix_staged", -1, difference("mixup_staged", "cutmix_staged")),
    Claim("MixUp is more robust than CutMix", "flip_rate_noise",
          "mixup_staged − cutmix_staged", -1, difference("mixup_staged", "cutmix_staged")),
    Claim("CutMix improves robustness to corruptions", "mean_corruption_accuracy",
          "CutMix − baseline", +1, difference(CUTMIX, "baseline")),
    Claim("CutMix hurts while the head is still converging (timing alone)", "test_accuracy",
          "late − early, mean over strengths (2 × 2)", +1, main_effect("timing")),
    Claim("Less is more: mild CutMix beats strong", "test_accuracy",
          "mild − strong, mean over timings (2 × 2)", +1, main_effect("strength")),
    Claim("Timing matters more than strength", "test_accuracy",
          "abs(timing effect) − abs(strength effect) (2 × 2)", +1, timing_vs_strength),
    Claim("CutMix helps more with most of the backbone frozen", "test_accuracy",
          "(frozen: CutMix − none) − (unfrozen: CutMix − none)", +1,
          difference_of_differences("frozen_cutmix_mild", "frozen_baseline",
                                    "unfrozen_cutmix_mild", "unfrozen_baseline")),
    Claim("CutMix struggles when the dataset is extremely small", "test_accuracy",
          "(CutMix − baseline, smallest size) − (same, largest size)", -1,
          size_interaction(CUTMIX, "baseline"), across_strata=True),
]


@dataclass
class Row:
    claim: Claim
    stratum: str  # the data size, or "small vs large"
    effect: Estimate | None
    holm_p: float = float("nan")


def evaluate(values: Callable[[str], Lookup], strata: list[str]) -> list[Row]:
    """Every claim in every stratum it applies to (`values(metric)` looks up per-seed values);
    Holm-adjusts the tested rows together."""
    rows = []
    for claim in CLAIMS:
        look = values(claim.metric)
        if claim.across_strata:
            effect = claim.effect(look, strata) if len(strata) > 1 else None
            rows.append(Row(claim, f"{strata[0]} vs {strata[-1]}" if len(strata) > 1
                            else "needs two sizes", effect))
        else:
            rows += [Row(claim, s, claim.effect(look, [s])) for s in strata]
    tested = [r for r in rows if r.effect is not None]
    for row, p in zip(tested, stats.holm([r.effect.p for r in tested]), strict=True):
        row.holm_p = p
    return rows
