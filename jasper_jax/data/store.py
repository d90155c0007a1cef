"""The teacher store: texts and each teacher's vectors on disk, read by memory mapping.

The teachers' vectors are computed once (`jasper-jax teachers encode` or `teachers import-rag`) and read
many times by training. At paper scale the store holds 8M texts x 12288 dims (about 200 GB in float16), so
nothing here ever loads a whole file: vectors are raw row-major `np.memmap` files and texts are one JSON
line per row with a byte-offset index.

Layout of a store folder (format version 1)::

    STORE/
      manifest.json              what is in the store (below); written last, atomically
      texts.jsonl                one {"text": "..."} per row, UTF-8, in row order
      texts.index.npy            int64 (rows + 1,): byte offset of each line in texts.jsonl, then its size
      <teacher>/00000.bin ...    raw row-major (shard rows, dim) arrays in the teacher's dtype, no header
      <teacher>/00000.json ...   the encoding worker's record of a finished shard (file, rows, sha256, dim);
                                 readers ignore it (see `jasper_jax.data.teacher_encoding`)

`manifest.json`::

    {"format": "jasper-jax-teacher-store", "version": 1, "rows": N, "shard_rows": S, "complete": true,
     "texts": {"file": "texts.jsonl", "index": "texts.index.npy", "sha256": "..."},
     "teachers": [{"name": "minilm", "path": "...", "backend": "torch", "dim": 384, "dtype": "float16",
                   "prompt": "", "normalisation": "l2",
                   "shards": [{"file": "minilm/00000.bin", "rows": S, "sha256": "..."}, ...]}]}

Shard k of every teacher holds rows [k*S, min(N, (k+1)*S)). A store made by `teachers import-rag --wrap`
does not copy the official vector file: each teacher has one shard whose `file` is that file's absolute
path, with `"row_width": D` (the file's columns) and `"column": c` (where this teacher's columns begin),
and `"sha256": null` (hashing hundreds of GB is left to `teachers check`'s size and value checks).
`normalisation` says what the writer did to
each row ("l2": unit rows; "none": as the model gave them). Whatever it says, the reader normalises each
teacher's row, concatenates the selected teachers and normalises again (PAPER.md, "Vectors"), in float32.

Teacher transforms (arXiv 2511.14405, issue 19 item 5) are applied when the store is read, per teacher and
before that normalisation: `TeacherTransform(keep_dims=d)` keeps the first d dimensions (an MRL teacher:
Qwen3-Embedding-8B at 1024), `sum_segments=k` then sums k equal consecutive segments (QZhou-Embedding:
keep 3072, sum 3 segments of 1024). The store on disk is unchanged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "jasper-jax-teacher-store"
VERSION = 1
MANIFEST = "manifest.json"
TEXTS = "texts.jsonl"
TEXT_INDEX = "texts.index.npy"
DTYPES = ("float16", "float32")
HASH_CHUNK = 1 << 24


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def text_line(text: str) -> bytes:
    """The bytes of one row of texts.jsonl (the canonical form the text checksum is taken over)."""
    return (json.dumps({"text": text}, ensure_ascii=False) + "\n").encode("utf-8")


def write_json_atomic(path: str | Path, value: Any, tmp_suffix: str = "") -> None:
    """Write JSON to `path` so that a reader (or a kill) sees either the old file or the new one.

    `tmp_suffix` makes the temporary file's name unique where several processes may write `path`."""
    path = Path(path)
    tmp = path.with_name(path.name + tmp_suffix + ".tmp")
    with open(tmp, "w") as handle:
        json.dump(value, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def write_bytes_atomic(path: str | Path, array: np.ndarray) -> str:
    """Write an array's raw bytes to `path` atomically (tmp file, fsync, rename); return their sha256."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    data = np.ascontiguousarray(array).tobytes()
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return hashlib.sha256(data).hexdigest()


def write_texts(folder: str | Path, texts: Sequence[str] | Any, tmp_suffix: str = "") -> tuple[int, str]:
    """Write texts.jsonl and its offset index into `folder` (atomically); return (rows, sha256)."""
    folder = Path(folder)
    tmp_texts = folder / (TEXTS + tmp_suffix + ".tmp")
    digest = hashlib.sha256()
    offsets = [0]
    with open(tmp_texts, "wb") as handle:
        for text in texts:
            line = text_line(text)
            handle.write(line)
            digest.update(line)
            offsets.append(offsets[-1] + len(line))
        handle.flush()
        os.fsync(handle.fileno())
    tmp_index = folder / (TEXT_INDEX + tmp_suffix + ".tmp.npy")
    np.save(tmp_index, np.asarray(offsets, dtype=np.int64))
    os.replace(tmp_index, folder / TEXT_INDEX)
    os.replace(tmp_texts, folder / TEXTS)
    return len(offsets) - 1, digest.hexdigest()


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of the store at `path`, with a message saying what to do when it is missing."""
    manifest_path = Path(path) / MANIFEST
    if not manifest_path.exists():
        raise FileNotFoundError(
            f"{manifest_path} not found: {path} is not a teacher store. Create one with "
            "`jasper-jax teachers encode` or `jasper-jax teachers import-rag`."
        )
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{manifest_path}: format is {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


def shard_count(rows: int, shard_rows: int) -> int:
    """How many shards hold `rows` rows at `shard_rows` per shard."""
    return max(0, -(-rows // shard_rows))


def shard_rows_of(rows: int, shard_rows: int, shard: int) -> int:
    """Rows in shard `shard`: shard_rows except for the last one."""
    return min(shard_rows, rows - shard * shard_rows)


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm, in float32; all-zero rows stay zero."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


@dataclasses.dataclass(frozen=True)
class TeacherTransform:
    """What the reader does to one teacher's raw rows: keep the first `keep_dims` (0: all), then sum
    `sum_segments` equal consecutive segments (1: none). Normalisation follows, as for every teacher."""

    keep_dims: int = 0
    sum_segments: int = 1

    def output_dim(self, dim: int, name: str = "teacher") -> int:
        """The width after the transform of a `dim`-wide teacher (refuses widths that do not fit)."""
        kept = self.keep_dims or dim
        if not 0 < kept <= dim:
            raise ValueError(f"teacher {name!r}: keep_dims={self.keep_dims} must lie in 1..{dim} (its width)")
        if self.sum_segments < 1 or kept % self.sum_segments:
            raise ValueError(
                f"teacher {name!r}: sum_segments={self.sum_segments} must be >= 1 and divide the {kept} kept dims"
            )
        return kept // self.sum_segments

    def apply(self, block: np.ndarray) -> np.ndarray:
        """(n, dim) raw rows -> (n, output_dim) float32 rows (not normalised)."""
        block = np.asarray(block, dtype=np.float32)
        width = self.output_dim(block.shape[1])
        kept = block[:, : width * self.sum_segments]
        if self.sum_segments == 1:
            return kept
        return kept.reshape(len(block), self.sum_segments, width).sum(axis=1, dtype=np.float32)


class TeacherStore:
    """Random access to (text, teacher vector) rows of a store folder, memory-mapped.

    The teacher vector of a row is: each selected teacher's vector normalised, concatenated in manifest
    order, normalised again (float32). `teachers` selects a subset by name (in manifest order);
    `transforms` maps teacher names to a `TeacherTransform` (or its fields as a dict) applied first.

    >>> store = TeacherStore("runs/store")             # doctest: +SKIP
    >>> row = store[0]; row["text"], row["teacher"].shape
    """

    def __init__(
        self,
        path: str | Path,
        teachers: Sequence[str] | None = None,
        transforms: Mapping[str, TeacherTransform | Mapping[str, int]] | None = None,
    ):
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        if not self.manifest.get("complete", False):
            raise ValueError(
                f"{self.path} is an unfinished store (manifest.json has complete=false): finish it by running "
                "the same `jasper-jax teachers encode` command again."
            )
        by_name = {teacher["name"]: teacher for teacher in self.manifest["teachers"]}
        if teachers is not None:
            missing = [name for name in teachers if name not in by_name]
            if missing:
                raise KeyError(f"{self.path} has no teacher {missing}; it holds {list(by_name)}")
            wanted = set(teachers)
            self.teachers = [t for t in self.manifest["teachers"] if t["name"] in wanted]
        else:
            self.teachers = list(self.manifest["teachers"])
        self.rows = int(self.manifest["rows"])
        self.shard_rows = int(self.manifest["shard_rows"])
        transforms = dict(transforms or {})
        unknown = sorted(set(transforms) - set(by_name))
        if unknown:
            raise KeyError(f"teacher transforms name {unknown}, not teachers of {self.path}; it holds {list(by_name)}")
        self.transforms = {
            name: value if isinstance(value, TeacherTransform) else TeacherTransform(**dict(value))
            for name, value in transforms.items()
        }
        self.stored_dims = [int(teacher["dim"]) for teacher in self.teachers]
        self.dims = [
            self.transforms.get(t["name"], TeacherTransform()).output_dim(dim, t["name"])
            for t, dim in zip(self.teachers, self.stored_dims)
        ]
        self.dim = sum(self.dims)
        self._open()

    def _open(self) -> None:
        self._text_index = np.load(self.path / TEXT_INDEX, mmap_mode="r")
        self._texts = np.memmap(self.path / TEXTS, dtype=np.uint8, mode="r") if self.rows else None
        self._shards = [
            [
                np.memmap(
                    self.path / shard["file"],
                    dtype=teacher["dtype"],
                    mode="r",
                    shape=(int(shard["rows"]), int(shard.get("row_width", teacher["dim"]))),
                )
                for shard in teacher["shards"]
            ]
            for teacher in self.teachers
        ]
        self._columns = [
            [
                (int(shard.get("column", 0)), int(shard.get("column", 0)) + int(teacher["dim"]))
                for shard in teacher["shards"]
            ]
            for teacher in self.teachers
        ]

    def __getstate__(self) -> dict[str, Any]:  # memmaps are reopened in the receiving process
        return {"path": self.path, "teacher_names": self.teacher_names, "transforms": self.transforms}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], state["teacher_names"], state.get("transforms"))

    @property
    def transform_settings(self) -> dict[str, dict[str, int]]:
        """The transforms as plain dicts (for fingerprints and metadata)."""
        return {name: dataclasses.asdict(value) for name, value in sorted(self.transforms.items())}

    @property
    def teacher_names(self) -> list[str]:
        return [teacher["name"] for teacher in self.teachers]

    def __len__(self) -> int:
        return self.rows

    def texts(self, index: int | Sequence[int] | np.ndarray) -> str | list[str]:
        """The text of row `index` (an int), or the list of texts of several rows."""
        if isinstance(index, (int, np.integer)):
            return self._text(int(index))
        return [self._text(int(i)) for i in index]

    def _text(self, index: int) -> str:
        if not 0 <= index < self.rows:
            raise IndexError(f"row {index} out of range for a store of {self.rows} rows")
        start, stop = int(self._text_index[index]), int(self._text_index[index + 1])
        return json.loads(bytes(self._texts[start:stop]).decode("utf-8"))["text"]

    def teacher_vectors(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """(len(indices), dim) float32 teacher vectors of the given rows (any order, repeats allowed)."""
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= self.rows):
            raise IndexError(f"rows out of range for a store of {self.rows} rows")
        shard_of = indices // self.shard_rows
        within = indices - shard_of * self.shard_rows
        parts = []
        for teacher, shards, columns, dim in zip(self.teachers, self._shards, self._columns, self.stored_dims):
            block = np.empty((indices.size, dim), dtype=np.float32)
            for shard in np.unique(shard_of):
                where = np.nonzero(shard_of == shard)[0]
                rows = within[where]
                first, last = columns[shard]
                if rows.size > 1 and np.all(np.diff(rows) == 1):  # contiguous: one slice, one read
                    block[where] = shards[shard][rows[0] : rows[-1] + 1, first:last]
                else:
                    block[where] = shards[shard][rows][:, first:last]
            transform = self.transforms.get(teacher["name"])
            parts.append(l2_normalise(transform.apply(block) if transform else block))
        return l2_normalise(np.concatenate(parts, axis=-1)) if parts else np.zeros((indices.size, 0), np.float32)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        return {"text": self._text(index), "teacher": self.teacher_vectors([index])[0]}
