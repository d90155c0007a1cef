"""MPNet-family encoder (all-mpnet-base-v2): BERT's post-LN layers without token types, positions counted
from padding_idx + 1, and a relative position bias on the attention scores shared by every layer.

As transformers' `MPNetModel`:
- position ids are `cumsum(input_ids != 1) * (input_ids != 1) + 1` (padding_idx is 1 in `MPNetEmbeddings`
  whatever the config's pad_token_id): real tokens count from 2, padding tokens sit at 1;
- one `relative_attention_bias` table (buckets, heads) belongs to the encoder, not to a layer; its bias
  (1, heads, L, L), from the key-minus-query offsets of positions 0..L-1, is added to every layer's scores;
- the offsets are bucketed T5-style (`relative_position_bucket`: 32 buckets, max distance 128, 8 exact
  distances per direction). The bucket of each distance is a table computed once in numpy float32, which
  gives the buckets torch's float32 log gives (tests/models/test_mpnet.py compares all offsets).

The bias needs an attention implementation that adds it: "auto" is "xla" here, "einsum" and "xla" are
accepted, "cudnn" and "splash" are refused at construction. Packed rows: `positions` (0-based per text)
give both the position ids (positions + 2) and the offsets of the bias; `segment_ids` mask across texts.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jasper_jax.models import layers

Array = jax.Array
PADDING_IDX = 1  # MPNetEmbeddings.padding_idx (hard-coded there)
NUM_BUCKETS = 32  # MPNetEncoder.compute_position_bias's default, which the model uses
MAX_DISTANCE = 128
BIAS_IMPLEMENTATIONS = ("auto", "xla", "einsum")


def _distance_buckets(limit: int = 2 * MAX_DISTANCE) -> np.ndarray:
    """Bucket of each distance 0..limit in one direction (0..15), as torch computes it in float32."""
    half = NUM_BUCKETS // 2
    exact = half // 2
    distance = np.arange(limit + 1)
    large = np.log(np.maximum(distance, 1).astype(np.float32) / np.float32(exact))
    large = exact + (large / np.float32(math.log(MAX_DISTANCE / exact)) * np.float32(half - exact)).astype(np.int64)
    return np.where(distance < exact, distance, np.minimum(large, half - 1)).astype(np.int32)


DISTANCE_BUCKETS = _distance_buckets()


def relative_position_bucket(relative_position: Array) -> Array:
    """transformers' `MPNetEncoder.relative_position_bucket` (key position minus query position -> 0..31):
    keys before the query in buckets 16..31, at or after it in 0..15."""
    n = -relative_position
    table = jnp.asarray(DISTANCE_BUCKETS)
    distance = jnp.minimum(jnp.abs(n), table.shape[0] - 1)  # past MAX_DISTANCE every distance is the last bucket
    return jnp.where(n < 0, NUM_BUCKETS // 2, 0) + table[distance]


@dataclasses.dataclass(frozen=True)
class MPNetConfig:
    """Hyper-parameters of an MPNet encoder; field names follow Hugging Face's `MPNetConfig`.

    The defaults are all-mpnet-base-v2's."""

    vocab_size: int = 30527
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 514
    layer_norm_eps: float = 1e-5
    hidden_act: str = "gelu"
    pad_token_id: int = 1
    relative_attention_num_buckets: int = NUM_BUCKETS
    model_type: str = "mpnet"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> MPNetConfig:
        """From a Hugging Face config.json dict (unknown keys ignored)."""
        buckets = hf.get("relative_attention_num_buckets", NUM_BUCKETS)
        if buckets != NUM_BUCKETS:
            raise ValueError(
                f"MPNet relative_attention_num_buckets={buckets} is not supported; transformers' MPNetModel "
                f"buckets into {NUM_BUCKETS}, so only {NUM_BUCKETS} works"
            )
        names = {field.name for field in dataclasses.fields(cls)} - {"model_type"}
        return cls(**{key: hf[key] for key in names if key in hf and hf[key] is not None})

    def to_hf(self) -> dict[str, Any]:
        """A Hugging Face config.json dict for `MPNetModel`."""
        hf = dataclasses.asdict(self)
        hf.update(architectures=["MPNetModel"], model_type="mpnet")
        return hf


