"""`cutmix-train`: a Hydra main that turns user mistakes into one-line errors and ends every
run by saying where it went and what to do next.

Config errors: Hydra normally prints its own multi-line report; we ask it to re-raise
(HYDRA_FULL_ERROR=1) and print the first meaningful line ourselves. Errors found inside the job
(bad values, data, model) exit from the job with one line. Both exit with status 2.
`--help` is ours (configs/hydra/help/cutmix_train.yaml); `--hydra-help` is Hydra's.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cutmix_runner import config, interrupts
from cutmix_runner.composition import one_line
from cutmix_runner.config import register_configs
from cutmix_runner.errors import UserError
from cutmix_runner.rundir import HYDRA_SUBDIR, RunDir, Summary

CONFIG_DIR = str(config.CONFIG_DIR)

register_configs()


def fail(message: str) -> NoReturn:
    """One line on stderr and exit status 2.

    Raised as SystemExit inside the job, so Hydra neither logs the job as crashed nor prints a
    traceback. Under torchrun every rank meets the same bad input; rank 0 alone says so.
    """
    complain(f"cutmix-train: error: {message}")
    raise SystemExit(2)


def rank() -> int:
    """This process's rank under torchrun (0 outside it); read from the environment, as
    distributed.launched does, so that `cutmix-train --help` does not load torch."""
    return int(os.environ.get("RANK", "0")) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 0


def say(text: str) -> None:
    """Print to stderr on rank 0 only: N ranks do not repeat each line."""
    if rank() == 0:
        print(text, file=sys.stderr)


RANK_0_GRACE_SECONDS = 3.0


def complain(text: str, shared: bool = False) -> None:
    """The line a failing run ends with. Under torchrun every rank usually meets the same bad
    input, and torchrun stops the others once one has exited: rank 0 says it at once; another
    rank waits, and speaks (naming itself) only if it is still there, i.e. if the error was its
    own. A `shared` event (a stop request, which every rank obeys after the same step) is said by
    rank 0 alone; the others only wait."""
    if rank() == 0:
        print(text, file=sys.stderr)
        return
    time.sleep(RANK_0_GRACE_SECONDS)
    if not shared:
        print(f"[rank {rank()}] {text}", file=sys.stderr)


def rank_overrides() -> list[str]:
    """Hydra overrides for ranks other than 0: no output directory or log file of their own.
    They train into rank 0's run directory (trainer.train), where rank 0 alone writes; no rank
    writes .hydra/ through Hydra (configs/train.yaml: hydra.output_subdir)."""
    if rank() == 0:
        return []
    return ["hydra.run.dir=.", "hydra/job_logging=none", "hydra/hydra_logging=none"]


def remove_if_untouched(out_dir: Path) -> None:
    """A refused run leaves no folder behind: Hydra made the run directory and its empty log
    before the job's checks ran. Only a directory holding nothing but that empty log goes; a
    directory that held anything before (a finished run) is left as it was."""
    log = out_dir / "cli.log"
    if rank() != 0 or not out_dir.is_dir() or [p.name for p in out_dir.iterdir()] != [log.name]:
        return
    if log.stat().st_size == 0:
        log.unlink()
        out_dir.rmdir()
        here = Path.cwd().resolve()
        for parent in out_dir.resolve().parents:  # outputs/DATE/, if it was made for this run
            if parent == here or here not in parent.parents or any(parent.iterdir()):
                break
            parent.rmdir()


def save_hydra_files(cfg: DictConfig, out_dir: Path) -> None:
    """What Hydra writes into RUN_DIR/.hydra (config.yaml, hydra.yaml, overrides.yaml), the same
    files with the same contents, written only now that nothing refused the run."""
    # A writable copy (Hydra's own is read-only), saying where its files are, as Hydra's does.
    hydra_cfg = OmegaConf.create(OmegaConf.to_container(HydraConfig.instance().cfg))
    hydra_cfg.hydra.output_subdir = HYDRA_SUBDIR
    run = RunDir(out_dir)
    run.hydra.mkdir(parents=True, exist_ok=True)
    for path, node in ((run.config_file, cfg), (run.hydra_file, hydra_cfg),
                       (run.overrides_file, hydra_cfg.hydra.overrides.task)):
        path.write_text(OmegaConf.to_yaml(node))


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def train(cfg: DictConfig) -> float:
    from cutmix_runner import distributed  # torch loads after Hydra has parsed
    from cutmix_runner.trainer import train as train_run
    from cutmix_runner.validation import validate

    out_dir = Path(HydraConfig.get().runtime.output_dir)
    hydra_cfg = HydraConfig.get()
    try:
        if hydra_cfg.mode == RunMode.MULTIRUN and distributed.launched().parallel:
            fail("torchrun trains one run: drop -m, or sweep with LAUNCHER=local")
        run_cfg = validate(cfg)
        with interrupts.handled(), distributed.joined(run_cfg.trainer.device):
            # A hydra.output_subdir of the user's own: Hydra has written it already. The trainer
            # calls on_checked on rank 0 alone.
            save = hydra_cfg.output_subdir is None
            summary = train_run(run_cfg, out_dir, on_checked=(
                (lambda: save_hydra_files(cfg, out_dir)) if save else None))
    except UserError as exc:
        remove_if_untouched(out_dir)
        fail(str(exc))
    except KeyboardInterrupt:
        last = RunDir(out_dir).last
        where = (f"{last} holds the last finished epoch; continue with: <the same command> "
                 f"hydra.run.dir={out_dir} trainer.resume=auto"
                 if last.exists() else "no epoch had finished, nothing to resume")
        complain(f"cutmix-train: interrupted; {where}", shared=True)
        raise SystemExit(130) from None
    if rank() != 0:  # rank 0 alone tests the model, and speaks
        return float(summary["best"]["val_accuracy"])
    if hydra_cfg.mode == RunMode.MULTIRUN:
        lines = [job_line(summary, out_dir, hydra_cfg.job.num)]
    else:
        lines = closing_summary(summary, out_dir)
    say("\n".join(lines))
    return float(summary["best"]["val_accuracy"])


def _shown(path: Path) -> str:
    """`path` relative to the working directory when it lies below it: shorter to copy."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _test_accuracy(summary: Summary) -> str:
    text = f"{100 * summary['test_accuracy']:.2f} % ({summary['test_protocol']})"
    if summary["test_protocol"] != "single view":
        text += f", {100 * summary['test_accuracy_single_view']:.2f} % single view"
    return text


