"""`cutmix-report PATH...`: runs and sweeps -> tables, plots and verdicts on the seed's claims.

Runs are grouped into arms by the command-line overrides that differ between them, ignoring the
seed and keys that do not change results. Each metric is reported per arm as mean ± 95 %
confidence interval over seeds (Student t). A claim compares two named arms: its effect is the
difference of means with a Welch 95 % interval; the verdict is "supported" or "contradicted" when
the interval excludes 0 on one side, "inconclusive" when it crosses 0.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from scipy import stats

from cutmix_runner.config import neutral_keys

SEED_KEYS = {"trainer.seed"}
# Keys that do not change results: the same list resume uses, plus Hydra's own settings.
NEUTRAL_PREFIXES = (*neutral_keys(), "hydra.")



class ReportError(ValueError):
    """Runs that cannot be compared, or nothing to report; one line for the user."""


def t_quantile(df: float) -> float:
    """t_{0.975, df}, Welch's fractional df included (scipy.stats.t)."""
    if df < 1:
        return math.nan
    return float(stats.t.ppf(0.975, df))


@dataclass
class Estimate:
    mean: float
    half_width: float  # of the 95 % interval; nan with a single run
    n: int

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


def mean_ci(values: list[float]) -> Estimate:
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return Estimate(mean, math.nan, n)
    return Estimate(mean, t_quantile(n - 1) * statistics.stdev(values) / math.sqrt(n), n)


def difference_ci(a: list[float], b: list[float]) -> Estimate:
    """mean(a) - mean(b) with a Welch 95 % interval."""
    diff = statistics.fmean(a) - statistics.fmean(b)
    if len(a) < 2 or len(b) < 2:
        return Estimate(diff, math.nan, min(len(a), len(b)))
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return Estimate(diff, 0.0, min(len(a), len(b)))
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    return Estimate(diff, t_quantile(df) * se, min(len(a), len(b)))


def verdict(effect: Estimate, expected_sign: int) -> str:
    if math.isnan(effect.half_width):
        return "inconclusive (one run per arm)"
    if effect.low > 0 or effect.high < 0:
        return "supported" if (effect.mean > 0) == (expected_sign > 0) else "contradicted"
    return "inconclusive"


# ---------------------------------------------------------------- loading runs


@dataclass
class Run:
    path: Path
    overrides: dict[str, str]
    summary: dict[str, Any]
    records: list[dict[str, Any]]
    eval: dict[str, Any] | None = None  # eval/eval.json from cutmix-eval, when the run has one
    arm: str = ""
    scalars: dict[str, float] = field(default_factory=dict)


def _read_records(path: Path) -> list[dict[str, Any]]:
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a kill; the checkpoint's copy is authoritative
    return records


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path} is not valid JSON ({exc}); re-create or remove it") from None


def eval_settings(run: Run) -> tuple | None:
    """What a run's cutmix-eval measured: runs compare only when this is the same."""
    if run.eval is None:
        return None
    measured = tuple(sorted((name, tuple(sorted(per))) for name, per in
                            run.eval.get("accuracy", {}).items()))
    return run.eval.get("images"), run.eval.get("seed"), measured


def load_runs(paths: list[Path]) -> list[Run]:
    found: list[Path] = []
    for path in paths:
        if not path.exists():
            raise ReportError(f"no such run or sweep directory: {path}")
        found += [path] if (path / "summary.json").exists() else sorted(
            p.parent for p in path.rglob("summary.json"))
    if not found:
        raise ReportError(f"no finished runs (summary.json) under {', '.join(map(str, paths))}")
    runs = []
    for run in found:
        overrides_file = run / ".hydra" / "overrides.yaml"
        raw = yaml.safe_load(overrides_file.read_text()) if overrides_file.exists() else []
        overrides = dict(o.lstrip("+~").split("=", 1) for o in raw or [] if "=" in o)
        robustness = run / "eval" / "eval.json"
        runs.append(Run(run, overrides, _read_json(run / "summary.json"),
                        _read_records(run / "metrics.jsonl"),
                        _read_json(robustness) if robustness.exists() else None))
    return runs


def assign_arms(runs: list[Run], arm_keys: list[str] | None) -> list[str]:
    """Label each run's arm; returns the keys that define arms. Refuses mixed comparisons."""
    def relevant(key: str) -> bool:
        return key not in SEED_KEYS and not key.startswith(NEUTRAL_PREFIXES)

    keys = sorted({k for r in runs for k in r.overrides if relevant(k)})
    varying = [k for k in keys if len({r.overrides.get(k, "(default)") for r in runs}) > 1]
    if arm_keys is None:
        if len(varying) > 1:
            raise ReportError(f"runs differ in more than the arm and the seed "
                              f"({', '.join(varying)}); name the arm with --arm-key KEY")
        arm_keys = varying
    for run in runs:
        run.arm = " ".join(f"{k}={run.overrides.get(k, '(default)')}" for k in arm_keys) or "all"
    return arm_keys


