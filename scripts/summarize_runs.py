"""Print a Markdown table of finished runs under one or more run or multirun directories.

    python scripts/summarize_runs.py multirun/2026-11-25/18-00-00-000000

One row per run (a directory holding summary.json): its command-line overrides, test accuracy of
the best-validation checkpoint, best validation accuracy, the last epoch's clean-train accuracy
and generalization gap, and the run's wall time.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml


def find_runs(paths: list[Path]) -> list[Path]:
    runs: list[Path] = []
    for path in paths:
        if (path / "summary.json").exists():
            runs.append(path)
        else:
            runs.extend(sorted(p.parent for p in path.rglob("summary.json")))
    return runs


def row(run: Path) -> dict[str, object]:
    summary = json.loads((run / "summary.json").read_text())
    overrides_file = run / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.exists() else []
    shown = [o for o in overrides or [] if not o.startswith(("data.root", "trainer.progress"))]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last = records[-1]
    return {
        "run": " ".join(shown) or "(defaults)",
        "test_accuracy": summary["test_accuracy"],
        "best_val_accuracy": summary["best"]["val_accuracy"],
        "clean_train_accuracy": last["clean_train_accuracy"],
        "gap": last["generalization_gap"],
        "epochs": len(records),
        "minutes": summary["total_seconds"] / 60,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path)
    args = parser.parse_args()
    runs = find_runs(args.paths)
    if not runs:
        print(f"summarize_runs: no summary.json under {', '.join(map(str, args.paths))}",
              file=sys.stderr)
        sys.exit(2)
    print("| run | test acc | best val acc | clean-train acc (last) | gap (last) | epochs | "
          "wall time (min) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in map(row, runs):
        print(f"| `{r['run']}` | {r['test_accuracy']:.4f} | {r['best_val_accuracy']:.4f} | "
              f"{r['clean_train_accuracy']:.4f} | {r['gap']:+.4f} | {r['epochs']} | "
              f"{r['minutes']:.1f} |")


if __name__ == "__main__":
    main()
