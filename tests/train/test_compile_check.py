"""compile-check on a small config: the step compiles from abstract shapes and reports per-device memory."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_compile_check_reports_memory_and_budget():
    command = [
        sys.executable,
        "-m",
        "jasper_jax",
        "compile-check",
        "--config",
        str(ROOT / "configs" / "tiny.py"),
        "--stage",
        "3",
        "--devices",
        "4",
        "--config.mesh.data=1",
        "--config.mesh.fsdp=-1",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "mesh: {'data': 1, 'fsdp': 4, 'tensor': 1}" in result.stdout, result.stdout
    assert "temp_size_in_bytes" in result.stdout and "fits" in result.stdout
    over = subprocess.run(command + ["--budget-gb", "0"], capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert over.returncode == 1 and "DOES NOT FIT" in over.stdout, over.stdout
