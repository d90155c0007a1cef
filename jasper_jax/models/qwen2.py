"""Qwen2-family encoder: GQA with q/k/v bias, RoPE, RMSNorm (pre-norm), gated SiLU MLP.

Bidirectional by default (stella_en_1.5B_v5 and Jasper use Qwen2 as a bidirectional encoder with a padding
mask); `causal=True` gives Hugging Face's `Qwen2Model` behaviour.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from jasper_jax.models import layers

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Qwen2Config:
    """Hyper-parameters of a Qwen2 encoder; field names follow Hugging Face's `Qwen2Config`.

    The defaults are stella_en_1.5B_v5's text tower. The class variables describe the family's layer (Qwen3
    subclasses this config: no q/k/v bias, per-head q/k RMSNorm)."""

    QKV_BIAS: ClassVar[bool] = True
    QK_NORM: ClassVar[bool] = False
    ARCHITECTURE: ClassVar[str] = "Qwen2Model"

    vocab_size: int = 151646
    hidden_size: int = 1536
    num_hidden_layers: int = 28
    num_attention_heads: int = 12
    num_key_value_heads: int = 2
    intermediate_size: int = 8960
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    max_position_embeddings: int = 131072
    hidden_act: str = "silu"
    head_dim: int | None = None
    causal: bool = False
    pad_token_id: int | None = None
    model_type: str = "qwen2"

    def __post_init__(self):
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)

    @classmethod
    def from_hf(cls, hf: dict[str, Any], *, causal: bool | None = None):
        """From a Hugging Face config.json dict; RoPE theta from `rope_parameters` (transformers 5) or
        `rope_theta` (older files). Only the default RoPE type is supported. `causal`: the attention when the
        file does not say (`jasper_causal`); default the family's (Qwen2 bidirectional, Qwen3 causal)."""
        name = cls.ARCHITECTURE.removesuffix("Model")
        rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type != "default":
            raise ValueError(f"{name} rope_type={rope_type!r} is not supported; only 'default'")
        if hf.get("use_sliding_window"):
            raise ValueError(f"{name} use_sliding_window=true is not supported (encoders attend over the whole text)")
        if cls.QK_NORM and hf.get("attention_bias"):  # Qwen3's switch (biases on q, k, v and o)
            raise ValueError(f"{name} attention_bias=true is not supported (Qwen3 models have none)")
        values = dict(hf)
        values["rope_theta"] = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
        default_causal = next(field.default for field in dataclasses.fields(cls) if field.name == "causal")
        values["causal"] = bool(hf.get("jasper_causal", default_causal if causal is None else causal))
        names = {field.name for field in dataclasses.fields(cls)} - {"model_type"}
        return cls(**{key: values[key] for key in names if key in values and values[key] is not None})

    def to_hf(self) -> dict[str, Any]:
        """A Hugging Face config.json dict for `Qwen2Model` / `Qwen3Model` (transformers 5 style rope_parameters)."""
        hf = dataclasses.asdict(self)
        theta = hf.pop("rope_theta")
        causal = hf.pop("causal")
        hf.update(
            architectures=[self.ARCHITECTURE],
            model_type=self.model_type,
            rope_parameters={"rope_type": "default", "rope_theta": theta},
            rope_theta=theta,
            jasper_causal=causal,
            tie_word_embeddings=False,
            use_sliding_window=False,
            attention_dropout=0.0,
        )
        if self.QK_NORM:  # Qwen3 names the bias switch
            hf["attention_bias"] = self.QKV_BIAS
        return hf


class Qwen2Layer(nnx.Module):
    """Pre-norm block: x = x + attention(norm(x)); x = x + mlp(norm(x)). The config's class says whether
    q/k/v have biases (Qwen2) or queries and keys a per-head RMSNorm (Qwen3)."""

    def __init__(self, config: Qwen2Config, *, dtype: str, attention: str = "auto", rngs: nnx.Rngs):
        self.input_norm = layers.RMSNorm(config.hidden_size, config.rms_norm_eps, dtype=dtype, rngs=rngs)
        self.attention = layers.Attention(
            config.hidden_size,
            config.num_attention_heads,
            config.num_key_value_heads,
            config.head_dim,
            qkv_bias=config.QKV_BIAS,
            output_bias=False,
            causal=config.causal,
            rope_theta=config.rope_theta,
            qk_norm_eps=config.rms_norm_eps if config.QK_NORM else None,
            dtype=dtype,
            attention=attention,
            rngs=rngs,
        )
        self.post_attention_norm = layers.RMSNorm(config.hidden_size, config.rms_norm_eps, dtype=dtype, rngs=rngs)
        self.mlp = layers.GatedMLP(
            config.hidden_size, config.intermediate_size, config.hidden_act, dtype=dtype, rngs=rngs
        )

    def __call__(self, x: Array, attention_mask: Array, positions: Array, segment_ids: Array | None = None) -> Array:
        x = x + self.attention(self.input_norm(x), attention_mask, positions, segment_ids)
        return x + self.mlp(self.post_attention_norm(x))


class Qwen2Encoder(nnx.Module):
    """Token ids -> final-norm hidden states (B, L, hidden), like `Qwen2Model(...).last_hidden_state`.

    Positions are 0..L-1 (right padding), as Hugging Face uses when no position ids are given. `attention`: the
    attention implementation (`jasper_jax.models.attention.IMPLEMENTATIONS`)."""

    def __init__(
        self,
        config: Qwen2Config,
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
        self.embed = layers.Embedding(config.vocab_size, config.hidden_size, "vocab", dtype=dtype, rngs=rngs)
        self.layers = nnx.List(
            [Qwen2Layer(config, dtype=dtype, attention=attention, rngs=rngs) for _ in range(config.num_hidden_layers)]
        )
        self.final_norm = layers.RMSNorm(config.hidden_size, config.rms_norm_eps, dtype=dtype, rngs=rngs)

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
        """`inputs_embeds` (B, L, hidden), if given, replaces the token embeddings (as in Hugging Face).

        Packed rows (`jasper_jax.models.packed`): `positions` (B, L) are the RoPE positions (default 0..L-1)
        and `segment_ids` (B, L) keep attention (bidirectional or causal) inside each text."""
        del token_type_ids  # Qwen2 has none
        batch, length = (input_ids if inputs_embeds is None else inputs_embeds).shape[:2]
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
        x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds.astype(self.embed.dtype)
        packed = () if segment_ids is None else (segment_ids,)
        x = layers.run_layers(
            self.layers, x, attention_mask, positions, *packed, remat=self.remat, scan=self.scan_layers
        )
        return self.final_norm(x)
