"""The run's orchestration: config -> build -> stages of epochs -> evaluation -> artifacts.

`train(cfg, out_dir)` prepares a `Run` (with build.py), trains stage by stage (each stage
freezes, and gets a fresh optimizer, LR schedule and regularizer), writes a metrics line and a
checkpoint after every epoch, and scores the test set once at the end (summary.py). One function
per phase; a step, an evaluation, a checkpoint and torchrun's changes live in step.py,
evaluation.py, checkpoint.py and distributed.py (`run.world`).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm import tqdm

from cutmix_runner import build, checkpoint, distributed, faults, loggers, runtime, summary
from cutmix_runner.artifacts import MetricsLog
from cutmix_runner.checkpoint import Progress, RunState
from cutmix_runner.config import RunConfig, StageConfig, result_config
from cutmix_runner.data import steps_per_epoch, train_batches
from cutmix_runner.errors import RunError
from cutmix_runner.evaluation import Evaluator
from cutmix_runner.mixing import set_epoch_values
from cutmix_runner.model import FreezePlan, set_train_mode
from cutmix_runner.rundir import RunDir, Summary
from cutmix_runner.stage_end import StageEnd
from cutmix_runner.step import NonFiniteLoss, StepTally, TrainStep, train_step

if TYPE_CHECKING:
    from timm.utils import ModelEmaV3

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class Run(summary.FinishedRun):
    """A run's built parts, and its progress, which the phases below update: what the last phase
    reads (summary.FinishedRun: config, directory, runtime, data, model, evaluator, start time,
    logger, progress), and what training needs besides."""

    clean_train: tuple[torch.Tensor, torch.Tensor]
    data_order: torch.Generator  # shuffles and augments the training set, epoch after epoch
    metrics: MetricsLog
    ema: ModelEmaV3 | None = None  # trainer.ema_decay: the average that evaluations score
    elapsed_before: float = 0.0  # wall-clock seconds of the sittings before a resume

    def elapsed(self) -> float:
        """Seconds of work on this run so far, set-up included, over every sitting."""
        return self.elapsed_before + time.perf_counter() - self.started

    @property
    def world(self) -> distributed.World:
        return self.runtime.world


def train(cfg: RunConfig, out_dir: Path,
          on_checked: Callable[[], None] | None = None) -> Summary:
    """Build, train and test one run into `out_dir`; returns its summary. A finished run asked
    to resume is kept as it is, so re-running an interrupted multirun skips its finished jobs.
    Under torchrun every rank trains into rank 0's `out_dir`. `on_checked` runs on rank 0 once
    every check has passed (directory, data, model, resume), before the run writes anything."""
    out_dir = distributed.current().from_writer(out_dir)
    finished = checkpoint.finished_summary(cfg, out_dir)
    return finished if finished is not None else fit(prepare(cfg, out_dir), on_checked)


def prepare(cfg: RunConfig, out_dir: Path) -> Run:
    """Refuse a directory that holds a run, set up the runtime, build data and model."""
    started = time.perf_counter()  # total_seconds includes data loading and model set-up
    holds_a_run = RunDir(out_dir).holds_a_run()
    # Rank 0 looks, before any rank writes: a slower rank would find rank 0's first files.
    if cfg.trainer.resume is None and distributed.current().from_writer(holds_a_run):
        raise RunError(f"{out_dir} already holds a run; continue it with trainer.resume=auto "
                       "or pick a new hydra.run.dir")
    rt = runtime.setup(cfg.trainer)
    with rt.world.writer_first():  # data.download=true: rank 0 alone fetches the archive
        data = build.data_splits(cfg, rt.device, rt.world)
    model, preprocess = build.model_and_preprocess(cfg, data.num_classes, rt.device, rt.world)
    if rt.world.parallel:  # the head starts alike on every rank; dropout then differs by rank
        runtime.seed_everything(rt.world.seed(cfg.trainer.seed))
    ema = build.weight_average(model, cfg)
    scored = model if ema is None else ema.module
    writer = rt.world.is_writer
    return Run(cfg, RunDir(out_dir), rt, data, model,
               Evaluator(scored, preprocess, cfg.trainer, rt.eval_autocast), started,
               loggers.build(cfg.trainer.logger, out_dir, data.classes, writer),
               clean_train=build.clean_train_subset(data, cfg),
               data_order=torch.Generator().manual_seed(cfg.trainer.seed),
               metrics=MetricsLog(RunDir(out_dir).metrics_file, writes=writer), ema=ema)


def fit(run: Run, on_checked: Callable[[], None] | None = None) -> Summary:
    """Train, then test on rank 0; the other ranks leave without waiting for the test set."""
    train_stages(run, on_checked)
    return summary.finish(run) if run.world.is_writer else {"best": run.progress.best}


def train_stages(run: Run, on_checked: Callable[[], None] | None = None) -> None:
    """Every stage, from the checkpoint `trainer.resume` names if any; no test set."""
    log.info("device %s (%s), image size %d, %d train / %d val / %d test images",
             run.runtime.device, run.runtime.precision, run.evaluator.preprocess.image_size,
             len(run.data.train_x), len(run.data.val_x), len(run.data.test_x))
    path = checkpoint.resume_path(run.cfg.trainer.resume, run.dir.checkpoints)
    resume = resume_from(run, path) if path is not None else None
    if run.world.is_writer:
        run.dir.path.mkdir(parents=True, exist_ok=True)
        if on_checked is not None:
            on_checked()
    if resume is None:
        # resume=auto with no checkpoint yet: drop lines of an epoch that was never saved.
        run.metrics.rewrite([])
    first_stage = resume.stage_index if resume else 0
    stages = list(enumerate(run.cfg.schedule.stages.items()))[first_stage:]
    for index, (name, stage) in tqdm(stages, desc="stages", disable=not run.show_bars):
        if resume is not None and index == first_stage:
            if resume.stage_end is None:
                run_stage(run, index, name, stage, resume)
            continue  # that stage had already ended; its summary came with the checkpoint
        run_stage(run, index, name, stage)


def resume_from(run: Run, path: Path) -> RunState:
    """Continue from a checkpoint that fits this config: weights, progress and every RNG."""
    state = checkpoint.read_to_resume(path, run.cfg, run.runtime.precision)
    state.rng = run.world.check_checkpoint(state.rng, path)  # this rank's generators
    if run.world.is_writer:
        checkpoint.adopt_best(path, run.dir.checkpoints)
    if run.ema is None:
        run.model.load_state_dict(state.model)
    elif state.trained is None:
        raise RunError(f"trainer.resume: {path} holds no trained weights beside their average "
                       "(trainer.ema_decay); it was not written by cutmix-runner's trainer")
    else:  # the average was saved as "model", the weights being trained beside it
        run.model.load_state_dict(state.trained)
        run.ema.module.load_state_dict(state.model)
    run.progress = Progress.of(state)
    run.elapsed_before = state.records[-1].get("elapsed_seconds", 0.0) if state.records else 0.0
    runtime.set_global_rng_state(state.rng)
    run.data_order.set_state(state.rng["data"])
    # metrics.jsonl may hold a line written after this checkpoint: rewrite it from the
    # checkpoint's own records, so resumed runs never duplicate an epoch.
    run.metrics.rewrite(run.progress.records)
    log.info("resumed from %s: stage '%s', epoch %d", path, state.stage, state.epoch)
    return state


def run_stage(run: Run, index: int, name: str, stage: StageConfig,
              resume: RunState | None = None) -> None:
    """Train one stage; `resume` is a checkpoint taken inside this stage."""
    plan, step = build.stage_step(run.model, run.cfg, index, stage, run.data,
                                  run.evaluator.preprocess, run.runtime)
    step.model = run.world.wrap(run.model)  # DDP over this stage's trainable parameters
    stage_end = StageEnd(stage)
    first_epoch, seconds = 0, 0.0
    if resume is not None:
        step.optimizer.load_state_dict(resume.optimizer)
        step.scheduler.load_state_dict(resume.scheduler)
        step.regularizer.set_rng_state(resume.rng["regularizer"])
        stage_end.load_state(resume.plateau)
        first_epoch, seconds = resume.epoch, resume.stage_seconds
    trainable = sum(p.numel() for p in run.model.parameters() if p.requires_grad)
    log.info("stage %d '%s': %d trainable parameters, regularizer %s, up to %d epochs",
             index, name, trainable, stage.regularizer.name, stage.epochs)
    progress = run.progress
    if first_epoch == 0:  # what this stage's mixing does to images: examples_STAGE.png
        run.logger.stage_examples(name, stage, step.regularizer, run.data, progress.global_step)
    for epoch in range(first_epoch, stage.epochs):
        start_time = time.perf_counter()
        set_epoch_values(step.regularizer, stage.regularizer, epoch, stage.epochs)
        record = {"stage_index": index, **train_epoch(run, name, stage, epoch, plan, step),
                  "elapsed_seconds": round(run.elapsed(), 2)}
        ended_by = run.world.from_writer(  # rank 0 decides; every rank follows
            stage_end.after_epoch(epoch, record["val_accuracy"], record["generalization_gap"]))
        if ended_by is not None:
            record["stage_end"] = ended_by
        seconds += time.perf_counter() - start_time
        run.metrics.append(record)
        run.logger.epoch(record)
        progress.records.append(record)
        if ended_by is not None:
            progress.finished_stages.append({"name": name, "epochs": epoch + 1,
                                             "ended_by": ended_by, "seconds": round(seconds, 2)})
        rng = {**runtime.global_rng_state(), "data": run.data_order.get_state(),
               "regularizer": step.regularizer.rng_state()}
        ranks = run.world.gather(rng)  # under DDP the checkpoint keeps every rank's generators
        state = RunState(
            model=run.evaluator.model.state_dict(), config=result_config(run.cfg),
            precision=run.runtime.precision, **progress.state_fields(),
            rng=rng if len(ranks) == 1 else {**rng, "ranks": ranks},
            stage_index=index, stage=name, epoch=epoch + 1, stage_end=ended_by,
            stage_seconds=seconds, val_accuracy=record["val_accuracy"],
            optimizer=step.optimizer.state_dict(), scheduler=step.scheduler.state_dict(),
            plateau=stage_end.state(),
            trained=None if run.ema is None else run.model.state_dict())
        checkpoint.Saver(run.dir.checkpoints, writes=run.world.is_writer)(state, progress)
        if ended_by is not None:
            log.info("stage '%s' ended by %s after %d epochs", name, ended_by, epoch + 1)
            return


def train_epoch(run: Run, name: str, stage: StageConfig, epoch: int, plan: FreezePlan,
                step: TrainStep) -> dict[str, Any]:
    """Train one epoch, then evaluate (rank 0 alone under DDP); returns the epoch's metrics
    record, rank 0's on every rank."""
    cfg, world = run.cfg, run.world
    set_train_mode(run.model, plan)
    lr_start = {g["name"]: g["lr"] for g in step.optimizer.param_groups}
    batches = train_batches(run.data.train_x, run.data.train_y, cfg.trainer.batch_size,
                            run.data_order, cfg.data.pad, cfg.data.hflip, world.rank, world.size)
    steps = steps_per_epoch(len(run.data.train_x), cfg.trainer.batch_size, world.size)
    bar = tqdm(batches, total=steps, leave=False, disable=not run.show_bars,
               desc=f"{name} {epoch + 1}/{stage.epochs}")
    start = time.perf_counter()
    tally = train_steps(run, step, bar, where=f"stage '{name}', epoch {epoch + 1}")
    tally = tally.combined(world.sum)  # reads the loss back: the time below is the true one
    train_seconds = time.perf_counter() - start
    run.progress.global_epoch += 1
    record = {
        "stage": name, "epoch": epoch + 1, "global_epoch": run.progress.global_epoch,
        "lr_start": lr_start, "lr_end": {g["name"]: g["lr"] for g in step.optimizer.param_groups},
        **tally.record(train_seconds), "regularizer": stage.regularizer.name,
        "reg_mode": stage.regularizer.mode, "reg_prob": step.regularizer.prob,
        "reg_min_area": step.regularizer.min_area, "reg_max_area": step.regularizer.max_area,
        "image_size": step.preprocess.image_size,
    }
    if world.is_writer:
        evaluation = run.evaluator.epoch(run.data, *run.clean_train)
        run.last_val_logits = evaluation.val.logits
        record.update(evaluation.record())
    record = world.from_writer({**record, "seconds": time.perf_counter() - start})
    log.info("%s epoch %d: train loss %.4f, clean-train acc %.4f, val acc %.4f, %.0f img/s",
             name, epoch + 1, record["train_loss"], record["clean_train_accuracy"],
             record["val_accuracy"], record["images_per_second"])
    return record


