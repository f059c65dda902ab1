"""cutmix-report: arm and data-size grouping, refusal of mixed comparisons, claims paired by
seed with Holm and MDE columns, the 2 x 2 section and the plots (stats.py: test_stats.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from cutmix_runner.report import ReportError, build_report
from tests.helpers import run_tool

ARMS = {"baseline": (0.80, 0.95, 0.06), "cutmix_staged": (0.82, 0.90, 0.03),
        "cutmix_from_start": (0.78, 0.88, 0.04), "mixup_staged": (0.81, 0.89, 0.02)}


def _fake_run(folder: Path, overrides: list[str], test_acc: float, train_acc: float,
              conf_wrong: float, seed: int, arm_noise: float = 0.0) -> None:
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    # A seed's shared offset (the same in every arm: paired analysis removes it) plus a little
    # arm-specific noise, so paired intervals are not degenerate.
    jitter = 0.002 * seed + arm_noise * ((seed * 7919) % 5 - 2) / 1000
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


def _row(text: str, start: str) -> list[str]:
    """The cells of the claims-table row that starts with `start`."""
    line = next(ln for ln in text.splitlines() if ln.startswith(f"| {start}"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_report_writes_tables_plots_and_claims(sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    report = build_report([sweep], out, command="cutmix-report multirun")
    text = report.read_text()
    assert "12 runs in 4 arms (arm key: experiment), strata: full" in text
    assert "| experiment=baseline | full | 80.20 ± " in text  # mean of 0.80, 0.802, 0.804
    assert "### test ECE, 15 bins (%)" in text
    assert "**Fewer than 5 seeds:** experiment=baseline (full): 3" in text
    # cutmix_staged - baseline on clean-train accuracy: -5 points in every seed (the seed's
    # offset is shared), so the paired interval has zero width.
    cells = _row(text, "CutMix reduces training accuracy slightly")
    assert cells[1:6] == ["clean_train_accuracy", "CutMix − baseline", "full",
                          "3", "-5.00 ± 0.00"]
    assert cells[10:12] == ["supported", "paired t, 3 common seeds; cutmix_staged − baseline"]
    assert _row(text, "CutMix from the start, with earlier unfreezing")[10] == "supported"
    # Equal flip rates in every seed: shown inside the ±0.5 point margin by the TOST.
    robust = _row(text, "MixUp is more robust")
    assert robust[5] == "0.00 ± 0.00" and robust[10] == "no effect (within ±0.5 points)"
    # cutmix-eval's eval.json: mean corruption accuracy follows test accuracy, +2 points.
    assert _row(text, "CutMix improves robustness to corruptions")[5:6] == ["2.00 ± 0.00"]
    assert "### mean accuracy under CIFAR-10-C corruptions, cutmix-eval (%)" in text
    # The 2 x 2 did not run here: its rows say so instead of guessing.
    assert _row(text, "Timing matters more than strength")[10] == "not measured (arms missing)"
    assert _row(text, "CutMix struggles when the dataset")[3] == "needs two sizes"
    assert "study_none" not in text  # the third study's claims: none of its arms ran
    for name in ("accuracy_curves.png", "generalization_gap.png", "reliability.png",
                 "flip_rate.png", "forest.png"):
        assert (out / name).stat().st_size > 1000, name
    assert not (out / "interaction.png").exists()  # no 2 x 2 arms
    with pytest.raises(ReportError, match="already exists; pass --force"):
        build_report([sweep], out)
    assert build_report([sweep], out, force=True) == report


def test_any_sweep_gets_paired_differences_with_the_reference_arm(tmp_path: Path) -> None:
    """A user's own two-arm sweep, named by any override: differences and intervals, not
    "arms missing"."""
    root = tmp_path / "mine"
    for prob, accuracy in (("0", 0.80), ("0.3", 0.83)):
        for seed in range(4):
            _fake_run(root / f"p{prob}_s{seed}", [f"schedule.stages.adapt.regularizer.prob={prob}",
                                                  f"trainer.seed={seed}"],
                      accuracy, 0.95, 0.5, seed, arm_noise=1.0 + float(prob))
    text = build_report([root], tmp_path / "r", reference=["0"]).read_text()
    line = next(ln for ln in text.splitlines()
                if ln.startswith("| full | schedule.stages.adapt.regularizer.prob=0.3 |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[2] == "schedule.stages.adapt.regularizer.prob=0" and cells[3] == "test_accuracy"
    assert cells[4] == "4" and cells[5].startswith("3.0") and "paired t" in cells[10]
    assert float(cells[8].replace("< ", "")) < 0.05  # Holm over the comparison rows


STUDY = {  # preset -> test accuracy at 1,000 and 5,000 images; CutMix's gain shrinks with data
    "baseline": (0.600, 0.800), "cutmix_early_mild": (0.605, 0.800),
    "cutmix_early_strong": (0.590, 0.790), "cutmix_late_mild": (0.640, 0.810),
    "cutmix_late_strong": (0.630, 0.805), "frozen_baseline": (0.550, 0.700),
    "frozen_cutmix_mild": (0.580, 0.720), "unfrozen_baseline": (0.610, 0.810),
    "unfrozen_cutmix_mild": (0.615, 0.812)}


@pytest.fixture
def study(tmp_path: Path) -> Path:
    root = tmp_path / "study"
    for job, (arm, sizes) in enumerate(STUDY.items()):
        for size, accuracy in zip((1000, 5000), sizes, strict=True):
            for seed in range(5 if arm != "cutmix_late_strong" or size == 1000 else 4):
                _fake_run(root / f"{job}_{size}_{seed}",
                          [f"experiment={arm}", f"data.train_subset={size}",
                           f"trainer.seed={seed}"], accuracy, 0.95, 0.6, seed,
                          arm_noise=0.5 + job / 4)
    return root


def test_study_report_tests_the_factorial_and_new_claims(study: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    text = build_report([study], out).read_text()
    assert "89 runs in 9 arms (arm key: experiment), strata: 1000, 5000" in text
    assert "**Fewer than 5 seeds:** experiment=cutmix_late_strong (5000): 4." in text
    # 1,000 images: timing = ((64 + 63) - (60.5 + 59)) / 2 = 3.75 points; strength =
    # ((60.5 + 64) - (59 + 63)) / 2 = 1.25; interaction = (64 - 60.5) - (63 - 59) = -0.5.
    assert "| timing | 3.75 ± " in text and "| strength | 1.25 ± " in text
    assert "| interaction | -0.50 ± " in text
    timing = _row(text, "CutMix hurts while the backbone is still adapting")
    assert timing[3:5] == ["1000", "5"] and timing[5].startswith("3.75 ± ")
    assert timing[10] == "supported"
    magnitude = _row(text, "Timing matters more than strength")
    assert magnitude[5].startswith("2.50 ± ") and magnitude[10] == "supported"
    assert "intersection-union" in magnitude[11]
    reverse = _row(text, "Strength matters more than timing")
    assert reverse[5].startswith("-2.50 ± ") and reverse[10] == "inconclusive"
    frozen = _row(text, "CutMix helps more with most of the backbone frozen")
    assert frozen[5].startswith("2.50 ± ")  # (58 - 55) - (61.5 - 61) at 1,000 images
    # Data size: (64 - 60 at 1,000) - (81 - 80 at 5,000) = +3 points, against the post's
    # "CutMix struggles when the dataset is extremely small".
    size = _row(text, "CutMix struggles when the dataset")
    assert size[3] == "1000 vs 5000" and size[5].startswith("3.00 ± ")
    assert size[10] == "contradicted"
    # Holm: the adjusted p is never below the raw one.
    for line in text.splitlines():
        if line.startswith("| ") and " paired t" in line and "CutMix" in line:
            cells = [c.strip() for c in line.strip("|").split("|")]
            raw, holm = (float(c.replace("< ", "")) for c in (cells[7], cells[8]))
            assert holm >= raw
    for name in ("interaction.png", "forest.png", "accuracy_curves_1000.png",
                 "reliability_5000.png"):
        assert (out / name).stat().st_size > 1000, name


def test_report_refuses_runs_that_differ_in_more_than_the_arm(sweep: Path,
                                                              tmp_path: Path) -> None:
    _fake_run(sweep / "99_other", ["experiment=baseline", "trainer.seed=0",
                                   "model.image_size=64"], 0.7, 0.9, 0.5, 0)
    with pytest.raises(ReportError, match="differ in more than the arm, the seed and the strata"):
        build_report([sweep], tmp_path / "r")
    # Naming only the experiment as the arm would pool two seed-0 baseline runs: refused too.
    with pytest.raises(ReportError, match="two runs of arm experiment=baseline, train size full"):
        build_report([sweep], tmp_path / "r", arm_keys=["experiment"])
    report = build_report([sweep], tmp_path / "r", arm_keys=["experiment", "model.image_size"])
    text = report.read_text()
    assert "arm key: experiment, model.image_size" in text
    # Two arms ran the baseline preset now: claims against "baseline" are not pooled over them.
    assert "cutmix_staged − baseline |" not in text
    assert "| CutMix from the start, with earlier unfreezing" in text  # other arms still compare
    assert "13 runs in 5 arms" in text


def test_cli_error_is_one_line(tmp_path: Path) -> None:
    result = run_tool("report", str(tmp_path / "nothing"))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "no such run" in result.stderr


def test_a_summary_without_results_is_refused_in_one_line(sweep: Path, tmp_path: Path) -> None:
    (next(sweep.glob("*/summary.json"))).write_text("{}")
    result = run_tool("report", str(sweep), "--out", str(tmp_path / "r"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "lacks test_accuracy" in result.stderr and not (tmp_path / "r").exists()
