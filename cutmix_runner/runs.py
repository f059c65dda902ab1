"""Finished runs as `cutmix-report` reads them from disk: overrides, summary, metrics and
cutmix-eval's results, with the labels (arm, stratum) and scalars the report gives them. Reading
only: nothing here writes, and nothing needs torch."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cutmix_runner.errors import UserError
from cutmix_runner.rundir import RunDir, Summary, read_json

# ---------------------------------------------------------------- loading runs


class ReportError(UserError):
    """Runs that cannot be compared, or nothing to report; one line for the user."""


# ---------------------------------------------------------------- loading runs


@dataclass
class RunRecord:
    """A finished run as read from disk (the trainer's own `Run` is the one being trained)."""

    path: Path
    overrides: dict[str, str]
    summary: Summary
    records: list[dict[str, Any]]
    eval: dict[str, Any] | None = None  # eval/eval.json from cutmix-eval, when the run has one
    arm: str = ""
    # The data size (data.train_subset; "full" without a subset), then any other stratum key's
    # value, joined by " · ", e.g. "1000 · study_long".
    stratum: str = "full"
    scalars: dict[str, float] = field(default_factory=dict)

    @property
    def seed(self) -> int:
        value = self.overrides.get("trainer.seed", "0")  # configs/trainer/default.yaml
        if not value.lstrip("-").isdigit():
            raise ReportError(f"{self.path}: trainer.seed={value} is not an integer")
        return int(value)


def _read_records(path: Path) -> list[dict[str, Any]]:
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a kill; the checkpoint's copy is authoritative
    return records


def eval_settings(run: RunRecord) -> tuple | None:
    """What a run's cutmix-eval measured: runs compare only when this is the same."""
    if run.eval is None:
        return None
    measured = tuple(sorted((name, tuple(sorted(per))) for name, per in
                            run.eval.get("accuracy", {}).items()))
    return (run.eval.get("images"), run.eval.get("seed"), measured,
            run.eval.get("corruptions_from", "generated"))


def load_runs(paths: list[Path]) -> list[RunRecord]:
    found: list[Path] = []
    for path in paths:
        if not path.exists():
            raise ReportError(f"no such run or sweep directory: {path}")
        found += [path] if RunDir(path).summary_file.exists() else sorted(
            p.parent for p in path.rglob(RunDir(path).summary_file.name))
    if not found:
        raise ReportError(f"no finished runs (summary.json) under {', '.join(map(str, paths))}")
    return [_load_run(RunDir(path)) for path in dict.fromkeys(p.resolve() for p in found)]


def _load_run(run: RunDir) -> RunRecord:
    try:
        raw = yaml.safe_load(run.overrides_file.read_text()) if run.overrides_file.exists() else []
    except yaml.YAMLError:
        raise ReportError(f"{run.overrides_file} is not valid YAML; re-create or remove "
                          "the run") from None
    overrides = dict(o.lstrip("+~").split("=", 1) for o in raw or [] if "=" in o)
    summary = run.read_summary()
    assert summary is not None  # found by its summary.json
    return RunRecord(run.path, overrides, summary, _read_records(run.metrics_file),
               read_json(run.eval_file) if run.eval_file.exists() else None)
