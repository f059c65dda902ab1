"""Cooperative SIGINT/SIGTERM: the first signal asks the train loop to stop at the next step
boundary; a second SIGINT (Ctrl-C pressed again) stops at once. A repeated SIGTERM does not: a
preempted SLURM job under torchrun gets one from SLURM and one from torchrun, and its ranks must
still stop after the same step.

Raising straight from a signal handler is unreliable: when the signal lands while Python runs a
finalizer or a callback that swallows exceptions, the KeyboardInterrupt is lost ("Exception
ignored in ...") and the run goes on as if nothing happened.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

_requested = False


def _handle(signum: int, frame: object) -> None:
    global _requested
    if _requested and signum == signal.SIGINT:
        raise KeyboardInterrupt  # Ctrl-C again: the user means now
    _requested = True


def requested() -> bool:
    """Whether a stop was requested. The train loop asks after each step, through
    distributed.World.check_stop, which also shares the request among torchrun's ranks."""
    return _requested


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """Route SIGINT and SIGTERM to the stop request while the block runs (main thread only)."""
    global _requested
    _requested = False
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
