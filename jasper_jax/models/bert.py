"""BERT-family encoder (MiniLM, bge, e5 style): learned absolute positions, token types, post-LN, GELU MLP."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jasper_jax.models import layers

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Hyper-parameters of a BERT encoder; field names follow Hugging Face's `BertConfig`."""

    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    pad_token_id: int = 0
    model_type: str = "bert"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> BertConfig:
        """From a Hugging Face config.json dict (unknown keys ignored)."""
        if hf.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(
                f"BERT position_embedding_type={hf['position_embedding_type']!r} is not supported; only 'absolute'"
            )
        names = {field.name for field in dataclasses.fields(cls)} - {"model_type"}
        return cls(**{key: hf[key] for key in names if key in hf and hf[key] is not None})

    def to_hf(self) -> dict[str, Any]:
        """A Hugging Face config.json dict for `BertModel`."""
        hf = dataclasses.asdict(self)
        hf.update(architectures=["BertModel"], position_embedding_type="absolute", model_type="bert")
        return hf


class BertLayer(nnx.Module):
    """Post-LN transformer block: x = LN(x + attention(x)); x = LN(x + mlp(x))."""

    def __init__(self, config: BertConfig, *, dtype: str, attention: str = "auto", rngs: nnx.Rngs):
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

    def __call__(self, x: Array, attention_mask: Array, segment_ids: Array | None = None) -> Array:
        x = self.attention_norm(x + self.attention(x, attention_mask, segment_ids=segment_ids))
        return self.mlp_norm(x + self.mlp(x))


class BertEncoder(nnx.Module):
    """Token ids -> last hidden states (B, L, hidden), like Hugging Face's `BertModel(...).last_hidden_state`.

    `attention`: the attention implementation (`jasper_jax.models.attention.IMPLEMENTATIONS`)."""

    def __init__(
        self,
        config: BertConfig,
        *,
        dtype: str = "float32",
        remat: bool | str = False,
        attention: str = "auto",
        scan_layers: bool = False,
        rngs: nnx.Rngs,
    ):
        self.config = config
        self.remat = remat
        self.scan_layers = scan_layers
        self.word_embeddings = layers.Embedding(config.vocab_size, config.hidden_size, "vocab", dtype=dtype, rngs=rngs)
        self.position_embeddings = layers.Embedding(
            config.max_position_embeddings, config.hidden_size, "position", dtype=dtype, rngs=rngs
        )
        self.token_type_embeddings = layers.Embedding(
            config.type_vocab_size, config.hidden_size, "token_type", dtype=dtype, rngs=rngs
        )
        self.embeddings_norm = layers.LayerNorm(config.hidden_size, config.layer_norm_eps, dtype=dtype, rngs=rngs)
        self.layers = nnx.List(
            [BertLayer(config, dtype=dtype, attention=attention, rngs=rngs) for _ in range(config.num_hidden_layers)]
        )

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
        """`inputs_embeds` (B, L, hidden), if given, replaces the word embeddings (as in Hugging Face).

        Packed rows (`jasper_jax.models.packed`): `positions` (B, L) index the learned position table
        (default 0..L-1) and `segment_ids` (B, L) keep attention inside each text."""
        length = input_ids.shape[1]
        if length > self.config.max_position_embeddings:
            raise ValueError(
                f"sequence length {length} exceeds max_position_embeddings={self.config.max_position_embeddings}"
            )
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        words = (
            self.word_embeddings(input_ids)
            if inputs_embeds is None
            else inputs_embeds.astype(self.word_embeddings.dtype)
        )
        where = jnp.arange(length)[None] if positions is None else positions
        x = words + self.position_embeddings(where) + self.token_type_embeddings(token_type_ids)
        x = self.embeddings_norm(x)
        packed = () if segment_ids is None else (segment_ids,)
        return layers.run_layers(self.layers, x, attention_mask, *packed, remat=self.remat, scan=self.scan_layers)
