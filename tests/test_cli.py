"""End-to-end runs of the CLI on synthetic data, and its one-line errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers import SMOKE, train_cli, write_cifar_folder


def _tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_end_to_end_writes_every_artifact(smoke_run: Path) -> None:
    out = smoke_run  # in-process; the CLI runs below check .hydra/ and cli.log
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in records][-2:] == ["adapt", "late"]
    assert {r["stage"] for r in records} == {"head", "adapt", "late"}
    for r in records:
        for key in ("stage", "epoch", "lr_start", "lr_end", "train_loss", "clean_train_accuracy",
                    "val_accuracy", "val_loss", "images_per_second", "seconds"):
            assert key in r, key
        assert 0.0 <= r["val_accuracy"] <= 1.0
        for key in ("val_ece", "val_ece_temp_scaled", "val_temperature", "val_brier",
                    "val_nll", "val_confidence_correct", "val_confidence_wrong",
                    "val_flip_rate_noise", "val_flip_rate_shift"):
            assert key in r, key
        assert set(r["lr_end"]) >= {"head/decay"}
    # Stage-1 has no CutMix; later stages do.
    assert all(r["mixed_fraction"] == 0 for r in records if r["stage"] == "head")
    assert any(r["mixed_fraction"] > 0 for r in records if r["stage"] == "late")
    assert all(r["regularizer"] == "cutmix" for r in records if r["stage"] != "head")
    # Each stage's last record says what ended it.
    ends = [r.get("stage_end") for r in records]
    assert ends[-1] == "epochs" and sum(e is not None for e in ends) == 3
    summary = json.loads((out / "summary.json").read_text())
    for key in ("test_accuracy", "test_loss", "best", "stages", "device", "versions",
                "test_accuracy_single_view", "test_loss_single_view"):
        assert key in summary
    assert summary["test_protocol"] == "flip-averaged"  # trainer.test_flip defaults to true
    test = summary["test"]
    assert len(test["per_class_accuracy"]) == 10 and len(test["confusion_matrix"]) == 10
    assert sum(map(sum, test["confusion_matrix"])) == summary["test_size"]
    assert 0 <= test["ece"] <= 1 and test["temperature"] > 0
    assert [s["name"] for s in summary["stages"]] == ["head", "adapt", "late"]
    assert all(s["ended_by"] in ("epochs", "plateau", "gap") for s in summary["stages"])
    assert summary["best"]["val_accuracy"] == max(r["val_accuracy"] for r in records)
    best = torch.load(out / "checkpoints" / "best.pt", weights_only=False)
    last = torch.load(out / "checkpoints" / "last.pt", weights_only=False)
    assert best["stage"] == summary["best"]["stage"] and best["epoch"] == summary["best"]["epoch"]
    assert last["stage"] == "late" and last["global_epoch"] == len(records)
    assert "optimizer" in last and "model" in last


def test_plateau_and_gap_triggers_end_stages_early(tmp_path: Path) -> None:
    out = tmp_path / "run"
    # head: validation accuracy cannot improve by 0.99, so patience 1 ends it after epoch 2;
    # adapt: the gap (clean-train minus validation) always exceeds -0.99: it ends after epoch 1.
    result = train_cli(*SMOKE, f"hydra.run.dir={out}", "schedule.stages.head.epochs=5",
                     "schedule.stages.head.min_delta=0.99", "schedule.stages.adapt.epochs=4",
                     "schedule.stages.adapt.max_gap=-0.99")
    assert result.returncode == 0, result.stderr[-2000:]
    for artifact in (".hydra/config.yaml", ".hydra/overrides.yaml", "cli.log"):
        assert (out / artifact).exists(), artifact
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    ends = [(r["stage"], r["epoch"], r.get("stage_end")) for r in records]
    assert ends == [("head", 1, None), ("head", 2, "plateau"), ("adapt", 1, "gap"),
                    ("late", 1, "epochs")]
    summary = json.loads((out / "summary.json").read_text())
    assert [(s["name"], s["epochs"], s["ended_by"]) for s in summary["stages"]] == [
        ("head", 2, "plateau"), ("adapt", 1, "gap"), ("late", 1, "epochs")]


def test_multirun_sweep_gives_each_run_its_own_directory(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    result = train_cli("-m", *SMOKE, "schedule.stages.adapt.regularizer.prob=0,0.3",
                     "schedule.stages.head.epochs=1", f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, result.stderr[-2000:]
    runs = sorted(p.parent for p in sweep.glob("*/summary.json"))
    assert len(runs) == 2
    # One line per job, then where the sweep is and how to compare its runs.
    jobs = [ln for ln in result.stderr.splitlines() if re.match(r"cutmix-train: job \d ", ln)]
    assert len(jobs) == 2 and all(str(sweep) in ln and "test " in ln for ln in jobs)
    assert result.stderr.splitlines()[-1] == (
        f"cutmix-train: sweep finished, 2 runs in {sweep}; compare them: "
        f"cutmix-report {sweep} --out {sweep}/report")
    assert "Traceback" not in result.stderr
    probs = []
    for run in runs:
        records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        probs.append(next(r["reg_prob"] for r in records if r["stage"] == "adapt"))
    assert sorted(probs) == [0.0, 0.3]
    # The report groups the sweep by the swept key.
    from cutmix_runner.report import build_report

    text = build_report([sweep], tmp_path / "report").read_text()
    assert "2 runs in 2 arms (arm key: schedule.stages.adapt.regularizer.prob)" in text
    assert "### test ECE, 15 bins (%)" in text
    assert (tmp_path / "report" / "reliability.png").exists()


def _assert_one_line_error(result, pattern: str) -> None:
    assert result.returncode != 0
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert pattern in lines[0], lines[0]


@pytest.mark.parametrize("args, pattern", [
    (("trainer.bach_size=4",), "bach_size"),
    (("trainer.batch_size=many",), "trainer.batch_size"),
    (("schedule.stages.late.regularizer.cutmix_alpha=0",), "cutmix_alpha: must be > 0"),
    (("schedule.stages.adapt.regularizer.prob=-0.5",), "schedule.stages.adapt.regularizer.prob"),
    (("schedule.stages.adapt.regularizer.min_area=0.9",), "min_area"),
    (("schedule.stages.adpt.epochs=3",), "adpt"),
    (("model.name=resnet_does_not_exist",), "unknown timm model 'resnet_does_not_exist'"),
    (("schedule.stages.late.unfreeze_blocks=40",), "unfreeze_blocks"),
    (("trainer.batch_size=100000",), "larger than the training set"),
    (("+schedule.stages.final.epochs=1",), "schedule.stages.final: a new stage cannot be added"),
])
def test_bad_input_gets_one_line(args: tuple[str, ...], pattern: str, smoke_run: Path,
                                 tmp_path: Path) -> None:
    before = _tree_bytes(smoke_run)
    result = train_cli(*SMOKE, f"hydra.run.dir={tmp_path / 'run'}", *args)
    _assert_one_line_error(result, pattern)
    assert _tree_bytes(smoke_run) == before
    assert not (tmp_path / "run").exists()  # the refused run left no folder behind


def test_hydra_options_may_follow_the_overrides() -> None:
    """`cutmix-train KEY=VALUE --cfg job`, as any Hydra app takes it: what the runner adds to
    the command line must not land after the user's options (argparse then refuses it)."""
    result = train_cli(*SMOKE, "model.drop_rate=0.1", "--cfg", "job")
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["model"]["drop_rate"] == 0.1


