"""Attention implementations side by side: forward + backward of a small BERT layer stack, einsum vs xla.

A random BERT encoder (default: MiniLM-L6's shape, hidden 384, 12 heads of 32, FFN 1536, 6 layers; a
1024-token vocabulary, so that the embedding table's gradient does not dominate) runs the
same batch with each attention implementation (`jasper_jax.models.attention`; the parameters are the
same, only the static implementation name differs): value and gradient, with respect to every parameter,
of a scalar of the masked-mean-pooled output, jitted. Rows are padded to random lengths (half to full L).
For each (B, L): compile time, XLA's temporary-buffer size of the compiled program, the best of `--repeats`
timed runs (the implementations alternate, so that load from other jobs hits both alike), the ratio to
einsum, and the largest difference of the gradients from einsum's.

    .venv/bin/python benchmarks/attention.py                               # einsum vs xla, default shapes
    .venv/bin/python benchmarks/attention.py --shapes 8x128,4x512 --repeats 5 --implementations einsum,xla,auto
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jasper_jax.models import layers
from jasper_jax.models.bert import BertConfig, BertEncoder

DEFAULT_SHAPES = "32x64,16x128,8x256,4x512"


def parse_shapes(text: str) -> list[tuple[int, int]]:
    shapes = []
    for item in text.split(","):
        batch, length = item.lower().split("x")
        shapes.append((int(batch), int(length)))
    return shapes


def set_implementation(model: nnx.Module, implementation: str) -> None:
    for _, module in nnx.iter_graph(model):
        if isinstance(module, layers.Attention):
            module.implementation = implementation


def make_step(graphdef, weights):
    def loss(params, ids, mask):
        hidden = nnx.merge(graphdef, params)(ids, mask)
        pooled = jnp.sum(hidden * mask[:, :, None], axis=1) / jnp.sum(mask, axis=1, keepdims=True)
        return jnp.sum(pooled * weights)

    return jax.jit(jax.value_and_grad(loss))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default=DEFAULT_SHAPES, help="comma-separated BxL")
    parser.add_argument("--implementations", default="einsum,xla")
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--vocab", type=int, default=1024, help="small: the embedding gradient is not what is measured")
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    jax.config.update("jax_default_matmul_precision", "highest")  # as the tests: float32 is float32
    implementations = args.implementations.split(",")
    config = BertConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        intermediate_size=4 * args.hidden,
        max_position_embeddings=max(length for _, length in parse_shapes(args.shapes)),
    )
    with layers.parameter_context():
        model = BertEncoder(config, rngs=nnx.Rngs(0))
    print(
        f"jax {jax.__version__} on {jax.default_backend()} ({jax.devices()[0].device_kind}), BERT hidden "
        f"{config.hidden_size}, {config.num_attention_heads} heads, {config.num_hidden_layers} layers, float32"
    )
    rows = []
    for batch, length in parse_shapes(args.shapes):
        rng = np.random.default_rng(batch * 1000 + length)
        lengths = rng.integers(length // 2, length + 1, size=batch)
        mask = jnp.asarray((np.arange(length)[None] < lengths[:, None]).astype(np.int32))
        ids = jnp.asarray(rng.integers(1, config.vocab_size, size=(batch, length)).astype(np.int32)) * mask
        weights = jnp.asarray(rng.standard_normal((batch, config.hidden_size)).astype(np.float32))
        compiled, results = {}, {}
        for name in implementations:
            set_implementation(model, name)
            graphdef, params = nnx.split(model)
            start = time.perf_counter()
            compiled[name] = make_step(graphdef, weights).lower(params, ids, mask).compile()
            compile_seconds = time.perf_counter() - start
            memory = compiled[name].memory_analysis()
            temp = getattr(memory, "temp_size_in_bytes", None) if memory is not None else None
            results[name] = {
                "compile_s": compile_seconds,
                "temp_mib": None if temp is None else temp / 2**20,
                "times": [],
                "params": params,
            }
            jax.block_until_ready(compiled[name](params, ids, mask))  # warm-up
        for _ in range(args.repeats):
            for name in implementations:
                start = time.perf_counter()
                value, grads = jax.block_until_ready(compiled[name](results[name]["params"], ids, mask))
                results[name]["times"].append(time.perf_counter() - start)
                results[name]["value"], results[name]["grads"] = value, grads
        reference = results[implementations[0]]
        for name in implementations:
            result = results[name]
            gradient_difference = max(
                float(jnp.max(jnp.abs(a - b)))
                for a, b in zip(jax.tree.leaves(result["grads"]), jax.tree.leaves(reference["grads"]))
            )
            best = min(result["times"])
            row = {
                "batch": batch,
                "length": length,
                "implementation": name,
                "best_s": best,
                "ratio_to_" + implementations[0]: best / min(reference["times"]),
                "compile_s": result["compile_s"],
                "temp_mib": result["temp_mib"],
                "max_gradient_difference": gradient_difference,
            }
            rows.append(row)
            temp_text = "n/a" if row["temp_mib"] is None else f"{row['temp_mib']:.1f}"
            print(
                f"B={batch:3d} L={length:4d} {name:7s} best {best * 1000:9.1f} ms  "
                f"x{row['ratio_to_' + implementations[0]]:.2f}  compile {result['compile_s']:.1f} s  "
                f"temp {temp_text} MiB  max |grad diff| {gradient_difference:.2e}",
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
