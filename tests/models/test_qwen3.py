"""Qwen3 encoder against transformers' PyTorch Qwen3Model (small random configs: GQA, explicit head_dim,
per-head q/k norms with non-unit weights, padding), causal (the family default) and bidirectional; tolerance
1e-5 in float32 on the valid tokens and on mean / last-token pooling."""

import numpy as np
import pytest
import torch
from transformers import Qwen3Config as HFQwen3Config
from transformers import Qwen3Model

from jasper_jax.convert import load_model_folder
from jasper_jax.models.pooling import pool
from tests.models.test_qwen2 import batch, reference

# (hidden, heads, kv heads, head_dim, rope theta): head_dim apart from hidden / heads, as Qwen3 sets it
CONFIGS = [
    (64, 4, 2, 16, 10000.0),
    (32, 4, 4, 24, 500.0),
]


def random_qwen3(folder, hidden, heads, kv_heads, head_dim, theta, seed=0):
    torch.manual_seed(seed)
    config = HFQwen3Config(
        vocab_size=97,
        hidden_size=hidden,
        intermediate_size=2 * hidden + 8,
        num_hidden_layers=2,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": theta},
        max_position_embeddings=512,
        attn_implementation="eager",
    )
    model = Qwen3Model(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            base = 1.0 if "norm" in name else 0.0
            parameter.copy_(base + 0.08 * torch.randn_like(parameter))
    model.save_pretrained(folder)
    return model


@pytest.mark.parametrize("bidirectional", [False, True], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("hidden,heads,kv_heads,head_dim,theta", CONFIGS)
def test_hidden_states_and_pooling_match_pytorch(tmp_path, hidden, heads, kv_heads, head_dim, theta, bidirectional):
    hf = random_qwen3(tmp_path, hidden, heads, kv_heads, head_dim, theta)
    loaded = load_model_folder(tmp_path, causal=True if not bidirectional else False)
    encoder = loaded.config.encoder
    assert (encoder.model_type, encoder.causal, encoder.head_dim) == ("qwen3", not bidirectional, head_dim)
    ids, mask = batch([16, 9, 3, 1], 16)
    ours = np.asarray(loaded.model.encoder(ids, mask))
    ref = reference(hf, ids, mask, bidirectional)
    valid = mask.astype(bool)
    error = np.abs(ours[valid] - ref[valid]).max()
    assert error < 1e-5, f"max |ours - torch| on valid tokens = {error}"
    ref_mean = (ref * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    assert np.abs(np.asarray(pool(ours, mask, "mean")) - ref_mean).max() < 1e-5
    ref_last = ref[np.arange(len(ids)), mask.sum(1) - 1]
    assert np.abs(np.asarray(pool(ours, mask, "last")) - ref_last).max() < 1e-5


def test_causal_by_default_and_q_k_norms_matter(tmp_path):
    """A Qwen3 folder loads causal unless asked otherwise; zeroing the q/k norm weights changes the output
    (guards against norms that are loaded but not applied)."""
    random_qwen3(tmp_path, 64, 4, 2, 16, 10000.0)
    loaded = load_model_folder(tmp_path)
    assert loaded.config.encoder.causal
    ids, mask = batch([12, 7], 12)
    before = np.asarray(loaded.model.encoder(ids, mask))
    layer = loaded.model.encoder.layers[0].attention
    layer.query_norm.scale[...] = 2.0 * layer.query_norm.scale[...]
    layer.key_norm.scale[...] = 0.5 * layer.key_norm.scale[...] + 0.3
    after = np.asarray(loaded.model.encoder(ids, mask))
    assert np.abs(before - after).max() > 1e-3
