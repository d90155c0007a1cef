"""configs/tiny.py end to end with the real JasperStudent, data pipeline and losses: stages chained,
frozen parameters unchanged, the non-finite guard, kill -9 and resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest

from jasper_jax.train.config_base import load_config
from jasper_jax.train.loop import EXIT_NONFINITE, EXIT_OK, train

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "configs" / "tiny.py")


def tiny(workdir, *overrides):
    return load_config(TINY, [f"workdir={workdir}", "progress=false", *overrides])


def read_params(directory, step):
    restored = ocp.CheckpointManager(directory).restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore()))
    return restored["params"]


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


def test_stages_chain_and_frozen_params_stay_bit_identical(tmp_path):
    config = tiny(tmp_path, "stages.stage1.steps=6", "stages.stage2.steps=6", "stages.stage3.steps=4",
                  "checkpoint.every=3")
    assert train(config, [1, 2, 3]) == EXIT_OK
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
    assert not np.array_equal(s3["encoder/layers/0/attention/query/kernel"] if "encoder/layers/0/attention/query/kernel" in s3
                              else s3[[n for n in s3 if n.startswith("encoder/layers/0/")][0]],
                              s2[[n for n in s3 if n.startswith("encoder/layers/0/")][0]])
    for stage, steps in ((1, 6), (2, 6), (3, 4)):
        rows = metrics(tmp_path / f"stage{stage}" / "metrics.jsonl")
        assert [r["step"] for r in rows] == list(range(1, steps + 1))
        assert all(np.isfinite(r["loss"]) for r in rows)
        assert any(name.startswith("events") for name in os.listdir(tmp_path / f"stage{stage}" / "tensorboard"))
    assert "similarity/fc3" in metrics(tmp_path / "stage3" / "metrics.jsonl")[0]
    # the same command again: every stage is complete, nothing runs
    assert train(config, [1, 2, 3]) == EXIT_OK


def test_nonfinite_steps_are_skipped_then_the_run_stops_with_the_last_checkpoint_intact(tmp_path, capsys):
    config = tiny(tmp_path, "stages.stage1.steps=16", "checkpoint.every=5", "max_consecutive_nonfinite=3",
                  "debug.nonfinite_steps=(3, 12, 13, 14)")
    assert train(config, [1]) == EXIT_NONFINITE
    error = capsys.readouterr().err
    assert "3 non-finite steps in a row" in error and "last good checkpoint is 10" in error, error
    rows = metrics(tmp_path / "stage1" / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 15))
    assert [r["step"] for r in rows if not r["finite"]] == [3, 12, 13, 14]
    checkpoints = tmp_path / "stage1" / "checkpoints"
    assert sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit()) == [5, 10]
    before = flat(read_params(checkpoints, 10))
    # rerun without the fault: resumes from step 10 and finishes
    config.debug.nonfinite_steps = ()
    assert train(config, [1]) == EXIT_OK
    rows = metrics(tmp_path / "stage1" / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 17)) and all(r["finite"] for r in rows[10:])
    after = flat(read_params(checkpoints, 10)) if (checkpoints / "10").exists() else before
    assert all(np.array_equal(before[k], after[k]) for k in before)


def _train_command(workdir, *extra):
    return [sys.executable, "-m", "jasper_jax", "train", "--config", TINY, f"--config.workdir={workdir}",
            "--config.progress=false", "--stages", "1", "--config.stages.stage1.steps=40",
            "--config.checkpoint.every=8", *extra]


def _env():
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    env["JAX_PLATFORMS"] = "cpu"
    return env


def test_kill_9_then_rerun_gives_the_uninterrupted_metrics(tmp_path):
    reference, crashed = tmp_path / "reference", tmp_path / "crashed"
    subprocess.run(_train_command(reference), env=_env(), check=True, capture_output=True, timeout=240)
    process = subprocess.Popen(_train_command(crashed), env=_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    log = crashed / "stage1" / "metrics.jsonl"
    deadline = time.time() + 180
    while time.time() < deadline:
        if log.exists() and len(log.read_text().splitlines()) >= 21:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    logged = len(log.read_text().splitlines())
    assert 21 <= logged < 40, f"killed after {logged} logged steps"
    subprocess.run(_train_command(crashed), env=_env(), check=True, capture_output=True, timeout=240)
    expected = metrics(reference / "stage1" / "metrics.jsonl")
    resumed = metrics(log)
    assert [r["step"] for r in resumed] == list(range(1, 41))
    assert resumed == expected
