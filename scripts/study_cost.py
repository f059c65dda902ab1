"""What a study's training runs cost, as they ran and as they would on an idle CPU.

    python scripts/study_cost.py docs/results/study/runs

Runs that shared the CPU (with the test suite, say) record a longer `total_seconds` than the same
work alone. Runs of one arm and cell differ only in their seed, so the fastest of them, times
their count, estimates the group's cost alone. Prints both sums, per CPU kind (`cpu_isa`).
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path


def cell(run_name: str) -> str:
    """A run folder's name (Hydra's override_dirname) without its seed."""
    return ",".join(sorted(part for part in run_name.split(",")
                           if not part.startswith("trainer.seed=")))


def cost(runs: Path) -> dict[str, tuple[int, float, float]]:
    """{cpu_isa: (runs, seconds as run, seconds alone)} over the run folders under `runs`."""
    groups: dict[tuple[str, str], list[float]] = defaultdict(list)
    for summary in sorted(runs.glob("*/summary.json")):
        record = json.loads(summary.read_text())
        key = record.get("cpu_isa", "unknown"), cell(summary.parent.name)
        groups[key].append(record["total_seconds"])
    totals: dict[str, tuple[int, float, float]] = {}
    for (isa, _), seconds in groups.items():
        n, as_run, alone = totals.get(isa, (0, 0.0, 0.0))
        totals[isa] = (n + len(seconds), as_run + sum(seconds), alone + min(seconds) * len(seconds))
    return totals


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not Path(args[0]).is_dir():
        print("usage: python scripts/study_cost.py RUNS_DIR (a folder of run folders)",
              file=sys.stderr)
        return 2
    for isa, (n, as_run, alone) in sorted(cost(Path(args[0])).items()):
        print(f"{isa}: {n} runs, {as_run / 3600:.1f} h as run, about {alone / 3600:.1f} h alone "
              "(the fastest run of each arm and cell, times its runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
