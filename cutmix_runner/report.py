"""`cutmix-report PATH...`: runs and sweeps -> tables, plots and verdicts on the post's claims.

Runs are grouped into arms by the command-line overrides that differ between them, ignoring the
seed and keys that do not change results; the stratum keys (`data.train_subset`, the data size,
by default; `--stratum-key` adds more, e.g. `schedule` for the study's regimes) are held fixed
within a comparison, not arms. Each metric is reported per arm as mean ± 95 % interval (and SD)
over seeds. Every arm is compared with a reference arm, paired by seed, whatever the sweep; the
post's claims (claims.py) are contrasts between named presets. Statistics: stats.py.
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cutmix_runner import claims, plots, stats
from cutmix_runner.artifacts import new_folder
from cutmix_runner.claims import CELL_ORDER, DESIGN2, DESIGN3, Row
from cutmix_runner.config import neutral_keys
from cutmix_runner.runs import ReportError, RunRecord, eval_settings, load_runs
from cutmix_runner.stats import POWER, mean_ci

SEED_KEYS = {"trainer.seed"}
SIZE_KEY = "data.train_subset"  # the data size: a stratum always
MIN_SEEDS = 5  # fewer seeds per arm are flagged in the report
# Keys that do not change results: the same list resume uses, plus Hydra's own settings.
NEUTRAL_PREFIXES = (*neutral_keys(), "hydra.")


def assign_arms(runs: list[RunRecord], arm_keys: list[str] | None,
                stratum_keys: tuple[str, ...] = ()) -> list[str]:
    """Label each run's arm and stratum; returns the keys that define arms. Refuses mixed
    comparisons."""
    def relevant(key: str) -> bool:
        return (key not in SEED_KEYS and key != SIZE_KEY and key not in stratum_keys
                and not key.startswith(NEUTRAL_PREFIXES))

    for run in runs:
        size = run.overrides.get(SIZE_KEY, "null")
        parts = ["full" if size == "null" else size]
        parts += [run.overrides[k] for k in stratum_keys if k in run.overrides]
        run.stratum = " · ".join(parts)

    keys = sorted({k for r in runs for k in r.overrides if relevant(k)})
    varying = [k for k in keys if len({r.overrides.get(k, "(default)") for r in runs}) > 1]
    if arm_keys is None:
        if len(varying) > 1:
            raise ReportError(f"runs differ in more than the arm, the seed "
                              f"and the strata ({', '.join(varying)}); name the arm with "
                              "--arm-key KEY, or hold a key fixed with --stratum-key KEY")
        arm_keys = varying
    for run in runs:
        run.arm = " ".join(f"{k}={run.overrides.get(k, '(default)')}" for k in arm_keys) or "all"
    return arm_keys


# ---------------------------------------------------------------- per-run scalars

METRICS: list[tuple[str, str, Callable[[RunRecord], float], float]] = [
    # name, description, getter, display scale
    ("test_accuracy", "test accuracy, best-validation weights (%)",
     lambda r: r.summary["test_accuracy"], 100),
    ("final_test_accuracy", "test accuracy, last epoch's weights (%)",
     lambda r: r.summary["final_test_accuracy"], 100),
    ("best_val_accuracy", "best validation accuracy (%)",
     lambda r: r.summary["best"]["val_accuracy"], 100),
    ("clean_train_accuracy", "clean-train accuracy, last epoch (%)",
     lambda r: r.records[-1]["clean_train_accuracy"], 100),
    ("generalization_gap", "generalization gap, clean-train − validation, last epoch (points)",
     lambda r: r.records[-1]["generalization_gap"], 100),
    ("test_nll", "test NLL", lambda r: r.summary["test"]["nll"], 1),
    ("test_ece", "test ECE, 15 bins (%)", lambda r: r.summary["test"]["ece"], 100),
    ("test_ece_temp_scaled", "test ECE after temperature scaling fitted on validation (%)",
     lambda r: r.summary["test"]["ece_temp_scaled"], 100),
    ("test_brier", "test Brier score", lambda r: r.summary["test"]["brier"], 1),
    ("test_confidence_wrong", "mean confidence on wrong test predictions (%)",
     lambda r: r.summary["test"]["confidence_wrong"], 100),
    ("test_confidence_correct", "mean confidence on correct test predictions (%)",
     lambda r: r.summary["test"]["confidence_correct"], 100),
    ("flip_rate_noise", "prediction flip rate under Gaussian noise, test subset (%)",
     lambda r: r.summary["test"]["flip_rate_noise"], 100),
    ("flip_rate_shift", "prediction flip rate under a 1-2 px shift, test subset (%)",
     lambda r: r.summary["test"]["flip_rate_shift"], 100),
    ("mean_corruption_accuracy", "mean accuracy under CIFAR-10-C corruptions, cutmix-eval (%)",
     lambda r: r.eval["mean_corruption_accuracy"], 100),  # type: ignore[index]
    ("dose", "dose: mixed images per training image over the run",
     lambda r: r.summary["dose"]["mixed_images"] / r.summary["train_size"], 1),
    ("minutes", "wall time (min)", lambda r: r.summary["total_seconds"] / 60, 1),
]


def collect(runs: list[RunRecord]) -> None:
    for run in runs:
        for name, _, getter, _ in METRICS:
            try:
                run.scalars[name] = float(getter(run))
            except (KeyError, IndexError, TypeError):
                pass  # an older run without that diagnostic



def preset(arm: str) -> str:
    """The preset an arm ran ("experiment=baseline" -> "baseline"); the whole label when the
    arm is not named by its experiment."""
    parts = dict(p.split("=", 1) for p in arm.split() if "=" in p)
    return parts.get("experiment", arm.split("=")[-1])


def stratum_order(strata: set[str]) -> list[str]:
    """By the other stratum keys, then smallest data size first; "full" (no subset) last."""
    def key(stratum: str) -> tuple:
        size, _, rest = stratum.partition(" · ")
        return (not size.isdigit(), rest, int(size) if size.isdigit() else 0, size)
    return sorted(strata, key=key)


@dataclass
class Study:
    """Runs indexed by (arm, stratum); `look` serves the claims their per-seed values."""

    runs: list[RunRecord]
    arm_keys: list[str]
    strata: list[str]
    arms: dict[tuple[str, str], list[RunRecord]]

    @classmethod
    def of(cls, runs: list[RunRecord], arm_keys: list[str]) -> Study:
        arms: dict[tuple[str, str], list[RunRecord]] = {}
        for run in sorted(runs, key=lambda r: (r.arm, r.seed)):
            same = arms.setdefault((run.arm, run.stratum), [])
            twin = next((r for r in same if r.seed == run.seed), None)
            if twin is not None:
                raise ReportError(f"two runs of arm {run.arm}, train size {run.stratum}, seed "
                                  f"{run.seed}: {twin.path} and {run.path}; report one of them")
            same.append(run)
        return cls(runs, arm_keys, stratum_order({r.stratum for r in runs}), arms)

    def values(self, metric: str) -> claims.Lookup:
        def look(name: str, stratum: str) -> dict[int, float]:
            """Per-seed values of the one arm that ran preset `name`; none when several arms
            did (they differ in another arm key, and pooling them would mix two designs)."""
            matches = [runs for (arm, s), runs in self.arms.items()
                       if s == stratum and preset(arm) == name]
            if len(matches) != 1:
                return {}
            return {r.seed: r.scalars[metric] for r in matches[0] if metric in r.scalars}
        return look

    def in_stratum(self, stratum: str) -> dict[str, list[RunRecord]]:
        return {arm: runs for (arm, s), runs in self.arms.items() if s == stratum}


SCALES = {name: scale for name, _, _, scale in METRICS}
# The metrics every arm is compared on with the reference arm, in any sweep.
COMPARED = ("test_accuracy", "final_test_accuracy", "test_ece", "clean_train_accuracy",
            "flip_rate_noise")
PROCEDURE = f"""## How the claims are tested

