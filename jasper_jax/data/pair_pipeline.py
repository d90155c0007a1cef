"""The Grain pipeline of a contrastive stage: a pairs folder -> global, sharded batches with exact resume.

Per step it yields, for B examples of G = 1 + K documents (the positive first, then K hard negatives)::

    query_input_ids (B, Lq) int32, query_attention_mask (B, Lq) int32, teacher_query (B, D) float32,
    document_input_ids (B, G, Ld) int32, document_attention_mask (B, G, Ld) int32,
    teacher_documents (B, G, D) float32, document_mask (B, G) bool, document_ids (B, G) int32,
    row_mask (B,) bool

`document_mask` is False where an example has fewer than K negatives (those slots repeat its positive);
`document_ids` are the store rows (the losses drop a document equal to a query's positive from its
candidates). Lq and Ld are power-of-two buckets of the global batch's longest query / document, so every
host agrees without communicating. A student with a token compressor (`compression`) also gets
`query_compressed_mask` (B, Tq) and `document_compressed_mask` (B, G, Td) at one ratio per batch, as the
text pipeline's `compressed_mask`. Order, padding of a final partial batch (`row_mask` False), per-host
slices, the global `jax.Array`s and `get_state` / `set_state` work as in `jasper_jax.data.pipeline`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import grain
import jax
import numpy as np

from jasper_jax.data.pairs import NO_ROW, PairsIndex
from jasper_jax.data.pipeline import (
    CompressionSampling,
    TrainBatchIterator,
    host_row_range,
    padded_batch_size,
    repeat_epochs,
)
from jasper_jax.data.tokenization import TextTokenizer, bucket_length, load_tokenizer, pad_batch


class PairBatchLoader:
    """Grain map: the example indices of one global batch -> this host's numpy batch (picklable)."""

    def __init__(
        self,
        pairs: PairsIndex,
        tokenizer: TextTokenizer,
        *,
        query_prompt: str,
        document_prompt: str,
        global_batch_size: int,
        host_rows: tuple[int, int],
        compression: CompressionSampling | None = None,
    ):
        self.pairs, self.tokenizer = pairs, tokenizer
        self.query_prompt, self.document_prompt = query_prompt, document_prompt
        self.global_batch_size, self.host_rows = global_batch_size, host_rows
        self.compression = compression

    def at(self, batch_index: int, indices: np.ndarray) -> dict[str, np.ndarray]:
        """`self(indices)` and, with `compression`, the queries' and documents' compressed masks at the
        batch's sampled ratio (one ratio for both; T from the whole global batch's lengths)."""
        batch, query_lengths, document_lengths = self._load(indices)
        if self.compression is not None:
            ratio = self.compression.ratio(0, int(batch_index))
            start, stop = self.host_rows
            max_length = self.tokenizer.max_length
            queries = self.compression.mask(query_lengths, ratio, max_length)
            documents = self.compression.mask(document_lengths, ratio, max_length)
            group = batch["document_mask"].shape[1]
            batch["query_compressed_mask"] = queries[start:stop]
            batch["document_compressed_mask"] = documents[start * group : stop * group].reshape(stop - start, group, -1)
        return batch

    def __call__(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        return self._load(indices)[0]

    def _load(self, indices: np.ndarray) -> tuple[dict[str, np.ndarray], list[int], list[int]]:
        """This host's batch and the token counts of the global batch's queries and documents."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        real = indices.size
        if real < self.global_batch_size:  # last partial batch: copies of its first example, masked out
            indices = np.concatenate([indices, np.full(self.global_batch_size - real, indices[0], np.int64)])
        table = np.asarray(self.pairs.rows[indices])
        queries, documents = table[:, 0], table[:, 1:]
        document_mask = documents != NO_ROW
        documents = np.where(document_mask, documents, documents[:, :1])  # a missing negative: its positive
        store, tokenizer = self.pairs.store, self.tokenizer
        query_ids = tokenizer.encode(store.texts(queries), self.query_prompt)
        document_ids = tokenizer.encode(store.texts(documents.reshape(-1)), self.document_prompt)
        query_length = bucket_length(max(len(row) for row in query_ids), tokenizer.max_length)
        document_length = bucket_length(max(len(row) for row in document_ids), tokenizer.max_length)
        start, stop = self.host_rows
        group, local = documents.shape[1], stop - start
        query = pad_batch(query_ids[start:stop], query_length, tokenizer.pad_id)
        docs = pad_batch(document_ids[start * group : stop * group], document_length, tokenizer.pad_id)
        host_documents = documents[start:stop]
        lengths = [[min(len(row), tokenizer.max_length) for row in ids] for ids in (query_ids, document_ids)]
        batch = {
            "query_input_ids": query["input_ids"],
            "query_attention_mask": query["attention_mask"],
            "teacher_query": store.teacher_vectors(queries[start:stop]),
            "document_input_ids": docs["input_ids"].reshape(local, group, document_length),
            "document_attention_mask": docs["attention_mask"].reshape(local, group, document_length),
            "teacher_documents": store.teacher_vectors(host_documents.reshape(-1)).reshape(local, group, -1),
            "document_mask": document_mask[start:stop],
            "document_ids": host_documents.astype(np.int32),
            "row_mask": (np.arange(self.global_batch_size) < real)[start:stop],
        }
        return batch, *lengths


def make_pair_iterator(
    pairs: PairsIndex | str | Path,
    tokenizer: TextTokenizer | str | Path,
    *,
    global_batch_size: int,
    mesh: jax.sharding.Mesh | None,
    max_length: int | None = None,
    shuffle_seed: int | None = None,
    query_prompt: str = "",
    document_prompt: str = "",
    num_epochs: int | None = None,
    teachers: Sequence[str] | None = None,
    teacher_transforms: Mapping[str, Any] | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    worker_threads: int = 2,
    prefetch: int = 4,
    compression: CompressionSampling | None = None,
) -> TrainBatchIterator:
    """The iterator of a contrastive stage over a pairs folder (module docstring: what it yields).

    Arguments as `jasper_jax.data.pipeline.make_train_iterator`; `query_prompt` prefixes the queries only,
    `document_prompt` the documents; `compression` adds `query_compressed_mask` (B, Tq) and
    `document_compressed_mask` (B, G, Td) at a ratio sampled per batch. The example order depends on the
    pairs, the seed and B only.
    """
    if not isinstance(pairs, PairsIndex):
        pairs = PairsIndex(pairs, teachers=teachers, transforms=teacher_transforms)
    if not isinstance(tokenizer, TextTokenizer):
        tokenizer = load_tokenizer(tokenizer, max_length or 512)
    if max_length is not None and max_length != tokenizer.max_length:
        raise ValueError(f"max_length={max_length} but the tokenizer truncates at {tokenizer.max_length}")
    if len(pairs) == 0:
        raise ValueError(f"{pairs.path} has no examples")
    simulated = process_count is not None and process_count != jax.process_count()
    to_global = mesh is not None and not simulated
    rows = padded_batch_size(global_batch_size, mesh if to_global else None)  # B' >= B: masked copies
    host_rows = host_row_range(
        rows,
        None if simulated else mesh,
        process_index=process_index if simulated else None,
        process_count=process_count if simulated else None,
    )
    dataset = grain.MapDataset.range(len(pairs))
    if shuffle_seed is not None:
        dataset = dataset.shuffle(seed=int(shuffle_seed))
    dataset = repeat_epochs(dataset, num_epochs).batch(global_batch_size, drop_remainder=False)
    loader = PairBatchLoader(
        pairs,
        tokenizer,
        query_prompt=query_prompt,
        document_prompt=document_prompt,
        global_batch_size=rows,
        host_rows=host_rows,
        compression=compression,
    )
    iter_dataset = dataset.map_with_index(loader.at).to_iter_dataset(
        grain.ReadOptions(num_threads=max(1, worker_threads), prefetch_buffer_size=max(1, prefetch))
    )
    digest = hashlib.sha256(np.ascontiguousarray(pairs.rows).tobytes()).hexdigest()[:16]
    fingerprint = {
        "pairs_sha256": digest,
        "texts_sha256": pairs.store.manifest["texts"]["sha256"],
        "examples": len(pairs),
        "teachers": pairs.store.teacher_names,
        "global_batch_size": global_batch_size,
        "shuffle_seed": shuffle_seed,
        "num_epochs": num_epochs,
        "max_length": tokenizer.max_length,
        "prompt_sha256": hashlib.sha256(f"{query_prompt}\0{document_prompt}".encode()).hexdigest()[:16],
        "teacher_transforms": pairs.store.transform_settings,
    }
    if compression is not None and compression.low != compression.high:  # a sampled ratio
        fingerprint["compression"] = [compression.threshold, compression.low, compression.high, compression.seed]
    return TrainBatchIterator(
        iter(iter_dataset), mesh=mesh, global_batch_size=rows, to_global=to_global, fingerprint=fingerprint
    )
