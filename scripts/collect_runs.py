"""Copy what a report needs from finished runs into a tracked folder (no checkpoints).

    python scripts/collect_runs.py SWEEP_DIR DEST_DIR

For each run under SWEEP_DIR with a summary.json: summary.json, metrics.jsonl, eval/eval.json
and .hydra/{config,overrides,hydra}.yaml, into DEST_DIR/<the run's folder name>. Unfinished runs
are left out; files already copied are replaced (a run is only ever finished once).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

FILES = ("summary.json", "metrics.jsonl", "eval/eval.json", ".hydra/config.yaml",
         ".hydra/overrides.yaml", ".hydra/hydra.yaml")


def collect(sweep: Path, dest: Path) -> int:
    copied = 0
    for summary in sorted(sweep.rglob("summary.json")):
        run = summary.parent
        if run.name == "eval":  # cutmix-eval's own folder, not a run
            continue
        target = dest / run.relative_to(sweep)
        for name in FILES:
            if (run / name).exists():
                (target / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(run / name, target / name)
        copied += 1
    return copied


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit("usage: python scripts/collect_runs.py SWEEP_DIR DEST_DIR")
    sweep, dest = Path(sys.argv[1]), Path(sys.argv[2])
    if not sweep.is_dir():
        sys.exit(f"collect_runs: error: no such sweep directory: {sweep}")
    print(f"{collect(sweep, dest)} finished runs copied into {dest}")


if __name__ == "__main__":
    main()
