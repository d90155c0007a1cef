"""Qwen2 encoder against transformers' PyTorch Qwen2Model (small random configs, GQA, padding)."""

import numpy as np
import pytest
import torch
from transformers import Qwen2Config as HFQwen2Config
from transformers import Qwen2Model

from jasper_jax.convert import load_model_folder
from jasper_jax.models.pooling import pool

# (hidden, heads, kv heads, explicit head_dim or None, rope theta): GQA ratios 2, 3, 4, 6 and MHA; head sizes 8-24
CONFIGS = [
    (64, 4, 2, None, 10000.0),
    (48, 6, 1, None, 1_000_000.0),
    (64, 8, 2, 24, 10000.0),
    (36, 6, 2, 6, 500.0),
    (32, 4, 4, None, 10000.0),
]


def random_qwen2(tmp_path, hidden, heads, kv_heads, head_dim, theta, seed=0):
    torch.manual_seed(seed)
    extra = {"head_dim": head_dim} if head_dim else {}
    config = HFQwen2Config(
        vocab_size=97,
        hidden_size=hidden,
        intermediate_size=2 * hidden + 8,
        num_hidden_layers=2,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": theta},
        max_position_embeddings=512,
        attn_implementation="eager",
        **extra,
    )
    model = Qwen2Model(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            base = 1.0 if "norm" in name else 0.0
            parameter.copy_(base + 0.08 * torch.randn_like(parameter))
    model.save_pretrained(tmp_path)
    return model


def batch(lengths, length, vocab=97, seed=1):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocab, size=(len(lengths), length)).astype(np.int32)
    mask = (np.arange(length)[None] < np.asarray(lengths)[:, None]).astype(np.int32)
    return ids * mask, mask


def reference(model, ids, mask, bidirectional):
    with torch.no_grad():
        ids_t, mask_t = torch.tensor(ids).long(), torch.tensor(mask).long()
        if bidirectional:
            additive = (1.0 - mask_t[:, None, None, :].float()) * torch.finfo(torch.float32).min
            additive = additive.expand(-1, 1, ids.shape[1], ids.shape[1])
            out = model(input_ids=ids_t, attention_mask={"full_attention": additive})
        else:
            out = model(input_ids=ids_t, attention_mask=mask_t)
    return out.last_hidden_state.numpy()


@pytest.mark.parametrize("bidirectional", [True, False], ids=["bidirectional", "causal"])
@pytest.mark.parametrize("hidden,heads,kv_heads,head_dim,theta", CONFIGS)
def test_hidden_states_and_pooling_match_pytorch(tmp_path, hidden, heads, kv_heads, head_dim, theta, bidirectional):
    hf = random_qwen2(tmp_path, hidden, heads, kv_heads, head_dim, theta)
    loaded = load_model_folder(tmp_path, causal=not bidirectional)
    assert loaded.config.encoder.causal == (not bidirectional)
    assert loaded.config.encoder.head_dim == (head_dim or hidden // heads)
    ids, mask = batch([16, 9, 3, 1], 16)
    ours = np.asarray(loaded.model.encoder(ids, mask))
    ref = reference(hf, ids, mask, bidirectional)
    valid = mask.astype(bool)
    error = np.abs(ours[valid] - ref[valid]).max()
    assert error < 1e-5, f"max |ours - torch| on valid tokens = {error}"
    ref_mean = (ref * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    pooled_error = np.abs(np.asarray(pool(ours, mask, "mean")) - ref_mean).max()
    assert pooled_error < 1e-5, pooled_error


def test_bidirectional_differs_from_causal(tmp_path):
    """Guards against a mask that ignores the `causal` switch: early tokens must see later ones."""
    random_qwen2(tmp_path, 64, 4, 2, None, 10000.0)
    ids, mask = batch([12, 12], 12)
    bidirectional = np.asarray(load_model_folder(tmp_path).model.encoder(ids, mask))
    causal = np.asarray(load_model_folder(tmp_path, causal=True).model.encoder(ids, mask))
    assert np.abs(bidirectional[:, 0] - causal[:, 0]).max() > 1e-3


def test_padding_does_not_change_valid_tokens(tmp_path):
    random_qwen2(tmp_path, 48, 6, 1, None, 1e6)
    model = load_model_folder(tmp_path).model
    ids, mask = batch([5], 5)
    short = np.asarray(model.encoder(ids, mask))
    padded_ids = np.pad(ids, ((0, 0), (0, 11)))
    padded_mask = np.pad(mask, ((0, 0), (0, 11)))
    long = np.asarray(model.encoder(padded_ids, padded_mask))
    assert np.abs(short[0] - long[0, :5]).max() < 1e-5
