"""Fixtures for the data tests: small stores written with the fake teacher."""

from __future__ import annotations

import pytest

from jasper_jax.data.teacher_encoding import TeacherSpec, encode_store
from tests.data.data_helpers import fake_factory


@pytest.fixture
def make_store(tmp_path):
    """make_store(texts, dims={"a": 8, "b": 4}, shard_rows=4, dtype="float16", name="store") -> path."""

    def make(texts, dims=None, shard_rows=4, dtype="float16", name="store", prompts=None):
        dims = dims or {"a": 8, "b": 4}
        prompts = prompts or {}
        specs = [TeacherSpec(n, f"/fake/{n}", prompts.get(n, "")) for n in dims]
        out = tmp_path / name
        encode_store(
            texts, out, specs, dtype=dtype, shard_rows=shard_rows, encoder_factory=fake_factory(dims), progress=False
        )
        return out

    return make
