"""The run state: one typed record of everything an exact resume needs, its atomic save and
load, the format tag, the check that a checkpoint fits the config, and where to resume from.

`checkpoints/last.pt` holds the state after the latest finished epoch; `checkpoints/best.pt` the
same record at the epoch with the best validation accuracy. On disk a checkpoint is a plain dict
(the record's fields plus "format"), so that `torch.load` alone can read its "model" weights.

Checkpoints travel: users download and share them. So every read goes through `load`, which
unpickles with `weights_only=True`: tensors and plain values only, and nothing in the file can
run code. Checkpoints written before 2026-12-07 kept NumPy's RNG state as an array; NumPy's
array type is allowed for them, as torch's documentation suggests, and nothing else is.
"""

from __future__ import annotations

import io
import logging
import pickle
import shutil
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cutmix_runner.artifacts import atomic_write_bytes
from cutmix_runner.config import (
    RunConfig,
    config_difference,
    result_config,
    with_current_defaults,
)
from cutmix_runner.errors import RunError
from cutmix_runner.rundir import BEST, LAST, RunDir, Summary

log = logging.getLogger(__name__)

FORMAT = "cutmix-runner/1"
# What the safe unpickler may build beyond tensors and plain values: NumPy arrays of numbers, for
# the RNG state of checkpoints written before 2026-12-07.
LEGACY_GLOBALS = [np._core.multiarray._reconstruct, np.ndarray, np.dtype,
                  np.dtypes.UInt32DType]


@dataclass
class RunState:
    """A run after `global_epoch` finished epochs, `epoch` of them in stage `stage`."""

    # The weights every evaluation scored, which the tools load: the trained weights, or their
    # moving average under trainer.ema_decay (then `trained` holds the weights being trained).
    model: dict[str, torch.Tensor]
    config: dict[str, Any]  # result_config: a resume must match it
    precision: str
    # The whole run.
    global_epoch: int
    global_step: int
    best: dict[str, Any]  # val_accuracy, stage, stage_index, epoch, global_epoch of the best epoch
    records: list[dict[str, Any]]  # every finished epoch's metrics, in order
    finished_stages: list[dict[str, Any]]
    rng: dict[str, Any]  # python, numpy, torch, cuda, data order, the stage's regularizer
    # The current stage.
    stage_index: int
    stage: str
    epoch: int
    stage_end: str | None  # why the stage ended, or None while it goes on
    stage_seconds: float
    val_accuracy: float  # of this epoch
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    plateau: tuple[float, int]
    trained: dict[str, torch.Tensor] | None = None  # only under trainer.ema_decay

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, **{f.name: getattr(self, f.name) for f in fields(self)}}

    @classmethod
    def from_dict(cls, state: Any, path: Path, context: str = "trainer.resume") -> RunState:
        required = [f.name for f in fields(cls) if f.default is MISSING]
        if (not isinstance(state, dict) or state.get("format") != FORMAT
                or any(name not in state for name in required)):
            raise RunError(f"{context}: {path} is not a cutmix-runner checkpoint")
        return cls(**{f.name: state[f.name] for f in fields(cls) if f.name in state})


@dataclass
class Progress:
    """The run-wide part of RunState, which the trainer carries from epoch to epoch."""

    best: dict[str, Any] = field(default_factory=lambda: {"val_accuracy": -1.0})
    global_epoch: int = 0
    global_step: int = 0
    records: list[dict[str, Any]] = field(default_factory=list)
    finished_stages: list[dict[str, Any]] = field(default_factory=list)

    def state_fields(self) -> dict[str, Any]:
        """The RunState fields this holds (shallow: the lists are saved as they stand)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def of(cls, state: RunState) -> Progress:
        return cls(state.best, state.global_epoch, state.global_step, list(state.records),
                   list(state.finished_stages))

    def note_best(self, state: RunState) -> bool:
        """Record `state`'s epoch as the best when its validation accuracy beats the best."""
        if state.val_accuracy <= self.best["val_accuracy"]:
            return False
        self.best = {"val_accuracy": state.val_accuracy, "stage": state.stage,
                     "stage_index": state.stage_index, "epoch": state.epoch,
                     "global_epoch": state.global_epoch}
        state.best = self.best
        return True


@dataclass
class Saver:
    """The loop's checkpointing in one call, as timm's CheckpointSaver: note a new best in the
    run's progress first (so both files record it), then write best.pt on a new best and
    last.pt always; a process that `writes` nothing (DDP ranks but 0) only keeps the record."""

    folder: Path
    writes: bool = True

    def __call__(self, state: RunState, progress: Progress) -> None:
        is_best = progress.note_best(state)
        if self.writes:
            save(state, self.folder, is_best)


