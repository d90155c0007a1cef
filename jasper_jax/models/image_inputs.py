"""Images as language-model inputs: the SigLIP tower, the parameter-free pooler and the image markers.

A text with an image reads `<|jasper_img_start|>` + n x `<|jasper_img_token|>` + `<|jasper_img_end|>`
(n = `image_tokens`; paper: 300). The tower turns the image into (patches, vision_hidden) tokens, the
pooler into (n, lm_hidden) rows, and the k-th image-token position of a text receives row k in place of
its token embedding. The three marker tokens are appended to the tokenizer (`jasper_jax.data.tokenization.
add_image_tokens`); their embeddings live here, in `markers` (3, lm_hidden), so that the text encoder's
vocabulary (and every text-only checkpoint) is unchanged: a marker id is looked up here whatever row of
the encoder's table it would index. Parameters: `tower/...` (SigLIP) and `markers/embedding`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jasper_jax.models import layers
from jasper_jax.models.siglip import SiglipVisionConfig, SiglipVisionEncoder
from jasper_jax.models.vision_pooler import adaptive_average_pool

Array = jax.Array
IMAGE_START, IMAGE_TOKEN, IMAGE_END = "<|jasper_img_start|>", "<|jasper_img_token|>", "<|jasper_img_end|>"
IMAGE_MARKERS = (IMAGE_START, IMAGE_TOKEN, IMAGE_END)


class ImageInputs(nnx.Module):
    """`tower` + pooler + `markers`; `embed(input_ids, token_embeddings, pixel_values)` fills image positions."""

    def __init__(
        self,
        config: SiglipVisionConfig,
        lm_hidden: int,
        image_tokens: int,
        marker_ids: tuple[int, int, int],
        *,
        dtype: str = "float32",
        remat: bool | str = False,
        attention: str = "auto",
        scan_layers: bool = False,
        rngs: nnx.Rngs,
    ):
        if image_tokens <= 0:
            raise ValueError(f"image_tokens must be positive (paper: 300), got {image_tokens}")
        if len(set(marker_ids)) != 3:
            raise ValueError(f"image marker ids (start, token, end) must be 3 distinct ids, got {marker_ids}")
        self.lm_hidden = lm_hidden
        self.image_tokens = image_tokens
        self.marker_ids = tuple(int(i) for i in marker_ids)
        self.dtype = layers.as_dtype(dtype)
        with layers.parameter_context():
            self.tower = SiglipVisionEncoder(
                config, dtype=dtype, remat=remat, attention=attention, scan_layers=scan_layers, rngs=rngs
            )
            self.markers = layers.Embedding(3, lm_hidden, "markers", dtype=dtype, rngs=rngs)

    def rows(self, pixel_values: Array) -> Array:
        """Pixels (B, H, W, C) -> the pooled rows (B, image_tokens, lm_hidden) float32."""
        return adaptive_average_pool(self.tower(pixel_values), self.image_tokens, self.lm_hidden)

    def embed(self, input_ids: Array, token_embeddings: Array, pixel_values: Array | None) -> Array:
        """`token_embeddings` (B, L, lm_hidden) with marker positions from `markers` and the k-th image-token
        position of each row replaced by that row's pooled image row k (positions past n keep row n-1)."""
        start, token, end = self.marker_ids
        x = token_embeddings
        for index, marker in enumerate(self.marker_ids):
            x = jnp.where((input_ids == marker)[..., None], self.markers(jnp.asarray(index)).astype(x.dtype), x)
        if pixel_values is None:
            return x
        is_image = input_ids == token
        rank = jnp.clip(jnp.cumsum(is_image, axis=1) - 1, 0, self.image_tokens - 1)
        pooled = self.rows(pixel_values).astype(x.dtype)
        gathered = jnp.take_along_axis(pooled, rank[..., None], axis=1)
        return jnp.where(is_image[..., None], gathered, x)
