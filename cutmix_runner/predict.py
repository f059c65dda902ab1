"""`cutmix-predict RUN_DIR|CHECKPOINT PATH...`: classify image files with a trained run.

Files and folders (recursively) in any format and mode Pillow reads; each image is brought to
32 x 32 RGB the way CIFAR images were made (images.py). Output per file: the top-k labels and
probabilities, as a table on the terminal, or as csv/json in timm's `inference.py` shapes:

- csv: `filename, label_0 .. label_{k-1}, prob_0 .. prob_{k-1}, error`
- json: a list of `{"filename", "label": [...], "prob": [...], "error"}`

A file that cannot be read is reported in one line on stderr, becomes an error row, and the
others are still classified. Exit status: 0 every file classified, 1 some skipped, 2 nothing
classified or no usable run.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from cutmix_runner.artifacts import atomic_write_bytes, check_output
from cutmix_runner.errors import UserError
from cutmix_runner.evaluation import flip_averaged
from cutmix_runner.images import ImageFileError, find_images, load_image
from cutmix_runner.inference import TrainedModel, load_trained
from cutmix_runner.runtime import resolve_device


@dataclass
class Prediction:
    filename: str
    labels: list[str] = field(default_factory=list)
    probs: list[float] = field(default_factory=list)
    error: str | None = None


def flip_averaged_logits(trained: TrainedModel, images: torch.Tensor, tta: str,
                         batch_size: int) -> torch.Tensor:
    """Logits, averaged with the mirror image's under `tta=flip` (the test protocol's TTA)."""
    if tta == "flip":
        return flip_averaged(lambda batch: trained.logits(batch, batch_size), images)
    return trained.logits(images, batch_size)


def _batches(files: list[Path], size: int) -> Iterator[list[Path]]:
    for start in range(0, len(files), size):
        yield files[start:start + size]


def classify(trained: TrainedModel, files: list[Path], topk: int = 5, tta: str = "none",
             batch_size: int = 256, progress: bool = False) -> list[Prediction]:
    """One Prediction per file, in order; unreadable files become error rows."""
    rows: list[Prediction] = []
    k = min(topk, len(trained.classes))
    with tqdm(total=len(files), unit="img", disable=not progress) as bar:
        for batch in _batches(files, batch_size):
            loaded: list[np.ndarray] = []
            for path in batch:
                row = Prediction(str(path))
                try:
                    loaded.append(load_image(path))
                except ImageFileError as exc:
                    row.error = str(exc)
                    print(f"cutmix-predict: skipped {path}: {exc}", file=sys.stderr)
                rows.append(row)
            good = [r for r in rows[-len(batch):] if r.error is None]
            if loaded:
                images = torch.from_numpy(np.stack(loaded))
                probs = flip_averaged_logits(trained, images, tta, batch_size).softmax(-1)
                top_p, top_i = probs.topk(k, dim=-1)
                for row, p, i in zip(good, top_p.tolist(), top_i.tolist(), strict=True):
                    row.labels = [trained.classes[j] for j in i]
                    row.probs = [round(v, 6) for v in p]
            bar.update(len(batch))
    return rows


def as_csv(rows: list[Prediction], k: int) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["filename", *(f"label_{i}" for i in range(k)),
                     *(f"prob_{i}" for i in range(k)), "error"])
    for r in rows:
        pad = k - len(r.labels)
        writer.writerow([r.filename, *r.labels, *[""] * pad, *r.probs, *[""] * pad,
                         r.error or ""])
    return out.getvalue()


def as_json(rows: list[Prediction]) -> str:
    return json.dumps([{"filename": r.filename, "label": r.labels, "prob": r.probs,
                        "error": r.error} for r in rows], indent=1) + "\n"


def as_table(rows: list[Prediction]) -> str:
    width = max([len(r.filename) for r in rows] + [4])
    lines = [f"{'file':<{width}}  predictions (probability)"]
    for r in rows:
        shown = ("error: " + r.error if r.error else
                 ", ".join(f"{label} {100 * p:.1f} %" for label, p in zip(r.labels, r.probs,
                                                                          strict=True)))
        lines.append(f"{r.filename:<{width}}  {shown}")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    """Classify every file; the exit code: 0 all classified, 1 some skipped, 2 none."""
    if args.out is not None:
        check_output(args.out, args.force)
    trained = load_trained(args.run, device=resolve_device(args.device, "--device"))
    files = find_images(args.paths)
    if not files:
        raise UserError(f"no image files under {', '.join(map(str, args.paths))}")
    rows = classify(trained, files, args.topk, args.tta, args.batch_size,
                    progress=sys.stderr.isatty() and len(files) > args.batch_size)
    k = min(args.topk, len(trained.classes))
    if args.format == "csv":
        text = as_csv(rows, k)
    elif args.format == "json":
        text = as_json(rows)
    else:
        text = as_table(rows)
    if args.out:
        atomic_write_bytes(args.out, text.encode())  # checked writable before classifying
    else:
        sys.stdout.write(text)
    skipped = sum(r.error is not None for r in rows)
    return 0 if skipped == 0 else 2 if skipped == len(rows) else 1
