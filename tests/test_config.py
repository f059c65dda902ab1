from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from cutmix_runner.cli import CONFIG_DIR
from cutmix_runner.config import ConfigError
from cutmix_runner.validation import validate
from tests.helpers import leaves


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=list(overrides))


def test_default_config_validates_into_three_stages() -> None:
    run = validate(_compose())
    assert list(run.schedule.stages) == ["head", "adapt", "late"]
    head, adapt, late = run.schedule.stages.values()
    assert head.regularizer.name == "none" and head.unfreeze_blocks <= 1 and head.patience > 0
    assert adapt.regularizer.name == late.regularizer.name == "cutmix"
    assert 0 < adapt.regularizer.prob < late.regularizer.prob
    assert adapt.regularizer.max_area <= 0.25
    assert adapt.lr_backbone < head.lr_head
    assert all(s.regularizer.label_smoothing == 0 for s in run.schedule.stages.values())
    assert run.model.weights == "packaged" and run.model.image_size == 96


def test_a_config_not_composed_from_the_yaml_is_refused_naming_the_key() -> None:
    """The schema leaves the keys the YAML sets empty: a hand-made config lacks them, and the
    refusal says which."""
    with pytest.raises(ConfigError, match="^model.name: no value; the recipe's YAML"):
        validate({})
    stage = {"epochs": 1, "lr_head": 0.1, "lr_backbone": 0.1}  # no unfreeze_blocks
    cfg = OmegaConf.to_container(_compose())
    cfg["schedule"]["stages"] = {"only": stage}
    with pytest.raises(ConfigError, match="^schedule.stages.only.unfreeze_blocks: no value"):
        validate(cfg)


def test_default_run_is_the_staged_recipe_fitted_to_the_cpu_budget() -> None:
    """experiment=default_run (the default until 2026-12-07, and the study's full-data row)
    differs from cutmix_staged, the recipe the presets and the study run, only in what issue 11
    measured; trainer=gpu still replaces its trainer."""
    default = leaves(OmegaConf.to_container(_compose("experiment=default_run")))
    staged = leaves(OmegaConf.to_container(_compose("experiment=cutmix_staged")))
    assert {k: (staged[k], v) for k, v in default.items() if staged[k] != v} == {
        "trainer.batch_size": (128, 64), "trainer.eval_batch_size": (128, 64),
        "trainer.frozen_precision": ("fp32", "auto"), "trainer.clean_train_size": (2000, 1000),
        "trainer.flip_subset": (1000, 500), "schedule.stages.adapt.unfreeze_blocks": (3, 5)}
    gpu = validate(_compose("trainer=gpu"))
    assert gpu.trainer.batch_size == 512 and gpu.trainer.frozen_precision == "fp32"


def test_the_default_is_default_run_with_progressive_resizing() -> None:
    """`cutmix-train` with no experiment: default_run with Stage-1 and Stage-2 at 56 px and
    the late stage, and every evaluation, at 96 px (issue 23, measured on 3 seeds)."""
    default = leaves(OmegaConf.to_container(_compose()))
    previous = leaves(OmegaConf.to_container(_compose("experiment=default_run")))
    assert {k: (previous[k], v) for k, v in default.items() if previous[k] != v} == {
        "model.image_size": (80, 96), "schedule.stages.head.image_size": (None, 56),
        "schedule.stages.adapt.image_size": (None, 56)}
    assert validate(_compose()).schedule.stages["late"].image_size is None


def test_stage_override_path_used_by_sweeps() -> None:
    run = validate(_compose("schedule.stages.adapt.regularizer.prob=0.3"))
    assert run.schedule.stages["adapt"].regularizer.prob == 0.3


def test_experiment_smoke_composes() -> None:
    run = validate(_compose("experiment=smoke"))
    assert run.data.name == "synthetic" and run.model.name == "test_efficientnet"


