"""BERT encoder: the real all-MiniLM-L6-v2 against transformers' BertModel and sentence-transformers."""

import numpy as np
import pytest
import torch

from jasper_jax.convert import load_model_folder
from jasper_jax.data.tokenization import load_tokenizer

TEXTS = [
    "A man is playing a guitar on a stage.",
    "Distillation trains a small student to reproduce the vectors of several large teachers, one batch at a time.",
    "ok",
    "The quick brown fox jumps over the lazy dog while the cat watches from the warm windowsill in the afternoon sun, "
    "purring softly.",
]


@pytest.fixture(scope="module")
def minilm(minilm_folder):
    return load_model_folder(minilm_folder)


@pytest.fixture(scope="module")
def tokens(minilm):
    return load_tokenizer(minilm.tokenizer_folder, 128).batch(TEXTS)


def test_reads_sentence_transformers_folder(minilm):
    assert minilm.config.encoder.num_hidden_layers == 6 and minilm.config.encoder.hidden_size == 384
    assert minilm.config.pooling == "mean" and minilm.config.heads == {}
    assert minilm.default_head == "pooled" and minilm.max_seq_length == 256


def test_hidden_states_match_transformers(minilm, tokens, minilm_folder):
    from transformers import AutoModel

    reference = AutoModel.from_pretrained(str(minilm_folder)).eval()
    with torch.no_grad():
        expected = reference(
            input_ids=torch.tensor(tokens["input_ids"]).long(),
            attention_mask=torch.tensor(tokens["attention_mask"]).long(),
        ).last_hidden_state.numpy()
    ours = np.asarray(minilm.model.encoder(tokens["input_ids"], tokens["attention_mask"]))
    valid = tokens["attention_mask"].astype(bool)
    assert len(set(tokens["attention_mask"].sum(1))) == len(TEXTS), "texts should have different lengths"
    error = np.abs(ours[valid] - expected[valid]).max()
    assert error < 1e-5, f"max |ours - BertModel| = {error}"


def test_sentence_vectors_match_sentence_transformers(minilm, tokens, minilm_folder):
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(minilm_folder), device="cpu")
    expected = reference.encode(TEXTS, convert_to_numpy=True, batch_size=2)
    ours = np.asarray(minilm.model(tokens["input_ids"], tokens["attention_mask"])["pooled"])
    error = np.abs(ours - expected).max()
    assert error < 1e-5, f"max |ours - sentence-transformers| = {error}"
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-6)


def test_bfloat16_compute_stays_close(minilm, tokens, minilm_folder):
    """bfloat16 compute with float32 parameters: close to float32 (cosine > 0.99), parameters stay float32."""
    from jasper_jax.convert import load_model

    model, config = load_model(minilm_folder, compute_dtype="bfloat16")
    assert config.compute_dtype == "bfloat16"
    assert model.encoder.layers[0].attention.query.kernel[...].dtype == np.float32
    low = np.asarray(model(tokens["input_ids"], tokens["attention_mask"])["pooled"])
    high = np.asarray(minilm.model(tokens["input_ids"], tokens["attention_mask"])["pooled"])
    cosine = (low * high).sum(1)
    assert cosine.min() > 0.99 and np.abs(low - high).max() > 1e-6, cosine
