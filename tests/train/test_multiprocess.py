"""2 processes x 4 fake devices (launch/local.sh, gloo) train exactly like 1 process x 8 devices with a hybrid
mesh (`mesh.dcn`: data across the processes, fsdp inside each); the default mesh's 2-process run is checked
against 1 process by tests/train/test_preemption.py (metrics and params, through a preemption and a rerun)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jasper_jax.train.checkpoint import StageCheckpointer

ROOT = Path(__file__).resolve().parents[2]
ARGS = [
    "-m",
    "jasper_jax",
    "train",
    "--config",
    str(ROOT / "configs" / "tiny.py"),
    "--config.progress=false",
    "--stages",
    "1",
    "--config.stages.stage1.steps=5",
    "--config.checkpoint.every=5",
    "--config.stages.stage1.trainable=('heads/.*', 'encoder/layers/1/.*')",
]


def _env(devices):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(name, None)
    return env


def _params(directory, step=5):
    """The checkpoint's params at `step` as {"a/b/c": array}."""
    checkpointer = StageCheckpointer(directory, every=1, keep=10)
    params = checkpointer.host_params(step)
    checkpointer.close()
    leaves = {}

    def walk(node, prefix):
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}/")
            else:
                leaves[prefix + key] = np.asarray(value)

    walk(params, "")
    return leaves


def _train_single_and_multi(tmp_path, single_args=(), multi_args=()):
    """Train ARGS as 1 process x 8 devices and as 2 processes x 4 (launch/local.sh); the two stage folders."""
    single, multi = tmp_path / "single", tmp_path / "multi"
    subprocess.run(
        [sys.executable, *ARGS, *single_args, f"--config.workdir={single}"],
        env=_env(8),
        check=True,
        capture_output=True,
        timeout=300,
        cwd=ROOT,
    )
    result = subprocess.run(
        [str(ROOT / "launch" / "local.sh"), "2", "4", sys.executable, *ARGS, *multi_args, f"--config.workdir={multi}"],
        env=dict(_env(4), LOCAL_LOG_DIR=str(tmp_path / "logs")),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Rank 1 is connected" in result.stdout or (tmp_path / "logs" / "process_1.log").exists()
    return single / "stage1", multi / "stage1"


def _assert_same_training(single, multi, params_rtol=1e-4):
    """metrics.jsonl equal step by step (1e-5) and the step-5 checkpoint's params equal (atol 1e-5)."""
    expected = [json.loads(line) for line in (single / "metrics.jsonl").read_text().splitlines()]
    got = [json.loads(line) for line in (multi / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in got] == [1, 2, 3, 4, 5]
    for a, b in zip(expected, got):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_allclose(b[key], a[key], rtol=1e-5, atol=1e-6, err_msg=f"step {a['step']} {key}")
    single_params, multi_params = _params(single / "checkpoints"), _params(multi / "checkpoints")
    assert single_params.keys() == multi_params.keys()
    for name in single_params:
        np.testing.assert_allclose(multi_params[name], single_params[name], rtol=params_rtol, atol=1e-5, err_msg=name)


@pytest.mark.slow
def test_hybrid_mesh_two_hosts_equal_one_host(tmp_path):
    """`mesh.dcn.data=2` on 2 processes x 4 devices (data 2 across them, fsdp 4 inside each) against one
    process of 8 devices with the single-level mesh data 2 x fsdp 4: the same training, 1e-5."""
    single, multi = _train_single_and_multi(
        tmp_path,
        single_args=("--config.mesh.data=2", "--config.mesh.fsdp=4"),
        multi_args=("--config.mesh.data=1", "--config.mesh.fsdp=-1", "--config.mesh.dcn.data=2"),
    )
    checkpointer = StageCheckpointer(multi / "checkpoints", every=1, keep=10)
    mesh = checkpointer.metadata(5)["config"]["mesh"]  # the settings the multi-process run trained with
    checkpointer.close()
    assert mesh["dcn"]["data"] == 2 and mesh["fsdp"] == -1 and mesh["data"] == 1, mesh
    _assert_same_training(single, multi, params_rtol=1e-5)


def test_local_launcher_fails_when_a_process_fails(tmp_path):
    script = "import os, sys; sys.exit(3 if os.environ['JAX_PROCESS_ID'] == '1' else 0)"
    result = subprocess.run(
        [str(ROOT / "launch" / "local.sh"), "2", "1", sys.executable, "-c", script],
        env=dict(_env(1), LOCAL_LOG_DIR=str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0 and "process 1 failed" in result.stderr, result.stderr


@pytest.mark.parametrize("codes, expected", [((75, 75), 75), ((0, 75), 75), ((75, 3), 1), ((0, 0), 0)])
def test_local_launcher_exit_code_says_requeue_only_when_every_failure_was_a_preemption(tmp_path, codes, expected):
    script = f"import os, sys; sys.exit({codes}[int(os.environ['JAX_PROCESS_ID'])])"
    result = subprocess.run(
        [str(ROOT / "launch" / "local.sh"), "2", "1", sys.executable, "-c", script],
        env=dict(_env(1), LOCAL_LOG_DIR=str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == expected, result.stderr


def test_launch_scripts_parse_and_the_jobset_requeues_exit_75():
    import yaml

    for script in ("local.sh", "slurm.sbatch", "tpu_vm.sh", "teachers_slurm_array.sbatch"):
        subprocess.run(["bash", "-n", str(ROOT / "launch" / script)], check=True)
    assert "scontrol requeue" in (ROOT / "launch" / "slurm.sbatch").read_text()
    jobset = yaml.safe_load((ROOT / "launch" / "jobset.yaml").read_text())
    rules = jobset["spec"]["failurePolicy"]["rules"]
    assert rules[0]["action"] == "RestartJobSetAndIgnoreMaxRestarts"
    job = jobset["spec"]["replicatedJobs"][0]["template"]["spec"]
    exit_rules = [r for r in job["podFailurePolicy"]["rules"] if "onExitCodes" in r]
    assert exit_rules[0]["onExitCodes"]["values"] == [75]
