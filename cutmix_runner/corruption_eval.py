"""`cutmix-eval RUN_DIR`: accuracy of a trained run on the clean test set and under the
CIFAR-10-C corruptions, each at severities 1-5: generated here (corruptions.py, seeded), or read
from the released CIFAR-10-C files with `--cifar10c DIR` (Hendrycks & Dietterich's .npy files:
NAME.npy holds the 10,000 test images at severity 1, then 2, ... 5, and labels.npy their labels).

Writes to `--out` (default RUN_DIR/eval/): `eval.json` (clean accuracy, accuracy per corruption
and severity, the mean corruption accuracy, and with `--reference RUN_DIR` the corruption error
relative to that run, Hendrycks & Dietterich's mCE normalisation), `eval.md` (the same as a
table) and `accuracy_vs_severity.png`. `cutmix-report` reads `eval/eval.json` when a run has it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cutmix_runner import metrics
from cutmix_runner.artifacts import atomic_write_json, new_folder, writable_folder
from cutmix_runner.corruptions import CORRUPTIONS, FROST_HINT, PARAMS, available, corrupt
from cutmix_runner.errors import UserError
from cutmix_runner.inference import TrainedModel, load_test_set, load_trained
from cutmix_runner.rundir import EVAL_NAME, RunDir, read_json
from cutmix_runner.runtime import resolve_device

CHUNK = 2000  # images corrupted at a time: bounds memory, not results (see corruptions.corrupt)
RELEASED_PER_SEVERITY = 10_000  # a CIFAR-10-C file: the whole test set at each severity in turn
# (name, severity, first, stop) -> uint8 (N, 3, H, W): test images first..stop-1, corrupted.
Source = Callable[[str, int, int, int], np.ndarray]


def generated(pixels: np.ndarray, seed: int) -> Source:
    """Corruptions computed here, each image from its own seeded generator."""
    def source(name: str, severity: int, first: int, stop: int) -> np.ndarray:
        return corrupt(pixels[first:stop], name, severity, seed, first_index=first)
    return source


def check_released_files(folder: Path, names: list[str]) -> None:
    """Every file the evaluation will read is in `folder` (before anything is written)."""
    missing = [f"{n}.npy" for n in [*names, "labels"] if not (folder / f"{n}.npy").exists()]
    if not folder.is_dir() or missing:
        raise UserError(f"--cifar10c {folder}: no {', '.join(missing)}; give the folder of the "
                        "released CIFAR-10-C .npy files, or choose --corruptions among those it "
                        "holds")


def released(folder: Path, names: list[str], labels: torch.Tensor) -> Source:
    """The released CIFAR-10-C files in `folder`, memory-mapped; checked before any compute:
    of the expected shape, with labels that are the test set's."""
    try:
        released_labels = np.load(folder / "labels.npy", mmap_mode="r")
        arrays = {n: np.load(folder / f"{n}.npy", mmap_mode="r") for n in names}
    except ValueError as exc:
        raise UserError(f"--cifar10c {folder}: unreadable .npy file ({exc})") from None
    expected = (5 * RELEASED_PER_SEVERITY, 32, 32, 3)
    wrong = [f"{n}.npy {a.shape}" for n, a in arrays.items() if a.shape != expected]
    if wrong:
        raise UserError(f"--cifar10c {folder}: expected arrays of shape {expected}, got "
                        f"{', '.join(wrong)}")
    if not np.array_equal(np.asarray(released_labels[:len(labels)]), labels.numpy()):
        raise UserError(f"--cifar10c {folder}: labels.npy does not match this run's test "
                        "labels; is it CIFAR-10-C (not CIFAR-100-C)?")

    def source(name: str, severity: int, first: int, stop: int) -> np.ndarray:
        offset = (severity - 1) * RELEASED_PER_SEVERITY
        chunk = arrays[name][offset + first:offset + stop]
        return np.ascontiguousarray(chunk.transpose(0, 3, 1, 2))
    return source


