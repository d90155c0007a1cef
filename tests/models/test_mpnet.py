"""MPNet encoder: a tiny random MPNetModel and the real all-mpnet-base-v2 against transformers and
sentence-transformers."""

import numpy as np
import pytest
import torch

from jasper_jax.assets import fetch_mpnet
from jasper_jax.convert import load_model_folder
from jasper_jax.convert.hf import ConversionError, encoder_config_from_hf, encoder_params_from_hf
from jasper_jax.data.tokenization import load_tokenizer
from jasper_jax.models import layers
from jasper_jax.models.mpnet import MPNetConfig, MPNetEncoder, relative_position_bucket
from jasper_jax.models.params import assign_params, param_shapes

TEXTS = [
    "A man is playing a guitar on a stage.",
    "Distillation trains a small student to reproduce the vectors of several large teachers, one batch at a time.",
    "ok",
    "The quick brown fox jumps over the lazy dog while the cat watches from the warm windowsill in the afternoon sun, "
    "purring softly.",
]


def test_buckets_equal_transformers_for_every_offset():
    """All key-minus-query offsets up to +-600 (past max_distance 128) bucket as torch's float32 code does."""
    from transformers.models.mpnet.modeling_mpnet import MPNetEncoder as TorchEncoder

    offsets = np.arange(-600, 601)
    expected = TorchEncoder.relative_position_bucket(torch.tensor(offsets)).numpy()
    np.testing.assert_array_equal(np.asarray(relative_position_bucket(offsets)), expected)


def _tiny_torch_model():
    from transformers import MPNetConfig as TorchConfig
    from transformers import MPNetModel

    torch.manual_seed(0)
    config = TorchConfig(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=160,
        layer_norm_eps=1e-5,
    )
    model = MPNetModel(config).eval()
    with torch.no_grad():  # a bias table far from zero, so that a wrong bucket or head order shows
        model.encoder.relative_attention_bias.weight.normal_(0.0, 1.0)
    return model


def _ours_from_torch(model, **kwargs):
    from flax import nnx

    tensors = {key: value.detach().numpy() for key, value in model.state_dict().items()}
    config = encoder_config_from_hf(model.config.to_dict())
    assert isinstance(config, MPNetConfig)
    with layers.parameter_context():
        ours = MPNetEncoder(config, rngs=nnx.Rngs(0), **kwargs)
    assign_params(ours, encoder_params_from_hf(tensors, config, param_shapes(ours)))
    return ours


@pytest.mark.parametrize("attention", ["auto", "einsum"])
def test_tiny_random_mpnet_matches_transformers_with_padding(attention):
    """Right-padded rows of different lengths (up to 140 tokens, so distances pass max_distance 128): every
    real token's hidden state within 1e-5 of MPNetModel's (float32)."""
    model = _tiny_torch_model()
    ours = _ours_from_torch(model, attention=attention)
    rng = np.random.default_rng(0)
    lengths = [140, 37, 3, 90]
    ids = np.ones((len(lengths), 140), np.int64)  # pad id 1
    mask = np.zeros_like(ids)
    for row, length in enumerate(lengths):
        ids[row, :length] = rng.integers(2, 99, length)
        mask[row, :length] = 1
    with torch.no_grad():
        expected = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
    got = np.asarray(ours(ids.astype(np.int32), mask.astype(np.int32)))
    valid = mask.astype(bool)
    error = np.abs(got[valid] - expected[valid]).max()
    assert error < 1e-5, f"max |ours - MPNetModel| = {error}"


def test_refuses_flash_attention_and_other_bucket_counts():
    from flax import nnx

    with pytest.raises(ValueError, match="relative position bias"), layers.parameter_context():
        MPNetEncoder(MPNetConfig(num_hidden_layers=1), attention="splash", rngs=nnx.Rngs(0))
    with pytest.raises(ConversionError, match="relative_attention_num_buckets=64"):
        encoder_config_from_hf({"model_type": "mpnet", "relative_attention_num_buckets": 64})


@pytest.fixture(scope="module")
def mpnet_folder():
    return fetch_mpnet()


@pytest.mark.slow
def test_all_mpnet_base_v2_matches_sentence_transformers(mpnet_folder):
    """The kit's real weights: our normalised mean-pooled vectors vs SentenceTransformer.encode, cosine
    >= 0.99999 per text (and max abs difference 1e-5)."""
    from sentence_transformers import SentenceTransformer

    loaded = load_model_folder(mpnet_folder)
    assert loaded.config.encoder.model_type == "mpnet" and loaded.config.pooling == "mean"
    assert loaded.max_seq_length == 384 and loaded.default_head == "pooled"
    tokens = load_tokenizer(loaded.tokenizer_folder, 384).batch(TEXTS)
    assert len(set(tokens["attention_mask"].sum(1))) == len(TEXTS), "texts should have different lengths"
    ours = np.asarray(loaded.model(tokens["input_ids"], tokens["attention_mask"])["pooled"])
    expected = SentenceTransformer(str(mpnet_folder), device="cpu").encode(TEXTS, batch_size=2)
    cosine = (ours * expected).sum(1) / np.linalg.norm(expected, axis=1)
    assert cosine.min() >= 0.99999, cosine
    assert np.abs(ours - expected).max() < 1e-5
