"""Files a run writes, written so that a kill at any instant leaves the previous good file
readable: atomic replacement for whole files, one fsynced line at a time for metrics.jsonl."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cutmix_runner import faults
from cutmix_runner.errors import UserError


def check_output(path: Path, force: bool, flag: str = "--out") -> None:
    """An output file a tool may write later: refused now, before any work, when it exists
    (without --force), is a folder, or cannot be created. Writes nothing and makes no folder,
    so a refused command leaves no trace."""
    if path.is_dir():
        raise UserError(f"{flag} {path} is a folder; give a file name")
    if path.exists() and not force:
        raise UserError(f"{path} already exists; pass --force to replace it")
    writable_folder(path.parent, flag)


def writable_folder(folder: Path, flag: str = "--out") -> None:
    """`folder`, or the nearest folder above it that exists, can be written into."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {folder}: cannot create it ({existing} is not a writable "
                        "folder)")


@contextlib.contextmanager
def new_folder(folder: Path) -> Iterator[Path]:
    """Make `folder` (and its missing parents) for a command's outputs; if the command fails or
    is interrupted inside, remove what this made, so that no half-written output is left. A
    folder that existed before is kept as it is."""
    top = folder
    while not top.parent.exists():
        top = top.parent
    made = not top.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield folder
    except BaseException:
        if made:
            shutil.rmtree(top, ignore_errors=True)
        raise


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
