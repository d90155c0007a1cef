"""all-mpnet-base-v2 as a teacher: the JAX backend (our MPNet encoder) writes the store the PyTorch backend
(sentence-transformers) writes, within 1e-4 per component."""

from __future__ import annotations

import numpy as np
import pytest

from jasper_jax.assets import fetch_mpnet
from jasper_jax.data.store import TeacherStore
from jasper_jax.data.teacher_encoding import TeacherSpec, encode_store

TEXTS = [
    "A man is playing a guitar.",
    "The cat sits on the mat.",
    "Stocks fell sharply today after the central bank raised interest rates by half a point.",
    "ok",
    "Distillation trains a small student to reproduce the vectors of large teachers.",
]


@pytest.mark.slow
def test_jax_backend_store_equals_torch_backend_store(tmp_path):
    folder = str(fetch_mpnet())
    vectors = {}
    for backend in ("jax", "torch"):
        out = tmp_path / backend
        specs = [TeacherSpec("mpnet", folder, backend=backend)]
        manifest = encode_store(TEXTS, out, specs, dtype="float32", shard_rows=2, batch_size=4, progress=False)
        assert manifest["teachers"][0]["backend"] == backend and manifest["teachers"][0]["dim"] == 768
        vectors[backend] = TeacherStore(out).teacher_vectors(range(len(TEXTS)))
    error = np.abs(vectors["jax"] - vectors["torch"]).max()
    assert error < 1e-4, f"max |jax store - torch store| = {error}"
    np.testing.assert_allclose(np.linalg.norm(vectors["jax"], axis=1), 1.0, atol=1e-5)
