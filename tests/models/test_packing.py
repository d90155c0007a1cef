"""Sequence packing in the models: packed rows give the padded batch's student vectors and gradients.

Reference: today's padded path (`data.tokenization.pad_batch` + `JasperStudent`) on the same token lists;
tolerance 1e-5 in float32 (highest matmul precision, set in tests/conftest.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jasper_jax.data.packing import pack_batch
from jasper_jax.data.tokenization import pad_batch
from jasper_jax.models import BertConfig, JasperStudent, Qwen2Config, Qwen3Config, StudentConfig
from jasper_jax.models.packed import PackedLayout, pool_packed

MAX_LENGTH = 16
TINY_BERT = BertConfig(
    vocab_size=64,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=48,
    max_position_embeddings=32,
)


def tiny_qwen2(causal):
    return Qwen2Config(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=48,
        rope_theta=100.0,
        causal=causal,
    )


ENCODERS = {
    "bert": TINY_BERT,
    "qwen2": tiny_qwen2(False),
    "qwen2-causal": tiny_qwen2(True),
    "qwen3": Qwen3Config(**{**tiny_qwen2(True).__dict__, "model_type": "qwen3", "head_dim": 16}),
}


def token_lists(seed=0):
    """Ten texts of 1..16 tokens and one of 23 (longer than MAX_LENGTH: cut at 16 on both paths)."""
    rng = np.random.default_rng(seed)
    lengths = [3, 16, 1, 7, 9, 23, 2, 12, 5, 4, 8]
    return [rng.integers(1, 64, n).tolist() for n in lengths]


def packed_inputs(ids, row_multiple=2):
    packed = pack_batch(ids, MAX_LENGTH, pad_id=0, row_multiple=row_multiple)
    layout = PackedLayout(**{key: jnp.asarray(packed[key]) for key in PackedLayout.__dataclass_fields__})
    return jnp.asarray(packed["input_ids"]), jnp.asarray(packed["attention_mask"]), layout


def student(encoder, pooling, attention="auto"):
    config = StudentConfig(encoder=encoder, pooling=pooling, heads={"fc1": 24, "fc2": 8}, attention=attention)
    return JasperStudent(config, rngs=nnx.Rngs(0))


def outputs_and_grads(model, call):
    """The head outputs and the gradient of a fixed random function of them w.r.t. every parameter."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    weights = {
        name: jax.random.normal(jax.random.key(i), (11, d)) for i, (name, d) in enumerate([("fc1", 24), ("fc2", 8)])
    }

    def loss(p):
        out = call(nnx.merge(graphdef, p, rest))
        return sum(jnp.sum(out[name] * weights[name]) for name in weights), out

    (_, out), grads = jax.value_and_grad(loss, has_aux=True)(params)
    return out, grads


def assert_trees_close(a, b, tol=1e-5):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


@pytest.mark.parametrize("pooling", ["mean", "cls", "last"])
@pytest.mark.parametrize("family", sorted(ENCODERS))
def test_packed_vectors_and_gradients_equal_the_padded_batch(family, pooling):
    model = student(ENCODERS[family], pooling)
    ids = token_lists()
    padded = pad_batch(ids, MAX_LENGTH, pad_id=0)
    input_ids, mask, layout = packed_inputs(ids)
    assert input_ids.shape[0] < len(ids)  # really packed: fewer rows than texts
    reference, reference_grads = outputs_and_grads(
        model, lambda m: m(jnp.asarray(padded["input_ids"]), jnp.asarray(padded["attention_mask"]))
    )
    packed, packed_grads = outputs_and_grads(model, lambda m: m(input_ids, mask, packed=layout))
    assert packed["fc1"].shape == (len(ids), 24)
    assert_trees_close(packed, reference)
    assert_trees_close(packed_grads, reference_grads)


def test_packed_path_under_jit_with_the_einsum_reference_attention():
    model = student(ENCODERS["qwen2-causal"], "mean", attention="einsum")
    ids = token_lists(seed=1)
    padded = pad_batch(ids, MAX_LENGTH, pad_id=0)
    input_ids, mask, layout = packed_inputs(ids, row_multiple=4)
    reference = model(jnp.asarray(padded["input_ids"]), jnp.asarray(padded["attention_mask"]))
    packed = nnx.jit(lambda m, i, a, p: m(i, a, packed=p))(model, input_ids, mask, layout)
    assert_trees_close(packed, reference)


def test_a_text_past_max_length_is_cut_as_the_padded_batch_cuts_it():
    """The 23-token text alone, packed, gives the vector of its first 16 tokens padded."""
    model = student(TINY_BERT, "mean")
    ids = [token_lists()[5]]
    assert len(ids[0]) > MAX_LENGTH
    padded = pad_batch(ids, MAX_LENGTH, pad_id=0)
    input_ids, mask, layout = packed_inputs(ids, row_multiple=1)
    np.testing.assert_array_equal(np.asarray(input_ids[0]), padded["input_ids"][0])
    reference = model.pooled(jnp.asarray(padded["input_ids"]), jnp.asarray(padded["attention_mask"]))
    assert_trees_close(model.pooled(input_ids, mask, packed=layout), reference)


def test_pool_packed_matches_a_numpy_reference():
    """Per-text mean / first / last of the packed token states, from the layout alone (float64 NumPy)."""
    ids = token_lists()
    input_ids, mask, layout = packed_inputs(ids)
    hidden = np.random.default_rng(3).normal(size=(*input_ids.shape, 5))
    for mode in ("mean", "cls", "last"):
        got = np.asarray(pool_packed(jnp.asarray(hidden, jnp.float32), mask, layout, mode))
        for i, tokens in enumerate(ids):
            row, segment = int(layout.text_row[i]), int(layout.text_segment[i])
            where = np.flatnonzero(np.asarray(layout.segment_ids[row]) == segment)
            assert where.size == min(len(tokens), MAX_LENGTH)
            states = hidden[row, where]
            expected = {"mean": states.mean(0), "cls": states[0], "last": states[-1]}[mode]
            np.testing.assert_allclose(got[i], expected, rtol=1e-5, atol=1e-6)