- **Paired by seed.** Runs with the same `trainer.seed` share the head's initialisation, the data
  order and (in the third study) the training subset and validation split, so an effect is the
  mean over seeds of the per-seed difference between arms, with a paired t 95 % interval
  (scipy.stats). Arms without two common seeds fall back to Welch's unpaired interval; the
  *test* column says which.
- **2 × 2 (timing × strength)** on test accuracy: per seed, timing = (late − early) averaged
  over strengths, strength = (mild − strong) averaged over timings, interaction =
  (late − early | mild) − (late − early | strong); each with a one-sample t interval over seeds.
- **Which matters more** (|timing| > |strength|, and the reverse): an intersection-union test.
  |a| > |b| exactly when a − b and a + b both have a's sign; each is a one-sided paired t, and
  the row's p is the larger of the two. The effect shown is |mean a| − |mean b|, with the paired
  t interval of the per-seed difference whose mean it is (a − b or a + b, by b's sign).
- **Best-validation and last epoch.** *effect* uses the test score of the best-validation
  weights; *last epoch* the same contrast on the final weights.
- **Verdicts**, after Holm's step-down adjustment over every tested row (α = 0.05):
  *supported* / *contradicted*: the adjusted p rejects 0 in / against the post's direction;
  *no effect (within ±m)*: an equivalence test (TOST, two one-sided t at α = 0.05, Holm-adjusted
  as a second family) puts the effect inside the margin m stated before the runs (0.5 point for
  accuracies, gaps, ECE, confidence and flip rates); *inconclusive* otherwise: the interval
  allows both an effect and none. An inconclusive row is not evidence of no effect.
- **Power** ({POWER:.0%}, α = 0.05, noncentral t) is in the *Comparisons* tables as the MDE: the
  smallest true effect the seeds and spread at hand detect; it plans runs and judges nothing.
"""


def _number(value: float, digits: int) -> str:
    if math.isnan(value):
        return "–"
    smallest = 10 ** -digits
    return f"< {smallest:.{digits}f}" if 0 <= value < smallest else f"{value:.{digits}f}"


def claims_section(rows: list[Row]) -> list[str]:
    lines = ["## Claims", "", "| claim | metric | contrast | stratum | n | effect ± 95 % CI "
             "| last epoch | p | Holm p | TOST Holm p | verdict | test |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for row in rows:
        claim, effect = row.claim, row.effect
        head = f"| {claim.text} | {claim.metric} | {claim.contrast} | {row.stratum} |"
        if effect is None:
            lines.append(f"{head} – | – | – | – | – | – | {claims.verdict(row)} | – |")
            continue
        scale = SCALES[claim.metric]
        last = "–" if row.last_epoch is None else row.last_epoch.text(scale)
        lines.append(f"{head} {effect.n} | {effect.text(scale)} | {last} | "
                     f"{_number(effect.p, 3)} | {_number(row.holm_p, 3)} | "
                     f"{_number(row.tost_holm_p, 3)} | {claims.verdict(row)} | {effect.method} |")
    return lines


def factorial_section(study: Study) -> tuple[list[str], dict[str, dict]]:
    """Cell means and the three effects per stratum; the cells for the interaction plot."""
    look = study.values("test_accuracy")
    lines, cells = ["## Timing × strength (test accuracy, points)", ""], {}
    for design in (DESIGN3, DESIGN2):
        for stratum in study.strata:
            result = claims.factorial(look, stratum, design)
            if result is None:
                continue
            cells[stratum] = {key: list(look(design.cells[key], stratum).values())
                              for key in CELL_ORDER}
            lines += [f"### {stratum} ({design.name})", "", "| | mild | strong |",
                      "|---|---:|---:|"]
            for timing in ("early", "late"):
                lines.append(f"| {timing} | " + " | ".join(
                    mean_ci(cells[stratum][(timing, s)]).text(100) for s in ("mild", "strong"))
                    + " |")
            lines += ["", "| effect | per-seed mean ± 95 % CI | n |", "|---|---:|---:|"]
            for name in ("timing", "strength", "interaction"):
                estimate = mean_ci(list(getattr(result, name).values()))
                lines.append(f"| {name} | {estimate.text(100)} | {estimate.n} |")
            lines.append("")
    return (lines if cells else []), cells


def _sd(values: list[float], scale: float) -> str:
    return f"{statistics.stdev(values) * scale:.2f}" if len(values) > 1 else "–"


def metrics_section(study: Study) -> list[str]:
    lines = ["## Metrics", ""]
    for name, description, _, scale in METRICS:
        rows = [(arm, s, [r.scalars[name] for r in rs if name in r.scalars])
                for (arm, s), rs in study.arms.items()]
        rows = [row for row in rows if row[2]]
        if not rows:
            continue
        lines += [f"### {description}", "", "| arm | stratum | mean ± 95 % CI | SD | n |",
                  "|---|---|---:|---:|---:|"]
        lines += [f"| {arm} | {s} | {mean_ci(values).text(scale)} | {_sd(values, scale)} | "
                  f"{len(values)} |" for arm, s, values in rows]
        lines.append("")
    return lines


def reference_arm(study: Study, stratum: str, wanted: list[str]) -> str | None:
    """The arm others are compared with in `stratum`: the first of `wanted` that ran there
    (named by its label or its value), else the first arm in sorted order."""
    arms = sorted(study.in_stratum(stratum))
    named = [a for w in wanted for a in arms if a == w or a.endswith(f"={w}")]
    if named:
        return named[0]
    return arms[0] if len(arms) > 1 else None


def comparisons_section(study: Study, reference: list[str]) -> list[str]:
    """Every arm minus the reference arm, per stratum and metric, paired by seed, with Holm over
    every row and a TOST where the metric has a margin: what a user's own sweep gets."""
    rows = []
    for stratum in study.strata:
        ref = reference_arm(study, stratum, reference)
        if ref is None:
            continue
        by_arm = study.in_stratum(stratum)
        for arm in sorted(by_arm):
            if arm == ref:
                continue
            for metric in COMPARED:
                a = {r.seed: r.scalars[metric] for r in by_arm[arm] if metric in r.scalars}
                b = {r.seed: r.scalars[metric] for r in by_arm[ref] if metric in r.scalars}
                if a and b:
                    rows.append((stratum, arm, ref, metric, stats.compare(a, b)))
    if not rows:
        return []
    holm = stats.holm([e.p for *_, e in rows])
    tost = stats.holm([stats.tost(e.values, claims.EQUIVALENCE_MARGIN.get(m, math.nan))
                       for *_, m, e in rows])
    lines = ["## Comparisons with the reference arm", "",
             "Each arm minus the reference arm of its stratum, paired by seed; Holm over every "
             "row; TOST against ±0.5 point where the metric has that margin.", "",
             "| stratum | arm | reference | metric | n | difference ± 95 % CI | MDE | p | "
             "Holm p | TOST Holm p | test |", "|---|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for (stratum, arm, ref, metric, e), hp, tp in zip(rows, holm, tost, strict=True):
        scale = SCALES[metric]
        lines.append(f"| {stratum} | {arm} | {ref} | {metric} | {e.n} | {e.text(scale)} | "
                     f"{_number(e.mde * scale, 2)} | {_number(e.p, 3)} | {_number(hp, 3)} | "
                     f"{_number(tp, 3)} | {e.method} |")
    return lines + [""]


def check_comparable_corruptions(runs: list[RunRecord]) -> list[str]:
    """cutmix-eval results compare only when measured alike; otherwise they are left out."""
    if len({eval_settings(r) for r in runs if r.eval}) <= 1:
        return []
    for run in runs:
        run.scalars.pop("mean_corruption_accuracy", None)
    return ["Corruption accuracy is left out: the runs' cutmix-eval used different images, "
            "seeds, corruptions or severities.", ""]


def plots_section(study: Study, rows: list[Row], cells: dict[str, dict], out: Path) -> list[str]:
    files = []
    for stratum in study.strata:
        arms = study.in_stratum(stratum)
        suffix = "" if len(study.strata) == 1 else "_" + stratum.replace(" · ", "_")
        files += [plots.curves(arms, out, f"accuracy_curves{suffix}.png"),
                  plots.bars(arms, "generalization_gap", "generalization gap, last epoch "
                             "(points)", out, f"generalization_gap{suffix}.png"),
                  plots.bars(arms, "flip_rate_noise", "prediction flip rate under noise (%)",
                             out, f"flip_rate{suffix}.png"),
                  plots.reliability(arms, out, f"reliability{suffix}.png")]
    if cells:
        files.append(plots.interaction(cells, out))
    if any(r.effect is not None for r in rows):
        files.append(plots.forest(rows, SCALES, out))
    return ["## Plots", ""] + [f"![{f}]({f})" for f in files]


def _shown(path: Path) -> str:
    """A run's path relative to the working directory when under it: reports are committed,
    and no machine's own paths belong in them."""
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def machines_line(runs: list[RunRecord]) -> list[str]:
    """Which CPU kinds (summary.json's cpu_isa) produced the runs: float kernels round
    differently on each, so a report says so when it mixes them."""
    kinds: dict[str, int] = {}
    for run in runs:
        kind = str(run.summary.get("cpu_isa", "not recorded"))
        kinds[kind] = kinds.get(kind, 0) + 1
    return ["Runs per CPU kind: " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()))
            + ".", ""]


