"""cutmix-report: CI math, arm grouping, refusal of mixed comparisons, and the full report."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cutmix_runner.report import ReportError, build_report, difference_ci, mean_ci, verdict

ARMS = {"baseline": (0.80, 0.95, 0.06), "cutmix_staged": (0.82, 0.90, 0.03),
        "cutmix_from_start": (0.78, 0.88, 0.04), "mixup_staged": (0.81, 0.89, 0.02)}


def test_mean_ci_matches_a_known_example() -> None:
    est = mean_ci([1.0, 2.0, 3.0])
    # sd = 1, n = 3, t(0.975, 2) = 4.302653 (tables): half-width 4.302653 / sqrt(3).
    assert est.mean == 2.0 and est.half_width == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert math.isnan(mean_ci([5.0]).half_width)


def test_welch_difference_matches_a_known_example() -> None:
    a, b = [10.0, 12.0, 14.0], [1.0, 2.0, 3.0]
    est = difference_ci(a, b)
    # se = sqrt(4/3 + 1/3); Welch df = (5/3)^2 / ((4/3)^2/2 + (1/3)^2/2) = 50/17 = 2.941, and
    # t(0.975, 50/17) = 3.2188, between the tables' t(0.975, 3) = 3.182 and t(0.975, 2) = 4.303.
    assert est.mean == 10.0
    assert est.half_width == pytest.approx(3.2188 * math.sqrt(5 / 3), rel=1e-4)
    assert verdict(est, +1) == "supported" and verdict(est, -1) == "contradicted"
    assert verdict(difference_ci([1.0, 2.0, 3.0], [1.5, 2.5, 2.0]), +1) == "inconclusive"


def _fake_run(folder: Path, overrides: list[str], test_acc: float, train_acc: float,
              conf_wrong: float, seed: int) -> None:
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    jitter = 0.002 * seed
    records = [{"stage": s, "global_epoch": i + 1, "val_accuracy": test_acc - 0.1 + 0.05 * i,
                "clean_train_accuracy": train_acc - 0.1 + 0.05 * i + jitter,
                "generalization_gap": train_acc - test_acc + jitter,
                "stage_end": "epochs" if s != "late" or i == 2 else None}
               for i, s in enumerate(["head", "adapt", "late"])]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    bins = {"confidence": [0.5, 0.9], "accuracy": [0.4, 0.85], "count": [10, 90]}
    test = {"nll": 0.5 + jitter, "ece": 0.05 + jitter, "ece_temp_scaled": 0.02, "brier": 0.2,
            "confidence_wrong": conf_wrong + jitter, "confidence_correct": 0.9,
            "flip_rate_noise": 0.05 + jitter, "flip_rate_shift": 0.08, "reliability": bins}
    summary = {"test_accuracy": test_acc + jitter, "best": {"val_accuracy": test_acc},
               "total_seconds": 60.0, "test": test}
    (folder / "summary.json").write_text(json.dumps(summary))
    (folder / "eval").mkdir()  # what cutmix-eval writes
    (folder / "eval" / "eval.json").write_text(json.dumps(
        {"clean_accuracy": test_acc, "mean_corruption_accuracy": test_acc - 0.2 + jitter}))


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    root = tmp_path / "multirun"
    job = 0
    for arm, (test_acc, train_acc, conf_wrong) in ARMS.items():
        for seed in range(3):
            _fake_run(root / f"{job}_x", [f"experiment={arm}", f"trainer.seed={seed}",
                                          "data.root=/somewhere"], test_acc, train_acc,
                      conf_wrong, seed)
            job += 1
    return root


def test_report_writes_tables_plots_and_claims(sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    report = build_report([sweep], out, command="cutmix-report multirun")
    text = report.read_text()
    assert "12 runs in 4 arms (arm key: experiment)" in text
    assert "| experiment=baseline | 80.20 ± " in text  # mean of 0.80, 0.802, 0.804
    assert "### test ECE, 15 bins (%)" in text
    assert "| CutMix reduces training accuracy slightly | clean_train_accuracy |" in text
    # cutmix_staged - baseline on clean-train accuracy: -5 points; the seed jitter (0, 0.2, 0.4
    # points, sd 0.2) gives a Welch half-width of t(4) * sqrt(2 * 0.04 / 3) = 0.45.
    claim = next(ln for ln in text.splitlines() if ln.startswith("| CutMix reduces training"))
    assert "| -5.00 ± 0.45 | supported |" in claim
    harm = next(ln for ln in text.splitlines() if "applied from the start" in ln)
    assert harm.endswith("supported |")
    robust = next(ln for ln in text.splitlines() if "MixUp is more robust" in ln)
    assert robust.endswith("| 0.00 ± 0.45 | inconclusive |")  # equal flip rates
    # cutmix-eval's eval.json: mean corruption accuracy follows test accuracy, +2 points.
    corrupt = next(ln for ln in text.splitlines() if "robustness to corruptions" in ln)
    assert "| mean_corruption_accuracy | cutmix_staged − baseline | 2.00 ± 0.45 | supported |" \
        in corrupt
    assert "### mean accuracy under CIFAR-10-C corruptions, cutmix-eval (%)" in text
    missing = [ln for ln in text.splitlines() if "not measured" in ln]
    assert not missing  # every claim's arms are present
    for name in ("accuracy_curves.png", "generalization_gap.png", "reliability.png",
                 "flip_rate.png"):
        assert (out / name).stat().st_size > 1000, name


def test_report_refuses_runs_that_differ_in_more_than_the_arm(sweep: Path,
                                                              tmp_path: Path) -> None:
    _fake_run(sweep / "99_other", ["experiment=baseline", "trainer.seed=0",
                                   "data.train_subset=1000"], 0.7, 0.9, 0.5, 0)
    with pytest.raises(ReportError, match="differ in more than the arm and the seed"):
        build_report([sweep], tmp_path / "r")
    report = build_report([sweep], tmp_path / "r", arm_keys=["experiment"])
    assert "arm key: experiment" in report.read_text()


def test_cli_error_is_one_line(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-c", "from cutmix_runner.report import main; main()",
                             str(tmp_path / "nothing")], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "no such run" in result.stderr
