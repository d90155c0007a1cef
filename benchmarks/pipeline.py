"""Data-pipeline benchmark: training examples/s the Grain pipeline delivers vs what a training step consumes.

    .venv/bin/python benchmarks/pipeline.py [--rows 20000] [--batch-size 128] [--max-length 512] [--batches 40]
        [--skip-step] [--skip-encode] [--encode-texts 512]

1. Writes a 1152-d float16 store (two fake teachers, 384 + 768 columns, like the default run's MiniLM + MPNet)
   over synthetic texts: 80% passages (lognormal, median ~60 words, at most 400), 20% queries (5-25 words),
   words drawn from the MiniLM vocabulary.
2. Pipeline: `make_train_iterator` with the MiniLM tokenizer, global batches of `--batch-size` as
   jax.Arrays on a one-device mesh, in store order (the official default) and shuffled; examples/s over
   `--batches` batches after 3 warm-up batches, padded length included.
3. Consumption: the MiniLM student (384 hidden, FC1 384->1152) on the first `--step-batch-size` rows of the
   pipeline's own batches (same padded length), jitted with AdamW:
   stage 1 (encoder frozen: forward, and gradients of FC1 only) and stage 3 (gradients of everything),
   each the full objective (cosine + similarity + relative similarity). Examples/s = B / step time.
4. Teacher encoding (MiniLM, batch 64, its max_seq_length 256): sentence-transformers (PyTorch) and, when
   `jasper_jax.encode` exists, the JAX path (`encode_texts`): texts/s of a second pass over `--encode-texts`
   texts (the first pass loads the model and compiles every length bucket).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

import jax  # noqa: E402
import numpy as np  # noqa: E402


def minilm_folder() -> str:
    from jasper_jax.assets import minilm_path

    return str(minilm_path())


def synthetic_texts(rows: int, folder: str, seed: int = 0) -> list[str]:
    import json

    vocabulary = json.loads((Path(folder) / "tokenizer.json").read_text())["model"]["vocab"]
    words = [w for w in vocabulary if w.isalpha() and w.isascii() and len(w) >= 3]
    rng = np.random.default_rng(seed)
    texts = []
    for _ in range(rows):
        if rng.random() < 0.8:
            count = int(min(400, max(8, rng.lognormal(np.log(60), 0.7))))
        else:
            count = int(rng.integers(5, 26))
        texts.append(" ".join(rng.choice(words, size=count)).capitalize() + ".")
    return texts


def build_store(texts: list[str], out: Path) -> Path:
    from jasper_jax.data.teacher_encoding import TeacherSpec, encode_store

    dims = {"minilm": 384, "mpnet": 768}

    def factory(spec):
        rng = np.random.default_rng(dims[spec.name])
        return lambda batch: rng.normal(size=(len(batch), dims[spec.name])).astype(np.float32)

    encode_store(
        texts,
        out,
        [TeacherSpec(name, f"/fake/{name}") for name in dims],
        dtype="float16",
        shard_rows=4096,
        encoder_factory=factory,
        progress=False,
    )
    return out


def time_pipeline(store: Path, folder: str, args, shuffle_seed):
    from jax.sharding import AxisType

    from jasper_jax.data.pipeline import make_train_iterator

    mesh = jax.make_mesh((1, 1), ("data", "fsdp"), axis_types=(AxisType.Auto,) * 2, devices=jax.devices()[:1])
    iterator = make_train_iterator(
        store,
        folder,
        global_batch_size=args.batch_size,
        mesh=mesh,
        max_length=args.max_length,
        shuffle_seed=shuffle_seed,
        worker_threads=args.threads,
        prefetch=args.prefetch,
    )
    batches = [next(iterator) for _ in range(3)]
    start = time.perf_counter()
    lengths = []
    for _ in range(args.batches):
        batch = next(iterator)
        jax.block_until_ready(batch)
        lengths.append(batch["input_ids"].shape[1])
        batches.append(batch)
    seconds = time.perf_counter() - start
    return args.batches * args.batch_size / seconds, lengths, batches


def time_student(batches, args) -> dict[str, float]:
    import optax
    from flax import nnx

    from jasper_jax.convert import load_model
    from jasper_jax.losses import distillation_objective

    model, _ = load_model(minilm_folder(), heads={"fc1": 1152})
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss_fn(trainable, frozen, batch):
        merged = nnx.merge(graphdef, nnx.merge_state(trainable, frozen), rest)
        outputs = merged(batch["input_ids"], batch["attention_mask"], deterministic=True)
        loss, _ = distillation_objective(outputs, batch["teacher"], batch["row_mask"])
        return loss

    head_filter = nnx.PathContains("heads")
    heads = nnx.state(model, nnx.All(nnx.Param, head_filter))
    encoder = nnx.state(model, nnx.All(nnx.Param, nnx.Not(head_filter)))
    tx = optax.adamw(1e-4)
    results = {}
    for stage, (trainable, frozen) in {
        "stage 1 (FC1 only)": (heads, encoder),
        "stage 3 (all parameters)": (params, nnx.State({})),
    }.items():
        opt_state = tx.init(trainable)

        @jax.jit
        def step(trainable, opt_state, frozen, batch):
            loss, grads = jax.value_and_grad(loss_fn)(trainable, frozen, batch)
            updates, opt_state = tx.update(grads, opt_state, trainable)
            return optax.apply_updates(trainable, updates), opt_state, loss

        times = []
        for batch in batches[: args.step_batches + 1]:
            batch = {key: value[: args.step_batch_size] for key, value in batch.items()}
            start = time.perf_counter()
            trainable, opt_state, loss = step(trainable, opt_state, frozen, batch)
            jax.block_until_ready(loss)
            times.append(time.perf_counter() - start)
        per_step = float(np.median(times[1:]))  # the first call compiles
        results[stage] = args.step_batch_size / per_step
    return results


def time_encoding(texts: list[str]) -> dict[str, float]:
    """texts/s of a second pass over `texts` (the first pass warms up: loads, and compiles every bucket)."""
    from sentence_transformers import SentenceTransformer

    folder = minilm_folder()
    results = {}
    model = SentenceTransformer(folder, device="cpu")
    model.encode(texts, batch_size=64)
    start = time.perf_counter()
    model.encode(texts, batch_size=64)
    results["sentence-transformers (PyTorch)"] = len(texts) / (time.perf_counter() - start)
    try:
        from jasper_jax.convert import load_model_folder
        from jasper_jax.encode import encode_texts
    except ImportError:
        results["JAX path: jasper_jax.encode not available"] = float("nan")
        return results
    loaded = load_model_folder(folder)  # loaded and jitted once, as `teachers encode --backend jax` does
    encode_texts(loaded, texts, batch_size=64, max_length=512, progress=False)
    start = time.perf_counter()
    encode_texts(loaded, texts, batch_size=64, max_length=512, progress=False)
    results["JAX path (jasper_jax.encode.encode_texts)"] = len(texts) / (time.perf_counter() - start)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prefetch", type=int, default=4)
    parser.add_argument("--step-batches", type=int, default=3)
    parser.add_argument(
        "--step-batch-size",
        type=int,
        default=32,
        help="rows of each pipeline batch the student step runs on (B=128 at length 512 does not "
        "fit this machine's memory; the encoder's cost per example hardly depends on B)",
    )
    parser.add_argument("--encode-texts", type=int, default=512)
    parser.add_argument("--skip-step", action="store_true")
    parser.add_argument("--skip-encode", action="store_true")
    args = parser.parse_args()

    folder = minilm_folder()
    texts = synthetic_texts(args.rows, folder)
    with tempfile.TemporaryDirectory() as scratch:
        start = time.perf_counter()
        store = build_store(texts, Path(scratch) / "store")
        print(f"store: {args.rows} rows x 1152 float16 written in {time.perf_counter() - start:.1f}s")
        ordered, lengths, batches = time_pipeline(store, folder, args, None)
        shuffled, shuffled_lengths, _ = time_pipeline(store, folder, args, 666)
        print(f"pipeline, store order: {ordered:,.0f} examples/s (padded lengths {sorted(set(lengths))})")
        print(f"pipeline, shuffled:    {shuffled:,.0f} examples/s (padded lengths {sorted(set(shuffled_lengths))})")
        if not args.skip_step:
            for stage, rate in time_student(batches[3:], args).items():
                print(
                    f"MiniLM student {stage}, B={args.step_batch_size}, L={batches[3]['input_ids'].shape[1]}: "
                    f"{rate:,.1f} examples/s consumed; "
                    f"pipeline / consumption = {min(ordered, shuffled) / rate:,.0f}x"
                )
    if not args.skip_encode:
        for path, rate in time_encoding(texts[: args.encode_texts]).items():
            print(f"teacher encoding, MiniLM, {path}: {rate:,.1f} texts/s")
    print(f"jax {jax.__version__}, devices {jax.devices()}, cpu count {os.cpu_count()}")


if __name__ == "__main__":
    main()
