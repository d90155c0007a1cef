"""2 processes: process 0 checks the teacher store; when its check fails, process 1 stops too (no hang)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jasper_jax.train.synthetic import generate_tiny_data

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_a_store_process_0_refuses_stops_every_process(tmp_path):
    generate_tiny_data(tmp_path / "data", rows=40)
    manifest_path = tmp_path / "data" / "store" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["rows"] = 41  # texts and vectors no longer line up
    manifest_path.write_text(json.dumps(manifest))
    command = [str(ROOT / "launch" / "local.sh"), "2", "1", sys.executable, "-m", "jasper_jax", "train"]
    command += ["--config", str(ROOT / "configs" / "tiny.py"), f"--config.workdir={tmp_path}", "--stages", "1"]
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES")}
    env["LOCAL_LOG_DIR"] = str(tmp_path / "logs")
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert result.returncode != 0
    assert "has problems; nothing was trained" in result.stdout, result.stdout[-2000:]
    other = (tmp_path / "logs" / "process_1.log").read_text()
    assert "did not pass process 0's check" in other, other[-2000:]
    assert not list((tmp_path / "store_checks").glob("*.json")) and not (tmp_path / "stage1").exists()
