"""The layout's promises: one home for each list, the report without torch, short modules."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from cutmix_runner import config
from tests.helpers import ROOT, compose

PACKAGE = ROOT / "cutmix_runner"


def test_report_imports_no_torch() -> None:
    code = ("import sys, cutmix_runner.report; "
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'timm', 'torchvision', 'torchmetrics')); print(heavy); "
            "sys.exit(1 if heavy else 0)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_result_neutral_keys_have_one_home() -> None:
    from cutmix_runner import report

    keys = config.neutral_keys()
    excluded = _sweep_exclude_keys()
    assert sorted(excluded) == sorted(keys)
    assert set(report.NEUTRAL_PREFIXES) == {*keys, "hydra."}
    # Every neutral key exists in the schema.
    run = config.RunConfig()
    for key in keys:
        group, name = key.split(".")
        assert hasattr(getattr(run, group), name), key


def _sweep_exclude_keys() -> list[str]:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    config.register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = hydra_compose("train", return_hydra_config=True)
    return list(cfg.hydra.job.config.override_dirname.exclude_keys)


def test_result_config_drops_exactly_the_neutral_keys() -> None:
    full = config.RunConfig()
    kept = config.result_config(full)
    for key in config.neutral_keys():
        group, name = key.split(".")
        assert name not in kept[group]
    assert kept["trainer"]["seed"] == 0 and kept["data"]["val_size"] == 5000


@pytest.mark.parametrize("key, registry", [
    ("data.name", "cutmix_runner.data:DATASETS"),
    ("optim.name", "cutmix_runner.optim:OPTIMIZERS"),
    ("regularizer", "cutmix_runner.mixing:REGULARIZERS"),
])
def test_allowed_names_come_from_the_registries(key: str, registry: str) -> None:
    import importlib

    module, name = registry.split(":")
    assert config.option_names()[key] == tuple(getattr(importlib.import_module(module), name))


def test_a_new_registry_entry_is_accepted_without_touching_config(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from cutmix_runner import mixing

    override = "schedule.stages.adapt.regularizer.name=identity"
    with pytest.raises(config.ConfigError, match="must be one of"):
        config.validate(compose(override))
    monkeypatch.setitem(mixing.REGULARIZERS, "identity", mixing.REGULARIZERS["none"])
    assert config.validate(compose(override)).schedule.stages["adapt"].regularizer.name == \
        "identity"


def _long_definitions(path: Path, limit: int) -> list[str]:
    tree = ast.parse(path.read_text())
    return [f"{path.name}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
            and node.end_lineno - node.lineno + 1 > limit]


def test_no_function_or_class_is_longer_than_120_lines() -> None:
    long = [d for path in sorted(PACKAGE.glob("*.py")) for d in _long_definitions(path, 120)]
    assert long == []


def test_the_trainer_only_orchestrates() -> None:
    assert len((PACKAGE / "trainer.py").read_text().splitlines()) < 250
