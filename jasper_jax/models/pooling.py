"""Pooling token states (B, L, H) into one vector per text, respecting the padding mask."""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

POOLING_MODES = ("mean", "cls", "last")


def pool(hidden: Array, attention_mask: Array, mode: str = "mean") -> Array:
    """Pool `hidden` (B, L, H) over the valid positions of `attention_mask` (B, L); float32 (B, H).

    mean: average of the valid tokens (sentence-transformers' mean pooling); cls: the first token;
    last: the last valid token (works with left or right padding)."""
    hidden = hidden.astype(jnp.float32)
    mask = attention_mask.astype(jnp.float32)
    if mode == "mean":
        total = jnp.einsum("blh,bl->bh", hidden, mask)
        return total / jnp.maximum(mask.sum(axis=1, keepdims=True), 1e-9)
    if mode == "cls":
        return hidden[:, 0]
    if mode == "last":
        length = attention_mask.shape[1]
        last = length - 1 - jnp.argmax(attention_mask[:, ::-1].astype(bool), axis=1)
        return jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]
    raise ValueError(f"unknown pooling mode {mode!r}; choose from {POOLING_MODES}")


def l2_normalize(x: Array, eps: float = 1e-12) -> Array:
    """Rows divided by their L2 norm (as torch.nn.functional.normalize)."""
    x = x.astype(jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)
