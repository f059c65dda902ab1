from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError, ValidationError

from cutmix_runner.cli import CONFIG_DIR
from cutmix_runner.config import ConfigError, validate


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=list(overrides))


def test_default_config_validates_into_three_stages() -> None:
    run = validate(_compose())
    names = [s.name for s in run.schedule.stages]
    assert names == ["head", "adapt", "late"]
    head, adapt, late = run.schedule.stages
    assert head.cutmix.prob == 0.0 and head.unfreeze_blocks <= 1 and head.patience > 0
    assert 0 < adapt.cutmix.prob < late.cutmix.prob
    assert adapt.cutmix.max_area <= 0.25
    assert adapt.lr_backbone < head.lr_head
    assert run.model.weights == "packaged" and run.model.image_size == 64


def test_stage_override_path_used_by_sweeps() -> None:
    run = validate(_compose("schedule.stages.1.cutmix.prob=0.3"))
    assert run.schedule.stages[1].cutmix.prob == 0.3


def test_experiment_smoke_composes() -> None:
    run = validate(_compose("experiment=smoke"))
    assert run.data.name == "synthetic" and run.model.name == "test_efficientnet"


@pytest.mark.parametrize("override", ["trainer.bach_size=4", "schedule.stages.0.cutmix.probb=0.1",
                                      "schedule.stages.0.unfreze_blocks=2"])
def test_unknown_keys_fail_at_composition(override: str) -> None:
    with pytest.raises((ConfigCompositionException, ConfigKeyError)):
        _compose(override)


def test_wrong_type_fails_at_composition() -> None:
    with pytest.raises((ConfigCompositionException, ValidationError)):
        _compose("trainer.batch_size=many")


@pytest.mark.parametrize("override, key", [
    ("schedule.stages.1.cutmix.prob=-0.2", "schedule.stages.1.cutmix.prob"),
    ("schedule.stages.1.cutmix.prob=1.5", "schedule.stages.1.cutmix.prob"),
    ("schedule.stages.2.cutmix.alpha=0", "schedule.stages.2.cutmix.alpha"),
    ("schedule.stages.1.cutmix.min_area=0.5", "schedule.stages.1.cutmix.min_area"),
    ("schedule.stages.0.epochs=0", "schedule.stages.0.epochs"),
    ("schedule.stages.0.unfreeze_blocks=-3", "schedule.stages.0.unfreeze_blocks"),
    ("schedule.stages=[]", "schedule.stages"),
    ("trainer.device=tpu", "trainer.device"),
    ("data.val_size=-1", "data.val_size"),
])
def test_bad_values_rejected_naming_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate(_compose(override))
    assert str(info.value).startswith(key)


def test_misspelled_stage_field_in_a_schedule_file_is_rejected() -> None:
    from omegaconf import OmegaConf

    cfg = _compose()
    raw = OmegaConf.to_container(cfg)
    raw["schedule"]["stages"][0]["cutmix"]["probability"] = 0.5
    with pytest.raises((ConfigKeyError, ValidationError)):
        validate(raw)
