"""mteb encoders over our models: the JAX student, an exported PyTorch folder, and concatenated teachers.

Every model is evaluated for each of its heads. The encoder part (transformer + pooling) does not depend on
the head, so a *vector source* computes, in one pass over the texts, the normalised vector of every head
(and `pooled`, the normalised pooled vector) and caches them by text; `MtebEncoder` is the mteb
`AbsEncoder` for one head of one source. Evaluating four heads thus costs one encoder pass, on both sides:

- `jax_vectors(LoadedModel)`: our `JasperStudent` (jitted, length-sorted batches padded to bucket lengths,
  the same tokenisation as `jasper_jax.encode`);
- `torch_vectors(folder)`: `SentenceTransformer(folder)` as exported (PyTorch): its modules up to the
  pooled vector, then the exported `JasperHeads` module once per head and its `Normalize`; a plain
  sentence-transformers folder (a teacher) gives its `encode` output as `pooled`, an export of a
  compressed student (`JasperV2Encoder`) as its one head;
- `concatenated(sources)`: the concatenated teacher of PAPER.md (each normalised, concatenated,
  renormalised).

No prompt is used anywhere: the default run trains and evaluates without prompts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

POOLED = "pooled"
HeadVectors = dict[str, np.ndarray]


def normalize_rows(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


class VectorSource:
    """Texts -> {head: (N, d) float32, rows normalised}, computed once per distinct text and cached."""

    def __init__(self, compute: Callable[[list[str]], HeadVectors], heads: Sequence[str], name: str):
        self.compute = compute
        self.heads = list(heads)
        self.name = name
        self.cache: dict[str, dict[str, np.ndarray]] = {}

    def __call__(self, texts: Sequence[str]) -> HeadVectors:
        missing = list(dict.fromkeys(text for text in texts if text not in self.cache))
        if missing:
            computed = self.compute(missing)
            for row, text in enumerate(missing):
                self.cache[text] = {head: computed[head][row] for head in self.heads}
        return {
            head: np.stack([self.cache[text][head] for text in texts]) if texts else np.zeros((0, 0), np.float32)
            for head in self.heads
        }


# ------------------------------------------------------------------------------------------------- JAX


def jax_vectors(
    loaded,
    *,
    max_length: int = 256,
    batch_size: int = 32,
    progress: bool = False,
    name: str = "jax",
    compression_ratio: float | None = None,
) -> VectorSource:
    """A `VectorSource` over a `jasper_jax.convert.load.LoadedModel` (every head and `pooled`);
    `compression_ratio`: for a student with a token compressor (None: its default ratio)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from tqdm.auto import tqdm

    from jasper_jax.data.tokenization import bucket_length, load_tokenizer, pad_batch
    from jasper_jax.models.pooling import l2_normalize

    heads = list(loaded.config.heads) + [POOLED]
    tokenizer = load_tokenizer(loaded.tokenizer_folder, min(max_length, loaded.max_seq_length or max_length))
    graphdef, state = nnx.split(loaded.model)

    @jax.jit
    def run(state, input_ids, attention_mask):
        model = nnx.merge(graphdef, state)
        pooled = model.pooled(input_ids, attention_mask, compression_ratio=compression_ratio)
        out = {name: l2_normalize(head(pooled)) for name, head in model.heads.items()}
        out[POOLED] = l2_normalize(pooled)
        return out

    def compute(texts: list[str]) -> HeadVectors:
        ids = tokenizer.encode(list(texts), "")
        order = np.argsort([len(row) for row in ids], kind="stable")[::-1]
        out = {
            head: np.zeros((len(texts), loaded.config.heads.get(head, loaded.config.encoder.hidden_size)), np.float32)
            for head in heads
        }
        for start in tqdm(range(0, len(texts), batch_size), desc=f"encode {name}", disable=not progress):
            rows = order[start : start + batch_size]
            chunk = [ids[row] for row in rows]
            chunk += [chunk[-1][:1]] * (batch_size - len(chunk))  # one batch shape per bucket
            length = bucket_length(max(len(row) for row in chunk), tokenizer.max_length)
            batch = pad_batch(chunk, length, tokenizer.pad_id)
            vectors = run(state, jnp.asarray(batch["input_ids"]), jnp.asarray(batch["attention_mask"]))
            for head in heads:
                out[head][rows] = np.asarray(vectors[head])[: len(rows)]
        return out

    return VectorSource(compute, heads, name)


# ----------------------------------------------------------------------------------------------- PyTorch


