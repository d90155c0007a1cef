"""A global batch the data-parallel size does not divide (B=10 on 8 devices, the paper's 90 on 8 in
small) is padded with masked rows and trains exactly like the same batch on 1 device."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.train.test_multiprocess import _params

ROOT = Path(__file__).resolve().parents[2]


def _train(workdir, devices):
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
        "--config.stages.stage1.batch_size=10",
        "--config.stages.stage1.steps=5",
        "--config.checkpoint.every=5",
        "--config.stages.stage1.trainable=('heads/.*', 'encoder/layers/1/.*')",
        "--config.mesh.data=-1",
        "--config.mesh.fsdp=1",
    ]
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(name, None)
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return [json.loads(line) for line in (workdir / "stage1" / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_batch_of_10_on_8_devices_equals_1_device(tmp_path):
    one, eight = _train(tmp_path / "one", 1), _train(tmp_path / "eight", 8)
    assert [r["step"] for r in eight] == [1, 2, 3, 4, 5]
    for a, b in zip(one, eight, strict=True):
        assert a.keys() == b.keys()
        assert b["tokens"] == a["tokens"]  # the 6 padded rows are not counted (nor in model_flops)
        for key in a:  # loss, every loss term, grad_norm, lr, model_flops ...
            np.testing.assert_allclose(b[key], a[key], rtol=1e-5, atol=1e-6, err_msg=f"step {a['step']} {key}")
    single = _params(tmp_path / "one" / "stage1" / "checkpoints")
    sharded = _params(tmp_path / "eight" / "stage1" / "checkpoints")
    assert single.keys() == sharded.keys()
    for name in single:
        np.testing.assert_allclose(sharded[name], single[name], rtol=1e-5, atol=1e-5, err_msg=name)
