"""Encode throughput: jasper-jax `encode_texts` against sentence-transformers (PyTorch) on the same texts and CPU.

    .venv/bin/python benchmarks/encode.py [--texts 1024] [--batch-size 64] [--max-length 128] [--repeats 2]

Model: the real all-MiniLM-L6-v2 (offline kit). Texts: deterministic windows of 3-150 words over the model's
README (so lengths spread over all buckets up to max_length). Both sides sort by length and batch the same
way; each side runs once to warm up (our side compiles one program per length bucket; that time is reported
separately), then `repeats` timed runs alternating between the two; the best run of each is reported.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

from jasper_jax.assets import minilm_path  # noqa: E402


def make_texts(count: int, seed: int = 0) -> list[str]:
    words = (minilm_path() / "README.md").read_text().split()
    rng = np.random.default_rng(seed)
    texts = []
    for _ in range(count):
        length = int(rng.integers(3, 150))
        start = int(rng.integers(0, len(words) - length))
        texts.append(" ".join(words[start : start + length]))
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    import torch
    from sentence_transformers import SentenceTransformer

    from jasper_jax.convert import load_model_folder
    from jasper_jax.encode import encode_texts

    path = str(minilm_path())
    texts = make_texts(args.texts)
    reference = SentenceTransformer(path, device="cpu")
    reference.max_seq_length = args.max_length
    loaded = load_model_folder(path)

    def ours():
        return encode_texts(
            loaded, texts, head="pooled", max_length=args.max_length, batch_size=args.batch_size, progress=False
        )

    def theirs():
        with torch.inference_mode():
            return reference.encode(texts, batch_size=args.batch_size, convert_to_numpy=True)

    start = time.perf_counter()
    ours_vectors = ours()
    ours_first = time.perf_counter() - start
    theirs_vectors = theirs()
    agreement = float(np.min(np.sum(ours_vectors * theirs_vectors, axis=1)))

    best = {"jasper-jax": float("inf"), "sentence-transformers": float("inf")}
    for _ in range(args.repeats):
        for name, function in (("jasper-jax", ours), ("sentence-transformers", theirs)):
            start = time.perf_counter()
            function()
            best[name] = min(best[name], time.perf_counter() - start)

    machine = platform.processor() or platform.machine()
    print(f"machine: {machine}, {os.cpu_count()} CPUs; torch threads {torch.get_num_threads()}")
    print(
        f"all-MiniLM-L6-v2, {len(texts)} texts, batch {args.batch_size}, max length {args.max_length}, "
        f"best of {args.repeats}"
    )
    print(f"{'':24s}{'seconds':>10s}{'texts/s':>10s}")
    for name, seconds in best.items():
        print(f"{name:24s}{seconds:10.2f}{len(texts) / seconds:10.1f}")
    print(f"speed-up jasper-jax / sentence-transformers: {best['sentence-transformers'] / best['jasper-jax']:.2f}x")
    print(
        f"jasper-jax first run incl. compilation: {ours_first:.2f} s; "
        f"min cosine vs sentence-transformers: {agreement:.6f}"
    )


if __name__ == "__main__":
    main()
