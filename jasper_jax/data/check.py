"""Validation of a teacher store: the mistakes that gave NaN or stuck losses to users of the official code.

`check_store` reports, each with the file, the row and what to do: unequal row counts between the texts
and any teacher (texts misaligned with vectors); file sizes inconsistent with the manifest's dtype and dim,
naming the float16/float32 mix-up when the size is exactly half or twice the expected one; NaN, Inf and
all-zero rows; empty or undecodable texts; checksums that no longer match; teachers other than the ones
the training config expects. It opens every file read-only and never writes: the store is byte-identical
afterwards, whatever it finds.

`check_store_once` is what a training start runs: the full check (every value and, if asked, every
checksum) once per store version, then a marker (`marker_dir/store-check-<key>.json`, the key a hash of
the manifest, which holds the files' checksums, rows and dims) says it passed, and later starts check only
the manifest, file sizes and row counts (seconds, where the full check of a paper-scale store reads about
200 GB). A store rewritten in place gets a new manifest, hence a new key and a full check. A value
corrupted afterwards without touching the manifest or the sizes is not seen by a restart: run
`jasper-jax teachers check` for that.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jasper_jax.data import store as store_lib

MAX_ROWS_NAMED = 5  # per problem kind and file; the count of the rest is given
SCAN_ROWS = 8192
MARKER_FORMAT = "store-check/1"


def _rows_text(rows: list[int], total: int) -> str:
    named = ", ".join(str(row) for row in rows[:MAX_ROWS_NAMED])
    return named + (f" and {total - MAX_ROWS_NAMED} more" if total > MAX_ROWS_NAMED else "")


def _count_lines(file: Path) -> int:
    count = 0
    with open(file, "rb") as handle:
        while chunk := handle.read(1 << 24):
            count += chunk.count(b"\n")
    return count


def _check_texts(path: Path, manifest: dict[str, Any], verify_checksums: bool, read_texts: bool = True) -> list[str]:
    """The texts file against the manifest and its index; `read_texts` False: sizes and row counts only."""
    problems: list[str] = []
    rows = int(manifest["rows"])
    texts_file = path / manifest["texts"].get("file", store_lib.TEXTS)
    index_file = path / manifest["texts"].get("index", store_lib.TEXT_INDEX)
    if not texts_file.exists():
        return [f"{texts_file}: missing; the store's texts are gone. Rebuild the store (teachers encode/import-rag)."]
    size = texts_file.stat().st_size
    if index_file.exists():
        offsets = np.load(index_file, mmap_mode="r")
        if offsets.shape != (rows + 1,) or (rows and int(offsets[-1]) != size):
            problems.append(
                f"{index_file}: indexes {offsets.shape[0] - 1} rows ending at byte "
                f"{int(offsets[-1]) if offsets.size else 0}, "
                f"but the manifest says {rows} rows and {texts_file.name} has {size} bytes: the texts file was "
                "changed after the store was written. Restore it, or rebuild the store."
            )
    if not read_texts:
        counted = rows if index_file.exists() else _count_lines(texts_file)  # the index was checked above
        if counted != rows:
            problems.append(
                f"{texts_file}: {counted} texts but the manifest says {rows} rows: texts and teacher vectors are "
                "misaligned. Rebuild the store from the corpus with `jasper-jax teachers encode`."
            )
        return problems
    empty, bad, counted = [], [], 0
    bad_reasons: dict[int, str] = {}
    digest = hashlib.sha256()
    with open(texts_file, "rb") as handle:
        for row, line in enumerate(handle):
            counted += 1
            digest.update(line)
            try:
                text = json.loads(line.decode("utf-8"))["text"]
                if not isinstance(text, str):
                    raise TypeError(f"'text' is {type(text).__name__}, not a string")
            except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
                bad.append(row)
                bad_reasons.setdefault(row, f"{type(error).__name__}: {error}"[:120])
                continue
            if not text.strip():
                empty.append(row)
    if counted != rows:
        problems.append(
            f"{texts_file}: {counted} texts but the manifest says {rows} rows: texts and teacher vectors are "
            "misaligned (every row after the first difference pairs a text with another text's vector). "
            "Rebuild the store from the corpus with `jasper-jax teachers encode`."
        )
    if bad:
        first = bad[0]
        problems.append(
            f"{texts_file}: undecodable text in row(s) {_rows_text(bad, len(bad))} (line = row + 1; row {first}: "
            f'{bad_reasons[first]}). Each line must be UTF-8 JSON {{"text": "..."}}: fix the corpus and re-encode.'
        )
    if empty:
        problems.append(
            f"{texts_file}: empty text in row(s) {_rows_text(empty, len(empty))}. An empty text has no tokens to "
            "learn from: drop it from the corpus (`jasper-jax corpus build` filters them) and re-encode."
        )
    expected = manifest["texts"].get("sha256")
    if verify_checksums and expected and counted == rows and digest.hexdigest() != expected:
        problems.append(
            f"{texts_file}: sha256 differs from manifest.json: the texts changed after encoding. "
            "Restore the original file or rebuild the store."
        )
    return problems


def _size_problem(file: Path, size: int, rows: int, dim: int, dtype: str, teacher: str) -> str | None:
    itemsize = np.dtype(dtype).itemsize
    expected = rows * dim * itemsize
    if size == expected:
        return None
    other = "float32" if dtype == "float16" else "float16"
    if size == rows * dim * np.dtype(other).itemsize and size:
        return (
            f"{file}: {size} bytes = {rows} rows x {dim} dims x {np.dtype(other).itemsize} bytes, but the manifest "
            f"says teacher {teacher!r} is {dtype} ({expected} bytes): this is the float16/float32 mix-up "
            f"(the writer wrote {other}, the reader would read {dtype}; rows would be garbage or NaN). "
            f'Set "dtype": "{other}" for {teacher!r} in manifest.json if the file is right, or re-encode.'
        )
    row_bytes = dim * itemsize
    hint = ""
    if row_bytes and size % row_bytes == 0:
        hint = f" It holds {size // row_bytes} rows of {dim} {dtype}: rows and vectors are misaligned."
    elif rows and size % (rows * itemsize) == 0:
        hint = f" It would fit {rows} rows of dim {size // (rows * itemsize)}: is the manifest's dim wrong?"
    return (
        f"{file}: {size} bytes, expected {rows} rows x {dim} dims x {itemsize} bytes ({dtype}) = {expected}."
        f"{hint} Re-encode this teacher (delete the store and run `jasper-jax teachers encode` again)."
    )


def _scan_vectors(
    file: Path,
    rows: int,
    dim: int,
    dtype: str,
    first_row: int,
    teacher: str,
    hash_it: bool,
    check_values: bool,
    columns: tuple[int, int] | None = None,
) -> tuple[list[str], str | None]:
    """One read of a shard file: (NaN/Inf/all-zero problems, sha256 or None). Memory: SCAN_ROWS rows at a time.

    `dim` is the file's row width; `columns` restricts the value checks to one teacher's columns (wrapped files).
    """
    nan, inf, zero = [], [], []
    digest = hashlib.sha256() if hash_it else None
    row_bytes = dim * np.dtype(dtype).itemsize
    first_column, last_column = columns or (0, dim)
    with open(file, "rb") as handle:
        start = 0
        while start < rows:
            chunk = handle.read(SCAN_ROWS * row_bytes)
            if digest is not None:
                digest.update(chunk)
            if check_values:
                block = np.frombuffer(chunk, dtype=dtype).reshape(-1, dim)[:, first_column:last_column]
                block = block.astype(np.float32)
                numbers = first_row + start + np.arange(block.shape[0])
                has_nan = np.isnan(block).any(axis=1)
                nan.extend(numbers[has_nan].tolist())
                inf.extend(numbers[np.isinf(block).any(axis=1)].tolist())
                zero.extend(numbers[~np.any(block != 0, axis=1) & ~has_nan].tolist())
            start += SCAN_ROWS
    problems = []
    for found, what in ((nan, "NaN"), (inf, "Inf"), (zero, "all-zero")):
        if found:
            problems.append(
                f"{file}: teacher {teacher!r} has {what} vectors in store row(s) {_rows_text(found, len(found))} "
                f"(file row = store row - {first_row}). They make the losses NaN or meaningless: re-encode those "
                "rows' texts (check them for being empty or odd), or drop them from the corpus."
            )
    return problems, digest.hexdigest() if digest is not None else None


def check_store(
    path: str | Path,
    expected_teachers: Sequence[str] | Sequence[dict] | None = None,
    *,
    verify_checksums: bool = True,
    check_values: bool = True,
) -> list[str]:
    """Problems found in the store at `path` (empty list: fine). Read-only.

    `expected_teachers`: names (or dicts with `name` and optionally `dim`) that the training config expects,
    in order. `verify_checksums` re-hashes every file against the manifest (reads the whole store).
    `check_values` False (with `verify_checksums` False): no file is read beyond the manifest and the text
    index: sizes and row counts only (`check_store_once` after a full check passed).
    """
    path = Path(path)
    try:
        manifest = store_lib.read_manifest(path)
    except (FileNotFoundError, ValueError, json.JSONDecodeError) as error:
        return [str(error)]
    problems: list[str] = []
    manifest_file = path / store_lib.MANIFEST
    if not manifest.get("complete", False):
        problems.append(
            f"{manifest_file}: complete=false, the store is unfinished: run the same "
            "`jasper-jax teachers encode` command again to finish it."
        )
    rows = int(manifest["rows"])
    problems += _check_texts(path, manifest, verify_checksums, read_texts=verify_checksums or check_values)
    for teacher in manifest["teachers"]:
        name, dim, dtype = teacher["name"], int(teacher.get("dim") or 0), teacher["dtype"]
        if dtype not in store_lib.DTYPES:
            problems.append(
                f"{manifest_file}: teacher {name!r} has dtype {dtype!r}; expected one of {store_lib.DTYPES}."
            )
            continue
        shard_rows_total = sum(int(shard["rows"]) for shard in teacher["shards"])
        if shard_rows_total != rows:
            problems.append(
                f"{manifest_file}: teacher {name!r} has {shard_rows_total} rows of vectors but the store has {rows} "
                f"texts: texts and vectors are misaligned. Finish or redo `jasper-jax teachers encode`."
            )
        first_row = 0
        mixups: list[tuple[Path, str]] = []
        for shard in teacher["shards"]:
            file = path / shard["file"]
            count = int(shard["rows"])
            width, column = int(shard.get("row_width", dim)), int(shard.get("column", 0))  # wrapped files
            if not file.exists():
                problems.append(
                    f"{file}: missing ({name!r}, store rows {first_row}-{first_row + count - 1}). "
                    "Re-run `jasper-jax teachers encode` into a fresh store."
                )
            else:
                size_problem = _size_problem(file, file.stat().st_size, count, width, dtype, name)
                if size_problem and "mix-up" in size_problem:
                    mixups.append((file, size_problem))
                elif size_problem:
                    problems.append(size_problem)
                elif count and dim and (verify_checksums or check_values):
                    hash_it = verify_checksums and bool(shard.get("sha256"))
                    found, sha = _scan_vectors(
                        file, count, width, dtype, first_row, name, hash_it, check_values, (column, column + dim)
                    )
                    if hash_it and sha != shard["sha256"]:
                        problems.append(
                            f"{file}: sha256 differs from manifest.json: the vectors changed after "
                            "encoding. Restore the file or re-encode the store."
                        )
                    problems += found
            first_row += count
        if mixups:  # the same mistake in every shard of a teacher: say it once
            more = (
                f" (The same holds for {len(mixups) - 1} more file(s) of teacher {name!r}.)" if len(mixups) > 1 else ""
            )
            problems.append(mixups[0][1] + more)
    if expected_teachers is not None:
        expected = [t if isinstance(t, dict) else {"name": t} for t in expected_teachers]
        have = [{"name": t["name"], "dim": t.get("dim")} for t in manifest["teachers"]]
        names_differ = [t["name"] for t in expected] != [t["name"] for t in have]
        dims_differ = any(e.get("dim") not in (None, h["dim"]) for e, h in zip(expected, have))
        if names_differ or dims_differ:
            problems.append(
                f"{manifest_file}: the store's teachers are {[(t['name'], t['dim']) for t in have]} but the training "
                f"config expects {[(t['name'], t.get('dim')) for t in expected]}. Point the config at the store "
                "made with those teachers, or change the config's teachers to these."
            )
    return problems


# ------------------------------------------------------------------------------- once per store version


def store_version_key(path: str | Path) -> str:
    """sha256 of the store's manifest (canonical JSON): its checksums, rows, dims and files."""
    manifest = store_lib.read_manifest(Path(path))
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def marker_file(marker_dir: str | Path, key: str) -> Path:
    return Path(marker_dir) / f"store-check-{key[:32]}.json"


