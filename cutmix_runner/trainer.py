"""The run: config -> data, model -> stages of training -> metrics -> artifacts."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import platform
import random
import shutil
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

from cutmix_runner import __version__, faults, interrupts
from cutmix_runner.checkpoint import atomic_write_json, load_checkpoint, save_checkpoint
from cutmix_runner.config import RunConfig, StageConfig
from cutmix_runner.data import (
    Preprocess,
    Splits,
    build_splits,
    steps_per_epoch,
    stratified_split,
    train_batches,
)
from cutmix_runner.metrics import (
    EvalResult,
    MetricsLog,
    calibration,
    evaluate,
    evaluate_flip_averaged,
    fit_temperature,
    flip_rate,
    gaussian_noise,
    per_class_accuracy,
    predict,
    reliability_bins,
    translation,
)
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

CHECKPOINT_FORMAT = "cutmix-runner/1"
# Keys that do not change results; a checkpoint may be resumed with them changed.
RESULT_NEUTRAL = {"trainer": ("resume", "progress", "device", "num_threads", "eval_batch_size",
                              "keep_freed_memory"),
                  "data": ("root", "download")}


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
    unmaps them and the next step page-faults them back in, which showed up as a large share of
    system time in CPU runs here. Returns False where this is not glibc.
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


def result_config(cfg: RunConfig) -> dict[str, Any]:
    """The config as a dict, without the keys that do not affect results."""
    out = asdict(cfg)
    for group, keys in RESULT_NEUTRAL.items():
        for key in keys:
            out[group].pop(key, None)
    return out


def config_difference(old: Any, new: Any, prefix: str = "") -> str:
    """The first key whose value differs, as 'key: old -> new'; empty when equal."""
    if isinstance(old, dict) and isinstance(new, dict):
        if set(old) == set(new) and list(old) != list(new):
            return f"{prefix.rstrip('.')}: order {list(old)} -> {list(new)}"
        for key in list(old) + [k for k in new if k not in old]:
            diff = config_difference(old.get(key), new.get(key), f"{prefix}{key}.")
            if diff:
                return diff
        return ""
    return "" if old == new else f"{prefix.rstrip('.')}: {old!r} -> {new!r}"


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
        if tcfg.resume is None and (self.metrics.path.exists() or self.ckpt_dir.exists()):
            raise RunError(f"{out_dir} already holds a run; continue it with trainer.resume=auto "
                           "or pick a new hydra.run.dir")
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
        self.global_step = 0
        self.records: list[dict[str, Any]] = []  # every finished epoch's metrics, in order
        self.finished_stages: list[dict[str, Any]] = []
        self.last_val_logits = torch.empty(0)

    def autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device.type, dtype=torch.bfloat16,
                              enabled=self.precision == "bf16")

    # ------------------------------------------------------------ one stage

    def run_stage(self, index: int, name: str, stage: StageConfig,
                  resume: dict[str, Any] | None = None) -> None:
        """Train one stage; `resume` is a checkpoint taken inside this stage."""
        cfg = self.cfg
        plan = plan_freeze(self.model, stage.unfreeze_blocks)
        apply_freeze(self.model, plan)
        optimizer = build_optimizer(self.model, plan, stage, cfg.optim)
        steps = steps_per_epoch(len(self.data.train_x), cfg.trainer.batch_size)
        scheduler = build_scheduler(optimizer, stage, steps, cfg.optim.min_lr_ratio)
        regularizer = build_regularizer(stage.regularizer, self.data.num_classes,
                                        seed=cfg.trainer.seed * 1000 + index)
        plateau = Plateau(stage.patience, stage.min_delta)
        first_epoch, seconds = 0, 0.0
        if resume is not None:
            optimizer.load_state_dict(resume["optimizer"])
            scheduler.load_state_dict(resume["scheduler"])
            regularizer.set_rng_state(resume["rng"]["regularizer"])
            plateau.best, plateau.bad_epochs = resume["plateau"]
            first_epoch, seconds = resume["epoch"], resume["stage_seconds"]
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        log.info("stage %d '%s': %d trainable parameters, regularizer %s, up to %d epochs",
                 index, name, trainable, stage.regularizer.name, stage.epochs)
        ended_by = "epochs"
        for epoch in range(first_epoch, stage.epochs):
            start = time.perf_counter()
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
            seconds += time.perf_counter() - start
            self.metrics.append(record)
            self.records.append(record)
            if "stage_end" in record:
                self.finished_stages.append({"name": name, "epochs": epoch + 1,
                                             "ended_by": ended_by, "seconds": round(seconds, 2)})
            self._checkpoint({
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "stage_index": index, "stage": name, "epoch": epoch + 1,
                "stage_end": record.get("stage_end"), "stage_seconds": seconds,
                "plateau": (plateau.best, plateau.bad_epochs),
                "rng": {"regularizer": regularizer.rng_state()},
            }, record["val_accuracy"])
            if "stage_end" in record:
                break
        log.info("stage '%s' ended by %s after %d epochs", name, ended_by, epoch + 1)

    def train_epoch(self, index: int, name: str, stage: StageConfig, epoch: int, plan: Any,
                    optimizer: torch.optim.Optimizer, scheduler: Any,
                    regularizer: Regularizer) -> dict[str, Any]:
        """Train one epoch and evaluate; returns the epoch's metrics record."""
        cfg = self.cfg
        set_train_mode(self.model, plan)
        lr_start = {g["name"]: g["lr"] for g in optimizer.param_groups}
        batches = train_batches(self.data.train_x, self.data.train_y, cfg.trainer.batch_size,
                                self.data_generator, cfg.data.pad, cfg.data.hflip)
        total = steps_per_epoch(len(self.data.train_x), cfg.trainer.batch_size)
        bar = tqdm(batches, total=total, leave=False, disable=not self.progress,
                   desc=f"{name} {epoch + 1}/{stage.epochs}")
        smoothing = stage.regularizer.label_smoothing
        loss_sum, seen, mixed_images, lam_sum = 0.0, 0, 0.0, 0.0
        start = time.perf_counter()
        for step, (xb, yb) in enumerate(bar):
            self.global_step += 1
            mix = regularizer(self.preprocess(xb), yb)
            with self.autocast():
                logits = self.model(mix.images)
            loss = soft_target_cross_entropy(logits, smooth(mix.targets, smoothing))
            if faults.at_step("nan_step", self.global_step):
                loss = loss * float("nan")
            faults.at_step("kill_step", self.global_step)
            if not torch.isfinite(loss):
                raise RunError(f"non-finite loss in stage '{name}', epoch {epoch + 1}, "
                               f"step {step + 1}; lower the learning rates. "
                               f"{self.ckpt_dir / 'last.pt'} holds the last good epoch")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.optim.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip)
            optimizer.step()
            scheduler.step()
            interrupts.check()  # abandons the rest of the epoch; last.pt holds the previous one
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
        self.last_val_logits = val.logits
        diagnostics = self._diagnostics(val, self.data.val_x, self.data.val_y)
        self.global_epoch += 1
        record = {
            "stage": name, "stage_index": index, "epoch": epoch + 1,
            "global_epoch": self.global_epoch, "lr_start": lr_start, "lr_end": lr_end,
            "train_loss": loss_sum / seen,
            "clean_train_accuracy": clean.accuracy, "clean_train_loss": clean.loss,
            "val_accuracy": val.accuracy, "val_loss": val.loss,
            "generalization_gap": clean.accuracy - val.accuracy,
            **{f"val_{k}": v for k, v in diagnostics.items()},
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

    def _evaluate(self, x: torch.Tensor, y: torch.Tensor) -> EvalResult:
        return evaluate(self.model, x, y, self.preprocess, self.cfg.trainer.eval_batch_size,
                        self.autocast)

    def _diagnostics(self, result: EvalResult, x: torch.Tensor, y: torch.Tensor,
                     temperature: float | None = None) -> dict[str, float]:
        """Calibration from the evaluation's own logits, plus flip rates on a fixed subset."""
        tcfg = self.cfg.trainer
        out = calibration(result.logits, y.cpu(), temperature)
        n = min(tcfg.flip_subset, len(x))
        clean = result.logits[:n]
        for name, perturbed_x in (("noise", gaussian_noise(x[:n], tcfg.flip_noise_sigma, 11)),
                                  ("shift", translation(x[:n], tcfg.flip_max_shift, 12))):
            perturbed = predict(self.model, perturbed_x, self.preprocess, tcfg.eval_batch_size,
                                self.autocast)
            out[f"flip_rate_{name}"] = flip_rate(clean, perturbed)
        return out

    def _checkpoint(self, stage_state: dict[str, Any], val_accuracy: float) -> None:
        """Write last.pt (and best.pt on a new best): everything needed to continue exactly."""
        state = {
            **stage_state, "format": CHECKPOINT_FORMAT, "model": self.model.state_dict(),
            "global_epoch": self.global_epoch, "global_step": self.global_step,
            "val_accuracy": val_accuracy, "config": result_config(self.cfg),
            "precision": self.precision,
            "records": self.records, "finished_stages": self.finished_stages,
        }
        state["rng"] = {**stage_state["rng"], "python": random.getstate(),
                        "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
                        "data": self.data_generator.get_state(),
                        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
        if val_accuracy > self.best["val_accuracy"]:
            self.best = {"val_accuracy": val_accuracy, "stage": stage_state["stage"],
                         "stage_index": stage_state["stage_index"], "epoch": stage_state["epoch"],
                         "global_epoch": self.global_epoch}
            save_checkpoint(self.ckpt_dir / "best.pt", {**state, "best": self.best})
        state["best"] = self.best
        save_checkpoint(self.ckpt_dir / "last.pt", state)

    def _restore(self, path: Path) -> dict[str, Any]:
        """Load a checkpoint to continue from; checks that it belongs to this config."""
        try:
            state = load_checkpoint(path)
        except FileNotFoundError as exc:
            raise RunError(f"trainer.resume: no checkpoint at {path}") from exc
        except Exception as exc:
            raise RunError(f"trainer.resume: {path} is not a readable checkpoint "
                           f"({type(exc).__name__})") from exc
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise RunError(f"trainer.resume: {path} is not a cutmix-runner checkpoint")
        diff = config_difference(state["config"], result_config(self.cfg))
        if diff:
            raise RunError(f"trainer.resume: {path} was made with a different config ({diff})")
        if state.get("precision") != self.precision:
            raise RunError(f"trainer.resume: {path} was trained in {state.get('precision')}, "
                           f"this run would use {self.precision}; set trainer.precision")
        source_best = path.parent / "best.pt"
        if source_best.resolve() != (self.ckpt_dir / "best.pt").resolve() and source_best.exists():
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source_best, self.ckpt_dir / "best.pt")  # the best-so-far weights
        self.model.load_state_dict(state["model"])
        self.global_epoch, self.global_step = state["global_epoch"], state["global_step"]
        self.best = state["best"]
        self.records = list(state["records"])
        self.finished_stages = list(state["finished_stages"])
        rng = state["rng"]
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        self.data_generator.set_state(rng["data"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        # metrics.jsonl may hold a line written after this checkpoint: rewrite it from the
        # checkpoint's own records, so resumed runs never duplicate an epoch.
        self.metrics.rewrite(self.records)
        log.info("resumed from %s: stage '%s', epoch %d", path, state["stage"], state["epoch"])
        return state

    def resume_path(self) -> Path | None:
        resume = self.cfg.trainer.resume
        if resume is None:
            return None
        if resume == "auto":
            path = self.ckpt_dir / "last.pt"
            return path if path.exists() else None  # nothing to resume: start fresh
        path = Path(resume)
        return path / "checkpoints" / "last.pt" if path.is_dir() else path

    # ------------------------------------------------------------ the whole run

    def fit(self) -> dict[str, Any]:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        log.info("device %s (%s), image size %d, %d train / %d val / %d test images",
                 self.device, self.precision, self.image_size, len(self.data.train_x),
                 len(self.data.val_x), len(self.data.test_x))
        path = self.resume_path()
        resume = self._restore(path) if path is not None else None
        if resume is None:
            # resume=auto with no checkpoint yet: drop lines of an epoch that was never saved.
            self.metrics.rewrite([])
        first_stage = resume["stage_index"] if resume else 0
        all_stages = list(enumerate(self.cfg.schedule.stages.items()))[first_stage:]
        for index, (name, stage) in tqdm(all_stages, desc="stages", disable=not self.progress):
            if resume is not None and index == first_stage:
                if resume["stage_end"] is None:
                    self.run_stage(index, name, stage, resume)
                continue  # that stage had already ended; its summary came with the checkpoint
            self.run_stage(index, name, stage)
        return self.finish()

    def finish(self) -> dict[str, Any]:
        """Evaluate on the test set once, and write summary.json."""
        final_test = self._evaluate(self.data.test_x, self.data.test_y)
        final_headline = self._test_protocol(final_test)
        best_test, best_headline, val_logits = final_test, final_headline, self.last_val_logits
        if self.best["global_epoch"] != self.global_epoch:
            self.model.load_state_dict(load_checkpoint(self.ckpt_dir / "best.pt")["model"])
            best_test = self._evaluate(self.data.test_x, self.data.test_y)
            best_headline = self._test_protocol(best_test)
            val_logits = self._evaluate(self.data.val_x, self.data.val_y).logits
        elif len(val_logits) == 0:  # resumed after the last epoch: not kept in the checkpoint
            val_logits = self._evaluate(self.data.val_x, self.data.val_y).logits
        # Temperature fitted on validation, applied to test: no tuning on the test set.
        temperature = fit_temperature(val_logits, self.data.val_y.cpu())
        test_y = self.data.test_y.cpu()
        classes, confusion = per_class_accuracy(best_test.logits, test_y, self.data.num_classes)
        summary = {
            "test_accuracy": best_headline.accuracy, "test_loss": best_headline.loss,
            "test_protocol": "flip-averaged" if self.cfg.trainer.test_flip else "single view",
            "test_accuracy_single_view": best_test.accuracy,
            "test_loss_single_view": best_test.loss,
            "test": {**self._diagnostics(best_test, self.data.test_x, self.data.test_y,
                                         temperature),
                     "per_class_accuracy": dict(zip(self.data.classes, classes, strict=True)),
                     "reliability": reliability_bins(best_test.logits, test_y),
                     "confusion_matrix": confusion},
            "final_test_accuracy": final_headline.accuracy,
            "final_test_loss": final_headline.loss,
            "best": self.best, "stages": self.finished_stages,
            "train_size": len(self.data.train_x), "val_size": len(self.data.val_x),
            "test_size": len(self.data.test_x), "image_size": self.image_size,
            "device": str(self.device), "device_name": self._device_name(),
            "precision": self.precision, "threads": torch.get_num_threads(),
            "total_seconds": round(time.perf_counter() - self.started, 2), "versions": versions(),
        }
        atomic_write_json(self.out_dir / "summary.json", summary)
        log.info("test accuracy %.4f %s (single view %.4f; best-val checkpoint, %s epoch %d), "
                 "final weights %.4f", best_headline.accuracy, summary["test_protocol"],
                 best_test.accuracy, self.best["stage"], self.best["epoch"],
                 final_headline.accuracy)
        return summary

    def _test_protocol(self, single_view: EvalResult) -> EvalResult:
        """The headline test result: flip-averaged when `trainer.test_flip`, else as given."""
        if not self.cfg.trainer.test_flip:
            return single_view
        return evaluate_flip_averaged(self.model, self.data.test_x, self.data.test_y,
                                      self.preprocess, self.cfg.trainer.eval_batch_size,
                                      self.autocast, single_view.logits)

    def _device_name(self) -> str:
        if self.device.type == "cuda":
            return torch.cuda.get_device_name(self.device)
        return platform.processor() or platform.machine()
