"""Test-only fault injection, so tests can kill a run at exact points or poison a loss.

Off unless CUTMIX_RUNNER_FAULT is set, to one of:
  kill_step:N          SIGKILL just before training step N (counted over the whole run, from 1)
  kill_write:NAME:N    SIGKILL during the N-th atomic write of file NAME (temp file written,
                       not yet renamed into place)
  nan_step:N           make the loss of step N non-finite
  term_step:N          SIGTERM (a stop request) just before training step N
CUTMIX_RUNNER_FAULT_RANK=R limits the fault to torchrun's rank R.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from typing import TYPE_CHECKING

# Only for the type of a loss: artifacts.py imports this module, and the report, which must
# not load torch, imports artifacts.py.
if TYPE_CHECKING:
    import torch

_writes: Counter[str] = Counter()


def _spec() -> list[str]:
    rank = os.environ.get("CUTMIX_RUNNER_FAULT_RANK")
    if rank is not None and rank != os.environ.get("RANK", "0"):
        return []
    return os.environ.get("CUTMIX_RUNNER_FAULT", "").split(":")


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def at_step(kind: str, step: int) -> bool:
    """True when the fault `kind` (kill_step, term_step, nan_step) is set for this global step."""
    spec = _spec()
    hit = len(spec) == 2 and spec[0] == kind and spec[1] == str(step)
    if hit and kind == "kill_step":
        _kill()
    if hit and kind == "term_step":
        os.kill(os.getpid(), signal.SIGTERM)
    return hit


def poison(loss: torch.Tensor, step: int) -> torch.Tensor:
    """The loss, made non-finite when the fault nan_step is set for this global step."""
    return loss * float("nan") if at_step("nan_step", step) else loss


def during_write(name: str) -> None:
    spec = _spec()
    if len(spec) == 3 and spec[0] == "kill_write" and spec[1] == name:
        _writes[name] += 1
        if _writes[name] == int(spec[2]):
            _kill()
