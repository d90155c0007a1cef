"""The persistent XLA compilation cache (`compilation_cache_dir`), set once at `train()` / compile-check entry.

A paper-scale step takes minutes to compile; with the cache a restart (a resumed run, the next stage with
the same shapes, a second compile-check) loads the compiled program from disk instead. The setting:

- `"auto"` (default): `$JAX_COMPILATION_CACHE_DIR` if set, else `<asset cache>/xla`, i.e.
  `$JASPER_JAX_CACHE/xla` or `~/.cache/jasper_jax/xla`;
- a folder: that folder (e.g. shared storage, so that every host of a pod and every later job reuse it);
- `""`: no persistent cache.

JAX reads the setting when it first compiles in a process; set it before anything is jitted. Only programs
that took at least `jax_persistent_cache_min_compile_time_secs` (JAX's default 1 s) to compile are written.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

AUTO = "auto"


def cache_folder(setting: str) -> Path | None:
    """The folder `setting` names (None: the cache is off)."""
    setting = (setting or "").strip()
    if not setting:
        return None
    if setting == AUTO:
        from_env = os.environ.get("JAX_COMPILATION_CACHE_DIR")
        if from_env:
            return Path(from_env)
        from jasper_jax.assets import cache_dir

        return cache_dir() / "xla"
    return Path(setting).expanduser()


def enable(setting: str) -> Path | None:
    """Point JAX's persistent compilation cache at the folder `setting` names (or switch it off); returns it."""
    folder = cache_folder(setting)
    if folder is None:
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    folder.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    return folder