@pytest.mark.parametrize("override", ["trainer.bach_size=4",
                                      "schedule.stages.head.regularizer.probb=0.1",
                                      "schedule.stages.head.unfreze_blocks=2",
                                      "schedule.stages.adpt.epochs=2"])
def test_unknown_keys_fail_at_composition(override: str) -> None:
    with pytest.raises((ConfigCompositionException, ConfigKeyError)):
        _compose(override)


def test_wrong_type_fails_at_composition() -> None:
    with pytest.raises((ConfigCompositionException, ValidationError)):
        _compose("trainer.batch_size=many")


A = "schedule.stages.adapt"


@pytest.mark.parametrize("override, key", [
    (f"{A}.regularizer.prob=-0.2", f"{A}.regularizer.prob"),
    (f"{A}.regularizer.prob=1.5", f"{A}.regularizer.prob"),
    (f"{A}.regularizer.cutmix_alpha=0", f"{A}.regularizer.cutmix_alpha"),
    (f"{A}.regularizer.min_area=0.5", f"{A}.regularizer.min_area"),
    (f"{A}.regularizer.name=cutmixx", f"{A}.regularizer.name"),
    (f"{A}.regularizer.label_smoothing=1.0", f"{A}.regularizer.label_smoothing"),
    (f"{A}.regularizer.ramp.kind=linear", None),
    ("schedule.stages.head.epochs=0", "schedule.stages.head.epochs"),
    ("schedule.stages.head.unfreeze_blocks=-3", "schedule.stages.head.unfreeze_blocks"),
    ("trainer.device=tpu", "trainer.device"),
    ("trainer.ema_decay=1.0", "trainer.ema_decay"),
    ("data.val_size=-1", "data.val_size"),
])
def test_bad_values_rejected_naming_the_key(override: str, key: str | None) -> None:
    if key is None:  # a valid override: a linear ramp with no end values is constant
        validate(_compose(override))
        return
    with pytest.raises(ConfigError) as info:
        validate(_compose(override))
    assert str(info.value).startswith(key)


def test_ramped_values_are_checked_at_every_epoch() -> None:
    with pytest.raises(ConfigError, match=r"late.regularizer.prob.*at stage epoch 3"):
        validate(_compose("schedule.stages.late.epochs=4",
                          "schedule.stages.late.regularizer.ramp.kind=linear",
                          "schedule.stages.late.regularizer.ramp.prob_end=1.4"))
    with pytest.raises(ConfigError, match="prob_steps"):
        validate(_compose("schedule.stages.late.regularizer.ramp.kind=step",
                          "schedule.stages.late.regularizer.ramp.at=[2]"))


PRESETS = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("name", PRESETS)
def test_every_experiment_preset_composes_and_validates(name: str) -> None:
    run = validate(_compose(f"experiment={name}"))
    assert list(run.schedule.stages)[:3] == ["head", "adapt", "late"]  # some add a stage after


def test_empty_stage_list_is_rejected() -> None:
    from omegaconf import OmegaConf

    raw = OmegaConf.to_container(_compose())
    raw["schedule"]["stages"] = {}
    with pytest.raises(ConfigError, match="schedule.stages: the stage list is empty"):
        validate(raw)


def test_misspelled_stage_field_in_a_schedule_file_is_rejected() -> None:
    from omegaconf import OmegaConf

    cfg = _compose()
    raw = OmegaConf.to_container(cfg)
    raw["schedule"]["stages"]["head"]["regularizer"]["probability"] = 0.5
    with pytest.raises(ConfigError, match="schedule.stages.head.regularizer.probability: no such"):
        validate(raw)


def test_a_plus_key_the_schema_does_not_have_is_refused() -> None:
    """Hydra's `+key` bypasses the composed config's struct flag; the schema check does not."""
    with pytest.raises(ConfigError, match="trainer.foo: no such key"):
        validate(_compose("+trainer.foo=1"))


