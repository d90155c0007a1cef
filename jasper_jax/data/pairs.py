"""Pair data for contrastive stages: (query, positive, hard negatives) examples over a teacher store's rows.

Every text of an example must already have teacher vectors in the store, so an example is just store rows:
texts are deduplicated by the store itself (one row per text) and stored once. The input is JSONL as in the
sentence-transformers training files and the official `create_distill_data.py`: one object per line with
`query` (a string), `pos` (a string or a list: one example per positive) and optionally `neg` (a string or a
list of hard negatives). `jasper-jax pairs texts` lists the distinct texts to encode into a store first.

Layout of a pairs folder (format version 1)::

    PAIRS/
      manifest.json   {"format": "jasper-jax-pairs", "version": 1, "store": "/abs/STORE",
                       "texts_sha256": the store's, "examples": N, "negatives": K, "source": ..., "mined": {...}}
      pairs.npy       int64 (N, 2 + K): query row, positive row, K negative rows (-1: no negative there)

Written into a temporary folder and renamed at the end, so a refused or killed command leaves nothing.
`mine_negatives` replaces the negatives with the teacher's hardest non-positives (see its docstring).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jasper_jax.data.store import TeacherStore, write_json_atomic
from jasper_jax.errors import UserError

FORMAT = "jasper-jax-pairs"
VERSION = 1
MANIFEST = "manifest.json"
ROWS_FILE = "pairs.npy"
NO_ROW = -1
_SHOWN = 60  # characters of a text quoted in an error


class PairsError(UserError, ValueError):
    """Bad pair input (the message names the file and line) or a pairs folder that cannot be used."""


def _quote(text: str) -> str:
    return repr(text if len(text) <= _SHOWN else text[:_SHOWN] + "...")


def _as_list(value: Any, where: str, name: str, required: bool) -> list[str]:
    if value is None:
        if required:
            raise PairsError(f"{where}: no {name!r} field")
        return []
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise PairsError(f"{where}: {name!r} must be a string or a list of strings, got {type(value).__name__}")
    if required and not values:
        raise PairsError(f"{where}: {name!r} is an empty list")
    for text in values:
        if not text.strip():
            raise PairsError(f"{where}: an empty {name} text")
    return values


def read_pair_lines(path: str | Path) -> Iterator[tuple[int, str, list[str], list[str]]]:
    """(line number (1-based), query, positives, negatives) of each non-blank line, checked as it is read."""
    path = Path(path)
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path} line {number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise PairsError(f"{where}: not JSON ({error.msg})") from None
            if not isinstance(row, dict):
                raise PairsError(f"{where}: expected an object with query, pos, neg")
            query = row.get("query")
            if not isinstance(query, str) or not query.strip():
                raise PairsError(f"{where}: the query is empty or missing (a non-empty string is needed)")
            positives = _as_list(row.get("pos"), where, "pos", required=True)
            negatives = _as_list(row.get("neg"), where, "neg", required=False)
            for positive in positives:
                if positive in negatives:
                    raise PairsError(f"{where}: the negative {_quote(positive)} equals a positive of the line")
            yield number, query, positives, negatives


def distinct_texts(path: str | Path) -> list[str]:
    """The distinct texts of a pairs file (queries, positives, negatives) in first-seen order."""
    seen: dict[str, None] = {}
    for _, query, positives, negatives in read_pair_lines(path):
        for text in (query, *positives, *negatives):
            seen.setdefault(text, None)
    return list(seen)


def _text_key(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def store_row_lookup(store: TeacherStore) -> dict[bytes, int]:
    """A digest of each store text -> its first row (16-byte digests keep this small for millions of rows)."""
    lookup: dict[bytes, int] = {}
    for row in range(len(store)):
        lookup.setdefault(_text_key(store.texts(row)), row)
    return lookup


def _write_folder(out: str | Path, rows: np.ndarray, manifest: dict[str, Any]) -> Path:
    out = Path(out)
    if out.exists():
        raise PairsError(f"{out} already exists: remove it or choose another --out")
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    np.save(tmp / ROWS_FILE, rows.astype(np.int64))
    write_json_atomic(tmp / MANIFEST, manifest)
    os.replace(tmp, out)
    return out


def build_pairs(
    source: str | Path, store: str | Path, out: str | Path, *, max_negatives: int | None = None
) -> dict[str, Any]:
    """Index the pairs of `source` (JSONL) over the rows of `store`; returns the manifest written to `out`.

    Each positive of a line makes one example with all the line's negatives (the first `max_negatives` if
    given); examples with fewer negatives are padded with -1. Every text must be a row of the store.
    """
    out = Path(out)
    if out.exists():
        raise PairsError(f"{out} already exists: remove it or choose another --out")
    teacher_store = TeacherStore(store)
    lookup = store_row_lookup(teacher_store)
    examples: list[list[int]] = []
    for number, query, positives, negatives in read_pair_lines(source):
        if max_negatives is not None:
            negatives = negatives[:max_negatives]
        rows = []
        for text in (query, *positives, *negatives):
            row = lookup.get(_text_key(text))
            if row is None:
                raise PairsError(
                    f"{source} line {number}: the text {_quote(text)} is not in the store {store}; encode "
                    "every text first (`jasper-jax pairs texts` lists them for `jasper-jax teachers encode`)"
                )
            rows.append(row)
        query_row, positive_rows, negative_rows = rows[0], rows[1 : 1 + len(positives)], rows[1 + len(positives) :]
        for positive_row in positive_rows:
            examples.append([query_row, positive_row, *negative_rows])
    if not examples:
        raise PairsError(f"{source}: no examples (every line was blank)")
    width = max(len(example) for example in examples)
    table = np.full((len(examples), width), NO_ROW, np.int64)
    for index, example in enumerate(examples):
        table[index, : len(example)] = example
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "store": str(Path(store).absolute()),
        "texts_sha256": teacher_store.manifest["texts"]["sha256"],
        "examples": len(examples),
        "negatives": width - 2,
        "source": str(source),
        "mined": None,
    }
    _write_folder(out, table, manifest)
    return manifest


class PairsIndex:
    """A pairs folder: `rows` (N, 2 + K) int64 store rows, `manifest`, and the store it indexes."""

    def __init__(
        self,
        path: str | Path,
        store: str | Path | None = None,
        teachers: Sequence[str] | None = None,
        transforms: Mapping[str, Any] | None = None,
    ):
        self.path = Path(path)
        manifest_path = self.path / MANIFEST
        if not manifest_path.exists():
            raise PairsError(
                f"{manifest_path} not found: {path} is not a pairs folder (make one: `jasper-jax pairs build`)"
            )
        self.manifest = json.loads(manifest_path.read_text())
        if self.manifest.get("format") != FORMAT:
            raise PairsError(f"{manifest_path}: format is {self.manifest.get('format')!r}, expected {FORMAT!r}")
        self.store_path = Path(store or self.manifest["store"])
        self.store = TeacherStore(self.store_path, teachers, transforms)
        if self.store.manifest["texts"]["sha256"] != self.manifest["texts_sha256"]:
            raise PairsError(
                f"{self.path} indexes another store's rows (texts sha256 differs from {self.store_path}): "
                "rebuild it with `jasper-jax pairs build` against this store"
            )
        self.rows = np.load(self.path / ROWS_FILE, mmap_mode="r")

    @property
    def negatives(self) -> int:
        return int(self.rows.shape[1]) - 2

    def __len__(self) -> int:
        return int(self.rows.shape[0])


def mine_negatives(
    pairs: str | Path,
    out: str | Path,
    *,
    negatives: int,
    threshold: float = 0.95,
    sample_from: int | None = None,
    seed: int = 0,
    pool: str = "documents",
    chunk_elements: int = 1 << 24,
) -> dict[str, Any]:
    """Replace every example's negatives with hard ones by teacher similarity; write a new pairs folder.

    For each example: candidates are the `pool` rows ("documents": every positive and negative row of
    the pairs; "store": every store row), minus its query and every positive of that query, minus any
    candidate scoring above `threshold` * the positive's score (cosines of the store's teacher vectors;
    the positive-aware false-negative guard, TopK-PercPos). The `sample_from` (default `negatives`) best
    candidates are kept (ties: lower row first), and `negatives` of them drawn uniformly with `seed` (no
    draw when equal), in score order. Fewer candidates than `negatives` leave -1 entries.
    """
    index = PairsIndex(pairs)
    sample_from = negatives if sample_from is None else sample_from
    if negatives < 1 or sample_from < negatives:
        raise PairsError(f"--negatives must be >= 1 and --sample-from >= --negatives, got {negatives}, {sample_from}")
    if not threshold > 0:
        raise PairsError(f"--threshold is a fraction of the positive's score (> 0; inf: no guard), got {threshold}")
    rows = np.asarray(index.rows)
    if pool == "documents":
        candidates = np.unique(rows[:, 1:][rows[:, 1:] != NO_ROW])
    elif pool == "store":
        candidates = np.arange(len(index.store), dtype=np.int64)
    else:
        raise PairsError(f"--pool must be 'documents' or 'store', got {pool!r}")
    store = index.store
    candidate_vectors = store.teacher_vectors(candidates)
    positives_of: dict[int, list[int]] = {}
    for query_row, positive_row in rows[:, :2].tolist():
        positives_of.setdefault(query_row, []).append(positive_row)
    rng = np.random.default_rng(seed)
    mined = np.full((len(rows), negatives), NO_ROW, np.int64)
    chunk = max(1, chunk_elements // max(1, len(candidates)))
    for start in range(0, len(rows), chunk):
        block = rows[start : start + chunk]
        queries = store.teacher_vectors(block[:, 0])
        positive_scores = np.sum(queries * store.teacher_vectors(block[:, 1]), axis=1)
        scores = queries @ candidate_vectors.T
        scores[scores > threshold * positive_scores[:, None]] = -np.inf
        for offset, row_scores in enumerate(scores):
            query_row = int(block[offset, 0])
            not_negative = np.concatenate([[query_row], positives_of[query_row]])
            where = np.searchsorted(candidates, not_negative)  # candidates are sorted
            hit = where < len(candidates)
            hit[hit] = candidates[where[hit]] == not_negative[hit]
            row_scores[where[hit]] = -np.inf
            top = np.argsort(-row_scores, kind="stable")[:sample_from]
            top = top[np.isfinite(row_scores[top])]
            if len(top) > negatives:
                top = top[np.sort(rng.choice(len(top), size=negatives, replace=False))]
            mined[start + offset, : len(top)] = candidates[top]
    table = np.concatenate([rows[:, :2], mined], axis=1)
    manifest = dict(index.manifest)
    manifest.update(
        negatives=negatives,
        mined={
            "from": str(index.path),
            "negatives": negatives,
            "threshold": threshold,
            "sample_from": sample_from,
            "seed": seed,
            "pool": pool,
            "examples_short": int(np.sum(mined[:, -1] == NO_ROW)),
        },
    )
    _write_folder(out, table, manifest)
    return manifest
