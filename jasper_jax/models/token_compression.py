"""Dynamic token compression (Jasper-Token-Compression-600M's `TokenCompressor`): a gated SiLU MLP over the
token embeddings, then, per text, adaptive average pooling of its n real tokens to

    t(n) = n                                          if n <= threshold
    t(n) = int(threshold + (n - threshold) * ratio)   otherwise

tokens (`torch.nn.functional.adaptive_avg_pool1d`: output i averages the inputs from floor(i n / t) up to,
not including, ceil((i+1) n / t)), so the encoder then runs over far fewer positions. The released model
uses threshold 80, ratio 0.5 by default, and takes the ratio as a call argument.

Static shapes for jit: the ratio is a Python float (one compilation per ratio), t(n) is read from a table
computed on the host in float64 exactly as the released code does, and the output length is the largest
t(n) over n <= L for the input length L (the compressed bucket); rows shorter than it are right-padded and
masked. Alternatively the caller passes the compressed mask (B, T) it built on the host
(`compressed_mask`), which fixes both the output length T and each row's t (a way to vary the ratio
without recompiling; the trainer does not sample it yet). Inputs are right-padded, as everywhere in this package.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jasper_jax.models import layers

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class CompressionConfig:
    """A token compressor: texts longer than `threshold` tokens keep `threshold + (n - threshold) * ratio`;
    `ratio` is the default of a call that gives none; `intermediate_size` the MLP's width."""

    intermediate_size: int
    threshold: int = 80
    ratio: float = 0.5
    hidden_act: str = "silu"

    def __post_init__(self):
        check_ratio(self.ratio, "token_compression.ratio")
        if self.threshold < 1:
            raise ValueError(f"token_compression.threshold={self.threshold}; it must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> CompressionConfig:
        return cls(**values)


def check_ratio(ratio: float, what: str = "compression ratio") -> float:
    """`ratio` as a float in (0, 1]; anything else is a ValueError naming `what`."""
    ratio = float(ratio)
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"{what}={ratio}; it must be in (0, 1] (1.0 keeps every token)")
    return ratio


@functools.lru_cache(maxsize=64)
def length_table(ratio: float, threshold: int, max_length: int) -> np.ndarray:
    """`table[n]` = the compressed length of an n-token text, n = 0..max_length (int32), computed in float64
    with the released code's `int(...)` truncation."""
    lengths = np.arange(max_length + 1)
    compressed = [n if n <= threshold else int(threshold + (n - threshold) * ratio) for n in lengths.tolist()]
    table = np.asarray(compressed, np.int32)
    table.setflags(write=False)
    return table


def compressed_length(ratio: float, threshold: int, length: int) -> int:
    """The output length (static) for inputs of `length` positions: the largest t(n) over n <= length."""
    return int(length_table(ratio, threshold, length).max())


def compressed_mask(lengths: np.ndarray, ratio: float, threshold: int, out_length: int | None = None) -> np.ndarray:
    """Host side: the compressed attention mask (B, T) int32 of texts with `lengths` real tokens; T the
    smallest that holds every row (`out_length` if given, which must be at least that)."""
    lengths = np.asarray(lengths, np.int64)
    table = length_table(float(ratio), int(threshold), int(lengths.max(initial=0)))
    targets = table[lengths]
    needed = int(targets.max(initial=0))
    out_length = needed if out_length is None else int(out_length)
    if out_length < needed:
        raise ValueError(f"out_length={out_length} cannot hold a compressed text of {needed} tokens")
    return (np.arange(out_length)[None, :] < targets[:, None]).astype(np.int32)


def pooling_weights(lengths: Array, targets: Array, in_length: int, out_length: int) -> Array:
    """(B, T, L) float32: row b maps its first `lengths[b]` inputs to its first `targets[b]` outputs by
    adaptive average pooling (zero rows past `targets[b]`; a text with targets == lengths is copied)."""
    n = lengths.astype(jnp.int32)[:, None, None]
    t = jnp.maximum(targets.astype(jnp.int32), 1)[:, None, None]
    i = jnp.arange(out_length, dtype=jnp.int32)[None, :, None]
    j = jnp.arange(in_length, dtype=jnp.int32)[None, None, :]
    start = (i * n) // t
    end = ((i + 1) * n + t - 1) // t
    inside = (j >= start) & (j < end) & (i < targets.astype(jnp.int32)[:, None, None])
    return inside.astype(jnp.float32) / jnp.maximum(end - start, 1).astype(jnp.float32)


def adaptive_pool(x: Array, attention_mask: Array, new_mask: Array) -> Array:
    """Pool x (B, L, H) of right-padded texts with `attention_mask` (B, L) to (B, T, H) where each row keeps
    `new_mask[b].sum()` positions (`new_mask` (B, T), right-padded). Accumulates in float32."""
    weights = pooling_weights(attention_mask.sum(1), new_mask.sum(1), x.shape[1], new_mask.shape[1])
    pooled = jnp.einsum("btl,blh->bth", weights, x.astype(jnp.float32), precision=jax.lax.Precision.HIGHEST)
    return pooled.astype(x.dtype)


class TokenCompressor(nnx.Module):
    """`mlp` (gate/up/down, the released `jasper_mlp`, a `Qwen3MLP`) then per-row adaptive average pooling."""

    def __init__(self, config: CompressionConfig, hidden: int, *, dtype: str = "float32", rngs: nnx.Rngs):
        self.config = config
        self.mlp = layers.GatedMLP(hidden, config.intermediate_size, config.hidden_act, dtype=dtype, rngs=rngs)

    def __call__(
        self,
        embeddings: Array,
        attention_mask: Array,
        *,
        ratio: float | None = None,
        new_mask: Array | None = None,
    ) -> tuple[Array, Array]:
        """(compressed embeddings (B, T, H), their mask (B, T) int32). `new_mask`, if given, sets T and each
        row's kept length (`compressed_mask`); otherwise `ratio` (default the config's) does, statically."""
        x = self.mlp(embeddings)
        if new_mask is None:
            ratio = check_ratio(self.config.ratio if ratio is None else ratio)
            table = length_table(ratio, self.config.threshold, x.shape[1])
            out_length = compressed_length(ratio, self.config.threshold, x.shape[1])
            targets = jnp.asarray(table)[attention_mask.sum(1).astype(jnp.int32)]
            new_mask = (jnp.arange(out_length)[None, :] < targets[:, None]).astype(jnp.int32)
        return adaptive_pool(x, attention_mask, new_mask), new_mask.astype(jnp.int32)
