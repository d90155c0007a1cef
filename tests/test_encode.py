"""`encode`: the real MiniLM against sentence-transformers; order, buckets, heads, prompts, the command."""

import numpy as np
import pytest
from flax import nnx

from jasper_jax import cli
from jasper_jax.convert import load_model_folder
from jasper_jax.encode import PAPER_PROMPTS, encode_texts

WORDS = "the student learns to reproduce vectors of large teacher models on many texts of every length".split()
TEXTS = [" ".join(WORDS[: 1 + (7 * i) % len(WORDS)]) + f" number {i}" for i in range(21)] + ["", "x" * 300]


@pytest.fixture(scope="module")
def minilm(minilm_folder):
    return load_model_folder(str(minilm_folder), heads={"fc1": 32}, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def reference(minilm_folder):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_folder), device="cpu").encode(TEXTS, batch_size=5)


def test_matches_sentence_transformers_in_input_order(minilm, reference):
    ours = encode_texts(minilm, TEXTS, head="pooled", batch_size=8, progress=False)
    assert ours.shape == (len(TEXTS), 384) and ours.dtype == np.float32
    error = np.abs(ours - reference).max()
    assert error < 1e-5, f"max |encode - sentence-transformers| = {error}"
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-6)


def test_compiles_once_per_bucket_and_batch_size_does_not_matter(minilm, reference):
    minilm._jitted = None
    small = encode_texts(minilm, TEXTS, head="pooled", batch_size=4, progress=False)
    compiles = minilm._jitted.run._cache_size()
    assert 1 <= compiles <= 4, f"{compiles} compilations for 6 batches; expected one per bucket (16, 32, 64, 128)"
    np.testing.assert_allclose(small, reference, atol=1e-5)


def test_heads_truncation_and_default_head(minilm):
    full = encode_texts(minilm, TEXTS[:5], progress=False)  # default head: fc1
    assert full.shape == (5, 32)
    cut = encode_texts(minilm, TEXTS[:5], head="fc1@8", progress=False)
    np.testing.assert_allclose(cut, full[:, :8] / np.linalg.norm(full[:, :8], axis=1, keepdims=True), atol=1e-6)


def test_prompt_names_resolve_to_the_paper_prompts(minilm):
    named = encode_texts(minilm, TEXTS[:4], head="pooled", prompt="s2p_query", progress=False)
    literal = encode_texts(
        minilm, [PAPER_PROMPTS["s2p_query"] + text for text in TEXTS[:4]], head="pooled", progress=False
    )
    plain = encode_texts(minilm, TEXTS[:4], head="pooled", progress=False)
    np.testing.assert_allclose(named, literal, atol=1e-6)
    assert np.abs(named - plain).max() > 1e-2


def test_command_line(tmp_path, reference, minilm_folder):
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS[:6]) + "\n")
    out = tmp_path / "vectors.npy"
    assert (
        cli.main(["encode", "--model", str(minilm_folder), "--input", str(texts), "--out", str(out), "--no-progress"])
        == 0
    )
    vectors = np.load(out)
    assert vectors.shape == (6, 384)
    np.testing.assert_allclose(vectors, reference[:6], atol=1e-5)
