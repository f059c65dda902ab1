"""`cutmix-train`: a Hydra main that turns user mistakes into one-line errors.

Config errors: Hydra normally prints its own multi-line report; we ask it to re-raise
(HYDRA_FULL_ERROR=1) and print the first meaningful line ourselves. Errors found inside the job
(bad values, data, model) exit from the job with one line. Both exit with status 2.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NoReturn

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from cutmix_runner import interrupts
from cutmix_runner.config import register_configs, validate
from cutmix_runner.errors import UserError

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "configs")

register_configs()


def fail(message: str) -> NoReturn:
    """One line on stderr and exit status 2.

    Raised as SystemExit inside the job, so Hydra neither logs the job as crashed nor prints a
    traceback.
    """
    print(f"cutmix-train: error: {message}", file=sys.stderr)
    raise SystemExit(2)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def train(cfg: DictConfig) -> float:
    from cutmix_runner.trainer import train as train_run  # torch loads after Hydra has parsed

    out_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        run_cfg = validate(cfg)
        with interrupts.handled():
            summary = train_run(run_cfg, out_dir)
    except UserError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        last = out_dir / "checkpoints" / "last.pt"
        where = (f"{last} holds the last finished epoch; continue with: cutmix-train "
                 f"<same overrides> hydra.run.dir={out_dir} trainer.resume=auto"
                 if last.exists() else "no epoch had finished, nothing to resume")
        print(f"cutmix-train: interrupted; {where}", file=sys.stderr)
        raise SystemExit(130) from None
    return float(summary["best"]["val_accuracy"])


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OmegaConfBaseException):
        # OmegaConf appends "full_key: ..., object_type=..." lines; keep the first line and key.
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        key = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("full_key:")), "")
        first = lines[0] if lines else type(exc).__name__
        return f"{first} (key: {key})" if key and key not in first else first
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    # Hydra's override errors put the cause after "Could not override ...".
    return " ".join(lines[:3]) if lines else type(exc).__name__


def main() -> None:
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        train()
    except (HydraException, OmegaConfBaseException) as exc:
        cause = exc.__cause__ if isinstance(exc.__cause__, OmegaConfBaseException) else exc
        print(f"cutmix-train: config error: {_one_line(cause)}", file=sys.stderr)
        sys.exit(2)
    except OSError as exc:  # e.g. an output directory that cannot be created or written
        print(f"cutmix-train: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "),
              file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("cutmix-train: interrupted", file=sys.stderr)
        sys.exit(130)