class MPNetLayer(nnx.Module):
    """Post-LN block as BERT's, the shared position bias added to the attention scores."""

    def __init__(self, config: MPNetConfig, *, dtype: str, attention: str, rngs: nnx.Rngs):
        heads = config.num_attention_heads
        self.attention = layers.Attention(
            config.hidden_size,
            heads,
            heads,
            config.head_dim,
            qkv_bias=True,
            output_bias=True,
            dtype=dtype,
            attention=attention,
            rngs=rngs,
        )
        self.attention_norm = layers.LayerNorm(config.hidden_size, config.layer_norm_eps, dtype=dtype, rngs=rngs)
        self.mlp = layers.MLP(config.hidden_size, config.intermediate_size, config.hidden_act, dtype=dtype, rngs=rngs)
        self.mlp_norm = layers.LayerNorm(config.hidden_size, config.layer_norm_eps, dtype=dtype, rngs=rngs)

    def __call__(self, x: Array, attention_mask: Array, bias: Array, segment_ids: Array | None = None) -> Array:
        x = self.attention_norm(x + self.attention(x, attention_mask, segment_ids=segment_ids, bias=bias))
        return self.mlp_norm(x + self.mlp(x))


class MPNetEncoder(nnx.Module):
    """Token ids -> last hidden states (B, L, hidden), like Hugging Face's `MPNetModel(...).last_hidden_state`."""

    def __init__(
        self,
        config: MPNetConfig,
        *,
        dtype: str = "float32",
        remat: bool | str = False,
        attention: str = "auto",
        scan_layers: bool = False,
        rngs: nnx.Rngs,
    ):
        if attention not in BIAS_IMPLEMENTATIONS:
            raise ValueError(
                f"attention={attention!r} cannot add MPNet's relative position bias; use one of {BIAS_IMPLEMENTATIONS}"
            )
        implementation = "xla" if attention == "auto" else attention
        self.config = config
        self.remat = remat
        self.scan_layers = scan_layers
        self.word_embeddings = layers.Embedding(config.vocab_size, config.hidden_size, "vocab", dtype=dtype, rngs=rngs)
        self.position_embeddings = layers.Embedding(
            config.max_position_embeddings, config.hidden_size, "position", dtype=dtype, rngs=rngs
        )
        self.embeddings_norm = layers.LayerNorm(config.hidden_size, config.layer_norm_eps, dtype=dtype, rngs=rngs)
        self.relative_attention_bias = layers.make_param(
            rngs,
            layers.default_kernel_init,
            (config.relative_attention_num_buckets, config.num_attention_heads),
            ("position", "heads"),
        )
        self.layers = nnx.List(
            [
                MPNetLayer(config, dtype=dtype, attention=implementation, rngs=rngs)
                for _ in range(config.num_hidden_layers)
            ]
        )

    def position_bias(self, positions: Array) -> Array:
        """(B or 1, heads, L, L) float32 bias from positions (B or 1, L): table[bucket(key - query)]."""
        relative = positions[:, None, :] - positions[:, :, None]
        values = jnp.take(self.relative_attention_bias[...], relative_position_bucket(relative), axis=0)
        return values.transpose(0, 3, 1, 2)

    def __call__(
        self,
        input_ids: Array,
        attention_mask: Array,
        token_type_ids: Array | None = None,
        inputs_embeds: Array | None = None,
        *,
        positions: Array | None = None,
        segment_ids: Array | None = None,
    ) -> Array:
        """`token_type_ids` are ignored (MPNet has none); `inputs_embeds` (B, L, hidden), if given, replaces
        the word embeddings. Packed rows (`jasper_jax.models.packed`): `positions` (B, L), 0-based per text."""
        length = input_ids.shape[1]
        if positions is None:
            real = (input_ids != PADDING_IDX).astype(jnp.int32)
            position_ids = jnp.cumsum(real, axis=1) * real + PADDING_IDX
            relative_from = jnp.arange(length)[None]
        else:
            position_ids = positions + PADDING_IDX + 1
            relative_from = positions
        if length + PADDING_IDX >= self.config.max_position_embeddings:
            raise ValueError(
                f"sequence length {length} exceeds max_position_embeddings={self.config.max_position_embeddings} "
                f"- {PADDING_IDX + 1} (MPNet's positions start at {PADDING_IDX + 1})"
            )
        words = (
            self.word_embeddings(input_ids)
            if inputs_embeds is None
            else inputs_embeds.astype(self.word_embeddings.dtype)
        )
        x = self.embeddings_norm(words + self.position_embeddings(position_ids))
        bias = self.position_bias(relative_from)
        packed = () if segment_ids is None else (segment_ids,)
        return layers.run_layers(self.layers, x, attention_mask, bias, *packed, remat=self.remat, scan=self.scan_layers)