def passed_marker(path: str | Path, marker_dir: str | Path, verify_checksums: bool) -> dict[str, Any] | None:
    """The marker of a full check of this store version that covered `verify_checksums`, or None."""
    try:
        key = store_version_key(path)
        marker = json.loads(marker_file(marker_dir, key).read_text())
    except (FileNotFoundError, ValueError, json.JSONDecodeError, OSError):
        return None
    if marker.get("format") != MARKER_FORMAT or marker.get("key") != key:
        return None
    if verify_checksums and not marker.get("verify_checksums"):
        return None
    return marker


def check_store_once(
    path: str | Path,
    expected_teachers: Sequence[str] | Sequence[dict] | None = None,
    *,
    marker_dir: str | Path,
    verify_checksums: bool = True,
    write_marker: bool = True,
) -> tuple[list[str], bool]:
    """`(problems, full)`: the full check of the store at `path` if no marker says this store version passed
    one (then, if clean and `write_marker`, the marker is written to `marker_dir`); otherwise the sizes
    and row counts only (`full` False). The store itself is only read.

    In a multi-process run process 0 calls it with `write_marker`, the others after a barrier with
    `write_marker=False`: they find the marker and check sizes only."""
    if passed_marker(path, marker_dir, verify_checksums) is not None:
        return check_store(path, expected_teachers, verify_checksums=False, check_values=False), False
    began = time.perf_counter()
    problems = check_store(path, expected_teachers, verify_checksums=verify_checksums)
    if not problems and write_marker:
        key = store_version_key(path)
        record = {
            "format": MARKER_FORMAT,
            "key": key,
            "store": str(Path(path).absolute()),
            "verify_checksums": bool(verify_checksums),
            "seconds": round(time.perf_counter() - began, 3),
            "checked_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        target = marker_file(marker_dir, key)
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f"{target.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(record, indent=2) + "\n")
        os.replace(temporary, target)  # other processes see the whole marker or none
    return problems, True
