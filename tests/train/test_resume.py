"""kill -9 in the middle of a stage, rerun the same command: metrics.jsonl equals an uninterrupted run's."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "configs" / "tiny.py")


def metrics(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def _train_command(workdir, *extra):
    return [
        sys.executable,
        "-m",
        "jasper_jax",
        "train",
        "--config",
        TINY,
        f"--config.workdir={workdir}",
        "--config.progress=false",
        "--stages",
        "1",
        "--config.stages.stage1.steps=60",
        "--config.checkpoint.every=8",
        *extra,
    ]


def _env():
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    env["JAX_PLATFORMS"] = "cpu"
    return env


@pytest.mark.slow
def test_kill_9_then_rerun_gives_the_uninterrupted_metrics(tmp_path):
    reference, crashed = tmp_path / "reference", tmp_path / "crashed"
    subprocess.run(_train_command(reference), env=_env(), check=True, capture_output=True, timeout=240)
    process = subprocess.Popen(
        _train_command(crashed), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    log = crashed / "stage1" / "metrics.jsonl"
    deadline = time.time() + 180
    while time.time() < deadline:
        if log.exists() and len(log.read_text().splitlines()) >= 21:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    logged = len(log.read_text().splitlines())
    assert 21 <= logged < 60, f"killed after {logged} logged steps"
    subprocess.run(_train_command(crashed), env=_env(), check=True, capture_output=True, timeout=240)
    expected = metrics(reference / "stage1" / "metrics.jsonl")
    resumed = metrics(log)
    assert [r["step"] for r in resumed] == list(range(1, 61))
    assert resumed == expected
