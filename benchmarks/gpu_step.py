"""Paper-scale student train step on one accelerator: tokens/s and MFU (not run yet: no GPU so far).

The stage-3 step of configs/jasper_paper.py (stella-sized Qwen2, 1.5B parameters, heads fc1 12288 +
fc2/fc3/fc4, bf16 compute, f32 master weights, remat, AdamW, the three losses on the batch) on a single
device with random weights and random tokens (every token real, so tokens = batch x length).

MFU = (6 x parameters x tokens + 12 x layers x batch x length^2 x hidden) / step time / peak FLOP/s,
the second term being bidirectional attention (QK^T and AV, forward + backward); remat's recomputation is
not counted (model FLOPs, not hardware FLOPs). Target on an H100 SXM (989 dense bf16 TFLOP/s): >= 40%.

    python benchmarks/gpu_step.py [--batch 32 --length 512 --steps 10 --peak-tflops 989]
    python benchmarks/gpu_step.py --small          # a 2-layer smoke test that runs anywhere (CPU)

Imports only jax, flax, optax, numpy and jasper_jax.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="device peak bf16 dense TFLOP/s")
    parser.add_argument("--no-remat", action="store_true")
    parser.add_argument("--small", action="store_true", help="2 small layers, batch 4 x 64: a CPU smoke test")
    args = parser.parse_args()

    import jax
    from flax import nnx

    from jasper_jax.losses import ObjectiveConfig
    from jasper_jax.models import JasperStudent, Qwen2Config, StudentConfig
    from jasper_jax.train import optimizer as optimizer_lib
    from jasper_jax.train import sharding as sharding_lib
    from jasper_jax.train import step as step_lib
    from jasper_jax.train.mesh import make_mesh
    from jasper_jax.train.settings import OptimizerSettings

    heads = {"fc1": 12288, "fc2": 1024, "fc3": 512, "fc4": 256}
    encoder = Qwen2Config(vocab_size=151646)
    if args.small:
        encoder = Qwen2Config(
            vocab_size=1000,
            hidden_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=256,
        )
        heads = {"fc1": 256, "fc2": 64}
        args.batch, args.length, args.steps = 4, 64, 3
    config = StudentConfig(
        encoder=encoder, heads=heads, compute_dtype="bfloat16", remat=not args.no_remat, vector_dropout=0.2
    )
    device = jax.devices()[0]
    mesh = make_mesh({"data": 1}, [device])

    def create():
        with nnx.use_eager_sharding(False):
            return JasperStudent(config, rngs=nnx.Rngs(params=0, dropout=1))

    abstract = nnx.eval_shape(create)
    graphdef, trainable, frozen, rest = optimizer_lib.split_model(abstract, (".*",))
    tx, schedule = optimizer_lib.make_optimizer(OptimizerSettings(warmup_fraction=0.05), 7e-5, 2200)
    abstract_state = jax.eval_shape(lambda p: step_lib.init_train_state(p, tx), trainable)
    shardings = step_lib.step_shardings(mesh, sharding_lib.rules_from_config(None), abstract_state, frozen, rest)

    @jax.jit
    def initialise():
        _, params, _, rest_state = nnx.split(create(), nnx.Param, nnx.Param, ...)
        return step_lib.init_train_state(params, tx), rest_state

    state, rest = initialise()
    frozen = jax.tree.map(lambda x: x, frozen)  # empty: everything is trainable in stage 3
    objective = step_lib.text_objective(ObjectiveConfig())
    step = step_lib.jit_train_step(
        step_lib.train_step_fn(graphdef, tx, objective, schedule, deterministic=False), shardings, mesh
    )
    rng = np.random.default_rng(0)
    batch = {
        "input_ids": rng.integers(0, encoder.vocab_size, size=(args.batch, args.length), dtype=np.int32),
        "attention_mask": np.ones((args.batch, args.length), np.int32),
        "teacher": rng.normal(size=(args.batch, heads["fc1"])).astype(np.float32),
        "row_mask": np.ones(args.batch, bool),
    }
    batch = step_lib.place(batch, shardings.batch)
    started = time.perf_counter()
    state, metrics = step(state, frozen, rest, batch)
    jax.block_until_ready(metrics)
    compile_seconds = time.perf_counter() - started
    times = []
    for _ in range(args.steps):
        started = time.perf_counter()
        state, metrics = step(state, frozen, rest, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - started)
    seconds = float(np.median(times))
    parameters = sum(int(x.size) for x in jax.tree.leaves(state.params))
    tokens = args.batch * args.length
    flops = 6 * parameters * tokens + 12 * encoder.num_hidden_layers * args.batch * args.length**2 * encoder.hidden_size
    result = {
        "device": str(device.device_kind),
        "parameters": parameters,
        "batch": args.batch,
        "length": args.length,
        "remat": not args.no_remat,
        "step_seconds": seconds,
        "first_step_seconds": compile_seconds,
        "tokens_per_second": tokens / seconds,
        "model_tflops_per_second": flops / seconds / 1e12,
        "mfu": flops / seconds / (args.peak_tflops * 1e12),
        "loss": float(metrics["loss"]),
        "memory": getattr(device, "memory_stats", lambda: None)()
        and {k: v for k, v in device.memory_stats().items() if k in ("peak_bytes_in_use", "bytes_limit")},
    }
    print(
        f"{result['device']}: {parameters / 1e9:.2f}B params, batch {args.batch} x {args.length}: "
        f"{seconds * 1000:.0f} ms/step, {result['tokens_per_second']:,.0f} tokens/s, "
        f"{result['model_tflops_per_second']:.0f} TFLOP/s, MFU {100 * result['mfu']:.1f}% "
        f"(peak {args.peak_tflops:g} TFLOP/s)"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