def test_a_mistyped_group_option_lists_every_option_nearest_first() -> None:
    from hydra.errors import MissingConfigException

    from cutmix_runner.composition import one_line

    with pytest.raises(MissingConfigException) as exc:
        _compose("trainer=gpuu")
    assert one_line(exc.value) == ("trainer=gpuu: no such option; choose from gpu, cpu, "
                                   "default (nearest first)")


def _differences(preset: str) -> dict[str, object]:
    """The composed config's leaves that differ from cutmix_staged's."""
    from omegaconf import OmegaConf

    staged = leaves(OmegaConf.to_container(_compose("experiment=cutmix_staged")))
    arm = leaves(OmegaConf.to_container(_compose(f"experiment={preset}")))
    assert arm.keys() == staged.keys()
    return {k: arm[k] for k in arm if arm[k] != staged[k]}


MILD = {"prob": 0.2, "max_area": 0.2}
STRONG = {"prob": 0.8, "max_area": 1.0}


def _cutmix(stages: list[str], strength: dict[str, float]) -> dict[str, object]:
    """The keys a CutMix arm changes against cutmix_staged (whose adapt stage is already
    CutMix at prob 0.2, area 0.02-0.2, and late stage CutMix at prob 0.3, area up to 0.3)."""
    staged = {"adapt": {"prob": 0.2, "min_area": 0.02, "max_area": 0.2},
              "late": {"prob": 0.3, "min_area": 0.0, "max_area": 0.3}}
    wanted: dict[str, object] = {}
    for stage in stages:
        target = {"name": "cutmix", "min_area": 0.0, **strength}
        before = staged.get(stage, {"name": "none", "prob": 0.0, "min_area": 0.0,
                                    "max_area": 1.0})
        wanted.update({f"schedule.stages.{stage}.regularizer.{k}": v for k, v in target.items()
                       if before.get(k, "cutmix") != v})
    return wanted


@pytest.mark.parametrize(("preset", "expected"), [
    ("cutmix_early_mild", _cutmix(["head", "adapt", "late"], MILD)),
    ("cutmix_early_strong", _cutmix(["head", "adapt", "late"], STRONG)),
    ("cutmix_late_mild", _cutmix(["adapt", "late"], MILD)),
    ("cutmix_late_strong", _cutmix(["adapt", "late"], STRONG)),
    ("frozen_cutmix_mild", {**_cutmix(["adapt", "late"], MILD),
                            "schedule.stages.adapt.unfreeze_blocks": 1,
                            "schedule.stages.late.unfreeze_blocks": 1}),
    ("unfrozen_cutmix_mild", {**_cutmix(["adapt", "late"], MILD),
                              "schedule.stages.adapt.unfreeze_blocks": -1,
                              "schedule.stages.late.unfreeze_blocks": -1}),
    ("frozen_baseline", {"schedule.stages.adapt.regularizer.name": "none",
                         "schedule.stages.adapt.regularizer.prob": 0.0,
                         "schedule.stages.late.regularizer.name": "none",
                         "schedule.stages.late.regularizer.prob": 0.0,
                         "schedule.stages.adapt.unfreeze_blocks": 1,
                         "schedule.stages.late.unfreeze_blocks": 1}),
    ("unfrozen_baseline", {"schedule.stages.adapt.regularizer.name": "none",
                           "schedule.stages.adapt.regularizer.prob": 0.0,
                           "schedule.stages.late.regularizer.name": "none",
                           "schedule.stages.late.regularizer.prob": 0.0,
                           "schedule.stages.adapt.unfreeze_blocks": -1,
                           "schedule.stages.late.unfreeze_blocks": -1}),
])
def test_study_presets_differ_from_cutmix_staged_only_in_intended_keys(
        preset: str, expected: dict[str, object]) -> None:
    """Same backbone, epochs, learning rates and (for the 2 x 2) freezing as cutmix_staged:
    only the regularizer (and, for the freeze arms, the unfrozen depth) differs."""
    assert _differences(preset) == expected