def _duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s" if minutes else f"{rest} s"


def closing_summary(summary: Summary, out_dir: Path) -> list[str]:
    """The lines a finished run ends with: where it is, how it did, what to run next."""
    run, best = _shown(out_dir), summary["best"]
    return [
        f"cutmix-train: finished in {_duration(summary['total_seconds'])}; run directory: {run}",
        f"  test accuracy {_test_accuracy(summary)}",
        f"  best epoch: {best['stage']} epoch {best['epoch']} (epoch {best['global_epoch']} of "
        f"the run), validation accuracy {100 * best['val_accuracy']:.2f} %",
        f"  next: cutmix-predict {run} PHOTOS...   |   cutmix-eval {run}   |   "
        f"cutmix-export {run}",
        f"        cutmix-report {run} --out {run}/report",
    ]


def job_line(summary: Summary, out_dir: Path, job: int) -> str:
    """One line per job of a sweep."""
    best = summary["best"]
    return (f"cutmix-train: job {job} finished in {_duration(summary['total_seconds'])}: test "
            f"{_test_accuracy(summary)}, best {best['stage']} epoch {best['epoch']}; "
            f"{_shown(out_dir)}")


class SweepSummary(Callback):
    """After a sweep (-m): where its runs are, and the report command that compares them.

    Registered under hydra.callbacks in configs/train.yaml.
    """

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(config.hydra.sweep.dir)
        finished = sum(RunDir(job).summary_file.exists() for job in sweep.glob("*/"))
        shown = _shown(sweep)
        print(f"cutmix-train: sweep finished, {finished} runs in {shown}; compare them: "
              f"cutmix-report {shown} --out {shown}/report", file=sys.stderr)


def main() -> None:
    if "--version" in sys.argv[1:]:
        from cutmix_runner.commands import version_text

        print(version_text())
        return
    os.environ["HYDRA_FULL_ERROR"] = "1"
    sys.argv += rank_overrides()
    try:
        train()
    except (HydraException, OmegaConfBaseException) as exc:
        cause = exc.__cause__ if isinstance(exc.__cause__, OmegaConfBaseException) else exc
        complain(f"cutmix-train: config error: {one_line(cause)}")
        sys.exit(2)
    except OSError as exc:  # e.g. an output directory that cannot be created or written
        complain(f"cutmix-train: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))
        sys.exit(2)
    except KeyboardInterrupt:
        complain("cutmix-train: interrupted", shared=True)
        sys.exit(130)
