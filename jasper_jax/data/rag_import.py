"""Import the official RAG-Retrieval teacher format into a teacher store.

The official code stores a float32 `np.memmap` of shape (N, D) with no header, the teachers concatenated
column-wise, next to `<name>.text.jsonl` with one `{"query": text}` per row in the same order (PAPER.md,
"Data"). `import_rag` validates the pair before writing anything (row counts, the size of the vector file
against N x D x 4 bytes, naming the float16/float32 mix-up), then copies the vectors shard by shard into
a store (one teacher per column block given by `teacher_dims`) and the texts into texts.jsonl; or, with
`wrap=True`, leaves the vectors where they are and points the store at them (no 400 GB copy at paper scale).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jasper_jax.data import store as store_lib


def read_rag_texts(path: str | Path) -> list[str]:
    """Texts of an official text.jsonl (field `query`, else `text`), with errors naming the line."""
    texts = []
    with open(path, "rb") as handle:
        for line_number, raw in enumerate(handle, 1):
            try:
                record = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                raise ValueError(
                    f"{path}:{line_number}: undecodable line ({error}); each line must be UTF-8 JSON "
                    '{"query": "..."}. Fix or remove that line and its vector row.'
                ) from error
            if "query" in record:
                texts.append(record["query"])
            elif "text" in record:
                texts.append(record["text"])
            else:
                raise ValueError(f"{path}:{line_number}: no 'query' (or 'text') field in {sorted(record)}")
    return texts


def vector_file_problem(path: str | Path, rows: int, dim: int, dtype: str = "float32") -> str | None:
    """Why `path` cannot be a (rows, dim) memmap of `dtype`, or None when its size fits."""
    size = Path(path).stat().st_size
    itemsize = np.dtype(dtype).itemsize
    if size == rows * dim * itemsize:
        return None
    other = "float16" if dtype == "float32" else "float32"
    if rows and size == rows * dim * np.dtype(other).itemsize:
        return (
            f"{path}: {size} bytes = {rows} rows x {dim} dims x {np.dtype(other).itemsize} bytes: the file is "
            f"{other}, not {dtype} (the float16/float32 mix-up between writer and reader). "
            f"Pass --source-dtype {other} if it was written as {other}."
        )
    if dim and size % (dim * itemsize) == 0:
        return (
            f"{path}: holds {size // (dim * itemsize)} rows of {dim} {dtype} but the texts file has {rows} rows: "
            "texts and vectors are misaligned. Use the text.jsonl written together with these vectors."
        )
    return (
        f"{path}: {size} bytes is not a whole number of {dim}-dim {dtype} rows: check --dim "
        f"(size / rows / {itemsize} = {size / max(rows, 1) / itemsize:g})."
    )


def import_rag(
    vectors: str | Path,
    texts: str | Path,
    dim: int,
    out: str | Path,
    *,
    teacher_dims: Sequence[int] | None = None,
    names: Sequence[str] | None = None,
    source_dtype: str = "float32",
    dtype: str = "float32",
    shard_rows: int = 16384,
    wrap: bool = False,
) -> dict[str, Any]:
    """Copy (or, with `wrap`, reference) the official (vectors, text.jsonl) pair as a new store at `out`.

    `teacher_dims` splits the D columns into teachers (e.g. 4096,8192 for NV-Embed-v2 + stella); default one
    teacher of D columns. The vectors are taken as they are (`normalisation: "none"`; the reader normalises).
    `wrap`: write only the texts and the manifest; the store reads the official file in place (its absolute
    path is recorded, so it must stay where it is, unchanged; `dtype` is then the source dtype).
    Returns the manifest.
    """
    out = Path(out)
    if (out / store_lib.MANIFEST).exists():
        raise FileExistsError(f"{out} already holds a store; choose another --out (nothing was changed).")
    teacher_dims = list(teacher_dims or [dim])
    if sum(teacher_dims) != dim:
        raise ValueError(f"--teacher-dims {teacher_dims} sum to {sum(teacher_dims)}, not --dim {dim}")
    names = list(names or ([f"teacher{i}" for i in range(len(teacher_dims))] if len(teacher_dims) > 1 else ["teacher"]))
    if len(names) != len(teacher_dims) or len(set(names)) != len(names):
        raise ValueError(f"--names {names} must give one distinct name per teacher block {teacher_dims}")
    if dtype not in store_lib.DTYPES or source_dtype not in store_lib.DTYPES:
        raise ValueError(f"dtypes must be one of {store_lib.DTYPES}")
    text_list = read_rag_texts(texts)
    rows = len(text_list)
    problem = vector_file_problem(vectors, rows, dim, source_dtype)
    if problem:
        raise ValueError(problem + " Nothing was written.")
    source = np.memmap(vectors, dtype=source_dtype, mode="r", shape=(rows, dim)) if rows else np.zeros((0, dim))
    out.mkdir(parents=True, exist_ok=True)
    _, texts_sha = store_lib.write_texts(out, text_list)
    entries = []
    column = 0
    if wrap:
        absolute = str(Path(vectors).resolve())
        for name, width in zip(names, teacher_dims):
            entries.append(
                {
                    "name": name,
                    "path": absolute,
                    "backend": "import-rag",
                    "dim": width,
                    "dtype": source_dtype,
                    "prompt": "",
                    "normalisation": "none",
                    "columns": [column, column + width],
                    "shards": [{"file": absolute, "rows": rows, "sha256": None, "row_width": dim, "column": column}]
                    if rows
                    else [],
                }
            )
            column += width
        shard_rows = max(rows, 1)
    for name, width in [] if wrap else zip(names, teacher_dims):
        (out / name).mkdir(exist_ok=True)
        shards = []
        for shard in range(store_lib.shard_count(rows, shard_rows)):
            start = shard * shard_rows
            count = store_lib.shard_rows_of(rows, shard_rows, shard)
            block = np.asarray(source[start : start + count, column : column + width]).astype(dtype)
            relative = f"{name}/{shard:05d}.bin"
            shards.append(
                {"file": relative, "rows": count, "sha256": store_lib.write_bytes_atomic(out / relative, block)}
            )
        entries.append(
            {
                "name": name,
                "path": str(vectors),
                "backend": "import-rag",
                "dim": width,
                "dtype": dtype,
                "prompt": "",
                "normalisation": "none",
                "columns": [column, column + width],
                "shards": shards,
            }
        )
        column += width
    manifest = {
        "format": store_lib.FORMAT,
        "version": store_lib.VERSION,
        "rows": rows,
        "shard_rows": shard_rows,
        "complete": True,
        "source": {"vectors": str(vectors), "texts": str(texts), "dtype": source_dtype, "wrapped": wrap},
        "texts": {"file": store_lib.TEXTS, "index": store_lib.TEXT_INDEX, "sha256": texts_sha},
        "teachers": entries,
    }
    store_lib.write_json_atomic(out / store_lib.MANIFEST, manifest)
    return manifest
