"""The third study's design (docs/study.md): its presets differ from their reference only where
intended, doses are matched where the design says so, each seed draws its own data, and every
run counts the images it mixed."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from cutmix_runner.config import expected_dose
from cutmix_runner.data import build_splits
from cutmix_runner.summary import dose
from cutmix_runner.validation import validate
from tests.helpers import ROOT, SMOKE, compose, leaves, script_module, train_in_process


def _config(preset: str, *overrides: str) -> dict[str, object]:
    return leaves(OmegaConf.to_container(compose(f"experiment={preset}", *overrides),
                                          resolve=True))


def _differences(preset: str, reference: str = "study_none") -> dict[str, object]:
    arm, ref = _config(preset, "trainer.seed=3"), _config(reference, "trainer.seed=3")
    assert arm.keys() == ref.keys()
    return {k: arm[k] for k in arm if arm[k] != ref[k]}


def _regularizer(stage: str, **values: object) -> dict[str, object]:
    """The keys of `stage`'s regularizer that a study arm sets against study_none's `none`."""
    return {f"schedule.stages.{stage}.regularizer.{k}": v for k, v in values.items()}


CUTMIX = {"name": "cutmix", "mode": "elem"}
MILD = {**CUTMIX, "prob": 0.2, "max_area": 0.2}
STRONG = {**CUTMIX, "prob": 0.8}  # max_area 1.0 is the schema's default, as in study_none
DIRECTION = {**CUTMIX, "max_area": 0.3}
MIXUP = {"name": "mixup", "mode": "elem", "mixup_alpha": 1.0}
FROZEN = {"schedule.stages.adapt.unfreeze_blocks": 1, "schedule.stages.late.unfreeze_blocks": 1}


def _stages(values: dict[str, object], probs: dict[str, float]) -> dict[str, object]:
    out: dict[str, object] = {}
    for stage, prob in probs.items():
        out.update(_regularizer(stage, **{**values, "prob": prob}))
    return {k: v for k, v in out.items() if not (k.endswith(".prob") and v == 0.0)}


INCREASING = _stages(DIRECTION, {"head": 0.0, "adapt": 0.2, "late": 0.4})
ARMS = {
    "study_early_mild": _stages(MILD, {"head": 0.2, "adapt": 0.2}),
    "study_early_strong": _stages(STRONG, {"head": 0.8, "adapt": 0.8}),
    "study_late_mild": _stages(MILD, {"late": 0.2}),
    "study_late_strong": _stages(STRONG, {"late": 0.8}),
    "study_increasing": INCREASING,
    "study_constant": _stages(DIRECTION, {"head": 0.25, "adapt": 0.25, "late": 0.25}),
    "study_decreasing": _stages(DIRECTION, {"head": 0.4, "adapt": 0.4, "late": 0.1}),
    "study_frozen_none": FROZEN,
    "study_frozen_increasing": {**INCREASING, **FROZEN},
    "study_mixup_increasing": _stages(MIXUP, {"head": 0.0, "adapt": 0.2, "late": 0.4}),
}


@pytest.mark.parametrize(("preset", "expected"), ARMS.items())
def test_study_arms_differ_from_the_unmixed_arm_only_in_intended_keys(
        preset: str, expected: dict[str, object]) -> None:
    assert _differences(preset) == expected


def test_the_unmixed_arm_is_the_staged_recipe_without_mixing_and_with_fixed_stage_lengths() -> None:
    expected = {
        "data.split_seed": 3, "trainer.flip_subset": 2000, "trainer.test_flip": False,
        "schedule.name": "study_short", "schedule.stages.head.patience": 0,
        "schedule.stages.head.min_delta": 0.0,
        **_regularizer("adapt", name="none", prob=0.0, min_area=0.0, max_area=1.0),
        **_regularizer("late", name="none", prob=0.0, max_area=1.0)}
    assert _differences("study_none", "cutmix_staged") == expected


def test_the_long_regime_triples_every_stage_and_changes_nothing_else() -> None:
    short = validate(compose("experiment=study_none")).schedule.stages
    long = validate(compose("experiment=study_none", "schedule=study_long")).schedule.stages
    assert {k: 3 * s.epochs for k, s in short.items()} == {k: s.epochs for k, s in long.items()}
    # The warmup keeps its share of each stage.
    assert [3 * s.warmup_epochs for s in short.values()] == pytest.approx(
        [s.warmup_epochs for s in long.values()])
    changed = {k for k, v in _config("study_none", "schedule=study_long").items()
               if v != _config("study_none")[k]}
    assert changed == {"schedule.name", *(f"schedule.stages.{k}.{key}" for k in short
                                          for key in ("epochs", "warmup_epochs"))}


@pytest.mark.parametrize("regime", ["study_short", "study_long"])
def test_arms_compared_on_timing_or_direction_have_equal_expected_doses(regime: str) -> None:
    def dose_of(preset: str) -> float:
        return expected_dose(validate(compose(f"experiment={preset}",
                                              f"schedule={regime}")).schedule)

    scale = 3 if regime == "study_long" else 1
    for strength, per_stage in (("mild", 0.2), ("strong", 0.8)):
        early, late = dose_of(f"study_early_{strength}"), dose_of(f"study_late_{strength}")
        assert early == pytest.approx(late) == pytest.approx(2 * per_stage * scale)
    direction = [dose_of(f"study_{d}") for d in ("increasing", "constant", "decreasing")]
    assert direction == pytest.approx([1.0 * scale] * 3)
    assert dose_of("study_mixup_increasing") == pytest.approx(direction[0])
    assert dose_of("study_none") == 0


def test_the_training_subset_and_validation_split_follow_the_seed(cifar_folder: Path) -> None:
    def draw(seed: int, val_size: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
        run = validate(compose("experiment=study_none", f"trainer.seed={seed}"))
        assert run.data.split_seed == seed
        cfg = dataclasses.replace(run.data, root=str(cifar_folder), val_size=val_size,
                                  train_subset=30)
        splits = build_splits(cfg)
        return splits.train_x, splits.val_x

    (train0, val0), (train0_again, _), (train1, val1) = draw(0), draw(0), draw(1)
    assert torch.equal(train0, train0_again)
    assert not torch.equal(train0, train1) and not torch.equal(val0, val1)
    # With no validation split to differ, the subset alone still follows the seed.
    assert not torch.equal(draw(0, val_size=0)[0], draw(1, val_size=0)[0])


def test_dose_adds_up_mixed_images_per_stage() -> None:
    records = [{"stage": "head", "train_images": 100, "mixed_images": 0},
               {"stage": "adapt", "train_images": 100, "mixed_images": 17},
               {"stage": "late", "train_images": 100, "mixed_images": 41},
               {"stage": "late", "train_images": 100, "mixed_images": 38}]
    assert dose(records) == {"mixed_images": 96, "train_images": 400,
                             "mixed_images_per_stage": {"head": 0, "adapt": 17, "late": 79}}


def test_a_run_records_the_images_it_mixed(tmp_path: Path) -> None:
    """Per epoch and in the summary; with mode=elem about prob of the images of each epoch."""
    summary = train_in_process(tmp_path / "run", *SMOKE, "trainer.num_threads=1",
                               "schedule.stages.late.regularizer.mode=elem",
                               "schedule.stages.late.regularizer.prob=0.5")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    late = [r for r in records if r["stage"] == "late"]
    assert summary["dose"]["mixed_images"] == sum(r["mixed_images"] for r in records)
    assert summary["dose"]["mixed_images_per_stage"]["late"] == sum(
        r["mixed_images"] for r in late)
    assert summary["dose"]["train_images"] == sum(r["train_images"] for r in records)
    images = sum(r["train_images"] for r in late)
    # Binomial(images, 0.5 * (1 - 1/32)) within 4 standard errors (a batch of 32 has its own
    # images as partners with chance 1/32 each, and those stay whole).
    p = 0.5 * (1 - 1 / 32)
    assert abs(summary["dose"]["mixed_images_per_stage"]["late"] - p * images) < 4 * (
        images * p * (1 - p)) ** 0.5


@pytest.mark.parametrize(("preset", "expected"), [
    ("default_no_mixing", {**_regularizer("adapt", name="none", prob=0.0),
                           **_regularizer("late", name="none", prob=0.0)}),
    ("default_mixing_off_last", {"schedule.stages.late.regularizer.ramp.kind": "step",
                                 "schedule.stages.late.regularizer.ramp.at": [2],
                                 "schedule.stages.late.regularizer.ramp.prob_steps": [0.0]}),
])
def test_full_data_arms_differ_from_the_default_run_only_in_mixing(
        preset: str, expected: dict[str, object]) -> None:
    assert _differences(preset, "default_run") == expected
    late = validate(compose(f"experiment={preset}")).schedule.stages["late"].regularizer
    if preset == "default_mixing_off_last":  # on in the late stage's first epoch, off in its last
        assert [late.values_at(e, 2)[0] for e in range(2)] == [0.3, 0.0]


def test_time_to_accuracy_is_the_elapsed_time_of_the_first_epoch_at_each_level() -> None:
    from cutmix_runner.summary import time_to_accuracy

    records = [{"val_accuracy": 0.85, "elapsed_seconds": 50.0},
               {"val_accuracy": 0.905, "elapsed_seconds": 110.0},
               {"val_accuracy": 0.90, "elapsed_seconds": 160.0},
               {"val_accuracy": 0.915, "elapsed_seconds": 220.0}]
    assert time_to_accuracy(records, [0.9, 0.91, 0.92]) == {"0.90": 110.0, "0.91": 220.0,
                                                           "0.92": None}


def test_study_eval_stops_on_a_run_restored_without_weights_and_skips_evaluated_ones(
        tmp_path: Path) -> None:
    """`make study-eval` scores each finished MixUp / CutMix run once; a run restored from
    docs/results (summary, no checkpoints) stops the target with the line that says how to retrain
    it, instead of an evaluation that cannot load weights."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "cutmix-train").touch()  # newer than pyproject.toml: `setup` has nothing to do
    calls = tmp_path / "calls.txt"
    fake_eval = bin_dir / "cutmix-eval"
    fake_eval.write_text(f"#!{sys.executable}\nimport sys\n"
                         f"open({str(calls)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')\n")
    fake_eval.chmod(0o755)
    study = tmp_path / "study"
    name = "experiment=study_{},schedule=study_long,trainer.seed=0"
    evaluated, trained = study / name.format("increasing"), study / name.format("mixup_increasing")
    for run in (evaluated, trained):
        (run / "checkpoints").mkdir(parents=True)
        (run / "summary.json").write_text("{}")
    (evaluated / "eval").mkdir()
    (evaluated / "eval" / "eval.json").write_text("{}")

    def study_eval() -> subprocess.CompletedProcess[str]:
        return subprocess.run(["make", "--no-print-directory", "study-eval", f"BIN={bin_dir}",
                               f"STUDY_DIR={study}"], cwd=ROOT, capture_output=True, text=True)

    done = study_eval()
    assert done.returncode == 0, done.stderr
    assert calls.read_text().splitlines() == [
        f"{trained} --limit 2000 --severities 1-5 --batch-size 32 --corruptions "
        "gaussian_noise,shot_noise,impulse_noise,defocus_blur,glass_blur,motion_blur,zoom_blur,"
        "snow,fog,brightness,contrast,elastic_transform,pixelate,jpeg_compression,frost"]

    calls.unlink()
    (trained / "checkpoints").rmdir()  # restored from docs/results: no weights on this machine
    refused = study_eval()
    assert refused.returncode != 0 and not calls.exists()
    assert "restored without its weights" in refused.stderr
    assert f"mv '{trained}/summary.json' '{trained}/summary.restored.json'" in refused.stderr


