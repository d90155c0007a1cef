"""Encode throughput of a token-compression student at compression ratios 1.0 / 0.5 / 0.33.

    .venv/bin/python benchmarks/token_compression.py [--texts 256] [--batch-size 32] [--repeats 2] \
        [--hidden 384 --layers 6 --heads 6 --kv-heads 2 --head-dim 64]

Model: a random causal Qwen3 student with the released model's compressor (threshold 80, gated MLP over
the token embeddings) and a 2048-d head, at a size this CPU can run (the defaults: MiniLM-like width and
depth); the weights do not change the cost. Texts: deterministic windows of words over the offline
kit's all-MiniLM-L6-v2 README, cut to 256-512 tokens of its tokenizer (the tokenizer only sets lengths).
Every ratio runs `encode_texts` once to compile (reported apart), then `repeats` timed runs alternating
over the ratios; the best run of each is reported, with the speed-up over ratio 1.0.
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

RATIOS = (1.0, 0.5, 0.33)


def make_texts(tokenizer, count: int, seed: int = 0) -> list[str]:
    """`count` texts of 256-512 tokens (prompt-free, special tokens included)."""
    words = (minilm_path() / "README.md").read_text().split()
    words = words * (1 + 1200 // len(words))
    rng = np.random.default_rng(seed)
    texts = []
    while len(texts) < count:
        target = int(rng.integers(256, 513))
        start = int(rng.integers(0, len(words) - 600))
        text = " ".join(words[start : start + target])
        ids = tokenizer.encode([text], "")[0]
        while len(ids) > target:  # trim words until the token count fits
            text = text.rsplit(" ", max(1, (len(ids) - target) // 2))[0]
            ids = tokenizer.encode([text], "")[0]
        if len(ids) >= 256:
            texts.append(text)
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=64)
    args = parser.parse_args()

    import jax
    from flax import nnx

    from jasper_jax.data.tokenization import load_tokenizer
    from jasper_jax.encode import encode_texts
    from jasper_jax.models import JasperStudent, Qwen3Config, StudentConfig
    from jasper_jax.models.token_compression import CompressionConfig

    folder = minilm_path()
    tokenizer = load_tokenizer(folder, 512)
    texts = make_texts(tokenizer, args.texts)
    lengths = [len(row) for row in tokenizer.encode(texts, "")]
    encoder = Qwen3Config(
        vocab_size=tokenizer.tokenizer.get_vocab_size(with_added_tokens=True),
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        head_dim=args.head_dim,
        intermediate_size=3 * args.hidden,
    )
    config = StudentConfig(
        encoder=encoder,
        heads={"linear_1": 2048},
        token_compression=CompressionConfig(intermediate_size=3 * args.hidden),
    )
    with nnx.use_eager_sharding(False):
        student = JasperStudent(config, rngs=nnx.Rngs(0))

    def run(ratio):
        return encode_texts(
            student,
            texts,
            tokenizer=folder,
            max_length=512,
            batch_size=args.batch_size,
            progress=False,
            compression_ratio=ratio,
        )

    first = {}
    for ratio in RATIOS:
        start = time.perf_counter()
        run(ratio)
        first[ratio] = time.perf_counter() - start
    best = {ratio: float("inf") for ratio in RATIOS}
    for _ in range(args.repeats):
        for ratio in RATIOS:
            start = time.perf_counter()
            run(ratio)
            best[ratio] = min(best[ratio], time.perf_counter() - start)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__} {jax.devices()[0].platform}; "
        f"model: Qwen3 hidden {args.hidden}, {args.layers} layers, {args.heads}/{args.kv_heads} heads x "
        f"{args.head_dim}; {len(texts)} texts of {min(lengths)}-{max(lengths)} tokens (mean "
        f"{np.mean(lengths):.0f}), batch {args.batch_size}, best of {args.repeats}"
    )
    print("| ratio | tokens kept (bucket 512) | seconds | texts/s | speed-up vs 1.0 | first run incl. compile (s) |")
    print("|---|---|---|---|---|---|")
    from jasper_jax.models.token_compression import compressed_length

    for ratio in RATIOS:
        print(
            f"| {ratio} | {compressed_length(ratio, 80, 512)} | {best[ratio]:.2f} | {len(texts) / best[ratio]:.1f} | "
            f"{best[1.0] / best[ratio]:.2f}x | {first[ratio]:.1f} |"
        )


if __name__ == "__main__":
    main()
