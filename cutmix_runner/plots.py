"""The report's figures (matplotlib, Agg): curves per arm, bars with 95 % intervals, the
reliability diagram, the 2 x 2 interaction plot and the forest plot of every claim."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cutmix_runner.stats import mean_ci

if TYPE_CHECKING:
    from cutmix_runner.claims import Row
    from cutmix_runner.runs import RunRecord


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, out: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(out / name, dpi=110)
    pyplot().close(fig)
    return name


def _stage_boundaries(run: RunRecord) -> list[float]:
    return [r["global_epoch"] + 0.5 for r in run.records if r.get("stage_end")][:-1]


def curves(arms: dict[str, list[RunRecord]], out: Path, name: str = "accuracy_curves.png") -> str:
    """Validation and clean-train accuracy per epoch, mean over each arm's seeds."""
    fig, axes = pyplot().subplots(1, 2, figsize=(12, 4.5), sharey=True)
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
    return _save(fig, out, name)


def bars(arms: dict[str, list[RunRecord]], metric: str, title: str, out: Path, name: str) -> str:
    """One bar per arm: the metric's mean with its 95 % interval."""
    names = list(arms)
    estimates = [mean_ci([r.scalars[metric] for r in arms[a] if metric in r.scalars] or
                         [math.nan]) for a in names]
    fig, ax = pyplot().subplots(figsize=(max(6, 1.4 * len(names)), 4))
    errors = [0 if math.isnan(e.half_width) else 100 * e.half_width for e in estimates]
    ax.bar(range(len(names)), [100 * e.mean for e in estimates], yerr=errors, capsize=4)
    ax.set_xticks(range(len(names)), [n.split("=")[-1] for n in names], rotation=20, fontsize=8)
    ax.set_title(title + ", mean ± 95 % CI")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, out, name)


def reliability(arms: dict[str, list[RunRecord]], out: Path, name: str = "reliability.png") -> str:
    """Test reliability diagram per arm, bins pooled over seeds."""
    fig, ax = pyplot().subplots(figsize=(5.5, 5))
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
    return _save(fig, out, name)


def interaction(cells: dict[str, dict[tuple[str, str], list[float]]], out: Path,
                name: str = "interaction.png") -> str:
    """Test accuracy by timing, one line per strength, 95 % interval bars; a panel per data
    size. Parallel lines mean no interaction; the vertical gap is the strength effect."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(cells), figsize=(5 * len(cells), 4.2), squeeze=False)
    for ax, (stratum, by_cell) in zip(axes[0], cells.items(), strict=True):
        for offset, strength in ((-0.03, "mild"), (0.03, "strong")):
            estimates = [mean_ci(by_cell[(timing, strength)]) for timing in ("early", "late")]
            ax.errorbar([offset, 1 + offset], [100 * e.mean for e in estimates],
                        yerr=[0 if math.isnan(e.half_width) else 100 * e.half_width
                              for e in estimates], marker="o", capsize=4, label=strength)
        ax.set_xticks([0, 1], ["early\n(from Stage-1)", "late\n(from Stage-2)"])
        ax.set_title(f"train size {stratum}")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(title="CutMix strength", fontsize=8)
    fig.suptitle("timing × strength: mean ± 95 % CI over seeds")
    return _save(fig, out, name)


def forest(rows: list[Row], scales: dict[str, float], out: Path, name: str = "forest.png") -> str:
    """Each tested claim's effect with its 95 % interval, in the metric's display unit, signed
    so that right of 0 is the direction the post predicts (as measured where it predicts none)."""
    tested = [r for r in rows if r.effect is not None and not math.isnan(r.effect.mean)]
    fig, ax = pyplot().subplots(figsize=(11, 0.42 * len(tested) + 1.5))
    for y, row in enumerate(reversed(tested)):
        sign, scale = row.claim.expected_sign or 1, scales[row.claim.metric]
        effect = row.effect
        assert effect is not None
        half = 0 if math.isnan(effect.half_width) else effect.half_width * scale
        ax.errorbar([sign * effect.mean * scale], [y], xerr=[half], marker="o", capsize=3,
                    color="tab:green" if row.holm_p < 0.05 else "tab:blue")
    ax.axvline(0, color="grey", linestyle="--", linewidth=0.8)
    ax.set_yticks(range(len(tested)), [f"{r.claim.text[:80]} [{r.stratum}]"
                                      for r in reversed(tested)], fontsize=7)
    ax.set_xlabel("effect in the post's predicted direction (metric units; > 0 agrees)")
    ax.set_title("claims: effect ± 95 % CI (green: Holm-adjusted p < 0.05)")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, out, name)