def prune(folder: Path, keep: str) -> None:
    """A finished run's checkpoints beyond what `trainer.keep_checkpoints` keeps."""
    drop = {"both": (), "best": (LAST,), "none": (LAST, BEST)}[keep]
    for name in drop:
        (folder / name).unlink(missing_ok=True)


def save(state: RunState, folder: Path, is_best: bool) -> None:
    """Write best.pt (on a new best) and then last.pt, each atomically."""
    data = _serialise(state)
    if is_best:
        atomic_write_bytes(folder / BEST, data)
    atomic_write_bytes(folder / LAST, data)


def _serialise(state: RunState) -> bytes:
    buffer = io.BytesIO()
    torch.save(state.to_dict(), buffer)
    return buffer.getvalue()


def load(path: Path, context: str = "trainer.resume") -> RunState:
    """Read a checkpoint without running anything in it; a missing, unreadable, unsafe or
    foreign file is a RunError naming it, after `context` (what asked for the checkpoint)."""
    try:
        with torch.serialization.safe_globals(LEGACY_GLOBALS):
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise RunError(f"{context}: no checkpoint at {path}") from exc
    except pickle.UnpicklingError as exc:
        if "GLOBAL" not in str(exc):  # no object was refused: the file is no pickle at all
            raise RunError(f"{context}: {path} is not a readable checkpoint "
                           "(UnpicklingError)") from exc
        raise RunError(f"{context}: {path} holds more than tensors and plain values, so it "
                       "was not loaded (nothing in it ran); only cutmix-runner checkpoints are "
                       "read") from None
    except Exception as exc:
        raise RunError(f"{context}: {path} is not a readable checkpoint "
                       f"({type(exc).__name__})") from exc
    return RunState.from_dict(raw, path, context)


def check_fits(state: RunState, cfg: RunConfig, precision: str, path: Path) -> None:
    """A resume must run the same config (result-neutral keys aside) in the same precision.

    Keys added to the schema after the checkpoint was written take their defaults, so a newer
    cutmix-runner resumes an older run unless a default it relied on changed.
    """
    saved = with_current_defaults(state.config)
    diff = config_difference(saved, result_config(cfg))
    if diff:
        raise RunError(f"trainer.resume: {path} was made with a different config ({diff})")
    if state.precision != precision:
        raise RunError(f"trainer.resume: {path} was trained in {state.precision}, "
                       f"this run would use {precision}; set trainer.precision")


def read_to_resume(path: Path, cfg: RunConfig, precision: str) -> RunState:
    """The checkpoint `trainer.resume` names, once it is known to fit this config."""
    state = load(path)
    check_fits(state, cfg, precision, path)
    return state


def finished_summary(cfg: RunConfig, out_dir: Path) -> Summary | None:
    """With trainer.resume=auto, a run directory that already holds summary.json (written after
    the last checkpoint) is finished: its summary, once its last.pt shows the same config."""
    run = RunDir(out_dir)
    if cfg.trainer.resume != "auto" or not run.summary_file.exists():
        return None
    if run.last.exists():
        diff = config_difference(with_current_defaults(load(run.last).config), result_config(cfg))
        if diff:
            raise RunError(f"trainer.resume: {out_dir} finished with a different config "
                           f"({diff}); pick a new hydra.run.dir")
    else:  # checkpoints removed to save space: the finished run is still kept, unchecked
        log.warning("%s has no %s to compare configs with; kept as it is", out_dir, LAST)
    finished = run.read_summary()
    log.info("%s already finished; kept as it is (trainer.resume=auto)", out_dir)
    return finished


def resume_path(resume: str | None, folder: Path) -> Path | None:
    """Which checkpoint `trainer.resume` names, for a run whose checkpoints go to `folder`.

    null: none (a fresh run). auto: this run's last.pt if there is one, else none. A path: that
    checkpoint, or that run directory's last.pt.
    """
    if resume is None:
        return None
    if resume == "auto":
        path = folder / LAST
        return path if path.exists() else None
    path = Path(resume)
    return RunDir(path).last if path.is_dir() else path


def adopt_best(source: Path, folder: Path) -> None:
    """Resuming from another run's checkpoint: copy its best.pt, the best-so-far weights."""
    source_best = source.parent / BEST
    if source_best.resolve() != (folder / BEST).resolve() and source_best.exists():
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source_best, folder / BEST)


def find_checkpoint(path: Path) -> Path:
    """A checkpoint file, or a run directory's best.pt (its last.pt when there is no best)."""
    return RunDir(path).model_checkpoint() if path.is_dir() else path
