"""A stage that continues the previous stage's data (`data_start="continue"`), stopped mid-stage and rerun,
writes the metrics of an uninterrupted run (same 4-device mesh: rtol 2e-5, atol 1e-6 as the mesh-change
resume test)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
KEYS = ("loss", "grad_norm", "lr", "cosine/fc1", "similarity/fc1", "relative_similarity/fc1")


def _train(workdir, *extra):
    command = [
        sys.executable,
        "-m",
        "jasper_jax",
        "train",
        "--config",
        str(ROOT / "configs" / "tiny.py"),
        f"--config.workdir={workdir}",
        "--config.progress=false",
        "--stages",
        "1,2",
        "--config.stages.stage1.steps=4",
        "--config.stages.stage2.steps=12",
        "--config.stages.stage2.data_start=continue",
        "--config.checkpoint.every=4",
        *extra,
    ]
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4")
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=400, cwd=ROOT)


@pytest.mark.slow
def test_a_continuing_stage_resumed_mid_stage_follows_the_uninterrupted_trajectory(tmp_path):
    reference = _train(tmp_path / "reference")
    assert reference.returncode == 0, reference.stderr[-2000:]
    stopped = _train(
        tmp_path / "moved", "--config.max_consecutive_nonfinite=3", "--config.debug.nonfinite_steps=(9, 10, 11)"
    )
    assert stopped.returncode == 3 and "last good checkpoint is 8" in stopped.stderr, stopped.stderr[-2000:]
    resumed = _train(tmp_path / "moved")
    assert resumed.returncode == 0 and "stage 2: resuming from checkpoint 8" in resumed.stdout, resumed.stderr[-2000:]
    state = json.loads((tmp_path / "moved" / "stage2" / "checkpoints" / "12" / "data_iter" / "metadata").read_text())
    assert state["state"]["pipeline"]["start_row"] == 4 * 16 and state["state"]["global_batches"] == 12
    expected = [json.loads(line) for line in (tmp_path / "reference" / "stage2" / "metrics.jsonl").open()]
    got = [json.loads(line) for line in (tmp_path / "moved" / "stage2" / "metrics.jsonl").open()]
    assert [r["step"] for r in got] == list(range(1, 13))
    for a, b in zip(expected, got):
        for key in KEYS:
            np.testing.assert_allclose(b[key], a[key], rtol=2e-5, atol=1e-6, err_msg=f"step {a['step']} {key}")