def test_output_directory_not_writable(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    result = train_cli(*SMOKE, f"hydra.run.dir={blocker / 'run'}")
    _assert_one_line_error(result, "Not a directory")


def test_empty_stage_list(tmp_path: Path) -> None:
    (tmp_path / "conf" / "schedule").mkdir(parents=True)
    (tmp_path / "conf" / "schedule" / "empty.yaml").write_text("name: empty\nstages: {}\n")
    result = train_cli("--config-dir", str(tmp_path / "conf"), *SMOKE, "schedule=empty",
                     f"hydra.run.dir={tmp_path / 'run'}")
    _assert_one_line_error(result, "schedule.stages: the stage list is empty")


def test_missing_data_folder_with_downloads_off(tmp_path: Path) -> None:
    result = train_cli("data=cifar10", "model=tiny", "trainer.progress=false",
                     f"data.root={tmp_path / 'nope'}", f"hydra.run.dir={tmp_path / 'run'}")
    _assert_one_line_error(result, "CIFAR-10 not found")


def _corrupt(folder: Path) -> None:
    (folder / "data_batch_4").write_bytes(b"garbage")


def _truncate(folder: Path) -> None:
    raw = (folder / "data_batch_4").read_bytes()
    (folder / "data_batch_4").write_bytes(raw[: len(raw) // 3])


def _wrong_shape(folder: Path) -> None:
    import pickle

    import numpy as np

    with open(folder / "data_batch_4", "wb") as f:
        pickle.dump({"data": np.zeros((20, 1024), dtype=np.uint8), "labels": [0] * 20}, f)


@pytest.mark.parametrize("damage, pattern", [(_corrupt, "corrupt CIFAR-10 file"),
                                             (_truncate, "data_batch_4"),
                                             (_wrong_shape, "expected data of shape (N, 3072)")])
def test_bad_data_files(damage, pattern: str, tmp_path: Path) -> None:
    folder = tmp_path / "cifar" / "cifar-10-batches-py"
    write_cifar_folder(folder)
    damage(folder)
    before = _tree_bytes(tmp_path)
    result = train_cli("data=cifar10", "model=tiny", "trainer.progress=false",
                     f"data.root={folder.parent}", f"hydra.run.dir={tmp_path / 'run'}")
    _assert_one_line_error(result, pattern)
    assert _tree_bytes(tmp_path) == before  # the data untouched, and no run folder made


def test_weights_that_do_not_fit(tmp_path: Path) -> None:
    import timm
    import torch

    path = tmp_path / "resnet.pt"
    torch.save(timm.create_model("test_resnet").state_dict(), path)
    before = _tree_bytes(tmp_path)
    result = train_cli(*SMOKE, f"model.weights={path}", f"hydra.run.dir={tmp_path / 'run'}")
    _assert_one_line_error(result, "do not fit")
    assert _tree_bytes(tmp_path) == before  # the weights untouched, and no run folder made


def test_a_refused_run_leaves_a_finished_run_byte_identical(tmp_path: Path) -> None:
    """Into a directory that holds a finished run, another seed is refused (without resume: the
    directory is taken; with resume=auto: a different config), and every file there, .hydra/
    included, is left as it was: Hydra's .hydra/ files are written only once the checks pass."""
    run = tmp_path / "finished"
    assert train_cli(*SMOKE, f"hydra.run.dir={run}").returncode == 0
    assert yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())[0] == SMOKE[0]
    before = _tree_bytes(run)
    for extra, pattern in (((), "already holds a run"),
                           (("trainer.resume=auto",), "different config")):
        result = train_cli(*SMOKE, "trainer.seed=7", f"hydra.run.dir={run}", *extra)
        _assert_one_line_error(result, pattern)
        assert _tree_bytes(run) == before
