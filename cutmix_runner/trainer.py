"""The run: config -> data, model -> stages of training -> metrics -> artifacts."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import platform
import random
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
import torchvision
from tqdm import tqdm

from cutmix_runner import __version__
from cutmix_runner.checkpoint import atomic_write_json, load_checkpoint, save_checkpoint
from cutmix_runner.config import RunConfig, StageConfig
from cutmix_runner.data import Preprocess, Splits, build_splits, stratified_split, train_batches
from cutmix_runner.metrics import MetricsLog, evaluate
from cutmix_runner.mixing import (
    Regularizer,
    build_regularizer,
    set_epoch_values,
    smooth,
    soft_target_cross_entropy,
)
from cutmix_runner.model import (
    apply_freeze,
    build_model,
    normalization,
    plan_freeze,
    set_train_mode,
)
from cutmix_runner.stages import Plateau, build_optimizer, build_scheduler, gap_exceeded

log = logging.getLogger(__name__)


class RunError(RuntimeError):
    """A run that cannot start or continue for a reason the user can fix."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RunError(f"trainer.device={name} but CUDA is not available; use cpu or auto")
    return torch.device(name)


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory instead of returning it to the OS.

    Each training step frees and re-allocates the same large activation buffers; by default glibc
    unmaps them and the next step page-faults them back in, which costs CPU runs a large share of
    their time (see docs/benchmarks.md). Returns False where this is not glibc.
    """
    if sys.platform != "linux":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
        ok = libc.mallopt(m_mmap_threshold, 32 * 2**20)  # glibc's maximum
        ok &= libc.mallopt(m_trim_threshold, 2**31 - 1)
        ok &= libc.mallopt(m_top_pad, 256 * 2**20)
        return bool(ok)
    except (OSError, AttributeError):
        return False


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def versions() -> dict[str, str]:
    return {"cutmix_runner": __version__, "python": platform.python_version(),
            "torch": torch.__version__, "torchvision": torchvision.__version__,
            "timm": timm.__version__}


class Trainer:
    def __init__(self, cfg: RunConfig, out_dir: Path) -> None:
        self.started = time.perf_counter()  # total_seconds includes data loading and model set-up
        self.cfg = cfg
        self.out_dir = out_dir
        self.ckpt_dir = out_dir / "checkpoints"
        self.metrics = MetricsLog(out_dir / "metrics.jsonl")
        tcfg = cfg.trainer
        if tcfg.num_threads:
            torch.set_num_threads(tcfg.num_threads)
        if tcfg.keep_freed_memory:
            keep_freed_memory()
        seed_everything(tcfg.seed)
        self.device = resolve_device(tcfg.device)
        use_bf16 = tcfg.precision == "bf16" or (tcfg.precision == "auto"
                                                and self.device.type == "cuda")
        self.precision = "bf16" if use_bf16 else "fp32"
        self.progress = tcfg.progress and sys.stderr.isatty()

        self.data: Splits = build_splits(cfg.data).to(self.device)
        if tcfg.batch_size > len(self.data.train_x):
            raise RunError(f"trainer.batch_size={tcfg.batch_size} is larger than the training "
                           f"set ({len(self.data.train_x)} images)")
        if len(self.data.val_x) == 0:
            raise RunError("data.val_size=0: a validation split is needed for model selection")
        self.model = build_model(cfg.model, self.data.num_classes)
        # Check every stage's freeze depth before any training time is spent.
        for name, stage in cfg.schedule.stages.items():
            try:
                plan_freeze(self.model, stage.unfreeze_blocks)
            except Exception as exc:
                raise RunError(f"schedule.stages.{name}.unfreeze_blocks: {exc}") from exc
        mean, std, native_size = normalization(self.model)
        self.image_size = cfg.model.image_size or native_size
        memory_format = torch.channels_last if tcfg.channels_last else torch.contiguous_format
        self.model.to(self.device, memory_format=memory_format)
        self.preprocess = Preprocess(self.image_size, mean, std, tcfg.channels_last)
        # A fixed clean subset of the training split, to measure the generalization gap.
        size = min(tcfg.clean_train_size, len(self.data.train_x) - 1)
        clean_idx, _ = stratified_split(self.data.train_y.cpu(), size, cfg.data.split_seed + 2)
        self.clean_x = self.data.train_x[clean_idx.to(self.device)]
        self.clean_y = self.data.train_y[clean_idx.to(self.device)]
        self.data_generator = torch.Generator().manual_seed(tcfg.seed)
        self.best: dict[str, Any] = {"val_accuracy": -1.0}
        self.global_epoch = 0

    def autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device.type, dtype=torch.bfloat16,
                              enabled=self.precision == "bf16")

    # ------------------------------------------------------------ one stage

    def run_stage(self, index: int, name: str, stage: StageConfig) -> dict[str, Any]:
        cfg = self.cfg
        plan = plan_freeze(self.model, stage.unfreeze_blocks)
        apply_freeze(self.model, plan)
        optimizer = build_optimizer(self.model, plan, stage, cfg.optim)
        n_train = len(self.data.train_x)
        steps_per_epoch = -(-n_train // cfg.trainer.batch_size)
        scheduler = build_scheduler(optimizer, stage, steps_per_epoch, cfg.optim.min_lr_ratio)
        regularizer = build_regularizer(stage.regularizer, self.data.num_classes,
                                        seed=cfg.trainer.seed * 1000 + index)
        plateau = Plateau(stage.patience, stage.min_delta)
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        log.info("stage %d '%s': %d trainable parameters, regularizer %s, up to %d epochs",
                 index, name, trainable, stage.regularizer.name, stage.epochs)
        start = time.perf_counter()
        ended_by = "epochs"
        for epoch in range(stage.epochs):
            set_epoch_values(regularizer, stage.regularizer, epoch, stage.epochs)
            record = self.train_epoch(index, name, stage, epoch, plan, optimizer, scheduler,
                                      regularizer)
            last = epoch + 1 == stage.epochs
            if plateau.update(record["val_accuracy"]) and not last:
                ended_by = "plateau"
            elif gap_exceeded(record["generalization_gap"], stage.max_gap) and not last:
                ended_by = "gap"
            if ended_by != "epochs" or last:
                record["stage_end"] = ended_by
            self.metrics.append(record)
            self._checkpoint(index, name, epoch, optimizer, scheduler, record["val_accuracy"])
            if "stage_end" in record:
                break
        log.info("stage '%s' ended by %s after %d epochs", name, ended_by, epoch + 1)
        return {"name": name, "epochs": epoch + 1, "ended_by": ended_by,
                "seconds": round(time.perf_counter() - start, 2)}

    def train_epoch(self, index: int, name: str, stage: StageConfig, epoch: int, plan: Any,
                    optimizer: torch.optim.Optimizer, scheduler: Any,
                    regularizer: Regularizer) -> dict[str, Any]:
        """Train one epoch and evaluate; returns the epoch's metrics record."""
        cfg = self.cfg
        set_train_mode(self.model, plan)
        lr_start = {g["name"]: g["lr"] for g in optimizer.param_groups}
        batches = train_batches(self.data.train_x, self.data.train_y, cfg.trainer.batch_size,
                                self.data_generator, cfg.data.pad, cfg.data.hflip)
        total = -(-len(self.data.train_x) // cfg.trainer.batch_size)
        bar = tqdm(batches, total=total, leave=False, disable=not self.progress,
                   desc=f"{name} {epoch + 1}/{stage.epochs}")
        smoothing = stage.regularizer.label_smoothing
        loss_sum, seen, mixed_images, lam_sum = 0.0, 0, 0.0, 0.0
        start = time.perf_counter()
        for step, (xb, yb) in enumerate(bar):
            mix = regularizer(self.preprocess(xb), yb)
            with self.autocast():
                logits = self.model(mix.images)
            loss = soft_target_cross_entropy(logits, smooth(mix.targets, smoothing))
            if not torch.isfinite(loss):
                raise RunError(f"non-finite loss in stage '{name}', epoch {epoch + 1}, "
                               f"step {step}; lower the learning rates")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.optim.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip)
            optimizer.step()
            scheduler.step()
            loss_sum += loss.item() * len(yb)
            seen += len(yb)
            mixed_images += mix.mixed_fraction * len(yb)
            lam_sum += mix.lam * len(yb)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
        train_seconds = time.perf_counter() - start
        lr_end = {g["name"]: g["lr"] for g in optimizer.param_groups}

        val = self._evaluate(self.data.val_x, self.data.val_y)
        clean = self._evaluate(self.clean_x, self.clean_y)
        self.global_epoch += 1
        record = {
            "stage": name, "stage_index": index, "epoch": epoch + 1,
            "global_epoch": self.global_epoch, "lr_start": lr_start, "lr_end": lr_end,
            "train_loss": loss_sum / seen,
            "clean_train_accuracy": clean.accuracy, "clean_train_loss": clean.loss,
            "val_accuracy": val.accuracy, "val_loss": val.loss,
            "generalization_gap": clean.accuracy - val.accuracy,
            "regularizer": stage.regularizer.name, "reg_prob": regularizer.prob,
            "reg_min_area": regularizer.min_area, "reg_max_area": regularizer.max_area,
            "mixed_fraction": mixed_images / seen, "mean_lambda": lam_sum / seen,
            "images_per_second": seen / train_seconds,
            "seconds": time.perf_counter() - start,
        }
        log.info("%s epoch %d: train loss %.4f, clean-train acc %.4f, val acc %.4f, "
                 "%.0f img/s", name, epoch + 1, record["train_loss"],
                 clean.accuracy, val.accuracy, record["images_per_second"])
        return record

    def _evaluate(self, x: torch.Tensor, y: torch.Tensor) -> Any:
        return evaluate(self.model, x, y, self.preprocess, self.cfg.trainer.eval_batch_size,
                        self.autocast)

    def _checkpoint(self, index: int, name: str, epoch: int,
                    optimizer: torch.optim.Optimizer, scheduler: Any, val_accuracy: float) -> None:
        state = {
            "model": self.model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "stage_index": index, "stage": name,
            "epoch": epoch + 1, "global_epoch": self.global_epoch,
            "val_accuracy": val_accuracy, "config": asdict(self.cfg),
        }
        if val_accuracy > self.best["val_accuracy"]:
            self.best = {"val_accuracy": val_accuracy, "stage": name,
                         "stage_index": index, "epoch": epoch + 1,
                         "global_epoch": self.global_epoch}
            save_checkpoint(self.ckpt_dir / "best.pt", state)
        state["best"] = self.best
        save_checkpoint(self.ckpt_dir / "last.pt", state)

    # ------------------------------------------------------------ the whole run

    def fit(self) -> dict[str, Any]:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        log.info("device %s (%s), image size %d, %d train / %d val / %d test images",
                 self.device, self.precision, self.image_size, len(self.data.train_x),
                 len(self.data.val_x), len(self.data.test_x))
        stages = []
        all_stages = list(enumerate(self.cfg.schedule.stages.items()))
        for index, (name, stage) in tqdm(all_stages, desc="stages", disable=not self.progress):
            stages.append(self.run_stage(index, name, stage))
        final_test = self._evaluate(self.data.test_x, self.data.test_y)
        best_test = final_test
        if self.best["global_epoch"] != self.global_epoch:
            self.model.load_state_dict(load_checkpoint(self.ckpt_dir / "best.pt")["model"])
            best_test = self._evaluate(self.data.test_x, self.data.test_y)
        summary = {
            "test_accuracy": best_test.accuracy, "test_loss": best_test.loss,
            "final_test_accuracy": final_test.accuracy, "final_test_loss": final_test.loss,
            "best": self.best, "stages": stages,
            "train_size": len(self.data.train_x), "val_size": len(self.data.val_x),
            "test_size": len(self.data.test_x), "image_size": self.image_size,
            "device": str(self.device), "device_name": self._device_name(),
            "precision": self.precision, "threads": torch.get_num_threads(),
            "total_seconds": round(time.perf_counter() - self.started, 2), "versions": versions(),
        }
        atomic_write_json(self.out_dir / "summary.json", summary)
        log.info("test accuracy %.4f (best-val checkpoint, %s epoch %d), final weights %.4f",
                 best_test.accuracy, self.best["stage"], self.best["epoch"], final_test.accuracy)
        return summary

    def _device_name(self) -> str:
        if self.device.type == "cuda":
            return torch.cuda.get_device_name(self.device)
        return platform.processor() or platform.machine()