def torch_vectors(
    folder: str | Path,
    *,
    max_length: int = 256,
    batch_size: int = 32,
    progress: bool = False,
    name: str = "torch",
    compression_ratio: float | None = None,
) -> VectorSource:
    """A `VectorSource` over `SentenceTransformer(folder, trust_remote_code=True)` (PyTorch, CPU).

    An export of a compressed student (`JasperV2Encoder`, `jasper_jax.convert.jasper_v2`) gives its one
    head, encoded with `compression_ratio` (None: the model's default); other folders take no ratio."""
    import torch
    from sentence_transformers import SentenceTransformer
    from tqdm.auto import tqdm

    model = SentenceTransformer(str(folder), device="cpu", trust_remote_code=True, local_files_only=True)
    model.max_seq_length = min(max_length, model.max_seq_length or max_length)
    modules = list(model)
    heads_index = next((i for i, m in enumerate(modules) if type(m).__name__ == "JasperHeads"), None)
    compressed = type(getattr(modules[0], "model", None)).__name__ == "JasperV2Encoder"
    if compression_ratio is not None and not compressed:
        raise ValueError(f"compression_ratio given but {folder} has no token compressor (not a JasperV2Encoder)")
    if heads_index is None:  # a plain sentence-transformers model (or a compressed one): its output is one vector
        head = _compressed_head(modules[0].model.config) if compressed else POOLED
        extra = {} if compression_ratio is None else {"compression_ratio": compression_ratio}

        def compute_plain(texts: list[str]) -> HeadVectors:
            vectors = model.encode(
                list(texts),
                batch_size=batch_size,
                convert_to_numpy=True,
                show_progress_bar=progress,
                normalize_embeddings=True,
                **extra,
            )
            return {head: normalize_rows(vectors)}

        return VectorSource(compute_plain, [head], name)

    heads_module = modules[heads_index]
    after = modules[heads_index + 1 :]  # Normalize
    heads = list(heads_module.heads) + [POOLED]

    def compute(texts: list[str]) -> HeadVectors:
        order = np.argsort([-len(text) for text in texts], kind="stable")
        out: dict[str, list] = {head: [None] * len(texts) for head in heads}
        with torch.inference_mode():
            for start in tqdm(range(0, len(texts), batch_size), desc=f"encode {name}", disable=not progress):
                rows = order[start : start + batch_size]
                features = model.tokenize([texts[row] for row in rows])
                for module in modules[:heads_index]:
                    features = module(features)
                pooled = features["sentence_embedding"]
                vectors = {POOLED: pooled}
                for head in heads_module.heads:
                    head_features = heads_module({"sentence_embedding": pooled}, head=head)
                    for module in after:
                        head_features = module(head_features)
                    vectors[head] = head_features["sentence_embedding"]
                for head, value in vectors.items():
                    value = value.float().numpy()
                    for i, row in enumerate(rows):
                        out[head][row] = value[i]
        return {head: normalize_rows(np.stack(values)) for head, values in out.items()}

    return VectorSource(compute, heads, name)


def _compressed_head(config) -> str:
    """The student's name of a `JasperV2Encoder`'s `linear_1` head (`jasper_v2.head_name`)."""
    from jasper_jax.convert.jasper_v2 import head_name

    return head_name(config.to_dict())


def concatenated(sources: Sequence[VectorSource], name: str = "teachers") -> VectorSource:
    """The concatenated teacher: each source's `pooled` vector normalised, concatenated, renormalised."""

    def compute(texts: list[str]) -> HeadVectors:
        return {POOLED: normalize_rows(np.concatenate([source(texts)[POOLED] for source in sources], axis=1))}

    return VectorSource(compute, [POOLED], name)


# -------------------------------------------------------------------------------------------------- mteb


def _abs_encoder():
    from mteb.models.abs_encoder import AbsEncoder

    return AbsEncoder


def mteb_encoder(source: VectorSource, head: str, dim: int | None = None):
    """An mteb `AbsEncoder` returning `source`'s vectors of `head` (cosine similarity)."""
    from mteb.models.model_meta import ModelMeta

    class JasperEvalEncoder(_abs_encoder()):
        def __init__(self):
            self.source, self.head = source, head
            safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in f"{source.name}-{head}")
            self.mteb_model_meta = ModelMeta(
                loader=None,
                name=f"jasper-jax/{safe}",
                revision="local",
                release_date=None,
                languages=["eng-Latn"],
                n_parameters=None,
                memory_usage_mb=None,
                max_tokens=None,
                embed_dim=dim,
                license=None,
                open_weights=True,
                public_training_code=None,
                public_training_data=None,
                framework=["PyTorch"],
                similarity_fn_name="cosine",
                use_instructions=False,
                training_datasets=None,
            )

        def encode(self, inputs, *, task_metadata, hf_split, hf_subset, prompt_type=None, **kwargs: Any):
            texts = [text for batch in inputs for text in batch["text"]]
            return self.source(texts)[self.head]

    return JasperEvalEncoder()
