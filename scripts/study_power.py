"""The study's pilot: each arm's SD and the paired SD of the post's recipe minus no mixing, per
regime and size, and the smallest effect n seeds would detect (80 % power, alpha 0.05).

    python scripts/study_power.py docs/results/study/runs [--seeds 0,1,2]

Reads each run's summary.json and .hydra/overrides.yaml (the arms are the study_* presets);
prints a Markdown table for docs/study.md.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

import yaml

from cutmix_runner.rundir import RunDir
from cutmix_runner.stats import min_detectable_effect

ARMS = ("study_none", "study_increasing")
METRIC = "test_accuracy"  # best-validation weights, single view
NS = (3, 4, 5, 6, 8)


def load(folder: Path, seeds: set[int] | None) -> dict[tuple[str, str, str], dict[int, float]]:
    """(arm, size, regime) -> {seed: test accuracy}."""
    values: dict[tuple[str, str, str], dict[int, float]] = {}
    for summary in sorted(folder.glob(f"*/{RunDir(folder).summary_file.name}")):
        raw = yaml.safe_load(RunDir(summary.parent).overrides_file.read_text())
        overrides = dict(o.split("=", 1) for o in raw if "=" in o)
        seed = int(overrides.get("trainer.seed", 0))
        if seeds is not None and seed not in seeds:
            continue
        key = (overrides.get("experiment", ""), overrides.get("data.train_subset", "full"),
               overrides.get("schedule", ""))
        values.setdefault(key, {})[seed] = json.loads(summary.read_text())[METRIC]
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path)
    parser.add_argument("--seeds", help="comma-separated seeds (default: all found)")
    args = parser.parse_args()
    seeds = {int(s) for s in args.seeds.split(",")} if args.seeds else None
    values = load(args.runs, seeds)
    cells = sorted({(size, regime) for _, size, regime in values}, key=lambda c: (c[1], c[0]))
    print("| regime | size | n | SD none | SD recipe | mean diff | SD diff | "
          + " | ".join(f"MDE n={n}" for n in NS) + " |")
    print("|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(NS))
    for size, regime in cells:
        none, recipe = (values.get((arm, size, regime), {}) for arm in ARMS)
        common = sorted(set(none) & set(recipe))
        if len(common) < 2:
            continue
        diffs = [recipe[s] - none[s] for s in common]
        sd = statistics.stdev(diffs)
        mdes = [min_detectable_effect(sd / math.sqrt(n), n - 1) for n in NS]
        print(f"| {regime.removeprefix('study_')} | {size} | {len(common)} | "
              f"{100 * statistics.stdev(none[s] for s in common):.2f} | "
              f"{100 * statistics.stdev(recipe[s] for s in common):.2f} | "
              f"{100 * statistics.fmean(diffs):+.2f} | {100 * sd:.2f} | "
              + " | ".join(f"{100 * m:.2f}" for m in mdes) + " |")


if __name__ == "__main__":
    main()
