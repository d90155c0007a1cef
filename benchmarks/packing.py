"""Sequence packing vs padding (`data.packing`): pad fraction and real tokens/s of a MiniLM forward+backward.

The texts are the paper's length mix built by the corpus builder (`jasper_jax.data.corpus.build_corpus`,
its defaults: 30% of the documents cut into chunks of 1-10 sentences, the rest whole) from the kit's news
articles (~/.cache/jasper_jax/news/NewsArticles.csv), tokenized by all-MiniLM-L6-v2's tokenizer and cut at
`--max-length` (512) as training does. `--batches` batches of `--batch` texts are taken evenly spread over
the corpus in its order (the official default: neighbouring chunks of a document share a batch), or after
a seeded shuffle (`--shuffle-seed`).

Each batch runs two ways through the kit's all-MiniLM-L6-v2 student (its weights, mean pooling): padded
to the power-of-two bucket of its longest text (today's pipeline), and packed first-fit decreasing into
rows of max_length (`jasper_jax.data.packing`); the work timed is value and gradient, with respect to every
parameter, of a fixed linear function of the B pooled vectors, jitted (compile excluded: each shape is run
once first). The two alternate per batch, best of `--repeats`. Reported per batch and in total: pad
fraction (padding slots / all slots), seconds, real (non-padding) tokens/s, the packed/padded ratio, and
the largest difference between the two sides' gradients (they compute the same thing).

    .venv/bin/python benchmarks/packing.py                         # 6 batches of 16 texts, store order
    .venv/bin/python benchmarks/packing.py --batch 32 --batches 4 --shuffle-seed 666 --json /tmp/packing.json
"""

from __future__ import annotations

import argparse
import json
import random
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jasper_jax.assets import fetch_news, minilm_path
from jasper_jax.data.corpus import CorpusConfig, SourceSpec, build_corpus
from jasper_jax.data.packing import pack_batch, pad_fraction
from jasper_jax.data.tokenization import bucket_length, load_tokenizer, pad_batch
from jasper_jax.models.packed import FIELDS, PackedLayout


def corpus_token_ids(max_length: int, limit: int, shuffle_seed: int | None) -> list[list[int]]:
    rows, _ = build_corpus([SourceSpec(path=str(fetch_news()), field="text", name="news")], CorpusConfig())
    texts = [text for text, _ in rows]
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(texts)
    tokenizer = load_tokenizer(minilm_path(), max_length)
    return tokenizer.encode(texts[:limit]), tokenizer.pad_id


