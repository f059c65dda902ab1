"""Files a run writes, written so that a kill at any instant leaves the previous good file
readable: atomic replacement for whole files, one fsynced line at a time for metrics.jsonl."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cutmix_runner import faults


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary sibling, fsync, then rename over the target."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    faults.during_write(path.name)
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


class MetricsLog:
    """metrics.jsonl: one JSON object per finished epoch, flushed and fsynced line by line."""

    def __init__(self, path: Path, writes: bool = True) -> None:
        self.path = path
        self.writes = writes  # False on DDP ranks other than 0: only rank 0 writes

    def append(self, record: dict[str, Any]) -> None:
        if not self.writes:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def rewrite(self, records: list[dict[str, Any]]) -> None:
        """Replace the file atomically with exactly these records (used on resume)."""
        if not self.writes:
            return
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
        atomic_write_bytes(self.path, text.encode())
