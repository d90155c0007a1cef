"""A stage interrupted on 8 devices resumes on 4 (another mesh) and follows the uninterrupted trajectory."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(workdir, devices, mesh, *extra):
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
        "1",
        "--config.stages.stage1.steps=16",
        "--config.checkpoint.every=5",
        *mesh,
        *extra,
    ]
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=240, cwd=ROOT)


@pytest.mark.slow
def test_resume_on_a_smaller_mesh(tmp_path):
    eight = ["--config.mesh.data=4", "--config.mesh.fsdp=2"]
    four = ["--config.mesh.data=1", "--config.mesh.fsdp=2", "--config.mesh.tensor=2"]
    reference = _run(tmp_path / "reference", 8, eight)
    assert reference.returncode == 0, reference.stderr[-2000:]
    # interrupted: three non-finite steps in a row stop the run at step 13; checkpoint 10 is the last
    stopped = _run(
        tmp_path / "moved",
        8,
        eight,
        "--config.max_consecutive_nonfinite=3",
        "--config.debug.nonfinite_steps=(11, 12, 13)",
    )
    assert stopped.returncode == 3 and "last good checkpoint is 10" in stopped.stderr, stopped.stderr[-2000:]
    resumed = _run(tmp_path / "moved", 4, four)
    assert resumed.returncode == 0 and "resuming from checkpoint 10" in resumed.stdout, resumed.stderr[-2000:]
    expected = [json.loads(line) for line in (tmp_path / "reference" / "stage1" / "metrics.jsonl").open()]
    got = [json.loads(line) for line in (tmp_path / "moved" / "stage1" / "metrics.jsonl").open()]
    assert [r["step"] for r in got] == list(range(1, 17))
    for a, b in zip(expected, got):
        for key in ("loss", "grad_norm", "lr", "cosine/fc1", "similarity/fc1", "relative_similarity/fc1"):
            np.testing.assert_allclose(b[key], a[key], rtol=2e-5, atol=1e-6, err_msg=f"step {a['step']} {key}")