def test_study_cost_counts_each_cell_at_its_fastest_seed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """scripts/study_cost.py, the command behind docs/study.md's "about N h alone": runs that
    differ only in their seed form one cell, costed at its fastest run times its runs."""
    study_cost = script_module("study_cost", monkeypatch)
    seconds = {"experiment=a,trainer.seed=0": 100, "experiment=a,trainer.seed=1": 700,
               "experiment=b,trainer.seed=0": 50, "trainer.seed=1,experiment=b": 60}
    for name, total in seconds.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(
            json.dumps({"total_seconds": total, "cpu_isa": "avx512"}))
    assert study_cost.cost(tmp_path) == {"avx512": (4, 910.0, 2 * 100 + 2 * 50)}
    assert study_cost.main([str(tmp_path)]) == 0
    assert "4 runs" in capsys.readouterr().out
    assert study_cost.main([str(tmp_path / "missing")]) == 2


def test_study_full_data_alone_restores_finished_runs_first(tmp_path: Path) -> None:
    """Run by itself on a new machine, the full-data row first takes its finished runs back
    from docs/results/study/runs, so it skips them instead of training them again."""
    (tmp_path / "cutmix-train").touch()  # newer than pyproject.toml: `setup` has nothing to do
    recipe = subprocess.run(["make", "-n", "--no-print-directory", "study-full-data",
                             f"BIN={tmp_path}"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.splitlines()
    assert recipe[0].endswith("scripts/collect_runs.py docs/results/study/runs multirun/study3")
    assert "cutmix-train -m" in recipe[1]
