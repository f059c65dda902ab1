"""The `schedule` group's rules: when a stage ends.

A stage ends after its `epochs`, or earlier on one of two triggers checked after each epoch:
a validation plateau (`patience`, `min_delta`) or an overfitting gap (`max_gap`). The trainer
asks `StageEnd.after_epoch` and records the answer in the epoch's metrics.
"""

from __future__ import annotations

import math

from cutmix_runner.config import StageConfig


class Plateau:
    """Ends a stage once validation accuracy has not improved by `min_delta` for `patience` epochs.

    patience=0 never ends a stage early.
    """

    def __init__(self, patience: int, min_delta: float) -> None:
        self.patience = patience
        self.min_delta = min_delta
        self.best = -math.inf
        self.bad_epochs = 0

    def update(self, val_accuracy: float) -> bool:
        """Record one epoch; True when the stage should end."""
        if val_accuracy > self.best + self.min_delta:
            self.best = val_accuracy
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
        return self.patience > 0 and self.bad_epochs >= self.patience


def gap_exceeded(gap: float, max_gap: float | None) -> bool:
    """The overfitting trigger: clean-train minus validation accuracy above `max_gap`."""
    return max_gap is not None and gap > max_gap


class StageEnd:
    """Decides, after each epoch, whether and why the stage ends."""

    def __init__(self, stage: StageConfig) -> None:
        self.epochs = stage.epochs
        self.max_gap = stage.max_gap
        self.plateau = Plateau(stage.patience, stage.min_delta)

    def after_epoch(self, epoch: int, val_accuracy: float, gap: float) -> str | None:
        """'epochs', 'plateau' or 'gap' when the stage ends after 0-based `epoch`, else None.

        The plateau rule sees every epoch, the last one included, so its state stays the same
        whichever way the stage ends.
        """
        last = epoch + 1 == self.epochs
        if self.plateau.update(val_accuracy) and not last:
            return "plateau"
        if gap_exceeded(gap, self.max_gap) and not last:
            return "gap"
        return "epochs" if last else None

    def state(self) -> tuple[float, int]:
        return self.plateau.best, self.plateau.bad_epochs

    def load_state(self, state: tuple[float, int]) -> None:
        self.plateau.best, self.plateau.bad_epochs = state
