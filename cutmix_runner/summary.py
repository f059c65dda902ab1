"""The run's last phase: the test set scored once, with the best-validation weights, and
summary.json (rank 0 alone under DDP)."""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from tqdm import tqdm

from cutmix_runner import checkpoint, runtime
from cutmix_runner.artifacts import atomic_write_json
from cutmix_runner.config import result_config
from cutmix_runner.rundir import Summary

if TYPE_CHECKING:
    from cutmix_runner.checkpoint import Progress
    from cutmix_runner.config import RunConfig
    from cutmix_runner.data import Splits
    from cutmix_runner.evaluation import Evaluator
    from cutmix_runner.loggers import RunLogger
    from cutmix_runner.rundir import RunDir
    from cutmix_runner.runtime import Runtime


@dataclass
class FinishedRun:
    """What the last phase reads of a run. trainer.Run extends it with what training needs, so
    that each field is declared once and this module needs nothing from the trainer above it."""

    cfg: RunConfig
    dir: RunDir
    runtime: Runtime
    data: Splits
    model: torch.nn.Module
    evaluator: Evaluator
    started: float
    logger: RunLogger
    progress: Progress = field(default_factory=checkpoint.Progress)
    last_val_logits: torch.Tensor = field(default_factory=lambda: torch.empty(0))

    @property
    def show_bars(self) -> bool:
        """tqdm bars: asked for, on a terminal, and on rank 0 alone."""
        return (self.cfg.trainer.progress and sys.stderr.isatty()
                and self.runtime.world.is_writer)


log = logging.getLogger(__name__)


def dose(records: list[dict[str, Any]]) -> dict[str, Any]:
    """How many training images the regularizer changed, per stage and in all: the treatment's
    dose, which arms that compare timing or direction must match (docs/study.md)."""
    stages: dict[str, int] = {}
    for record in records:
        stages[record["stage"]] = stages.get(record["stage"], 0) + record.get("mixed_images", 0)
    seen = sum(record.get("train_images", 0) for record in records)
    return {"mixed_images": sum(stages.values()), "mixed_images_per_stage": stages,
            "train_images": seen}


def time_to_accuracy(records: list[dict[str, Any]],
                     levels: list[float]) -> dict[str, float | None]:
    """Per level, the run's elapsed seconds at the end of the first epoch whose validation
    accuracy reached it (null if none did): what runners are compared by."""
    return {f"{level:.2f}": next((r.get("elapsed_seconds") for r in records
                                  if r["val_accuracy"] >= level), None) for level in levels}


def test_passes(run: FinishedRun, rescore: bool) -> int:
    """Forward passes of the last phase: the test set (mirrored too under trainer.test_flip)
    with the final weights and, on `rescore`, again with the best-validation weights and the
    validation set for the temperature (also when a resumed run has no logits of its last
    validation pass); the flip-rate subset twice (noise, shift)."""
    n, trainer = len(run.data.test_x), run.cfg.trainer
    rescore_val = rescore or len(run.last_val_logits) == 0
    return (n * (2 if trainer.test_flip else 1) * (2 if rescore else 1)
            + 2 * min(trainer.flip_subset, n) + (len(run.data.val_x) if rescore_val else 0))


def announce_test(run: FinishedRun, rescore: bool) -> None:
    """One line before the test set is scored: how many forward passes, and about how long at
    validation's speed. On a quick run this can outlast the training; data.test_subset shrinks
    it."""
    n, passes = len(run.data.test_x), test_passes(run, rescore)
    rate = run.evaluator.images_per_second
    log.info("scoring the test set: %d images, %s, %s weights: %d forward passes%s", n,
             "flip-averaged" if run.cfg.trainer.test_flip else "single view",
             "final and best-validation" if rescore else "the final (best-validation)", passes,
             f", about {passes / rate:.0f} s" if rate else "")


def finish(run: FinishedRun) -> Summary:
    """Score the test set once, with the best-validation weights, and write summary.json."""
    data, evaluator, best_epoch = run.data, run.evaluator, run.progress.best
    rescore = best_epoch["global_epoch"] != run.progress.global_epoch
    announce_test(run, rescore)
    with tqdm(total=test_passes(run, rescore), desc="test set", unit="img", leave=False,
              disable=not run.show_bars) as bar:
        evaluator.advance = bar.update
        try:
            final = evaluator.test(data)
            best, val_logits = final, run.last_val_logits
            if rescore:
                evaluator.model.load_state_dict(checkpoint.load(run.dir.best).model)
                best = evaluator.test(data)
                val_logits = evaluator.evaluate(data.val_x, data.val_y).logits
            elif len(val_logits) == 0:  # resumed after the last epoch: not in the checkpoint
                val_logits = evaluator.evaluate(data.val_x, data.val_y).logits
            test_fields = evaluator.test_summary(data, best, final, val_logits)
        finally:
            evaluator.advance = None
    summary: Summary = {
        **test_fields,
        "best": best_epoch, "stages": run.progress.finished_stages,
        "dose": dose(run.progress.records),
        "time_to_accuracy": time_to_accuracy(run.progress.records,
                                             run.cfg.trainer.accuracy_levels),
        "train_size": len(data.train_x), "val_size": len(data.val_x),
        "test_size": len(data.test_x), "image_size": evaluator.preprocess.image_size,
        "device": str(run.runtime.device), "device_name": run.runtime.device_name,
        "cpu_isa": runtime.cpu_isa(),
        "precision": run.runtime.precision, **run.runtime.forward_only_precisions(),
        "threads": torch.get_num_threads(), "processes": run.runtime.world.size,
        "total_seconds": round(time.perf_counter() - run.started, 2),
        "versions": runtime.versions(),
    }
    atomic_write_json(run.dir.summary_file, summary)
    checkpoint.prune(run.dir.checkpoints, run.cfg.trainer.keep_checkpoints)
    run.logger.finish(result_config(run.cfg), summary)
    log.info("test accuracy %.4f %s (single view %.4f; best-val checkpoint, %s epoch %d), "
             "final weights %.4f", summary["test_accuracy"], summary["test_protocol"],
             summary["test_accuracy_single_view"], best_epoch["stage"], best_epoch["epoch"],
             summary["final_test_accuracy"])
    return summary
