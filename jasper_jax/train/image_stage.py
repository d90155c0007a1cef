"""Stage 4: image-caption self-distillation of the vision tower (PAPER.md, stage 4).

For each image-caption pair the teacher is the student's own vector of the caption, head by head
(the text path is frozen: computed in the same step under `stop_gradient`); the student is the vector of
the image input (`<|jasper_img_start|>` + n image tokens + `<|jasper_img_end|>`, the pooled SigLIP rows at
the image tokens). Per head the three losses (cosine, similarity, relative similarity, with the paper's
weights) are summed; the heads' totals are averaged. Only `vision/tower/...` trains (the stage's regexes).

Batch (global arrays, rows over the batch axes): `input_ids`/`attention_mask` (B, L) of the image inputs,
`pixel_values` (B, H, W, 3) float32 (SigLIP-normalised), `caption_ids`/`caption_mask` (B, Lc),
`row_mask` (B,) bool.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from jasper_jax.losses import cosine_loss, relative_similarity_loss, similarity_loss

Array = jax.Array
IMAGE_BATCH_KEYS = ("input_ids", "attention_mask", "pixel_values", "caption_ids", "caption_mask", "row_mask")
DEFAULT_TRAINABLE = ("vision/tower/.*",)


def image_caption_forward(model, batch: Mapping[str, Array], deterministic: bool):
    """`(image outputs, caption outputs)`: the student on the images; the frozen student on the captions."""
    captions = model(batch["caption_ids"], batch["caption_mask"], deterministic=True)
    captions = jax.tree.map(jax.lax.stop_gradient, captions)
    images = model(
        batch["input_ids"], batch["attention_mask"], deterministic=deterministic, pixel_values=batch["pixel_values"]
    )
    return images, captions


def image_caption_objective(
    image_outputs: Mapping[str, Array],
    caption_outputs: Mapping[str, Array],
    row_mask: Array | None = None,
    *,
    cosine_weight: float = 10.0,
    similarity_weight: float = 200.0,
    relative_similarity_weight: float = 20.0,
    margin: float = 0.015,
) -> tuple[Array, dict[str, Array]]:
    """Mean over heads of `w_cos * cos + w_sim * sim + w_resim * resim` (image vs caption vectors of that head).

    Metrics: `loss`, `cosine/<head>`, `similarity/<head>`, `relative_similarity/<head>` (unweighted)."""
    if set(image_outputs) != set(caption_outputs):
        raise ValueError(f"image heads {sorted(image_outputs)} differ from caption heads {sorted(caption_outputs)}")
    metrics: dict[str, Array] = {}
    totals = []
    for head in image_outputs:
        student, teacher = image_outputs[head], jax.lax.stop_gradient(caption_outputs[head])
        cosine = cosine_loss(student, teacher, row_mask)
        similarity = similarity_loss(student, teacher, row_mask)
        relative = relative_similarity_loss(student, teacher, margin=margin, mask=row_mask)
        metrics[f"cosine/{head}"], metrics[f"similarity/{head}"] = cosine, similarity
        metrics[f"relative_similarity/{head}"] = relative
        totals.append(cosine_weight * cosine + similarity_weight * similarity + relative_similarity_weight * relative)
    loss = jnp.mean(jnp.stack(totals)).astype(jnp.float32)
    metrics["loss"] = loss
    return loss, metrics


def objective_from_config(objective_config: Mapping[str, Any]):
    """The stage-4 objective `(image_outputs, caption_outputs, row_mask) -> (loss, metrics)` with the
    weights and margin of the (global + stage) objective config."""
    keys = ("cosine_weight", "similarity_weight", "relative_similarity_weight", "margin")
    weights = {key: float(objective_config[key]) for key in keys if key in objective_config}

    def objective(image_outputs, caption_outputs, row_mask):
        return image_caption_objective(image_outputs, caption_outputs, row_mask, **weights)

    return objective
