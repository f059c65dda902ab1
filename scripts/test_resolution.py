"""Test-time resolution: a trained run's accuracy when its images are resized to other sizes
than it was trained at (the same weights), chosen on its validation split, never on the test set.

    python scripts/test_resolution.py RUN_DIR [--sizes 72 80 88 96] [--data-root DIR]

For each size: validation accuracy (the split the run selected its checkpoint on), test accuracy
(single view) and evaluation images/s. Prints a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from cutmix_runner.inference import load_trained, trained_splits
from cutmix_runner.metrics import accuracy
from cutmix_runner.model import build_preprocess


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--sizes", type=int, nargs="+", default=[72, 80, 88, 96])
    parser.add_argument("--data-root", default=None)
    args = parser.parse_args()
    trained = load_trained(args.run)
    splits = trained_splits(trained, args.run, args.data_root)
    print(f"{args.run}: trained at {trained.image_size} px")
    print("| size | validation | test (single view) | eval img/s |\n|---:|---:|---:|---:|")
    for size in args.sizes:
        resized = dataclasses.replace(trained.config.model, image_size=size)
        trained.preprocess = build_preprocess(trained.model, resized,
                                              trained.config.trainer.channels_last)
        start = time.perf_counter()
        val = accuracy(trained.logits(splits.val_x, 64), splits.val_y)
        rate = len(splits.val_x) / (time.perf_counter() - start)
        test = accuracy(trained.logits(splits.test_x, 64), splits.test_y)
        mark = " (trained)" if size == trained.image_size else ""
        print(f"| {size}{mark} | {val:.2%} | {test:.2%} | {rate:.0f} |")


if __name__ == "__main__":
    main()
