"""Teacher transforms applied when the store is read (keep the first d dims, sum k equal segments, then
normalise each teacher, concatenate, normalise) against a float64 NumPy reference from the raw vectors."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from jasper_jax.data.pipeline import make_train_iterator
from jasper_jax.data.store import TeacherStore, TeacherTransform
from tests.data.data_helpers import fake_vectors, sample_texts


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def reference(texts, transforms):
    """Norm(Norm(T_a(raw_a)) | Norm(T_b(raw_b))), T keeping the first d dims then summing k segments."""
    parts = []
    for name, dim in (("a", 12), ("b", 6)):
        raw = fake_vectors(texts, dim, name).astype(np.float64)
        keep, segments = transforms.get(name, (dim, 1))
        kept = raw[:, :keep]
        parts.append(unit(kept.reshape(len(texts), segments, keep // segments).sum(axis=1)))
    return unit(np.concatenate(parts, axis=1))


@pytest.fixture
def texts():
    return sample_texts(9, seed=4)


@pytest.fixture
def store_path(make_store, texts):
    return make_store(texts, dims={"a": 12, "b": 6}, shard_rows=4, dtype="float32")


@pytest.mark.parametrize(
    "transforms",
    [{}, {"a": (12, 3)}, {"a": (9, 3), "b": (4, 1)}, {"a": (8, 1)}, {"b": (6, 2)}],
)
def test_transformed_vectors_match_reference(store_path, texts, transforms):
    given = {name: {"keep_dims": keep, "sum_segments": k} for name, (keep, k) in transforms.items()}
    store = TeacherStore(store_path, transforms=given)
    expected = reference(texts, transforms)
    assert store.dim == expected.shape[1]
    order = [3, 0, 8, 8, 5]
    np.testing.assert_allclose(store.teacher_vectors(order), expected[order], rtol=1e-5, atol=1e-6)
    assert store.dims == [
        (transforms.get("a", (12, 1))[0] // transforms.get("a", (12, 1))[1]),
        (transforms.get("b", (6, 1))[0] // transforms.get("b", (6, 1))[1]),
    ]
    assert pickle.loads(pickle.dumps(store)).transforms == store.transforms


def test_bad_transforms_are_refused_naming_the_teacher(store_path):
    with pytest.raises(ValueError, match="teacher 'a': keep_dims=13 must lie in 1..12"):
        TeacherStore(store_path, transforms={"a": TeacherTransform(keep_dims=13)})
    with pytest.raises(ValueError, match="teacher 'b': sum_segments=4 must be >= 1 and divide the 6"):
        TeacherStore(store_path, transforms={"b": {"sum_segments": 4}})
    with pytest.raises(KeyError, match="'c'"):
        TeacherStore(store_path, transforms={"c": {"keep_dims": 2}})


def test_pipeline_reads_transformed_vectors_and_records_them(store_path, texts, minilm_folder):
    transforms = {"a": {"keep_dims": 9, "sum_segments": 3}}
    iterator = make_train_iterator(
        store_path, minilm_folder, global_batch_size=4, mesh=None, max_length=32, teacher_transforms=transforms
    )
    batch = next(iterator)
    np.testing.assert_allclose(batch["teacher"], reference(texts, {"a": (9, 3)})[:4], rtol=1e-5, atol=1e-6)
    state = iterator.get_state()
    assert state["pipeline"]["teacher_transforms"] == {"a": {"keep_dims": 9, "sum_segments": 3}}
    plain = make_train_iterator(store_path, minilm_folder, global_batch_size=4, mesh=None, max_length=32)
    assert "teacher_transforms" not in plain.get_state()["pipeline"]  # old saved states still resume
    with pytest.raises(ValueError, match="teacher_transforms"):
        plain.set_state(state)
