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
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from jasper_jax.losses import ObjectiveConfig, cosine_loss, relative_similarity_loss, similarity_loss

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
    config: ObjectiveConfig = ObjectiveConfig(),
) -> tuple[Array, dict[str, Array]]:
    """Mean over heads of `w_cos * cos + w_sim * sim + w_resim * resim` (image vs caption vectors of that head),
    with the weights and margin of `config`.

    Metrics: `loss`, `cosine/<head>`, `similarity/<head>`, `relative_similarity/<head>` (unweighted)."""
    if set(image_outputs) != set(caption_outputs):
        raise ValueError(f"image heads {sorted(image_outputs)} differ from caption heads {sorted(caption_outputs)}")
    metrics: dict[str, Array] = {}
    totals = []
    for head in image_outputs:
        student, teacher = image_outputs[head], jax.lax.stop_gradient(caption_outputs[head])
        cosine = cosine_loss(student, teacher, row_mask)
        similarity = similarity_loss(student, teacher, row_mask)
        relative = relative_similarity_loss(student, teacher, margin=config.margin, mask=row_mask)
        metrics[f"cosine/{head}"], metrics[f"similarity/{head}"] = cosine, similarity
        metrics[f"relative_similarity/{head}"] = relative
        totals.append(
            config.cosine_weight * cosine
            + config.similarity_weight * similarity
            + config.relative_similarity_weight * relative
        )
    loss = jnp.mean(jnp.stack(totals)).astype(jnp.float32)
    metrics["loss"] = loss
    return loss, metrics


def image_objective(config: ObjectiveConfig):
    """The stage-4 objective `(image_outputs, caption_outputs, row_mask) -> (loss, metrics)`."""

    def objective(image_outputs, caption_outputs, row_mask):
        return image_caption_objective(image_outputs, caption_outputs, row_mask, config=config)

    return objective


# ------------------------------------------------------------------------------------- the stage in the loop
#
# An image stage has `images` (where the pairs are) and `vision` (the tower): `settings.StageSettings`.


def images_folder(run, stage) -> Path:
    """The image-caption folder of the stage: generated under `workdir/images` or `stage.images.folder`."""
    if stage.images.generate.get("enabled", False):
        return run.workdir.absolute() / "images"
    if not stage.images.folder:
        raise ValueError("the image stage has neither images.folder nor images.generate.enabled")
    return Path(stage.images.folder)


def prepare_images(run, stage) -> Path:
    """Generate the shapes data set (process 0, then a barrier) if the stage asks for it; its folder."""
    from jasper_jax.data.images import write_shapes_dataset
    from jasper_jax.train import distributed

    folder = images_folder(run, stage)
    generate = dict(stage.images.generate)
    if generate.pop("enabled", False):
        if distributed.is_main_process():
            write_shapes_dataset(folder, **generate)
        distributed.barrier("jasper_generate_images")
    return folder


def stage_tokenizer(source_folder: Path, out_folder: Path, max_length: int):
    """The stage's tokenizer: the text tokenizer plus the image markers, saved to `out_folder` (export and
    encode read it from the checkpoint's config). Returns (TextTokenizer, marker ids)."""
    from jasper_jax.data.tokenization import add_image_tokens, load_tokenizer, save_tokenizer
    from jasper_jax.train import distributed

    tokenizer = load_tokenizer(source_folder, max_length)
    ids = add_image_tokens(tokenizer)
    if distributed.is_main_process() and Path(source_folder).resolve() != Path(out_folder).resolve():
        save_tokenizer(tokenizer, source_folder, out_folder)
    distributed.barrier("jasper_image_tokenizer")
    return tokenizer, ids


def _tower(vision) -> Any:
    """The tower's SiglipVisionConfig ("random") or its folder."""
    from jasper_jax.models.siglip import SiglipVisionConfig

    return SiglipVisionConfig(**vision.encoder) if vision.source == "random" else vision.source


def add_stage_vision(model, student_config, stage, marker_ids, seed: int):
    """The student with the stage's vision part (random or pretrained tower), text weights kept."""
    from flax import nnx

    from jasper_jax.convert.siglip import attach_vision

    return attach_vision(
        model,
        _tower(stage.vision),
        image_tokens=stage.vision.image_tokens,
        image_token_ids=marker_ids,
        rngs=nnx.Rngs(params=seed, dropout=seed + 1),
    )


def image_stage_config(
    *,
    image_tokens: int,
    vision_source: str = "random",
    vision_encoder: Mapping[str, Any] | None = None,
    images_folder: str = "",
    generate: Mapping[str, Any] | None = None,
    **values,
):
    """A stage-4 block for `config.stages`: `config_base.stage(...)` plus `vision` and `images`.

    `vision_source`: "random" (a tower from `vision_encoder`, SiglipVisionConfig fields) or a Hugging Face
    SigLIP folder; `generate`: the shapes data set's arguments (train, heldout, seed, size) to generate it
    under `workdir/images`, else `images_folder`. Trains `vision/tower/.*` by default."""
    import ml_collections

    from jasper_jax.train import settings
    from jasper_jax.train.config_base import stage

    block = stage(**{"trainable": DEFAULT_TRAINABLE, **values})
    block.vision = ml_collections.ConfigDict(
        {"source": vision_source, "encoder": dict(vision_encoder or {}), "image_tokens": int(image_tokens)}
    )
    block.images = ml_collections.ConfigDict(
        {
            **settings.defaults(settings.ImagesSettings),
            "folder": images_folder,
            "generate": {"enabled": generate is not None, **dict(generate or {})},
        }
    )
    return block


def abstract_vision_student_config(student_config, stage):
    """The StudentConfig of an image stage built from shapes only (compile-check): the tower's config from
    `vision.encoder` (random) or the folder's config.json (so400m defaults when the folder is absent);
    marker ids appended after the text vocabulary."""
    import dataclasses

    from jasper_jax.convert.hf import read_json
    from jasper_jax.models.siglip import SiglipVisionConfig

    tower = _tower(stage.vision)
    if not isinstance(tower, SiglipVisionConfig):
        config_file = Path(tower) / "config.json"
        tower = SiglipVisionConfig.from_hf(read_json(config_file)) if config_file.exists() else SiglipVisionConfig()
    vocab = student_config.encoder.vocab_size
    return dataclasses.replace(
        student_config,
        vision=tower,
        image_tokens=stage.vision.image_tokens,
        image_token_ids=(vocab, vocab + 1, vocab + 2),
    )


def abstract_image_batch(student_config, batch: int, caption_length: int) -> dict[str, tuple[tuple[int, ...], Any]]:
    """{key: (shape, dtype)} of a stage-4 batch: image inputs of n + 4 tokens (rounded up to 16), captions of
    `caption_length` tokens."""
    from jasper_jax.data.images import image_input_length

    image_length = image_input_length(student_config.image_tokens + 4)
    size = student_config.vision.image_size
    return {
        "input_ids": ((batch, image_length), jnp.int32),
        "attention_mask": ((batch, image_length), jnp.int32),
        "pixel_values": ((batch, size, size, 3), jnp.float32),
        "caption_ids": ((batch, caption_length), jnp.int32),
        "caption_mask": ((batch, caption_length), jnp.int32),
        "row_mask": ((batch,), jnp.bool_),
    }