def build_report(paths: list[Path], out: Path, arm_keys: list[str] | None = None,
                 command: str = "", stratum_keys: tuple[str, ...] = (),
                 reference: list[str] | None = None, force: bool = False) -> Path:
    report = out / "report.md"
    if report.exists() and not force:
        raise ReportError(f"{report} already exists; pass --force to replace it")
    runs = load_runs(paths)
    study = Study.of(runs, assign_arms(runs, arm_keys, stratum_keys))
    collect(runs)
    lines = ["# CutMix runner report", ""]
    if command:
        lines += [f"Made by `{command}`.", ""]
    lines += [f"{len(runs)} runs in {len({a for a, _ in study.arms})} arms (arm key: "
              f"{', '.join(study.arm_keys) or 'none'}), strata: {', '.join(study.strata)}; "
              "mean ± 95 % confidence interval over seeds, n = runs per arm.", ""]
    lines += machines_line(runs)
    few = [f"{arm} ({s}): {len(rs)}" for (arm, s), rs in study.arms.items()
           if len(rs) < MIN_SEEDS]
    if few:
        lines += [f"**Fewer than {MIN_SEEDS} seeds:** " + "; ".join(few) + ".", ""]
    lines += check_comparable_corruptions(runs)
    rows = claims.evaluate(study.values, study.strata)
    lines += claims_section(rows) + ["", PROCEDURE]
    lines += comparisons_section(study, reference or [])
    factorial_lines, cells = factorial_section(study)
    lines += factorial_lines + metrics_section(study)
    with new_folder(out):  # made now, and removed again if the figures fail or are stopped
        lines += plots_section(study, rows, cells, out)
        lines += ["", "## Runs", "", "| arm | stratum | seed | CPU | run directory |",
                  "|---|---|---:|---|---|"]
        lines += [f"| {r.arm} | {r.stratum} | {r.seed} | {r.summary.get('cpu_isa', '–')} | "
                  f"`{_shown(r.path)}` |" for r in runs]
        report.write_text("\n".join(lines) + "\n")
    return report


def run(args: argparse.Namespace, command: str) -> int:
    stratum_keys = tuple(k for k in args.stratum_keys if k != SIZE_KEY)
    out = args.out or Path("report")
    print(build_report(args.paths, out, args.arm_keys, command, stratum_keys, args.reference,
                       args.force))
    return 0
