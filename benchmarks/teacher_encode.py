"""Teacher encoding throughput: texts/s per backend, compute dtype and worker count, and the projected cost
of the paper's 8M texts x 2 teachers.

CPU mode (default): MiniLM (the offline kit's all-MiniLM-L6-v2; `--model mpnet` for the kit's
all-mpnet-base-v2, or any folder) on `--texts` corpus-like texts through
`jasper_jax.data.teacher_encoding.load_encoder` (torch and jax in each of `--dtypes`, jax over the local
devices), and through `teachers encode` with 1 and 2 worker processes (wall time of the whole store;
`--no-workers` skips these).
GPU mode (`--gpu MODEL_FOLDER`, run where a device is lent): our torch path (bf16, length-sorted batches) and
our JAX path (bf16, data-parallel) against plain `SentenceTransformer.encode` in bf16 on the same device; the
goal is >= 1.0x plain sentence-transformers.

    .venv/bin/python benchmarks/teacher_encode.py --texts 512
    .venv/bin/python benchmarks/teacher_encode.py --model mpnet --dtypes float32 --no-workers --texts 128
    .venv/bin/python benchmarks/teacher_encode.py --gpu /models/stella_en_1.5B_v5 --dense 8192 --texts 4096
Prints one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from jasper_jax.data.teacher_encoding import EncodeSettings, TeacherSpec, load_encoder

WORDS = "the of and to in a is that for it as was with be by on not he this are or his from at which".split()


def corpus(count: int, seed: int = 0) -> list[str]:
    """Texts of 8 to 200 words (the corpus' spread of lengths), deterministic."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(8, 200)))) for _ in range(count)]


def timed(encoder, texts: list[str], warm: int) -> float:
    encoder(texts[:warm])  # loading / compiling is not throughput
    start = time.perf_counter()
    encoder(texts)
    return len(texts) / (time.perf_counter() - start)


def report(**fields) -> None:
    print(json.dumps(fields), flush=True)


def model_folder(name: str) -> str:
    """`mpnet`: the kit's all-mpnet-base-v2; otherwise a model alias or folder."""
    if name == "mpnet":
        from jasper_jax.assets import fetch_mpnet

        return str(fetch_mpnet())
    from jasper_jax.loader import resolve_model_path

    return str(resolve_model_path(name))


def cpu(args) -> None:
    texts = corpus(args.texts)
    path = model_folder(args.model)
    dtypes = args.dtypes.split(",")
    for backend, dtype in [(backend, dtype) for backend in ("torch", "jax") for dtype in dtypes]:
        settings = EncodeSettings(batch_size=args.batch_size, torch_dtype=dtype, jax_dtype=dtype, device="cpu")
        encoder = load_encoder(TeacherSpec(args.model, path, backend=backend), settings=settings)
        rate = timed(encoder, texts, min(64, args.batch_size))
        report(mode="cpu", model=args.model, backend=backend, dtype=dtype, texts=len(texts), texts_per_s=rate)
    if args.no_workers:
        return
    with tempfile.TemporaryDirectory() as folder:
        corpus_file = Path(folder) / "corpus.jsonl"
        corpus_file.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
        for workers in (1, 2):
            out = Path(folder) / f"store{workers}"
            command = [sys.executable, "-m", "jasper_jax", "teachers", "encode", "--corpus", str(corpus_file)]
            command += ["--teacher", path, "--backend", "torch", "--out", str(out), "--no-progress"]
            command += ["--shard-rows", str(max(1, len(texts) // 8)), "--device", "cpu", "--workers", str(workers)]
            start = time.perf_counter()
            processes = [
                subprocess.Popen(command + ["--worker", str(i)], env=dict(os.environ), stdout=subprocess.DEVNULL)
                for i in range(workers)
            ]
            assert all(p.wait() == 0 for p in processes)
            seconds = time.perf_counter() - start
            report(
                mode="cpu",
                backend="torch",
                dtype="float32",
                workers=workers,
                texts=len(texts),
                texts_per_s=len(texts) / seconds,
                note="whole teachers encode, process start and load included",
            )


def gpu(args) -> None:
    import torch
    from sentence_transformers import SentenceTransformer

    texts = corpus(args.texts)
    settings = EncodeSettings(batch_size=args.batch_size, device="cuda", torch_dtype="bfloat16", jax_dtype="bfloat16")
    spec = TeacherSpec("teacher", args.gpu, dense=args.dense, trust_remote_code=args.trust_remote_code)
    plain = SentenceTransformer(
        args.gpu, device="cuda", model_kwargs={"dtype": torch.bfloat16}, trust_remote_code=args.trust_remote_code
    )
    baseline = timed(lambda t: plain.encode(t, batch_size=args.batch_size, convert_to_numpy=True), texts, 64)
    report(mode="gpu", backend="sentence-transformers", dtype="bfloat16", texts=len(texts), texts_per_s=baseline)
    ours = timed(load_encoder(spec, settings=settings), texts, 64)
    report(mode="gpu", backend="torch", dtype="bfloat16", texts=len(texts), texts_per_s=ours, ratio=ours / baseline)
    if args.jax:
        jax_spec = TeacherSpec("teacher", args.gpu, backend="jax", dense=args.dense)
        rate = timed(load_encoder(jax_spec, settings=settings), texts, 64)
        report(mode="gpu", backend="jax", dtype="bfloat16", texts=len(texts), texts_per_s=rate, ratio=rate / baseline)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--model", default="minilm", help="CPU mode: a model alias, folder, or mpnet (the kit's)")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="CPU mode: compute dtypes, comma-separated")
    parser.add_argument("--no-workers", action="store_true", help="CPU mode: skip the teachers encode runs")
    parser.add_argument("--gpu", default=None, metavar="MODEL_FOLDER", help="GPU mode with this teacher folder")
    parser.add_argument("--dense", type=int, default=None)
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.add_argument("--jax", action="store_true", help="GPU mode: also the JAX backend")
    args = parser.parse_args()
    gpu(args) if args.gpu else cpu(args)


if __name__ == "__main__":
    main()