# ---------------------------------------------------------------- per-run scalars

METRICS: list[tuple[str, str, Callable[[Run], float], float]] = [
    # name, description, getter, display scale
    ("test_accuracy", "test accuracy (%)", lambda r: r.summary["test_accuracy"], 100),
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
    ("minutes", "wall time (min)", lambda r: r.summary["total_seconds"] / 60, 1),
]


def collect(runs: list[Run]) -> None:
    for run in runs:
        for name, _, getter, _ in METRICS:
            try:
                run.scalars[name] = float(getter(run))
            except (KeyError, IndexError, TypeError):
                pass  # an older run without that diagnostic


# ---------------------------------------------------------------- claims

# (claim, metric, arm A, arm B, expected sign of mean(A) - mean(B))
CLAIMS: list[tuple[str, str, str, str, int]] = [
    ("CutMix reduces training accuracy slightly", "clean_train_accuracy",
     "cutmix_staged", "baseline", -1),
    ("CutMix shrinks the generalization gap", "generalization_gap",
     "cutmix_staged", "baseline", -1),
    ("CutMix penalizes overconfident predictions", "test_confidence_wrong",
     "cutmix_staged", "baseline", -1),
    ("CutMix makes predictions stable under small perturbations", "flip_rate_noise",
     "cutmix_staged", "baseline", -1),
    ("CutMix improves accuracy when data is small", "test_accuracy",
     "cutmix_staged", "baseline", +1),
    ("CutMix can hurt transfer learning when applied from the start", "test_accuracy",
     "cutmix_from_start", "cutmix_staged", -1),
    ("MixUp calibrates better than CutMix", "test_ece", "mixup_staged", "cutmix_staged", -1),
    ("MixUp is more robust than CutMix", "flip_rate_noise", "mixup_staged", "cutmix_staged", -1),
    ("CutMix improves robustness to corruptions", "mean_corruption_accuracy",
     "cutmix_staged", "baseline", +1),
]


def _arm_named(arms: dict[str, list[Run]], preset: str) -> str | None:
    for arm in arms:
        if arm.endswith(f"={preset}"):
            return arm
    return None


def claims_section(arms: dict[str, list[Run]]) -> list[str]:
    lines = ["## Claims", "",
             "Effect = mean(arm A) − mean(arm B) with a Welch 95 % interval; *supported* or "
             "*contradicted* when the interval excludes 0, *inconclusive* when it crosses 0.", "",
             "| claim | metric | A − B | effect | verdict |", "|---|---|---|---:|---|"]
    scale = {name: s for name, _, _, s in METRICS}
    for claim, metric, a, b, sign in CLAIMS:
        arm_a, arm_b = _arm_named(arms, a), _arm_named(arms, b)
        if arm_a is None or arm_b is None:
            lines.append(f"| {claim} | {metric} | {a} − {b} | — | not measured (needs both arms) |")
            continue
        va = [r.scalars[metric] for r in arms[arm_a] if metric in r.scalars]
        vb = [r.scalars[metric] for r in arms[arm_b] if metric in r.scalars]
        if not va or not vb:
            lines.append(f"| {claim} | {metric} | {a} − {b} | — | not measured (no data) |")
            continue
        if metric == "mean_corruption_accuracy" and len(
                {eval_settings(r) for r in arms[arm_a] + arms[arm_b] if r.eval}) > 1:
            lines.append(f"| {claim} | {metric} | {a} − {b} | — | not comparable (the runs' "
                         "cutmix-eval used different images, seeds, corruptions or severities) |")
            continue
        effect = difference_ci(va, vb)
        lines.append(f"| {claim} | {metric} | {a} − {b} | {effect.text(scale[metric])} | "
                     f"{verdict(effect, sign)} |")
    return lines


# ---------------------------------------------------------------- plots


def _stage_boundaries(run: Run) -> list[float]:
    return [r["global_epoch"] + 0.5 for r in run.records if r.get("stage_end")][:-1]


