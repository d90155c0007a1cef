"""`make install ACCEL=cuda12|tpu [TORCH=cuda]`: the accelerator requirement sets, checked as far as a CPU
machine allows. Fast: bad choices are refused by make, and every accelerator set pins the same versions as
requirements.txt. Slow: each set resolves against the package index (`pip install --dry-run`) to the
accelerator packages it exists for (the CUDA plugin, libtpu, torch's nvidia-* libraries)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ACCEL_DIR = ROOT / "requirements-accel"


def pins(path: Path) -> dict[str, str]:
    """`name -> version` of every `name[extras]==version` line (comments skipped)."""
    found = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^\s*([A-Za-z0-9_.-]+)(\[[^\]]*\])?==([^\s#]+)", line)
        if match:
            found[match.group(1).lower()] = match.group(3)
    return found


def make_dry_run(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-n", "install", *arguments], cwd=ROOT, capture_output=True, text=True)


@pytest.mark.parametrize("arguments", [("ACCEL=rocm",), ("TORCH=rocm",)])
def test_unknown_choice_is_refused_naming_the_choices(arguments):
    result = make_dry_run(*arguments)
    assert result.returncode != 0
    assert arguments[0] in result.stderr
    assert ("cuda12 tpu" if "ACCEL" in arguments[0] else "TORCH=cuda") in result.stderr


@pytest.mark.parametrize("accel", ["cuda12", "tpu"])
def test_accel_install_adds_its_requirement_set(accel):
    result = make_dry_run(f"ACCEL={accel}")
    assert result.returncode == 0, result.stderr
    assert f"-r requirements-accel/{accel}.txt" in result.stdout
    assert "torch-cuda" not in result.stdout


def test_default_install_is_cpu_only():
    result = make_dry_run()
    assert result.returncode == 0, result.stderr
    assert "requirements-accel" not in result.stdout


def test_accelerator_sets_pin_the_cpu_stack_versions():
    cpu = pins(ROOT / "requirements.txt")
    for path in sorted(ACCEL_DIR.glob("*.txt")):
        accel = pins(path)
        assert accel, f"{path.name} pins nothing"
        for name, version in accel.items():
            assert cpu.get(name) == version, f"{path.name}: {name}=={version}, requirements.txt has {cpu.get(name)}"


def resolve(requirements: Path) -> dict[str, str]:
    """What `pip install --dry-run` would install from the index for `requirements` into an empty
    environment (`--ignore-installed`), from the index alone: this machine's pip configuration and
    PIP_FIND_LINKS point at a local folder holding the CPU torch, which would otherwise be chosen."""
    env = {key: value for key, value in os.environ.items() if key != "PIP_FIND_LINKS"}
    env["PIP_CONFIG_FILE"] = os.devnull
    report = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--report", "-"]
        + ["-r", str(requirements)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    install = json.loads(report.stdout)["install"]
    return {item["metadata"]["name"].lower(): item["metadata"]["version"] for item in install}


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, expected",
    [("cuda12", "jax-cuda12-plugin"), ("tpu", "libtpu"), ("torch-cuda", "cuda-toolkit")],
)
def test_accelerator_set_resolves_to_its_accelerator_packages(name, expected):
    resolved = resolve(ACCEL_DIR / f"{name}.txt")
    assert expected in resolved, sorted(resolved)
    for package, version in pins(ACCEL_DIR / f"{name}.txt").items():
        assert resolved[package] == version
