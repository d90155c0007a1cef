"""A tiny NNX student with JasperStudent's call contract and logical axis names, and a simple objective.

Used by the generic-mechanics tests (sharding, optimizer, step, checkpoint) so they stay fast and
independent of the real encoders; the end-to-end tests use the real student and data pipeline.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def _linear(din, dout, names, rngs):
    return nnx.Linear(
        din,
        dout,
        kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(), names),
        bias_init=nnx.with_partitioning(nnx.initializers.normal(0.02), names[1:]),
        rngs=rngs,
    )


class TinyLayer(nnx.Module):
    def __init__(self, hidden, mlp, rngs):
        self.up = _linear(hidden, mlp, ("embed", "mlp"), rngs)
        self.down = _linear(mlp, hidden, ("mlp", "embed"), rngs)
        self.norm = nnx.LayerNorm(hidden, rngs=rngs)

    def __call__(self, x):
        return self.norm(x + self.down(jax.nn.gelu(self.up(x))))


class TinyEncoder(nnx.Module):
    def __init__(self, vocab, hidden, mlp, layers, rngs):
        self.embed = nnx.Embed(
            vocab,
            hidden,
            embedding_init=nnx.with_partitioning(nnx.initializers.normal(0.5), ("vocab", "embed")),
            rngs=rngs,
        )
        self.layers = nnx.List([TinyLayer(hidden, mlp, rngs) for _ in range(layers)])

    def __call__(self, input_ids, attention_mask):
        x = self.embed(input_ids)
        for layer in self.layers:
            x = layer(x)
        mask = attention_mask[..., None].astype(x.dtype)
        return (x * mask).sum(1) / jnp.maximum(mask.sum(1), 1.0)


class TinyStudent(nnx.Module):
    """`model(input_ids, attention_mask, *, deterministic) -> {head: (B, d) L2-normalised}`."""

    def __init__(self, heads=None, *, vocab=64, hidden=16, mlp=32, layers=3, dropout=0.0, rngs):
        heads = heads or {"fc1": 24}
        self.encoder = TinyEncoder(vocab, hidden, mlp, layers, rngs)
        self.heads = nnx.Dict({name: _linear(hidden, d, ("embed", "head_out"), rngs) for name, d in heads.items()})
        self.dropout = nnx.Dropout(dropout, rngs=rngs)

    def __call__(self, input_ids, attention_mask, *, deterministic=True):
        pooled = self.dropout(self.encoder(input_ids, attention_mask), deterministic=deterministic)
        out = {}
        for name, head in self.heads.items():
            v = head(pooled)
            out[name] = v / jnp.linalg.norm(v, axis=-1, keepdims=True)
        return out


def make_student(heads=None, seed=0, **kwargs):
    with nnx.use_eager_sharding(False):
        return TinyStudent(heads, rngs=nnx.Rngs(seed, dropout=seed + 1), **kwargs)


def simple_objective(head_outputs, teacher, row_mask):
    """Cosine on fc1 + similarity (global in-batch S S^T vs T T^T) on every head; mask drops rows."""
    mask = row_mask.astype(jnp.float32)
    t = teacher / jnp.linalg.norm(teacher, axis=-1, keepdims=True)
    metrics = {}
    total = 0.0
    pair = mask[:, None] * mask[None, :]
    for name, s in head_outputs.items():
        sim = jnp.sum(pair * (s @ s.T - t @ t.T) ** 2) / jnp.maximum(pair.sum(), 1.0)
        metrics[f"similarity/{name}"] = sim
        total = total + 200.0 * sim
    s = head_outputs["fc1"]
    cos = jnp.sum(mask * (1.0 - jnp.sum(s * t, -1))) / jnp.maximum(mask.sum(), 1.0)
    metrics["cosine/fc1"] = cos
    total = total + 10.0 * cos
    metrics["loss"] = total
    return total, metrics


def make_batch(batch_size=16, length=8, teacher_dim=24, vocab=64, seed=0, nan=False):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, length + 1, size=batch_size)
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int32)
    teacher = rng.normal(size=(batch_size, teacher_dim)).astype(np.float32)
    if nan:
        teacher[0, 0] = np.nan
    row_mask = np.ones(batch_size, bool)
    row_mask[-1] = False
    return {
        "input_ids": (rng.integers(1, vocab, size=(batch_size, length)) * mask).astype(np.int32),
        "attention_mask": mask,
        "teacher": teacher,
        "row_mask": row_mask,
    }
