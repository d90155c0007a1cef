"""Packed inputs (sequence packing): several texts per row, kept apart by segment ids, pooled per text.

A packed batch (`jasper_jax.data.packing.pack_batch`) has rows (R, L) holding B texts end to end. The
encoders take its `segment_ids` (attention stays inside a segment, bidirectional or causal) and `positions`
(restarting at 0 in each segment, for BERT's learned positions and RoPE); `pool_packed` turns the token
states back into the B pooled vectors in the input order, equal to what the padded batch gives.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from jasper_jax.models.pooling import POOLING_MODES

Array = jax.Array
FIELDS = ("segment_ids", "positions", "text_row", "text_segment")


@jax.tree_util.register_dataclass
@dataclass
class PackedLayout:
    """Where the texts of a packed batch lie: `segment_ids`, `positions` (R, L) int (segment 0 = padding);
    text i is segment `text_segment[i]` (>= 1) of row `text_row[i]` ((B,) int each)."""

    segment_ids: Array
    positions: Array
    text_row: Array
    text_segment: Array

    @classmethod
    def from_batch(cls, batch: Mapping[str, Array]) -> PackedLayout | None:
        """The layout of a packed training batch (its keys `FIELDS`), None for a padded one."""
        if "segment_ids" not in batch:
            return None
        return cls(**{name: batch[name] for name in FIELDS})


def token_texts(layout: PackedLayout) -> Array:
    """(R * L,) int32: the input index of the text each token belongs to; B for padding."""
    rows, length = layout.segment_ids.shape
    texts = layout.text_row.shape[0]
    table = jnp.full((rows, length + 1), texts, jnp.int32)
    table = table.at[layout.text_row, layout.text_segment].set(jnp.arange(texts, dtype=jnp.int32))
    return jnp.take_along_axis(table, layout.segment_ids.astype(jnp.int32), axis=1).reshape(-1)


def pool_packed(hidden: Array, attention_mask: Array, layout: PackedLayout, mode: str = "mean") -> Array:
    """Pool the packed token states `hidden` (R, L, H) per text: float32 (B, H) in the input order.

    mean: average of the text's real tokens (`attention_mask` nonzero); cls: its first token; last: its last
    token. Same definitions as `pooling.pool` on the padded batch."""
    texts = layout.text_row.shape[0]
    flat = hidden.reshape(-1, hidden.shape[-1]).astype(jnp.float32)
    owner = token_texts(layout)
    if mode == "mean":
        weight = attention_mask.reshape(-1).astype(jnp.float32)
        total = jax.ops.segment_sum(flat * weight[:, None], owner, num_segments=texts + 1)[:texts]
        count = jax.ops.segment_sum(weight, owner, num_segments=texts + 1)[:texts]
        return total / jnp.maximum(count[:, None], 1e-9)
    if mode in ("cls", "last"):
        index = jnp.arange(owner.shape[0], dtype=jnp.int32)
        if mode == "cls":
            picked = jax.ops.segment_min(index, owner, num_segments=texts + 1)[:texts]
        else:
            real = attention_mask.reshape(-1).astype(bool)
            picked = jax.ops.segment_max(jnp.where(real, index, -1), owner, num_segments=texts + 1)[:texts]
            picked = jnp.maximum(picked, jax.ops.segment_min(index, owner, num_segments=texts + 1)[:texts])
        return jnp.take(flat, picked, axis=0)
    raise ValueError(f"unknown pooling mode {mode!r}; choose from {POOLING_MODES}")
