"""The `train` config composed outside a Hydra job (cutmix-search's trials, benchmarks), and
Hydra's and OmegaConf's errors as one line: what cutmix-train prints for a bad override, so that
every tool says it the same way. A library module: the commands import it, never each other."""

from __future__ import annotations

import difflib

from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from cutmix_runner.config import CONFIG_DIR, ConfigError, register_configs


def compose_train(overrides: list[str]) -> DictConfig:
    """The `train` config as `cutmix-train OVERRIDES...` composes it, outside a Hydra job (for
    cutmix-search's trials); a bad override is a UserError with cutmix-train's one line."""
    from hydra import compose, initialize_config_dir

    register_configs()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return compose("train", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as exc:
        cause = exc.__cause__ if isinstance(exc.__cause__, OmegaConfBaseException) else exc
        raise ConfigError(f"config error: {one_line(cause)}") from None


def _missing_option(exc: MissingConfigException) -> str:
    """`GROUP=NAME` that does not exist: every option of the group, the nearest first."""
    group, _, name = (exc.missing_cfg_file or "").rpartition("/")
    options = sorted(exc.options or [], key=lambda option: (
        -difflib.SequenceMatcher(None, name, option).ratio(), option))
    return (f"{group}={name}: no such option; choose from {', '.join(options)} "
            "(nearest first)")


def one_line(exc: BaseException) -> str:
    """A Hydra or OmegaConf error as the one line cutmix-train (and search) print."""
    missing = next((e for e in (exc, exc.__cause__, exc.__context__)
                    if isinstance(e, MissingConfigException) and e.options), None)
    if missing is not None:
        return _missing_option(missing)
    if isinstance(exc, OmegaConfBaseException):
        # OmegaConf appends "full_key: ..., object_type=..." lines; keep the first line and key.
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        key = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("full_key:")), "")
        first = lines[0] if lines else type(exc).__name__
        if "is not a subclass of StageConfig" in first:  # `+schedule.stages.NAME...=`
            return (f"schedule.stages.{key}: a new stage cannot be added on the command line "
                    "(Hydra adds it as an untyped dict); add it in an experiment file, as "
                    "configs/experiment/progressive_late64.yaml does (docs/usage.md, 'A stage')")
        return f"{first} (key: {key})" if key and key not in first else first
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    # Hydra's override errors put the cause after "Could not override ...".
    return " ".join(lines[:3]) if lines else type(exc).__name__
