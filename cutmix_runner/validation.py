"""Every check of a run's config before anything runs: the schema and value ranges
(config.parse), then each named option against the registry of the module that builds it, and
what an option needs installed. One layer above config.py and the registries, so that config.py
needs nothing of them (no import cycle), and adding an option stays one entry in one registry.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from cutmix_runner import loggers
from cutmix_runner.config import RunConfig, completed, parse
from cutmix_runner.data import DATASETS
from cutmix_runner.errors import ConfigError
from cutmix_runner.mixing import ELEM_REGULARIZERS, MODES, REGULARIZERS
from cutmix_runner.optim import OPTIMIZERS


def option_names() -> dict[str, tuple[str, ...]]:
    """The names each option family accepts, read from the registry of the module that builds it."""
    return {"data.name": tuple(DATASETS), "optim.name": tuple(OPTIMIZERS),
            "regularizer": tuple(REGULARIZERS), "regularizer.mode": MODES,
            "regularizer.mode=elem": ELEM_REGULARIZERS}


def _check_choice(value: str, allowed: tuple[str, ...], key: str) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}: must be one of {', '.join(allowed)}, got '{value}'")


def check_options(run: RunConfig) -> None:
    """Every named option exists in its registry, and what it needs is installed."""
    names = option_names()
    _check_choice(run.data.name, names["data.name"], "data.name")
    _check_choice(run.optim.name, names["optim.name"], "optim.name")
    for stage_name, stage in run.schedule.stages.items():
        key, reg = f"schedule.stages.{stage_name}.regularizer", stage.regularizer
        _check_choice(reg.name, names["regularizer"], f"{key}.name")
        _check_choice(reg.mode, names["regularizer.mode"], f"{key}.mode")
        if reg.mode == "elem" and reg.name not in names["regularizer.mode=elem"]:
            raise ConfigError(f"{key}.mode: elem works with "
                              f"{', '.join(names['regularizer.mode=elem'])}, not '{reg.name}'; "
                              "use mode=batch")
    if run.trainer.logger == "tensorboard" and not loggers.tensorboard_available():
        raise ConfigError(f"trainer.logger: tensorboard is not installed; "
                          f"{loggers.TENSORBOARD_HINT}")


def validate(cfg: DictConfig | dict[str, Any]) -> RunConfig:
    """A composed config as checked dataclasses; raises ConfigError naming the key."""
    run = parse(cfg)
    check_options(run)
    return run


def from_result_config(saved: dict[str, Any]) -> RunConfig:
    """A checked RunConfig from a checkpoint's `result_config`; neutral keys take defaults, and
    keys added since it was saved their earlier behaviour (config.completed)."""
    return validate(completed(saved))
