"""The typed run settings built from a config: defaults once, casts and unknown fields at one place."""

from pathlib import Path

import pytest

from jasper_jax.losses import ObjectiveConfig
from jasper_jax.train.config_base import base_config, load_config, stage
from jasper_jax.train.settings import OptimizerSettings, TrainingError, settings_from_config

TINY = str(Path(__file__).parents[2] / "configs" / "tiny.py")


def test_every_objective_field_is_overridable_and_reaches_each_stage():
    config = load_config(TINY, ["objective.relative_similarity_method=merge", "objective.margin=0.02"])
    config.stages.stage3.objective = {"reduced_head_weight": 0.5}
    run = settings_from_config(config)
    assert all(
        s.objective.relative_similarity_method == "merge" and s.objective.margin == 0.02 for s in run.stages.values()
    ), run.stages
    assert run.stages[3].objective.reduced_head_weight == 0.5 and run.stages[1].objective.reduced_head_weight == 1.0


def test_defaults_come_from_the_dataclasses():
    config = base_config()
    assert dict(config.objective) == {k: v for k, v in ObjectiveConfig().__dict__.items()}
    assert dict(config.optimizer) == OptimizerSettings().__dict__
    config.stages.stage1 = stage(heads={"fc1": 8}, trainable=("heads/.*",))
    run = settings_from_config(config)
    assert run.stages[1].objective == ObjectiveConfig() and run.optimizer == OptimizerSettings()
    assert run.stages[1].batch_size == 128 and run.stages[1].init_from == "previous"


def test_bad_fields_are_refused_with_their_name():
    config = load_config(TINY)
    config.stages.stage2.lrr = 1.0
    with pytest.raises(TrainingError, match=r"stages.stage2 has unknown field\(s\) \['lrr'\]"):
        settings_from_config(config)
    config = load_config(TINY)
    config.stages.stage1.init_from = "elsewhere"
    with pytest.raises(TrainingError, match=r"stages.stage1.init_from='elsewhere': choose from 'previous', 'model'"):
        settings_from_config(config)
    config = load_config(TINY)
    config.stages.stage1.heads = {"fc1": "wide"}
    with pytest.raises(TrainingError, match=r"stages.stage1.heads.fc1='wide': expected int"):
        settings_from_config(config)
