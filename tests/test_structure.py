"""The layout's promises: one home for each list, the report without torch, short modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from cutmix_runner import config, validation
from tests.helpers import ROOT, compose, heavy_modules_loaded

PACKAGE = ROOT / "cutmix_runner"


def test_report_imports_no_torch() -> None:
    assert heavy_modules_loaded("import cutmix_runner.report") == []


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
    from tests.helpers import recipe

    kept = config.result_config(recipe())
    for key in config.neutral_keys():
        group, name = key.split(".")
        assert name not in kept[group]
    assert kept["trainer"]["seed"] == 0 and kept["data"]["val_size"] == 2000


@pytest.mark.parametrize("name", [*config.BASE_GROUP_FILES.values(), "data/synthetic.yaml"])
def test_a_recipe_value_lives_in_the_yaml_alone(name: str) -> None:
    """A key a base group file sets has no value in the schema (MISSING): the dataclasses hold
    no second, disagreeing copy of the recipe. Neutral keys live in the schema alone."""
    import yaml
    from omegaconf import OmegaConf

    group = name.split("/")[0]
    schema = OmegaConf.structured(config.RunConfig)[group]
    values = {k: v for k, v in yaml.safe_load((config.CONFIG_DIR / name).read_text()).items()
              if k != "defaults"}
    assert values
    for key in values:
        assert OmegaConf.is_missing(schema, key), f"{group}.{key} has a default in config.py"
        assert f"{group}.{key}" not in config.neutral_keys()
    composed = OmegaConf.structured(config.RunConfig)
    missing = [f"{group}.{k}" for k in composed[group] if OmegaConf.is_missing(composed[group], k)]
    assert set(missing) <= {f"{group}.{key}" for key in values}, missing


@pytest.mark.parametrize("key, registry", [
    ("data.name", "cutmix_runner.data:DATASETS"),
    ("optim.name", "cutmix_runner.optim:OPTIMIZERS"),
    ("regularizer", "cutmix_runner.mixing:REGULARIZERS"),
])
def test_allowed_names_come_from_the_registries(key: str, registry: str) -> None:
    import importlib

    module, name = registry.split(":")
    assert validation.option_names()[key] == tuple(getattr(importlib.import_module(module), name))


def test_a_new_registry_entry_is_accepted_without_touching_config(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from cutmix_runner import mixing

    override = "schedule.stages.adapt.regularizer.name=identity"
    with pytest.raises(config.ConfigError, match="must be one of"):
        validation.validate(compose(override))
    monkeypatch.setitem(mixing.REGULARIZERS, "identity", mixing.REGULARIZERS["none"])
    assert validation.validate(compose(override)).schedule.stages["adapt"].regularizer.name == \
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
    # 250 until 2026-12-07, when resuming (applying a checkpoint's state to the run) moved here
    # from checkpoint.py, which no longer knows the trainer's Run: an import cycle less.
    assert len((PACKAGE / "trainer.py").read_text().splitlines()) < 270


def _package_imports() -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere: at the top, inside functions, and
    under TYPE_CHECKING (an import cycle hides in any of them)."""
    package = ROOT / "cutmix_runner"
    modules = {p.stem for p in package.glob("*.py")}
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for module in modules:
        for node in ast.walk(ast.parse((package / f"{module}.py").read_text())):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module == "cutmix_runner":
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                    "cutmix_runner."):
                names = [node.module.split(".")[1]]
            elif isinstance(node, ast.Import):
                names = [a.name.split(".")[1] for a in node.names
                         if a.name.startswith("cutmix_runner.")]
            edges[module] |= {n for n in names if n in modules and n != module}
    return edges


def _cycle(edges: dict[str, set[str]]) -> list[str]:
    """One import cycle as a path, or [] (depth-first search)."""
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str]:
        if module in path:
            return path[path.index(module):] + [module]
        if module in done:
            return []
        for other in sorted(edges[module]):
            found = visit(other, [*path, module])
            if found:
                return found
        done.add(module)
        return []

    return next((c for m in sorted(edges) if (c := visit(m, []))), [])


# Each tool's own module; commands.py is the layer above them all (parsers, exit codes).
COMMAND_MODULES = {"cli", "torchrun", "predict", "corruption_eval", "export", "report", "search"}


def test_commands_share_library_modules_never_each_other() -> None:
    edges = _package_imports()
    for command in COMMAND_MODULES:
        assert not edges[command] & COMMAND_MODULES, (command, edges[command] & COMMAND_MODULES)
    assert "composition" in edges["search"] and "metrics" in edges["search"]


def test_no_import_cycle_counting_lazy_and_type_checking_imports() -> None:
    edges = _package_imports()
    assert edges["summary"] >= {"checkpoint"} and "trainer" in edges["cli"]  # the walk sees
    assert _cycle(edges) == []
    assert _cycle({**edges, "config": edges["config"] | {"data"}}) != []  # and would see one
