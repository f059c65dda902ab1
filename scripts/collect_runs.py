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

from cutmix_runner.rundir import RunDir

# What a report needs of a run (RunDir's names; no checkpoints).
FILES = ("summary_file", "metrics_file", "eval_file", "config_file", "overrides_file", "hydra_file")


def collect(sweep: Path, dest: Path) -> int:
    copied = 0
    for summary in sorted(sweep.rglob(RunDir(sweep).summary_file.name)):
        run = RunDir(summary.parent)
        if run.path.name == run.eval_dir.name:  # cutmix-eval's own folder, not a run
            continue
        target = RunDir(dest / run.path.relative_to(sweep))
        for name in FILES:
            source, copy = getattr(run, name), getattr(target, name)
            if source.exists():
                copy.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, copy)
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
