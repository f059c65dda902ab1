"""`cutmix-search`: a resumable Optuna search over the staged schedule, on Optuna's own API.

Each trial composes the same Hydra `train` config as `cutmix-train` (the command line's
overrides plus one sampled value per key of the search space, configs/search/), trains it
in-process into OUT/trial_N, reports each epoch's validation accuracy to Optuna's median pruner
and returns the best validation accuracy. The test set is never touched by a trial: after the
search, the best trial's best checkpoint is scored on it once, and only the report shows it.

The study lives in an RDB (a local SQLite file by default), so a second invocation with the same
`--storage` and `--study-name` adds trials to it instead of starting over, and several workers
(processes, or machines with a shared database URL) can work on one study at once: Optuna's own
distributed mode.
"""

from __future__ import annotations

import argparse
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import yaml

from cutmix_runner.config import CONFIG_DIR
from cutmix_runner.errors import UserError

log = logging.getLogger(__name__)
SPACES = CONFIG_DIR / "search"
KINDS = ("int", "float", "categorical")


class SearchError(UserError):
    """A bad search space or study; one line for the user."""


def load_space(name_or_path: str) -> dict[str, dict[str, Any]]:
    """The search space: a file in configs/search/ by name, or a path to one."""
    path = Path(name_or_path)
    if not path.exists():
        path = SPACES / f"{name_or_path}.yaml"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in SPACES.glob("*.yaml")))
        raise SearchError(f"--space: no space '{name_or_path}' (known: {known}, or a path)")
    try:
        space = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SearchError(f"{path} is not valid YAML ({type(exc).__name__})") from None
    if not isinstance(space, dict):
        raise SearchError(f"{path}: expected a mapping of override keys to distributions")
    for key, spec in space.items():
        kinds = [k for k in KINDS if isinstance(spec, dict) and k in spec]
        if len(kinds) != 1 or set(spec) - {*KINDS, "log"}:
            raise SearchError(f"{path}: {key} needs exactly one of int, float, categorical "
                              f"(and optionally log), got {spec}")
        bounds = spec[kinds[0]]
        if not isinstance(bounds, list) or (kinds[0] != "categorical" and len(bounds) != 2):
            raise SearchError(f"{path}: {key}: {kinds[0]} takes a list "
                              f"{'of choices' if kinds[0] == 'categorical' else '[low, high]'}")
        _check_values(path, key, kinds[0], bounds, bool(spec.get("log", False)))
    return space


def _check_values(path: Path, key: str, kind: str, bounds: list[Any], log: bool) -> None:
    """Values Optuna could sample: choices at all; numbers, low <= high, positive on a log scale."""
    if kind == "categorical":
        if not bounds:
            raise SearchError(f"{path}: {key}: categorical needs at least one choice")
        return
    low, high = bounds
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in bounds):
        raise SearchError(f"{path}: {key}: {kind} bounds must be numbers, got {bounds}")
    if low > high:
        raise SearchError(f"{path}: {key}: low {low} is above high {high}")
    if log and low <= 0:
        raise SearchError(f"{path}: {key}: a log scale needs low > 0, got {low}")


def check_keys(space: dict[str, dict[str, Any]], base: list[str]) -> None:
    """Every key of the space is a key cutmix-train accepts, with a value from its range: a
    mistyped key fails here, once, not in every trial."""
    from cutmix_runner.composition import compose_train
    from cutmix_runner.validation import validate

    for key, spec in space.items():
        kind = next(k for k in KINDS if k in spec)
        validate(compose_train([*base, f"{key}={spec[kind][0]}"]))


def suggest(trial: Any, space: dict[str, dict[str, Any]]) -> list[str]:
    """One Hydra override per key, sampled by the trial."""
    overrides = []
    for key, spec in space.items():
        if "int" in spec:
            value = trial.suggest_int(key, *spec["int"], log=spec.get("log", False))
        elif "float" in spec:
            value = trial.suggest_float(key, *spec["float"], log=spec.get("log", False))
        else:
            value = trial.suggest_categorical(key, spec["categorical"])
        overrides.append(f"{key}={value}")
    return overrides


class PruningReporter:
    """Wraps a run's logger: each epoch of the last stage reports its validation accuracy to the
    trial, which may stop the run (optuna.TrialPruned) when it is below the median of earlier
    trials at the same epoch of that stage. Only the last stage: earlier stages' lengths are
    searched (and may end on a plateau), so their epochs do not line up across trials."""

    def __init__(self, inner: Any, trial: Any, last_stage: int) -> None:
        self.inner, self.trial, self.last_stage = inner, trial, last_stage

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def epoch(self, record: dict[str, Any]) -> None:
        import optuna

        self.inner.epoch(record)
        if record["stage_index"] != self.last_stage:
            return
        self.trial.report(record["val_accuracy"], record["epoch"])
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"val accuracy {record['val_accuracy']:.4f} at epoch "
                                     f"{record['global_epoch']}")


OPTUNA_TRIAL_LOGGER = "optuna.study._optimize"
SILENCED = logging.Filter("silenced")  # passes only loggers named silenced.*: none of Optuna's


