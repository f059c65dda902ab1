"""Append the preset runs of scripts/gpu_check.sh to a benchmarks file, as one dated table.

Per epoch: training images/s, the first step's time (compile, cuDNN's algorithm search and
allocator growth land there) and images/s without that first step, so that a slow first epoch of
a stage shows whether it is one slow step or a slow epoch. Per run: test accuracy and wall time.

    python scripts/gpu_summary.py --out docs/benchmarks.md RUN_DIR [RUN_DIR ...]
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

import yaml

from cutmix_runner.rundir import RunDir


def epoch_rows(run: Path) -> list[str]:
    train_size = json.loads(RunDir(run).summary_file.read_text())["train_size"]
    batch = _config_batch(run)
    rows = []
    for line in RunDir(run).metrics_file.read_text().splitlines():
        r = json.loads(line)
        train_seconds = train_size / r["images_per_second"]
        first = r.get("first_step_seconds", 0.0)
        rest = (train_size - batch) / max(train_seconds - first, 1e-9)
        rows.append(f"| {run.name} | {r['stage']} {r['epoch']} | {r['images_per_second']:.0f} | "
                    f"{first:.2f} | {rest:.0f} | {r['val_accuracy']:.4f} |")
    return rows


def _config_batch(run: Path) -> int:
    """trainer.batch_size from the run's composed config."""
    return yaml.safe_load(RunDir(run).config_file.read_text())["trainer"]["batch_size"]


def run_row(run: Path) -> str:
    s = json.loads(RunDir(run).summary_file.read_text())
    return (f"| {run.name} | {s['device_name']} | {s['image_size']} | {s['train_size']} | "
            f"{s['test_accuracy']:.4f} | {s['test_accuracy_single_view']:.4f} | "
            f"{s['total_seconds']:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--command", default="scripts/gpu_check.sh")
    parser.add_argument("--seconds", type=float, default=0.0)
    parser.add_argument("runs", type=Path, nargs="+")
    args = parser.parse_args()
    lines = [f"## Preset runs, {datetime.date.today().isoformat()}", "",
             f"Made by `{args.command}` ({args.seconds:.0f} s in all). Synthetic runs measure "
             "speed only; their accuracy means nothing.", "",
             "| run | device | px | train images | test acc (flip) | single view | seconds |",
             "|---|---|---:|---:|---:|---:|---:|"]
    lines += [run_row(run) for run in args.runs]
    lines += ["", "| run | stage, epoch | img/s | first step s | img/s after the first step | "
              "val acc |", "|---|---|---:|---:|---:|---:|"]
    for run in args.runs:
        lines += epoch_rows(run)
    text = args.out.read_text() if args.out.exists() else "# Benchmarks\n"
    args.out.write_text(text.rstrip("\n") + "\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
