"""A contrastive stage: (query, positive, hard negatives) batches from a pairs folder, `pair_objective`.

The successor recipe (arXiv 2511.14405) adds InfoNCE and the teacher-student score KL to the Jasper
distillation losses; a stage with `pairs` set (`settings.StageSettings`) trains on the pair pipeline
(`jasper_jax.data.pair_pipeline`) with the objective's `infonce_*`, `score_kl_*` and `pair_distill_texts`
fields. The student encodes the queries (prompt `pairs_query_prompt`) and the B x G documents (prompt
`data.prompt`) in one step; every loss sees the whole global batch. A relative `pairs` is read from the
run's workdir (`pairs_folder`), so a run folder that holds its pairs can be moved and still resumes (the
path is a trajectory setting, compared on resume).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import jax
import jax.numpy as jnp

from jasper_jax.losses import ObjectiveConfig, pair_objective

PAIR_BATCH_KEYS = (
    "query_input_ids",
    "query_attention_mask",
    "teacher_query",
    "document_input_ids",
    "document_attention_mask",
    "teacher_documents",
    "document_mask",
    "document_ids",
    "row_mask",
)
_TEACHER_KEYS = ("teacher_query", "teacher_documents", "document_mask", "document_ids")


COMPRESSED_KEYS = ("query_compressed_mask", "document_compressed_mask")


def pair_batch_keys(config) -> tuple[str, ...]:
    """The arrays of a pair batch; a student with a token compressor (`config`) also gets its masks."""
    return PAIR_BATCH_KEYS + (COMPRESSED_KEYS if config.token_compression is not None else ())


def pair_forward(model, batch: Mapping[str, jax.Array], deterministic: bool):
    """`({"query/<head>": (B, d), "documents/<head>": (B, G, d)}, the batch's teacher side)`; with
    compressed masks in the batch (a token compressor) each text is compressed to its mask."""
    query_extra, document_extra = {}, {}
    if "query_compressed_mask" in batch:
        query_extra = {"compressed_mask": batch["query_compressed_mask"]}
        compressed = batch["document_compressed_mask"]
        document_extra = {"compressed_mask": compressed.reshape(-1, compressed.shape[-1])}
    queries = model(batch["query_input_ids"], batch["query_attention_mask"], deterministic=deterministic, **query_extra)
    ids, mask = batch["document_input_ids"], batch["document_attention_mask"]
    batch_size, group, length = ids.shape
    documents = model(
        ids.reshape(batch_size * group, length),
        mask.reshape(batch_size * group, length),
        deterministic=deterministic,
        **document_extra,
    )
    outputs = {f"query/{head}": value for head, value in queries.items()}
    outputs.update({f"documents/{head}": value.reshape(batch_size, group, -1) for head, value in documents.items()})
    return outputs, {key: batch[key] for key in _TEACHER_KEYS}


def pair_stage_objective(config: ObjectiveConfig):
    """The objective `(outputs of pair_forward, teacher side, row_mask) -> (loss, metrics)`."""

    def objective(outputs, teacher, row_mask):
        queries = {key.split("/", 1)[1]: value for key, value in outputs.items() if key.startswith("query/")}
        documents = {key.split("/", 1)[1]: value for key, value in outputs.items() if key.startswith("documents/")}
        return pair_objective(
            queries,
            documents,
            teacher["teacher_query"],
            teacher["teacher_documents"],
            row_mask,
            teacher["document_mask"],
            teacher["document_ids"],
            config=config,
        )

    return objective


def pairs_folder(run, stage) -> Path:
    """The stage's pairs folder: `stage.pairs` itself if absolute, else relative to the run's workdir."""
    folder = Path(stage.pairs)
    return folder if folder.is_absolute() else run.workdir.absolute() / folder


def pair_iterator(run, stage, paths, mesh, compression=None):
    """The Grain iterator of the stage's pair batches (over the run's store, as `data` says); `compression`
    (`stage_build.compression_sampling`): a student with a token compressor."""
    from jasper_jax.data.pair_pipeline import make_pair_iterator
    from jasper_jax.data.pairs import PairsIndex

    data = run.data
    pairs = PairsIndex(
        pairs_folder(run, stage),
        store=paths.store,
        teachers=list(data.teachers) if data.teachers else None,
        transforms=data.teacher_transforms,
    )
    return make_pair_iterator(
        pairs,
        paths.tokenizer,
        global_batch_size=stage.batch_size,
        mesh=mesh,
        max_length=data.max_length,
        shuffle_seed=data.shuffle_seed,
        query_prompt=stage.pairs_query_prompt,
        document_prompt=data.prompt,
        worker_threads=data.worker_threads,
        prefetch=data.prefetch,
        compression=compression,
    )


def abstract_pair_batch(
    run, stage, batch_size: int, length: int, compression=None
) -> dict[str, tuple[tuple[int, ...], jnp.dtype]]:
    """Shapes and dtypes of a pair batch (compile-check); G = 1 + the pairs folder's negatives."""
    manifest = pairs_folder(run, stage) / "manifest.json"
    group = 1 + (json.loads(manifest.read_text())["negatives"] if manifest.exists() else 7)
    dim = stage.heads[stage.objective.full_head]
    shapes = {
        "query_input_ids": ((batch_size, length), jnp.int32),
        "query_attention_mask": ((batch_size, length), jnp.int32),
        "teacher_query": ((batch_size, dim), jnp.float32),
        "document_input_ids": ((batch_size, group, length), jnp.int32),
        "document_attention_mask": ((batch_size, group, length), jnp.int32),
        "teacher_documents": ((batch_size, group, dim), jnp.float32),
        "document_mask": ((batch_size, group), jnp.bool_),
        "document_ids": ((batch_size, group), jnp.int32),
        "row_mask": ((batch_size,), jnp.bool_),
    }
    if compression is not None:  # the largest buckets: every text at the highest training ratio
        from jasper_jax.data.tokenization import bucket_length
        from jasper_jax.models.token_compression import compressed_length

        width = bucket_length(max(compressed_length(compression.high, compression.threshold, length), 1), length)
        shapes["query_compressed_mask"] = ((batch_size, width), jnp.int32)
        shapes["document_compressed_mask"] = ((batch_size, group, width), jnp.int32)
    return shapes