def write_plots(arms: dict[str, list[Run]], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(arms)
    files = []

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for arm, runs in arms.items():
        length = min(len(r.records) for r in runs)
        epochs = [runs[0].records[i]["global_epoch"] for i in range(length)]
        for ax, key in zip(axes, ("val_accuracy", "clean_train_accuracy"), strict=True):
            mean = [statistics.fmean(r.records[i][key] for r in runs) for i in range(length)]
            ax.plot(epochs, [100 * m for m in mean], marker="o", label=arm)
    for ax, title in zip(axes, ("validation accuracy", "clean-train accuracy"), strict=True):
        for boundary in _stage_boundaries(next(iter(arms.values()))[0]):
            ax.axvline(boundary, color="grey", linestyle="--", linewidth=0.8)
        ax.set_title(f"{title} (dashed: stage boundaries)")
        ax.set_xlabel("epoch")
        ax.set_ylabel("%")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "accuracy_curves.png", dpi=110)
    plt.close(fig)
    files.append("accuracy_curves.png")

    for metric, filename, title in (("generalization_gap", "generalization_gap.png",
                                     "generalization gap, last epoch (points)"),
                                    ("flip_rate_noise", "flip_rate.png",
                                     "prediction flip rate under noise (%)")):
        estimates = [mean_ci([r.scalars[metric] for r in arms[a] if metric in r.scalars] or
                             [math.nan]) for a in names]
        fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(names)), 4))
        errors = [0 if math.isnan(e.half_width) else 100 * e.half_width for e in estimates]
        ax.bar(range(len(names)), [100 * e.mean for e in estimates], yerr=errors, capsize=4)
        ax.set_xticks(range(len(names)), [n.split("=")[-1] for n in names], rotation=20,
                      fontsize=8)
        ax.set_title(title + ", mean ± 95 % CI")
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / filename, dpi=110)
        plt.close(fig)
        files.append(filename)

    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=0.8)
    for arm, runs in arms.items():
        bins = [r.summary["test"]["reliability"] for r in runs if "test" in r.summary]
        if not bins:
            continue
        count = [sum(b["count"][i] for b in bins) for i in range(len(bins[0]["count"]))]
        conf = [sum(b["confidence"][i] * b["count"][i] for b in bins) / c if c else math.nan
                for i, c in enumerate(count)]
        acc = [sum(b["accuracy"][i] * b["count"][i] for b in bins) / c if c else math.nan
               for i, c in enumerate(count)]
        ax.plot(conf, acc, marker="o", label=arm.split("=")[-1])
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title("reliability diagram (test, 15 bins)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "reliability.png", dpi=110)
    plt.close(fig)
    files.append("reliability.png")
    return files


# ---------------------------------------------------------------- the report


def build_report(paths: list[Path], out: Path, arm_keys: list[str] | None = None,
                 command: str = "") -> Path:
    runs = load_runs(paths)
    keys = assign_arms(runs, arm_keys)
    collect(runs)
    arms: dict[str, list[Run]] = {}
    for run in sorted(runs, key=lambda r: r.arm):
        arms.setdefault(run.arm, []).append(run)
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# CutMix runner report", ""]
    if command:
        lines += [f"Made by `{command}`.", ""]
    lines += [f"{len(runs)} runs in {len(arms)} arms (arm key: {', '.join(keys) or 'none'}); "
              "mean ± 95 % confidence interval over seeds, n = runs per arm.", ""]
    lines += claims_section(arms) + [""]
    lines += ["## Metrics", ""]
    for name, description, _, scale in METRICS:
        rows = [(arm, [r.scalars[name] for r in rs if name in r.scalars])
                for arm, rs in arms.items()]
        rows = [(arm, values) for arm, values in rows if values]
        if not rows:
            continue
        lines += [f"### {description}", "", "| arm | mean ± 95 % CI | n |", "|---|---:|---:|"]
        lines += [f"| {arm} | {mean_ci(values).text(scale)} | {len(values)} |"
                  for arm, values in rows]
        lines.append("")
    lines += ["## Plots", ""]
    lines += [f"![{f}]({f})" for f in write_plots(arms, out)]
    lines += ["", "## Runs", "", "| arm | run directory |", "|---|---|"]
    lines += [f"| {r.arm} | `{r.path}` |" for r in runs]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="cutmix-report", description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path, help="run or multirun directories")
    parser.add_argument("--out", type=Path, default=Path("report"),
                        help="folder for report.md and the plots (default: ./report)")
    parser.add_argument("--arm-key", action="append", dest="arm_keys",
                        help="override key that defines the arms (repeatable); needed when runs "
                             "differ in more than one key besides the seed")
    args = parser.parse_args(argv)
    command = "cutmix-report " + " ".join(sys.argv[1:] if argv is None else argv)
    try:
        report = build_report(args.paths, args.out, args.arm_keys, command)
    except (ReportError, OSError) as exc:
        print(f"cutmix-report: error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(report)
