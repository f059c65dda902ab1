"""The run directory: the one home of its layout and file names, and of summary.json's shape.

    RUN_DIR/
      .hydra/{config,hydra,overrides}.yaml   the composed config and the overrides (cli.py)
      metrics.jsonl                          one line per finished epoch (artifacts.MetricsLog)
      checkpoints/{last,best}.pt             checkpoint.py
      summary.json                           written once, after the test set (summary.py)
      eval/eval.json                         cutmix-eval (corruption_eval.py)
      export/model.onnx                      cutmix-export (export.py)
      examples_STAGE.png, tensorboard/       what the run shows (loggers.py)

Nothing here needs torch (nor writes: artifacts.py does, atomically): the report and the tools'
argument checks read run directories too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

from cutmix_runner.errors import UserError

LAST, BEST = "last.pt", "best.pt"
HYDRA_SUBDIR = ".hydra"  # Hydra's default hydra.output_subdir
EVAL_NAME = "eval.json"  # in RUN_DIR/eval/, or in the folder cutmix-eval --out names


class BestEpoch(TypedDict):
    """The epoch whose validation accuracy was best: the weights the test set scores."""

    stage: str
    epoch: int
    global_epoch: int
    val_accuracy: float


class Summary(TypedDict, total=False):
    """summary.json: the keys other modules read, typed once. Every key summary.finish writes is
    listed; a summary without the REQUIRED ones (a `{}`) is no finished run's."""

    test_accuracy: float
    test_protocol: str  # "single view" or "flip-averaged"
    test_accuracy_single_view: float
    final_test_accuracy: float
    best: BestEpoch
    test: dict[str, Any]  # evaluation.Evaluator.test_summary: NLL, ECE, flip rates, ...
    stages: list[dict[str, Any]]
    dose: dict[str, Any]
    time_to_accuracy: dict[str, float | None]
    train_size: int
    val_size: int
    test_size: int
    image_size: int
    device: str
    device_name: str
    cpu_isa: str
    precision: str
    threads: int
    processes: int
    total_seconds: float
    versions: dict[str, str]


# Every version's summary has these; keys added later (final_test_accuracy, dose, ...) are
# missing from older runs' summaries, and their readers say so.
REQUIRED = ("test_accuracy", "best")


def read_json(path: Path) -> Any:
    """A JSON file an earlier command wrote; one line naming it when it is not JSON."""
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON ({exc}); re-create or remove it") from None


@dataclass(frozen=True)
class RunDir:
    path: Path

    @classmethod
    def of(cls, path: Path) -> RunDir:
        """The run directory of a run directory, or of a checkpoint in its checkpoints/."""
        return cls(path if path.is_dir() else path.parent.parent)

    @property
    def hydra(self) -> Path:
        return self.path / HYDRA_SUBDIR

    @property
    def config_file(self) -> Path:
        return self.hydra / "config.yaml"

    @property
    def hydra_file(self) -> Path:
        return self.hydra / "hydra.yaml"

    @property
    def overrides_file(self) -> Path:
        return self.hydra / "overrides.yaml"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last(self) -> Path:
        return self.checkpoints / LAST

    @property
    def best(self) -> Path:
        return self.checkpoints / BEST

    @property
    def summary_file(self) -> Path:
        return self.path / "summary.json"

    @property
    def eval_dir(self) -> Path:
        return self.path / "eval"

    @property
    def eval_file(self) -> Path:
        return self.eval_dir / EVAL_NAME

    @property
    def export_file(self) -> Path:
        return self.path / "export" / "model.onnx"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    def examples(self, stage: str) -> Path:
        """The grid of a stage's first training images, mixed as the stage mixes them."""
        return self.path / f"examples_{stage}.png"

    def holds_a_run(self) -> bool:
        """A run started here: it wrote an epoch or a checkpoint."""
        return self.metrics_file.exists() or self.checkpoints.exists()

    def model_checkpoint(self) -> Path:
        """The weights a user means by "the run": best.pt, else last.pt."""
        return self.best if self.best.exists() else self.last

    def read_summary(self) -> Summary | None:
        """summary.json if the run finished; one line when it is no finished run's summary."""
        if not self.summary_file.exists():
            return None
        summary = read_json(self.summary_file)
        missing = [key for key in REQUIRED if not isinstance(summary, dict) or key not in summary]
        if missing:
            raise UserError(f"{self.summary_file} lacks {', '.join(missing)}: not a finished "
                            "run's summary; re-run that run, or leave it out")
        return summary
