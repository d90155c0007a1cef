"""The persistent compilation cache: where `compilation_cache_dir` points, and a second process compiling the
same function loads it from the cache (JAX logs the hit; no new entry is written)."""

import os
import subprocess
import sys
from pathlib import Path

from jasper_jax.train import compile_cache

ROOT = Path(__file__).resolve().parents[2]
PROGRAM = """
import sys
import jax, jax.numpy as jnp
from jasper_jax.train import compile_cache
compile_cache.enable(sys.argv[1])
print(float(jax.jit(lambda x: jnp.tanh(x @ x.T).sum())(jnp.ones((64, 64)))))
"""


def test_cache_folder_settings(tmp_path, monkeypatch):
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.setenv("JASPER_JAX_CACHE", str(tmp_path / "assets"))
    assert compile_cache.cache_folder("auto") == tmp_path / "assets" / "xla"
    assert compile_cache.cache_folder("") is None
    assert compile_cache.cache_folder(str(tmp_path / "shared")) == tmp_path / "shared"
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax"))
    assert compile_cache.cache_folder("auto") == tmp_path / "jax"


def test_a_second_process_compiles_from_the_cache(tmp_path):
    folder = tmp_path / "xla"
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_LOG_COMPILES="1")

    def compile_once():
        result = subprocess.run(
            [sys.executable, "-c", PROGRAM, str(folder)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120
        )
        assert result.returncode == 0, result.stderr
        return result.stderr, sorted(path.name for path in folder.iterdir())

    first_log, first_entries = compile_once()
    assert first_entries and "Persistent compilation cache hit" not in first_log
    second_log, second_entries = compile_once()
    assert "Persistent compilation cache hit" in second_log
    assert second_entries == first_entries
