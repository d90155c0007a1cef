"""configs/tiny.py end to end with the real JasperStudent, data pipeline and losses: stages chained,
frozen parameters unchanged, the non-finite guard and resuming after it."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from jasper_jax.errors import EXIT_NONFINITE
from jasper_jax.train.checkpoint import StageCheckpointer
from jasper_jax.train.config_base import load_config
from jasper_jax.train.loop import train
from jasper_jax.train.settings import TrainingError

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "configs" / "tiny.py")


def tiny(workdir, *overrides):
    return load_config(TINY, [f"workdir={workdir}", "progress=false", *overrides])


def read_params(directory, step):
    checkpointer = StageCheckpointer(directory, every=1, keep=10)
    params = checkpointer.host_params(step)
    checkpointer.close()
    return params


def flat(tree, prefix=""):
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = np.asarray(value)
    return out


def metrics(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


@pytest.mark.slow
def test_stages_chain_and_frozen_params_stay_bit_identical(tmp_path):
    config = tiny(
        tmp_path, "stages.stage1.steps=6", "stages.stage2.steps=6", "stages.stage3.steps=4", "checkpoint.every=3"
    )
    train(config, [1, 2, 3])
    s1 = flat(read_params(tmp_path / "stage1" / "checkpoints", 6))
    s2 = flat(read_params(tmp_path / "stage2" / "checkpoints", 6))
    s3 = flat(read_params(tmp_path / "stage3" / "checkpoints", 4))
    # stage 2 trains fc1 and the last (second) encoder layer only
    for name in s1:
        changed = not np.array_equal(s1[name], s2[name])
        trainable = name.startswith(("heads/fc1/", "encoder/layers/1/"))
        assert changed == trainable, (name, changed, trainable)
    # stage 3 adds fc2/fc3 (initialised from fc1's first columns) and trains everything
    assert s3["heads/fc2/kernel"].shape == (32, 16) and s3["heads/fc3/bias"].shape == (8,)
    first_layer = [name for name in s2 if name.startswith("encoder/layers/0/")]
    assert first_layer and all(not np.array_equal(s3[name], s2[name]) for name in first_layer)
    for stage, steps in ((1, 6), (2, 6), (3, 4)):
        rows = metrics(tmp_path / f"stage{stage}" / "metrics.jsonl")
        assert [r["step"] for r in rows] == list(range(1, steps + 1))
        assert all(np.isfinite(r["loss"]) for r in rows)
        assert any(name.startswith("events") for name in os.listdir(tmp_path / f"stage{stage}" / "tensorboard"))
    assert "similarity/fc3" in metrics(tmp_path / "stage3" / "metrics.jsonl")[0]
    # the same command again: every stage is complete, nothing runs
    train(config, [1, 2, 3])


def test_nonfinite_steps_are_skipped_then_the_run_stops_with_the_last_checkpoint_intact(tmp_path, capsys):
    config = tiny(
        tmp_path,
        "stages.stage1.steps=16",
        "checkpoint.every=5",
        "max_consecutive_nonfinite=3",
        "debug.nonfinite_steps=(3, 12, 13, 14)",
    )
    with pytest.raises(TrainingError) as refused:
        train(config, [1])
    assert refused.value.exit_code == EXIT_NONFINITE
    error = str(refused.value)
    assert "3 non-finite steps in a row" in error and "last good checkpoint is 10" in error, error
    rows = metrics(tmp_path / "stage1" / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 15))
    assert [r["step"] for r in rows if not r["finite"]] == [3, 12, 13, 14]
    checkpoints = tmp_path / "stage1" / "checkpoints"
    assert sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit()) == [5, 10]
    before = flat(read_params(checkpoints, 10))
    # rerun without the fault: resumes from step 10 and finishes
    config.debug.nonfinite_steps = ()
    train(config, [1])
    rows = metrics(tmp_path / "stage1" / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 17)) and all(r["finite"] for r in rows[10:])
    after = flat(read_params(checkpoints, 10)) if (checkpoints / "10").exists() else before
    assert all(np.array_equal(before[k], after[k]) for k in before)
