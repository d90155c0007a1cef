"""Qwen3-family encoder: Qwen2's layer without q/k/v bias, with a per-head RMSNorm on queries and keys
(over head_dim, before RoPE), and `head_dim` set by the config rather than hidden_size / heads.

Causal by default, as Qwen3-Embedding uses it (last-token pooling over a causal encoder); `causal=False`
gives a bidirectional encoder with a padding mask, like our Qwen2 students. Everything else (embeddings,
pre-norm blocks, gated SiLU MLP, final norm, packing, remat, scan) is `qwen2.py`'s.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from jasper_jax.models.qwen2 import Qwen2Config, Qwen2Encoder


@dataclasses.dataclass(frozen=True)
class Qwen3Config(Qwen2Config):
    """Hyper-parameters of a Qwen3 encoder; field names follow Hugging Face's `Qwen3Config`.

    The defaults are Qwen3-Embedding-0.6B (the Jasper-Token-Compression-600M student)."""

    QKV_BIAS: ClassVar[bool] = False
    QK_NORM: ClassVar[bool] = True
    ARCHITECTURE: ClassVar[str] = "Qwen3Model"

    vocab_size: int = 151669
    hidden_size: int = 1024
    num_hidden_layers: int = 28
    num_attention_heads: int = 16
    num_key_value_heads: int = 8
    intermediate_size: int = 3072
    max_position_embeddings: int = 32768
    head_dim: int | None = 128
    causal: bool = True
    model_type: str = "qwen3"


class Qwen3Encoder(Qwen2Encoder):
    """Token ids -> final-norm hidden states (B, L, hidden), like `Qwen3Model(...).last_hidden_state`."""

    def __init__(self, config: Qwen3Config, **kwargs):
        if not isinstance(config, Qwen3Config):
            raise TypeError(f"Qwen3Encoder needs a Qwen3Config, got {type(config).__name__}")
        super().__init__(config, **kwargs)
