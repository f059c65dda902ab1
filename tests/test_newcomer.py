"""A newcomer's first ten minutes: `make train` finds or fetches CIFAR-10 anywhere, `make help`,
`cutmix-train --help` / `--version`, and the lines every run ends with."""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import CONFIG_DIR, ROOT, SMOKE, ArchiveServer, compose, run_cli, train_cli


def _make(folder: Path, *args: str) -> str:
    result = subprocess.run(["make", "--no-print-directory", "-C", str(folder), *args],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _train_overrides(clone: Path) -> list[str]:
    """The overrides `make train` would pass to cutmix-train (a dry run; setup is skipped)."""
    line = next(ln for ln in _make(clone, "-n", "-o", "setup", "train").splitlines()
                if "cutmix-train" in ln)
    return shlex.split(line)[1:]


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    """The Makefile in a folder with no ../shared next to it, as on a user's machine."""
    folder = tmp_path / "clone"
    folder.mkdir()
    shutil.copy(ROOT / "Makefile", folder / "Makefile")
    assert not (tmp_path / "shared").exists()
    return folder


def test_make_train_uses_the_shared_copy_when_there_is_one(clone: Path) -> None:
    (clone.parent / "shared" / "data" / "cifar10").mkdir(parents=True)
    assert _train_overrides(clone) == ["data.root=../shared/data/cifar10"]
    assert _make(clone, "-n", "-o", "setup", "train", "DATA_ROOT=/data/c10").splitlines()[-1] \
        .split()[1:] == ["data.root=/data/c10"]  # by hand: as given, no download


def test_make_train_downloads_into_the_repository_once(clone: Path, cifar_folder: Path,
                                                       archive_server: ArchiveServer,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from cutmix_runner import data
    from cutmix_runner.validation import validate

    overrides = _train_overrides(clone)
    assert overrides == ["data.root=data/cifar10", "data.download=true"]
    monkeypatch.setattr(data, "CIFAR10_URL", archive_server.url)
    monkeypatch.setattr(data, "CIFAR10_MD5",
                        hashlib.md5(archive_server.archive.read_bytes()).hexdigest())
    monkeypatch.chdir(clone)  # data.root is relative to where `make train` runs
    cfg = validate(compose(*overrides, "data.val_size=10"))
    first = data.build_splits(cfg.data)
    assert (clone / "data" / "cifar10" / "cifar-10-batches-py" / "data_batch_1").exists()
    # torchvision's helper may open the URL twice (it looks for a redirect first).
    downloads = list(archive_server.requests)
    assert downloads and set(downloads) == {"/cifar-10-python.tar.gz"}
    second = data.build_splits(cfg.data)  # a second `make train`: the folder is there
    assert archive_server.requests == downloads
    assert len(first.train_x) == len(second.train_x) == 90


def test_make_help_lists_every_target() -> None:
    phony = re.search(r"^\.PHONY: (.*)$", (ROOT / "Makefile").read_text(), re.M)
    assert phony is not None
    listed = [line.split()[1] for line in _make(ROOT, "help").splitlines()]
    assert sorted(listed) == sorted(phony.group(1).split())
    assert _make(ROOT) == _make(ROOT, "help")  # plain `make` explains itself


def test_help_names_the_tool_its_groups_options_and_examples() -> None:
    result = train_cli("--help")
    assert result.returncode == 0 and "Traceback" not in result.stderr
    text = result.stdout
    assert text.startswith("cutmix-train: ")
    assert "powered by Hydra" not in text
    for group in sorted(p for p in Path(CONFIG_DIR).iterdir() if p.is_dir() and p.name != "hydra"):
        assert re.search(rf"^  {group.name} ", text, re.M), group.name
        for option in group.glob("*.yaml"):
            assert option.stem in text, f"{group.name}/{option.stem}"
    examples = text.split("== Examples ==")[1].split("==")[0]
    commands = [ln for ln in examples.splitlines() if ln.strip().startswith("cutmix-train")]
    assert 3 <= len(commands) <= 5
    for command in commands:  # each example composes (downloads and runs aside)
        overrides = [a for a in shlex.split(command.split("#")[0])[1:]
                     if "=" in a and not a.startswith(("hydra.", "trainer.resume"))]
        compose(*[a.split(",")[0] if "=" in a else a for a in overrides if a != "-m"])
    hydra_help = train_cli("--hydra-help")
    assert hydra_help.returncode == 0 and hydra_help.stdout.startswith("Hydra (")


def test_version_names_the_package_torch_and_timm() -> None:
    result = train_cli("--version")
    assert result.returncode == 0
    assert re.match(r"cutmix-runner \S+ \(python \S+, torch \S+, torchvision \S+, timm \S+\)$",
                    result.stdout.strip())


def test_a_run_ends_with_where_it_is_how_it_did_and_what_next(tmp_path: Path) -> None:
    """End to end, as a user runs it: a fresh interpreter through `python -m cutmix_runner`."""
    out = tmp_path / "run"
    result = run_cli(*SMOKE, f"hydra.run.dir={out}")
    assert result.returncode == 0 and "Traceback" not in result.stderr
    summary = json.loads((out / "summary.json").read_text())
    lines = result.stderr.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("cutmix-train: finished in"))
    closing = lines[start:]
    assert 3 <= len(closing) <= 6
    assert closing[0].endswith(f"run directory: {out}")
    assert f"{100 * summary['test_accuracy']:.2f} % (flip-averaged)" in closing[1]
    assert f"{100 * summary['test_accuracy_single_view']:.2f} % single view" in closing[1]
    assert f"best epoch: {summary['best']['stage']} epoch {summary['best']['epoch']}" in closing[2]
    for command in (f"cutmix-predict {out} ", f"cutmix-eval {out}", f"cutmix-export {out}"):
        assert command in closing[3], command
    assert f"cutmix-report {out} --out {out}/report" in closing[4]
