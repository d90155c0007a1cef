"""Helpers of the vision tests: tiny students with a SigLIP tower, image-token inputs and images."""

import numpy as np
from flax import nnx

from jasper_jax.models import BertConfig, JasperStudent, Qwen2Config, StudentConfig
from jasper_jax.models.siglip import tiny_siglip_config

TINY_QWEN2 = Qwen2Config(
    vocab_size=64,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=48,
)
TINY_BERT = BertConfig(
    vocab_size=64,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=48,
    max_position_embeddings=32,
)
MARKERS = (64, 65, 66)  # ids past the tiny vocabularies, as add_image_tokens appends them
N_IMAGE_TOKENS = 5


def vision_student(encoder, heads=None, seed=0, image_tokens=N_IMAGE_TOKENS, **kwargs) -> JasperStudent:
    config = StudentConfig(
        encoder=encoder,
        heads={"fc1": 16, "fc2": 8} if heads is None else heads,
        vision=tiny_siglip_config(),
        image_tokens=image_tokens,
        image_token_ids=MARKERS,
        **kwargs,
    )
    return JasperStudent(config, rngs=nnx.Rngs(seed))


def image_inputs(batch: int, length: int = 12, n: int = N_IMAGE_TOKENS, offset: int = 1):
    """Ids [1, start, n x token, end, 2, pad...] starting at `offset`, and the mask."""
    start, token, end = MARKERS
    row = [1] * offset + [start] + [token] * n + [end, 2]
    ids = np.zeros((batch, length), np.int32)
    ids[:, : len(row)] = row
    return ids, (ids != 0).astype(np.int32)


def images(batch: int, seed: int = 0, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (batch, size, size, 3)).astype(np.float32)