def accuracy(trained: TrainedModel, images: torch.Tensor, labels: torch.Tensor,
             batch_size: int) -> float:
    return metrics.accuracy(trained.logits(images, batch_size), labels)


def corrupted_accuracy(trained: TrainedModel, source: Source, labels: torch.Tensor,
                       name: str, severity: int, batch_size: int) -> float:
    right = 0.0
    for start in range(0, len(labels), CHUNK):
        part = labels[start:start + CHUNK]
        chunk = source(name, severity, start, start + len(part))
        right += accuracy(trained, torch.from_numpy(chunk), part, batch_size) * len(part)
    return right / len(labels)


def evaluate_corruptions(trained: TrainedModel, images: torch.Tensor, labels: torch.Tensor,
                         names: list[str], severities: list[int], seed: int = 0,
                         batch_size: int = 500, log: bool = False,
                         source: Source | None = None) -> dict[str, Any]:
    """Clean accuracy and accuracy[name][severity] (single view, the best checkpoint), on
    corruptions generated with `seed` unless a `source` (released files) is given."""
    result: dict[str, Any] = {"clean_accuracy": accuracy(trained, images, labels, batch_size),
                              "accuracy": {}}
    source = source or generated(images.numpy(), seed)
    for name in names:
        start = time.perf_counter()
        result["accuracy"][name] = {
            str(s): corrupted_accuracy(trained, source, labels, name, s, batch_size)
            for s in severities}
        if log:
            print(f"cutmix-eval: {name}: " + ", ".join(
                f"{s} {100 * a:.1f} %" for s, a in result["accuracy"][name].items())
                + f" ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    every = [a for per in result["accuracy"].values() for a in per.values()]
    result["mean_corruption_accuracy"] = statistics.fmean(every) if every else None
    return result


def corruption_errors(result: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    """CE_c = sum over severities of this run's error / the reference's; mCE = mean over c.

    Only corruptions and severities that both runs measured count.
    """
    per: dict[str, float] = {}
    for name, ours in result["accuracy"].items():
        theirs = reference["accuracy"].get(name, {})
        common = [s for s in ours if s in theirs]
        denominator = sum(1 - theirs[s] for s in common)
        if common and denominator > 0:
            per[name] = sum(1 - ours[s] for s in common) / denominator
    return {"corruption_error": per, "mce": statistics.fmean(per.values()) if per else None}


def markdown(result: dict[str, Any], command: str) -> str:
    severities = sorted({s for per in result["accuracy"].values() for s in per}, key=int)
    lines = [f"# Corruption robustness of `{result['source']}`", "", f"Made by `{command}`.", "",
             f"Clean test accuracy (single view): {100 * result['clean_accuracy']:.2f} % on "
             f"{result['images']} test images. Mean corruption accuracy: "
             f"{100 * result['mean_corruption_accuracy']:.2f} %."]
    if result.get("mce") is not None:
        lines.append(f"mCE relative to `{result['reference']}`: {100 * result['mce']:.1f} %.")
    header = ["corruption", *(f"severity {s}" for s in severities), "mean"]
    lines += ["", "| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
    for name, per in result["accuracy"].items():
        cells = [f"{100 * per[s]:.1f}" for s in severities]
        lines.append(f"| {name} | " + " | ".join(cells)
                     + f" | {100 * statistics.fmean(per.values()):.1f} |")
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    colours = plt.get_cmap("tab20").colors  # 14 corruptions: no colour twice
    for i, (name, per) in enumerate(result["accuracy"].items()):
        severities = sorted(per, key=int)
        ax.plot([0, *map(int, severities)],
                [100 * result["clean_accuracy"], *(100 * per[s] for s in severities)],
                marker="os^"[i % 3], color=colours[i % len(colours)], label=name)
    ax.set_xlabel("severity (0 = clean)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("accuracy under CIFAR-10-C corruptions")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_severities(text: str) -> list[int]:
    """'1-5', '3' or '1,3,5' -> sorted severities in 1..5."""
    values: set[int] = set()
    for part in text.split(","):
        low, _, high = part.partition("-")
        values.update(range(int(low), int(high or low) + 1))
    if not values or not all(1 <= v <= 5 for v in values):
        raise ValueError(text)
    return sorted(values)


def _choices(args: argparse.Namespace) -> tuple[list[str], list[int]]:
    """The corruptions and severities asked for. "all" is every corruption the source has: the
    released files in --cifar10c, else those this installation can generate."""
    if args.corruptions == "all":
        names = list(CORRUPTIONS)
        if args.cifar10c is None:
            names = available()
            if "frost" not in names:
                print(f"cutmix-eval: frost left out; for it, {FROST_HINT}", file=sys.stderr)
        elif args.cifar10c.is_dir():
            names = [n for n in CORRUPTIONS if (args.cifar10c / f"{n}.npy").exists()]
    else:
        names = args.corruptions.split(",")
    unknown = [n for n in names if n not in CORRUPTIONS]
    if unknown:
        raise UserError(f"--corruptions: unknown {', '.join(unknown)}; choose from "
                        f"{', '.join(CORRUPTIONS)} or all")
    if args.cifar10c is not None:
        check_released_files(args.cifar10c, names)
    elif "frost" in names and "frost" not in available():
        raise UserError(f"--corruptions frost: its photographs are not installed; {FROST_HINT}")
    try:
        return names, parse_severities(args.severities)
    except ValueError:
        raise UserError(f"--severities {args.severities}: use 1-5, a single level, or a "
                        "comma-separated list of levels 1..5") from None


def run(args: argparse.Namespace, command: str) -> int:
    names, severities = _choices(args)
    out = args.out or RunDir.of(args.run).eval_dir
    if (out / EVAL_NAME).exists() and not args.force:
        raise UserError(f"{out / EVAL_NAME} already exists; pass --force to replace it")
    # Before any compute, a folder that cannot be made fails now, not in 25 minutes; it is
    # made only when the results are written, so a refused command leaves nothing behind.
    writable_folder(out)
    reference = None
    if args.reference is not None:
        ref_file = RunDir(args.reference).eval_file
        if not ref_file.exists():
            raise UserError(f"--reference: no {ref_file}; run cutmix-eval on that run first")
        reference = read_json(ref_file)
    trained = load_trained(args.run, device=resolve_device(args.device, "--device"))
    images, labels = load_test_set(trained, args.run, args.data_root)
    if args.limit:
        images, labels = images[:args.limit], labels[:args.limit]
    files = None if args.cifar10c is None else released(args.cifar10c, names, labels)
    # The run's own evaluation batch by default: the same kernels as its test scoring (on the
    # 2-core EPYC, fp32 inference at batch 64 ran 2x as fast as at 256: benchmarks.md).
    batch_size = args.batch_size or trained.config.trainer.eval_batch_size
    result = {"source": str(trained.source), "images": len(labels), "seed": args.seed,
              "batch_size": batch_size, "protocol": "single view",
              "corruptions_from": "generated" if files is None else "CIFAR-10-C files",
              "parameters": {n: PARAMS[n] for n in names},
              **evaluate_corruptions(trained, images, labels, names, severities, args.seed,
                                     batch_size, log=True, source=files)}
    if reference is not None:
        result.update(reference=str(args.reference), **corruption_errors(result, reference))
    with new_folder(out):
        atomic_write_json(out / EVAL_NAME, result)
        (out / "eval.md").write_text(markdown(result, command))
        plot(result, out / "accuracy_vs_severity.png")
    print(f"cutmix-eval: clean {100 * result['clean_accuracy']:.2f} %, mean corruption accuracy "
          f"{100 * result['mean_corruption_accuracy']:.2f} % -> {out}/eval.json, eval.md, "
          "accuracy_vs_severity.png", file=sys.stderr)
    return 0
