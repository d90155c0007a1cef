"""One key map per encoder family: our parameter path <-> Hugging Face key, with the array transform each way.

A rule's `ours` and `hf` templates may contain `{i}` (the layer index). `to_ours(array, config)` turns the
Hugging Face tensor into our parameter; `to_hf` is its exact inverse (transposes and reshapes only, so a
round trip is bit-identical). The same table drives import and export, so the two cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import numpy as np

from jasper_jax.models.bert import BertConfig
from jasper_jax.models.qwen2 import Qwen2Config
from jasper_jax.models.siglip import MODEL_TYPE as SIGLIP_MODEL_TYPE

Hook = Callable[[np.ndarray, object], np.ndarray]


@dataclasses.dataclass(frozen=True)
class KeyRule:
    ours: str
    hf: str
    to_ours: Hook
    to_hf: Hook


def _identity(array, config):
    return array


def _transpose(array, config):
    return array.T


def _heads(config, kind: str) -> int:
    if kind == "kv" and isinstance(config, Qwen2Config):
        return config.num_key_value_heads
    return config.num_attention_heads


def _rules_for_projection(ours: str, hf: str, kind: str, bias: bool) -> list[KeyRule]:
    """q/k/v: HF weight (heads*head_dim, embed) <-> ours (embed, heads, head_dim); bias (heads*hd,) <-> (heads, hd)."""

    def kernel_to_ours(w, config):
        return w.T.reshape(w.shape[1], _heads(config, kind), config.head_dim)

    def kernel_to_hf(w, config):
        return w.reshape(w.shape[0], -1).T

    def bias_to_ours(b, config):
        return b.reshape(_heads(config, kind), config.head_dim)

    def bias_to_hf(b, config):
        return b.reshape(-1)

    rules = [KeyRule(f"{ours}/kernel", f"{hf}.weight", kernel_to_ours, kernel_to_hf)]
    if bias:
        rules.append(KeyRule(f"{ours}/bias", f"{hf}.bias", bias_to_ours, bias_to_hf))
    return rules


def _rules_for_output(ours: str, hf: str, bias: bool) -> list[KeyRule]:
    """o: HF weight (embed, heads*head_dim) <-> ours (heads, head_dim, embed)."""

    def kernel_to_ours(w, config):
        return w.T.reshape(config.num_attention_heads, config.head_dim, w.shape[0])

    def kernel_to_hf(w, config):
        return w.reshape(-1, w.shape[-1]).T

    rules = [KeyRule(f"{ours}/kernel", f"{hf}.weight", kernel_to_ours, kernel_to_hf)]
    if bias:
        rules.append(KeyRule(f"{ours}/bias", f"{hf}.bias", _identity, _identity))
    return rules


def _linear(ours: str, hf: str, bias: bool = True) -> list[KeyRule]:
    rules = [KeyRule(f"{ours}/kernel", f"{hf}.weight", _transpose, _transpose)]
    if bias:
        rules.append(KeyRule(f"{ours}/bias", f"{hf}.bias", _identity, _identity))
    return rules


def _copy(ours: str, hf: str) -> KeyRule:
    return KeyRule(ours, hf, _identity, _identity)


def _layer_norm(ours: str, hf: str) -> list[KeyRule]:
    return [_copy(f"{ours}/scale", f"{hf}.weight"), _copy(f"{ours}/bias", f"{hf}.bias")]


BERT_RULES: list[KeyRule] = [
    _copy("word_embeddings/embedding", "embeddings.word_embeddings.weight"),
    _copy("position_embeddings/embedding", "embeddings.position_embeddings.weight"),
    _copy("token_type_embeddings/embedding", "embeddings.token_type_embeddings.weight"),
    *_layer_norm("embeddings_norm", "embeddings.LayerNorm"),
    *_rules_for_projection("layers/{i}/attention/query", "encoder.layer.{i}.attention.self.query", "q", True),
    *_rules_for_projection("layers/{i}/attention/key", "encoder.layer.{i}.attention.self.key", "kv", True),
    *_rules_for_projection("layers/{i}/attention/value", "encoder.layer.{i}.attention.self.value", "kv", True),
    *_rules_for_output("layers/{i}/attention/output", "encoder.layer.{i}.attention.output.dense", True),
    *_layer_norm("layers/{i}/attention_norm", "encoder.layer.{i}.attention.output.LayerNorm"),
    *_linear("layers/{i}/mlp/up", "encoder.layer.{i}.intermediate.dense"),
    *_linear("layers/{i}/mlp/down", "encoder.layer.{i}.output.dense"),
    *_layer_norm("layers/{i}/mlp_norm", "encoder.layer.{i}.output.LayerNorm"),
]

# MPNet: BERT's layer under other names, no token types, one relative position bias table for all layers
MPNET_RULES: list[KeyRule] = [
    _copy("word_embeddings/embedding", "embeddings.word_embeddings.weight"),
    _copy("position_embeddings/embedding", "embeddings.position_embeddings.weight"),
    *_layer_norm("embeddings_norm", "embeddings.LayerNorm"),
    _copy("relative_attention_bias", "encoder.relative_attention_bias.weight"),
    *_rules_for_projection("layers/{i}/attention/query", "encoder.layer.{i}.attention.attn.q", "q", True),
    *_rules_for_projection("layers/{i}/attention/key", "encoder.layer.{i}.attention.attn.k", "kv", True),
    *_rules_for_projection("layers/{i}/attention/value", "encoder.layer.{i}.attention.attn.v", "kv", True),
    *_rules_for_output("layers/{i}/attention/output", "encoder.layer.{i}.attention.attn.o", True),
    *_layer_norm("layers/{i}/attention_norm", "encoder.layer.{i}.attention.LayerNorm"),
    *_linear("layers/{i}/mlp/up", "encoder.layer.{i}.intermediate.dense"),
    *_linear("layers/{i}/mlp/down", "encoder.layer.{i}.output.dense"),
    *_layer_norm("layers/{i}/mlp_norm", "encoder.layer.{i}.output.LayerNorm"),
]

QWEN2_RULES: list[KeyRule] = [
    _copy("embed/embedding", "embed_tokens.weight"),
    _copy("layers/{i}/input_norm/scale", "layers.{i}.input_layernorm.weight"),
    *_rules_for_projection("layers/{i}/attention/query", "layers.{i}.self_attn.q_proj", "q", True),
    *_rules_for_projection("layers/{i}/attention/key", "layers.{i}.self_attn.k_proj", "kv", True),
    *_rules_for_projection("layers/{i}/attention/value", "layers.{i}.self_attn.v_proj", "kv", True),
    *_rules_for_output("layers/{i}/attention/output", "layers.{i}.self_attn.o_proj", False),
    _copy("layers/{i}/post_attention_norm/scale", "layers.{i}.post_attention_layernorm.weight"),
    *_linear("layers/{i}/mlp/gate", "layers.{i}.mlp.gate_proj", bias=False),
    *_linear("layers/{i}/mlp/up", "layers.{i}.mlp.up_proj", bias=False),
    *_linear("layers/{i}/mlp/down", "layers.{i}.mlp.down_proj", bias=False),
    _copy("final_norm/scale", "norm.weight"),
]

# Qwen3: Qwen2 without q/k/v bias, plus per-head RMSNorm weights (head_dim,) on queries and keys
QWEN3_RULES: list[KeyRule] = [
    _copy("embed/embedding", "embed_tokens.weight"),
    _copy("layers/{i}/input_norm/scale", "layers.{i}.input_layernorm.weight"),
    *_rules_for_projection("layers/{i}/attention/query", "layers.{i}.self_attn.q_proj", "q", False),
    *_rules_for_projection("layers/{i}/attention/key", "layers.{i}.self_attn.k_proj", "kv", False),
    *_rules_for_projection("layers/{i}/attention/value", "layers.{i}.self_attn.v_proj", "kv", False),
    _copy("layers/{i}/attention/query_norm/scale", "layers.{i}.self_attn.q_norm.weight"),
    _copy("layers/{i}/attention/key_norm/scale", "layers.{i}.self_attn.k_norm.weight"),
    *_rules_for_output("layers/{i}/attention/output", "layers.{i}.self_attn.o_proj", False),
    _copy("layers/{i}/post_attention_norm/scale", "layers.{i}.post_attention_layernorm.weight"),
    *_linear("layers/{i}/mlp/gate", "layers.{i}.mlp.gate_proj", bias=False),
    *_linear("layers/{i}/mlp/up", "layers.{i}.mlp.up_proj", bias=False),
    *_linear("layers/{i}/mlp/down", "layers.{i}.mlp.down_proj", bias=False),
    _copy("final_norm/scale", "norm.weight"),
]


def _patch_kernel_to_ours(w, config):
    """HF Conv2d weight (hidden, channels, patch_h, patch_w) -> ours (patch_h, patch_w, channels, hidden)."""
    return w.transpose(2, 3, 1, 0)


def _patch_kernel_to_hf(w, config):
    return w.transpose(3, 2, 0, 1)


SIGLIP_VISION_RULES: list[KeyRule] = [
    KeyRule("patch_embedding/kernel", "embeddings.patch_embedding.weight", _patch_kernel_to_ours, _patch_kernel_to_hf),
    _copy("patch_embedding/bias", "embeddings.patch_embedding.bias"),
    _copy("position_embedding/embedding", "embeddings.position_embedding.weight"),
    *_layer_norm("layers/{i}/attention_norm", "encoder.layers.{i}.layer_norm1"),
    *_rules_for_projection("layers/{i}/attention/query", "encoder.layers.{i}.self_attn.q_proj", "q", True),
    *_rules_for_projection("layers/{i}/attention/key", "encoder.layers.{i}.self_attn.k_proj", "kv", True),
    *_rules_for_projection("layers/{i}/attention/value", "encoder.layers.{i}.self_attn.v_proj", "kv", True),
    *_rules_for_output("layers/{i}/attention/output", "encoder.layers.{i}.self_attn.out_proj", True),
    *_layer_norm("layers/{i}/mlp_norm", "encoder.layers.{i}.layer_norm2"),
    *_linear("layers/{i}/mlp/up", "encoder.layers.{i}.mlp.fc1"),
    *_linear("layers/{i}/mlp/down", "encoder.layers.{i}.mlp.fc2"),
    *_layer_norm("post_norm", "post_layernorm"),
]

# Per family: rules, the prefixes a checkpoint may put before the keys, keys that are not encoder weights.
FAMILIES: dict[str, dict] = {
    "bert": {
        "rules": BERT_RULES,
        "prefixes": ("bert.", "model."),
        "ignored": (r"^pooler\.", r"^cls\.", r"position_ids$"),
    },
    "mpnet": {
        "rules": MPNET_RULES,
        "prefixes": ("mpnet.", "model."),
        "ignored": (r"^pooler\.", r"^lm_head\.", r"position_ids$"),
    },
    "qwen2": {
        "rules": QWEN2_RULES,
        "prefixes": ("model.",),
        "ignored": (r"^lm_head\.", r"rotary_emb\.inv_freq$", r"^score\."),
    },
    "qwen3": {
        "rules": QWEN3_RULES,
        "prefixes": ("model.",),
        "ignored": (r"^lm_head\.", r"rotary_emb\.inv_freq$", r"^score\."),
    },
    # SigLIP's attention-pooling head is not used by Jasper; a full SiglipModel also carries the text tower
    SIGLIP_MODEL_TYPE: {
        "rules": SIGLIP_VISION_RULES,
        "prefixes": ("vision_model.", "vision_model.vision_model.", "vision."),
        "ignored": (r"^head\.", r"position_ids$", r"^text_model\.", r"^logit_(scale|bias)$"),
    },
}


def expand_rules(family: str, config: BertConfig | Qwen2Config) -> list[KeyRule]:
    """The rules of `family` with `{i}` expanded over the config's layers."""
    expanded = []
    for rule in FAMILIES[family]["rules"]:
        if "{i}" in rule.ours:
            for i in range(config.num_hidden_layers):
                expanded.append(KeyRule(rule.ours.format(i=i), rule.hf.format(i=i), rule.to_ours, rule.to_hf))
        else:
            expanded.append(rule)
    return expanded


def find_prefix(family: str, keys: list[str]) -> str:
    """The prefix ('' if none) under which the checkpoint stores the encoder's keys (e.g. 'bert.', 'model.')."""
    anchor = FAMILIES[family]["rules"][0].hf
    present = set(keys)
    if anchor in present:
        return ""
    for prefix in FAMILIES[family]["prefixes"]:
        if prefix + anchor in present:
            return prefix
    return ""


def is_ignored(family: str, key: str) -> bool:
    """Whether `key` is a known non-encoder tensor (pooler, LM head, buffers) that import skips."""
    return any(re.search(pattern, key) for pattern in FAMILIES[family]["ignored"])