def objective(space: dict[str, dict[str, Any]], base: list[str], out: Path) -> Any:
    from cutmix_runner import trainer
    from cutmix_runner.composition import compose_train
    from cutmix_runner.validation import validate

    def run_trial(trial: Any) -> float:
        overrides = [*base, *suggest(trial, space)]
        trial.set_user_attr("overrides", overrides)
        run_dir = (out / f"trial_{trial.number}").resolve()
        trial.set_user_attr("run_dir", str(run_dir))
        cfg = validate(compose_train(overrides))
        run = trainer.prepare(cfg, run_dir)
        logger = run.logger
        run.logger = PruningReporter(logger, trial, len(cfg.schedule.stages) - 1)  # type: ignore[assignment]
        try:
            trainer.train_stages(run)  # training and validation only: no test set
        except KeyboardInterrupt:
            # Optuna would add two warnings about this trial; the command's one line says it.
            logging.getLogger(OPTUNA_TRIAL_LOGGER).addFilter(SILENCED)
            raise
        finally:
            logger.close()
        best = run.progress.best
        (run_dir / "trial.json").write_text(json.dumps(
            {"number": trial.number, "overrides": overrides, "best": best}, indent=2) + "\n")
        return float(best["val_accuracy"])

    return run_trial


def test_best(study: Any, data_root: str) -> float:
    """The best trial's best-validation checkpoint on the test set, single view: the search's
    one test evaluation (each invocation re-scores the best trial so far)."""
    from cutmix_runner.inference import load_test_set, load_trained
    from cutmix_runner.metrics import accuracy

    run_dir = Path(study.best_trial.user_attrs["run_dir"])
    trained = load_trained(run_dir)
    images, labels = load_test_set(trained, run_dir, data_root)
    return accuracy(trained.logits(images, batch_size=256), labels)


def importance(study: Any) -> dict[str, float]:
    """PED-ANOVA importances (Optuna's own, no scikit-learn); empty with too few trials."""
    import optuna

    try:
        return optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.PedAnovaImportanceEvaluator())
    except (RuntimeError, ValueError) as exc:
        log.info("no parameter importances: %s", exc)
        return {}


def write_report(study: Any, out: Path, test_accuracy: float, command: str) -> Path:
    import matplotlib
    import optuna

    matplotlib.use("Agg")
    ax = optuna.visualization.matplotlib.plot_optimization_history(study)
    ax.figure.tight_layout()
    ax.figure.savefig(out / "optimization_history.png", dpi=110)
    states = [t.state.name for t in study.trials]
    best = study.best_trial
    lines = ["# cutmix-search report", "", f"Made by `{command}`.", "",
             f"Study `{study.study_name}`: {len(states)} trials "
             f"({states.count('COMPLETE')} complete, {states.count('PRUNED')} pruned, "
             f"{states.count('FAIL')} failed). Objective: best validation accuracy of a trial; "
             "the test set is used once, below, for the best trial only.", "",
             f"## Best trial: #{best.number}", "",
             f"- best validation accuracy: {100 * best.value:.2f} %",
             f"- test accuracy of its best-validation checkpoint (single view): "
             f"{100 * test_accuracy:.2f} %",
             f"- run directory: `{best.user_attrs['run_dir']}`", "",
             "```", *best.user_attrs["overrides"], "```", "",
             "## Parameter importance (PED-ANOVA)", "", "| parameter | importance |", "|---|---:|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in importance(study).items()] or ["| – | – |"]
    lines += ["", "## Trials", "", "| # | state | best val accuracy (%) |", "|---:|---|---:|"]
    lines += [f"| {t.number} | {t.state.name} | "
              f"{'–' if t.value is None else f'{100 * t.value:.2f}'} |" for t in study.trials]
    lines += ["", "![optimization history](optimization_history.png)"]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report


def search(args: argparse.Namespace, command: str) -> Path:
    import optuna

    from cutmix_runner.composition import compose_train
    from cutmix_runner.validation import validate

    space = load_space(args.space)
    base = validate(compose_train(args.overrides))  # shared overrides fail here, once
    check_keys(space, args.overrides)
    out = args.out / args.study_name  # trial numbers count per study
    url = args.storage or f"sqlite:///{(args.out / 'study.db').resolve()}"
    if args.storage is None:  # the default database lives in --out, which must exist first
        args.out.mkdir(parents=True, exist_ok=True)
    try:
        # The heartbeat marks a trial whose process died (a kill, a timeout) as failed.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.RDBStorage(url, heartbeat_interval=60, grace_period=180)
        study = optuna.create_study(
            study_name=args.study_name, storage=storage, direction="maximize",
            load_if_exists=True,
            sampler=optuna.samplers.TPESampler(seed=args.seed + len(_existing(storage, args))),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0))
    except Exception as exc:  # a bad URL, a folder it cannot create, a driver not installed
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise SearchError(f"--storage {url}: unusable ({type(exc).__name__}: {first[:200]}); "
                          "give an RDB URL such as sqlite:///path/study.db") from None
    out.mkdir(parents=True, exist_ok=True)
    done = len(study.trials)
    try:
        study.optimize(objective(space, args.overrides, out), n_trials=args.trials,
                       catch=(UserError,))
    finally:
        logging.getLogger(OPTUNA_TRIAL_LOGGER).removeFilter(SILENCED)
    log.info("study %s: %d trials before, %d now", args.study_name, done, len(study.trials))
    if not any(t.state.name == "COMPLETE" for t in study.trials):
        raise SearchError("no trial completed; see the trials' logs under " + str(out))
    return write_report(study, out, test_best(study, base.data.root), command)


def _existing(storage: Any, args: argparse.Namespace) -> list[Any]:
    """Trials already in the study: a resumed search reseeds its sampler past them."""
    import optuna

    try:
        return optuna.load_study(study_name=args.study_name, storage=storage).trials
    except KeyError:
        return []


def run(args: argparse.Namespace, command: str) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(search(args, command))
    return 0
