"""Embed images with a student that has a vision tower: rows L2-normalised, in input order.

An image is the input `<|jasper_img_start|>` + n x `<|jasper_img_token|>` + `<|jasper_img_end|>` (with
the tokenizer's own special tokens) whose image-token embeddings are the pooled SigLIP rows of the image
(see `jasper_jax.models.image_inputs`). `jasper-jax encode --model M --images LIST --out OUT.npy` (LIST:
one image path per line) calls `encode_images`.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from jasper_jax.models.pooling import l2_normalize
from jasper_jax.models.student import POOLED


def image_input_ids(loaded) -> list[int]:
    """The token ids of an image input for `loaded` (a `LoadedModel`): its tokenizer must give the image
    marker ids the model was trained with."""
    from jasper_jax.data.tokenization import add_image_tokens, image_token_ids, load_tokenizer

    config = loaded.config
    if config.vision is None:
        raise ValueError("this model has no vision tower: images need a student trained with stage 4")
    tokenizer = load_tokenizer(loaded.tokenizer_folder, max(loaded.max_seq_length or 512, config.image_tokens + 8))
    ids = add_image_tokens(tokenizer)
    if ids != tuple(config.image_token_ids):
        raise ValueError(
            f"the tokenizer in {loaded.tokenizer_folder} gives image marker ids {ids}, the model expects "
            f"{tuple(config.image_token_ids)}: use the tokenizer of the model's stage-4 run"
        )
    return image_token_ids(tokenizer, config.image_tokens)


class _JittedImageEncoder:
    def __init__(self, model):
        self.graphdef, self.state = nnx.split(model)

        def run(state, input_ids, attention_mask, pixel_values, head):
            model = nnx.merge(self.graphdef, state)
            pooled = model.pooled(input_ids, attention_mask, pixel_values=pixel_values)
            return l2_normalize(pooled if head == POOLED else model.heads[head](pooled))

        self.run = jax.jit(run, static_argnums=4)


def encode_images(
    model_path_or_model,
    paths: list[str | Path],
    *,
    head: str | None = None,
    batch_size: int = 16,
    progress: bool = True,
    tokenizer: str | Path | None = None,
) -> np.ndarray:
    """Embed image files: float32 (N, d), rows L2-normalised, input order. `head` as in `encode_texts`
    (a name, `pooled` or NAME@D); the model as in `encode_texts`."""
    from jasper_jax.data.images import load_image
    from jasper_jax.encode import _loaded, parse_head

    loaded = _loaded(model_path_or_model, tokenizer)
    name, truncate_dim = parse_head(head, loaded.model, loaded.default_head)
    ids = np.asarray(image_input_ids(loaded), np.int32)
    encoder = getattr(loaded, "_jitted_images", None)
    if encoder is None:
        encoder = _JittedImageEncoder(loaded.model)
        loaded._jitted_images = encoder
    dim = loaded.config.encoder.hidden_size if name == POOLED else loaded.config.heads[name]
    out = np.zeros((len(paths), truncate_dim or dim), np.float32)
    size = loaded.config.vision.image_size
    input_ids = np.tile(ids, (batch_size, 1))
    mask = np.ones_like(input_ids)
    bar = tqdm(total=len(paths), desc="encode images", unit="image", disable=not progress)
    for start in range(0, len(paths), batch_size):
        chunk = [load_image(path, size) for path in paths[start : start + batch_size]]
        real = len(chunk)
        chunk += [chunk[-1]] * (batch_size - real)  # fixed shape: one compile
        vectors = np.asarray(encoder.run(encoder.state, jnp.asarray(input_ids), jnp.asarray(mask),
                                         jnp.asarray(np.stack(chunk)), name))[:real]
        if truncate_dim:
            vectors = vectors[:, :truncate_dim]
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        out[start : start + real] = vectors
        bar.update(real)
    bar.close()
    return out
