"""Evaluation passes and the per-epoch metrics log."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cutmix_runner.checkpoint import atomic_write_bytes
from cutmix_runner.data import eval_batches


@dataclass
class EvalResult:
    loss: float
    accuracy: float
    count: int


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             preprocess: Callable[[torch.Tensor], torch.Tensor], batch_size: int,
             autocast: Callable[[], Any]) -> EvalResult:
    """Clean cross entropy and accuracy in eval mode. Restores the model's previous mode."""
    was_training = model.training
    model.eval()
    total_loss, correct = 0.0, 0
    for xb, yb in eval_batches(x, y, batch_size):
        with autocast():
            logits = model(preprocess(xb))
        total_loss += F.cross_entropy(logits.float(), yb, reduction="sum").item()
        correct += (logits.argmax(-1) == yb).sum().item()
    model.train(was_training)
    n = max(len(x), 1)
    return EvalResult(total_loss / n, correct / n, len(x))


class MetricsLog:
    """metrics.jsonl: one JSON object per finished epoch, flushed and fsynced line by line."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def rewrite(self, records: list[dict[str, Any]]) -> None:
        """Replace the file atomically with exactly these records (used on resume)."""
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
        atomic_write_bytes(self.path, text.encode())