def make_step(graphdef, weights):
    def loss(params, rest, ids, mask, packed):
        vectors = nnx.merge(graphdef, params, rest).pooled(ids, mask, packed=packed)
        return jnp.sum(vectors * weights)

    return jax.jit(jax.value_and_grad(loss))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16, help="texts per batch")
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--shuffle-seed", type=int, default=None, help="default: the corpus order")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--stats-only", action="store_true", help="pad fractions only, no timing")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    from jasper_jax.convert import load_model

    all_ids, pad_id = corpus_token_ids(args.max_length, 10**9, args.shuffle_seed)
    lengths = np.array([len(ids) for ids in all_ids])
    print(
        f"corpus: {len(all_ids)} texts, tokens per text median {np.median(lengths):.0f}, mean {lengths.mean():.0f}, "
        f"{np.mean(lengths >= args.max_length):.0%} at max_length {args.max_length}",
        flush=True,
    )
    starts = np.linspace(0, len(all_ids) - args.batch, args.batches).astype(int)
    batches = [all_ids[s : s + args.batch] for s in starts]
    model, config = load_model(str(minilm_path()), heads={})
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    weights = jnp.asarray(np.random.default_rng(0).standard_normal((args.batch, config.encoder.hidden_size)))
    step = make_step(graphdef, weights.astype(jnp.float32))
    print(
        f"jax {jax.__version__} on {jax.default_backend()} ({jax.devices()[0].device_kind}); all-MiniLM-L6-v2, "
        f"float32, {args.batches} batches of {args.batch} texts, "
        f"{'store order' if args.shuffle_seed is None else f'shuffled (seed {args.shuffle_seed})'}",
        flush=True,
    )
    rows, totals = [], {"padded": [0, 0.0, 0], "packed": [0, 0.0, 0]}  # real tokens, seconds, slots
    for number, ids in enumerate(batches):
        cut = [tokens[: args.max_length] for tokens in ids]
        padded = pad_batch(cut, bucket_length(max(map(len, cut)), args.max_length), pad_id)
        packed = pack_batch(cut, args.max_length, pad_id)
        real = int(padded["attention_mask"].sum())
        inputs = {
            "padded": (jnp.asarray(padded["input_ids"]), jnp.asarray(padded["attention_mask"]), None),
            "packed": (
                jnp.asarray(packed["input_ids"]),
                jnp.asarray(packed["attention_mask"]),
                PackedLayout(**{key: jnp.asarray(packed[key]) for key in FIELDS}),
            ),
        }
        row = {
            "batch": number,
            "texts": len(cut),
            "real_tokens": real,
            "padded_shape": list(padded["input_ids"].shape),
            "packed_shape": list(packed["input_ids"].shape),
            "padded_pad_fraction": pad_fraction(padded["attention_mask"]),
            "packed_pad_fraction": pad_fraction(packed["attention_mask"]),
        }
        if not args.stats_only:
            times, grads = {"padded": [], "packed": []}, {}
            for value in inputs.values():
                jax.block_until_ready(step(params, rest, *value))  # compile / warm-up
            for _ in range(args.repeats):
                for name, value in inputs.items():
                    start = time.perf_counter()
                    _, grads[name] = jax.block_until_ready(step(params, rest, *value))
                    times[name].append(time.perf_counter() - start)
            for name in times:
                row[f"{name}_s"] = min(times[name])
                row[f"{name}_tokens_per_s"] = real / row[f"{name}_s"]
                totals[name][1] += row[f"{name}_s"]
            row["speedup"] = row["padded_s"] / row["packed_s"]
            pairs = list(zip(jax.tree.leaves(grads["padded"]), jax.tree.leaves(grads["packed"])))
            row["max_gradient_difference"] = max(float(jnp.max(jnp.abs(a - b))) for a, b in pairs)
            row["max_gradient"] = max(float(jnp.max(jnp.abs(a))) for a, _ in pairs)
        for name in totals:
            totals[name][0] += real
            totals[name][2] += int(np.prod(row[f"{name}_shape"]))
        rows.append(row)
        timing = (
            ""
            if args.stats_only
            else f"  padded {row['padded_s']:6.2f} s {row['padded_tokens_per_s']:7.0f} tok/s  packed "
            f"{row['packed_s']:6.2f} s {row['packed_tokens_per_s']:7.0f} tok/s  x{row['speedup']:.2f}  "
            f"max |grad diff| {row['max_gradient_difference']:.1e} (max |grad| {row['max_gradient']:.1e})"
        )
        print(
            f"batch {number}: {real:5d} real tokens; padded {tuple(row['padded_shape'])} pad "
            f"{row['padded_pad_fraction']:.0%}, packed {tuple(row['packed_shape'])} pad "
            f"{row['packed_pad_fraction']:.0%}" + timing,
            flush=True,
        )
    summary = {name: {"pad_fraction": 1 - real / slots} for name, (real, _, slots) in totals.items()}
    if not args.stats_only:
        for name, (real, seconds, _) in totals.items():
            summary[name].update(seconds=seconds, tokens_per_s=real / seconds)
        summary["speedup"] = totals["padded"][1] / totals["packed"][1]
    print("total: " + json.dumps(summary), flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"args": vars(args), "rows": rows, "summary": summary}, handle, indent=2)


if __name__ == "__main__":
    main()
