"""Shared test helpers: paths, a fake CIFAR-10 folder, and the two ways to run the trainer
(in this process through Hydra's compose API, or as a subprocess exactly as a user would)."""

from __future__ import annotations

import copy
import dataclasses
import functools
import http.server
import importlib.util
import json
import os
import pickle
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_CIFAR = ROOT.parent / "shared" / "data" / "cifar10"
CONFIG_DIR = str(ROOT / "configs")
SMOKE = ("experiment=smoke", "trainer.progress=false")
# metrics.jsonl keys that are machine time, not results: runs compare without them.
TIMING = {"images_per_second", "seconds", "first_step_seconds", "elapsed_seconds"}


def leaves(tree: object, prefix: str = "") -> dict[str, object]:
    """A nested config as {"dotted.key": value}, for comparing presets key by key."""
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items()
                for k, v in leaves(sub, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): tree}


def script_module(name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """scripts/NAME.py imported as a module, for in-process tests of its functions; registered in
    sys.modules for the test only (a script's dataclasses look their module up)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module


def write_cifar_folder(folder: Path, per_batch: int = 20, test: int = 20, seed: int = 0) -> None:
    """A small folder in the cifar-10-batches-py format (counts are patched by the tests)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = test if name == "test_batch" else per_batch
        entry = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 "labels": [int(v) for v in np.arange(n) % 10]}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f)


def compose(*overrides: str) -> Any:
    """The composed `train` config, as `cutmix-train OVERRIDES...` would see it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from cutmix_runner.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return hydra_compose("train", overrides=list(overrides))


def recipe(*overrides: str) -> Any:
    """The checked RunConfig that `cutmix-train OVERRIDES...` trains (recipe values come from the
    YAML alone; a bare RunConfig() has none)."""
    from cutmix_runner.validation import validate

    return validate(compose(*overrides))


@functools.cache
def _default_run() -> Any:
    return recipe()


def default_part(part: str, **changes: Any) -> Any:
    """One part of the default run's config (model, data, optim, trainer, or a stage's name: head,
    adapt, late), with `changes`: what a test builds a model or an optimizer from."""
    run = copy.deepcopy(_default_run())
    found = run.schedule.stages[part] if part in run.schedule.stages else getattr(run, part)
    return dataclasses.replace(found, **changes)


def train_in_process(out: Path, *overrides: str) -> dict[str, Any]:
    """Run the trainer in this process into `out`; returns the summary. Torch's thread count is
    restored afterwards, so that a `trainer.num_threads` override does not leak into other tests."""
    import torch

    from cutmix_runner.trainer import train
    from cutmix_runner.validation import validate

    threads = torch.get_num_threads()
    try:
        return train(validate(compose(*overrides)), out)
    finally:
        torch.set_num_threads(threads)


@contextmanager
def _working_directory(folder: Path) -> Iterator[None]:
    """contextlib.chdir, which Python 3.10 lacks (pyproject allows 3.10)."""
    before = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def train_cli(*args: str, cwd: Path = ROOT) -> ToolResult:
    """`cutmix-train ARGS...` in this process (cli.main, as the entry point calls it), with its
    exit code and output captured: what a test needs when the process itself is not under test.
    Torch's thread count and the root logger's handlers (Hydra sets both) are restored."""
    import contextlib
    import io
    import logging

    import torch

    from cutmix_runner import cli

    out, err = io.StringIO(), io.StringIO()
    threads, handlers = torch.get_num_threads(), list(logging.getLogger().handlers)
    argv, sys.argv = sys.argv, ["cutmix-train", *args]
    try:
        with _working_directory(cwd), contextlib.redirect_stdout(out), \
                contextlib.redirect_stderr(err):
            try:
                cli.main()
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
    finally:
        sys.argv = argv
        torch.set_num_threads(threads)
        for handler in logging.getLogger().handlers:
            if handler not in handlers:
                handler.close()
        logging.getLogger().handlers = handlers
    return ToolResult(code, out.getvalue(), err.getvalue())


def run_cli(*args: str, cwd: Path = ROOT, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run `python -m cutmix_runner` as a user would, without a TTY: for what only a separate
    process shows (signals, the entry point, a fresh interpreter's imports)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, "-m", "cutmix_runner", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@dataclass
class ArchiveServer:
    """A fake CIFAR-10 archive served over HTTP on the loopback interface (no network here)."""

    archive: Path
    url: str
    requests: list[str] = field(default_factory=list)  # paths of the GET requests received


@contextmanager
def serve_fake_archive(folder: Path) -> Iterator[ArchiveServer]:
    """Write cifar-10-python.tar.gz (100 train + 20 test images) into `folder` and serve it."""
    src = folder / "archive-src" / "cifar-10-batches-py"
    write_cifar_folder(src)
    archive = folder / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname="cifar-10-batches-py")
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args: Any) -> None:
            pass

        def handle(self) -> None:
            try:
                super().handle()
            except BrokenPipeError:  # the client read the headers only (a redirect check)
                pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield ArchiveServer(archive, f"http://127.0.0.1:{server.server_address[1]}/{archive.name}",
                            requests)
    finally:
        server.shutdown()


@dataclass
class ToolResult:
    """What a tool's command ended with: its exit code and what it printed."""

    returncode: int
    stdout: str
    stderr: str


def run_tool(name: str, *args: str) -> ToolResult:
    """`cutmix-NAME ARGS...` in this process, through its entry point in commands.py (predict,
    evaluate, export, report, search), with stdout and stderr captured."""
    import contextlib
    import io

    from cutmix_runner import commands

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            getattr(commands, name)(list(args))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
    return ToolResult(code, out.getvalue(), err.getvalue())


def heavy_modules_loaded(code: str) -> list[str]:
    """The heavy libraries (torch, timm, ...) that `code` leaves imported, run in a fresh
    process: what a fast command must not load."""
    probe = (code + "\nimport json, sys\nprint(json.dumps(sorted(m for m in sys.modules if "
             "m.split('.')[0] in ('torch', 'timm', 'torchvision', 'torchmetrics'))))")
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])
