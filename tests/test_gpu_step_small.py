"""benchmarks/gpu_step.py --small: the GPU script's code path on the CPU, with grain and ml_collections
made unimportable (the GPU image has neither); every variant is measured (none is skipped: every switch
exists in this checkout)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

RUNNER = """
import importlib.abc, runpy, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("grain", "ml_collections"):
            raise ImportError(f"{name} is not on the GPU image")
sys.meta_path.insert(0, Block())
sys.argv = ["gpu_step.py", "--small", "--budget-seconds", "3600"]  # no variant cut on a loaded machine
runpy.run_path(%r, run_name="__main__")
"""


@pytest.mark.slow
def test_gpu_step_small_reports_every_variant(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    env["XLA_FLAGS"] = ""  # one CPU device, as on the GPU
    script = RUNNER % str(ROOT / "benchmarks" / "gpu_step.py")
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_step.json").read_text())
    table = (tmp_path / "gpu_step.md").read_text()
    variants = report["variants"]
    assert list(variants) == ["padded", "cudnn", "objective", "gradcache", "packing", "cudnn+packing"]
    for name, row in variants.items():
        assert f"| {name} |" in table
        assert "failed" not in row and "skipped" not in row, (name, row)  # every switch exists here
        assert math.isfinite(row["step_seconds"]) and row["step_seconds"] > 0, (name, row)
        if name != "objective":
            assert math.isfinite(row["tokens_per_second"]) and row["tokens_per_second"] > 0, (name, row)
            assert math.isfinite(row["loss"]) and 0 < row["pad_fraction"] < 1
    # the packed variants run on packed rows: far less padding than the padded batches of the same texts
    assert variants["packing"]["pad_fraction"] < variants["padded"]["pad_fraction"]
    assert variants["cudnn+packing"]["pad_fraction"] < variants["cudnn"]["pad_fraction"]


def test_gpu_step_settings_are_the_paper_config_stage_3():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_step
    finally:
        sys.path.pop(0)
    from jasper_jax.train.config_base import load_config
    from jasper_jax.train.settings import settings_from_config

    paper = settings_from_config(load_config(str(ROOT / "configs" / "jasper_paper.py"), ["model.source=random"]))
    ours = gpu_step.run_settings(gpu_step.paper_stage3_values(small=False), {})
    assert ours.model == paper.model and ours.optimizer == paper.optimizer and ours.seed == paper.seed
    assert ours.data.max_length == paper.data.max_length and ours.data.prompt == paper.data.prompt
    assert ours.objective == paper.objective and ours.stages[3] == paper.stages[3]
