"""Teacher store check at a training start: the first (full) check vs a restart's (sizes and row counts).

A store of `--rows` (1M) generated texts (5-30 words) and one `--dim` (64) teacher of random float16
vectors is written once with `jasper_jax.data.rag_import.import_rag` (not timed) into `--folder` (default:
a temporary folder, removed afterwards). Then `jasper_jax.data.check.check_store_once` runs as a training
start does: first with no marker (every text decoded, every vector scanned for NaN/Inf/zero rows, and
with `--checksums` every file hashed), which writes the marker; then `--restarts` times with the marker
(manifest, text index, file sizes and row counts only). Printed: seconds of each, and a JSON line.

    .venv/bin/python benchmarks/store_check.py                       # 1M rows, dim 64, checksums on
    .venv/bin/python benchmarks/store_check.py --rows 200000 --no-checksums
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from jasper_jax.data.check import check_store_once
from jasper_jax.data.rag_import import import_rag


def write_store(folder: Path, rows: int, dim: int, seed: int = 0) -> Path:
    """A `rows`-row store with one `dim`-wide float16 teacher under `folder/store`."""
    rng = np.random.default_rng(seed)
    words = np.array([f"w{i}" for i in range(5000)])
    lengths = rng.integers(5, 31, size=rows)
    picks = rng.integers(0, len(words), size=int(lengths.sum()))
    ends = np.cumsum(lengths)
    vectors, texts = folder / "teacher.fp32", folder / "teacher.text.jsonl"
    with open(texts, "w") as handle:
        start = 0
        for end in ends:
            handle.write(json.dumps({"query": " ".join(words[picks[start:end]])}) + "\n")
            start = end
    rng.normal(size=(rows, dim)).astype(np.float32).tofile(vectors)
    store = folder / "store"
    import_rag(vectors, texts, dim, store, dtype="float16")
    vectors.unlink()
    texts.unlink()
    return store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--restarts", type=int, default=3)
    parser.add_argument("--no-checksums", dest="checksums", action="store_false")
    parser.add_argument("--folder", default="")
    args = parser.parse_args()
    folder = Path(args.folder) if args.folder else Path(tempfile.mkdtemp(prefix="store-check-"))
    try:
        began = time.perf_counter()
        store = write_store(folder, args.rows, args.dim)
        print(f"store of {args.rows:,} rows x {args.dim} written in {time.perf_counter() - began:.1f} s: {store}")
        size = sum(p.stat().st_size for p in store.rglob("*") if p.is_file())
        markers = folder / "store_checks"
        began = time.perf_counter()
        problems, full = check_store_once(store, marker_dir=markers, verify_checksums=args.checksums)
        first = time.perf_counter() - began
        assert full and not problems, problems
        restarts = []
        for _ in range(args.restarts):
            began = time.perf_counter()
            problems, full = check_store_once(store, marker_dir=markers, verify_checksums=args.checksums)
            restarts.append(time.perf_counter() - began)
            assert not full and not problems, problems
        print(f"store size {size / 1e6:.0f} MB; checksums {'on' if args.checksums else 'off'}")
        print(f"first start (full check): {first:.2f} s")
        print(f"restart (sizes and row counts): {', '.join(f'{s:.3f}' for s in restarts)} s")
        figures = {"rows": args.rows, "dim": args.dim, "checksums": args.checksums, "bytes": size}
        print(json.dumps(dict(figures, first_s=round(first, 3), restart_s=[round(s, 4) for s in restarts])))
    finally:
        if not args.folder:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