def train_steps(run: Run, step: TrainStep, batches: tqdm, where: str) -> StepTally:
    """One `train_step` per batch, the loss read back every `trainer.sync_every` steps; stops
    the run on a non-finite loss or a stop request."""
    tally, sync_every = StepTally(time.perf_counter()), run.cfg.trainer.sync_every
    for i, (xb, yb) in enumerate(batches):
        run.progress.global_step += 1
        faults.at_step("kill_step", run.progress.global_step)
        faults.at_step("term_step", run.progress.global_step)
        try:
            result = train_step(step, xb, yb,
                                functools.partial(faults.poison, step=run.progress.global_step))
            if run.ema is not None:
                run.ema.update(run.model, step=run.progress.global_step)
            tally.add(result)
            loss = tally.read_back(i, sync_every, run.world.all_agree)
        except NonFiniteLoss:
            at = f"step {i + 1}" if sync_every == 1 else f"by step {i + 1}"
            fix = "run without trainer.compile, or " if run.cfg.trainer.compile else ""
            raise RunError(f"non-finite loss in {where}, {at}; {fix}lower the learning rates. "
                           f"{run.dir.last} holds the last good epoch") from None
        run.world.check_stop()  # abandons the rest of the epoch; last.pt holds the previous one
        if loss is not None:  # the device has synced: this step's own loss costs nothing
            run.logger.step(run.progress.global_step, float(result.loss), step.optimizer)
        if loss is not None and (i + 1) % (sync_every * max(1, 20 // sync_every)) == 0:
            batches.set_postfix(loss=f"{loss:.3f}")
    return tally
