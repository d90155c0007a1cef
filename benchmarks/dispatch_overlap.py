"""Steps/s of a tiny train step: metrics fetched every step (blocking) vs one step late (the trainer's loop).

Both loops do the host work of the trainer per step: make the next batch (random token ids of a length mix,
numpy, then `device_put` onto the batch sharding) and turn the fetched metrics into a JSON line. Blocking:
dispatch step N, fetch its metrics, then build batch N+1 while the device idles. One step late: dispatch
step N, fetch step N-1's metrics and build batch N+1 while step N runs. Same steps, same metrics.

    python benchmarks/dispatch_overlap.py [--steps 60 --repeats 3 --batch 32 --length 64 --layers 2]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=128)
    args = parser.parse_args()

    import jax
    from flax import nnx

    from jasper_jax.losses import ObjectiveConfig
    from jasper_jax.models import BertConfig, JasperStudent, StudentConfig
    from jasper_jax.train import optimizer as optimizer_lib
    from jasper_jax.train import sharding as sharding_lib
    from jasper_jax.train import step as step_lib
    from jasper_jax.train.mesh import make_mesh
    from jasper_jax.train.settings import OptimizerSettings

    encoder = BertConfig(
        vocab_size=1000,
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=4,
        intermediate_size=4 * args.hidden,
        max_position_embeddings=args.length,
    )
    config = StudentConfig(encoder=encoder, heads={"fc1": 64, "fc2": 16})
    with nnx.use_eager_sharding(False):
        model = JasperStudent(config, rngs=nnx.Rngs(params=0, dropout=1))
    graphdef, trainable, frozen, rest = optimizer_lib.split_model(model, (".*",))
    tx, schedule = optimizer_lib.make_optimizer(OptimizerSettings(), 1e-4, 1000)
    mesh = make_mesh({"data": 1}, jax.devices()[:1])
    state0 = step_lib.init_train_state(trainable, tx)
    shardings = step_lib.step_shardings(mesh, sharding_lib.rules_from_config(None), state0, frozen, rest)
    step = step_lib.jit_train_step(
        step_lib.train_step_fn(graphdef, tx, step_lib.text_objective(ObjectiveConfig()), schedule),
        shardings,
        mesh,
    )
    frozen, rest = step_lib.place(frozen, shardings.frozen), step_lib.place(rest, shardings.rest)
    rng = np.random.default_rng(0)

    def make_batch():
        lengths = rng.integers(4, args.length + 1, size=args.batch)
        mask = (np.arange(args.length)[None, :] < lengths[:, None]).astype(np.int32)
        batch = {
            "input_ids": (rng.integers(1, 1000, size=mask.shape) * mask).astype(np.int32),
            "attention_mask": mask,
            "teacher": rng.normal(size=(args.batch, 64)).astype(np.float32),
            "row_mask": np.ones(args.batch, bool),
        }
        return step_lib.place(batch, shardings.batch)

    def log(metrics):
        return json.dumps({k: float(np.asarray(v)) for k, v in jax.device_get(metrics).items()})

    def blocking(state):
        batch = make_batch()
        for _ in range(args.steps):
            state, metrics = step(state, frozen, rest, batch)
            log(metrics)
            batch = make_batch()
        return state

    def one_step_late(state):
        batch, pending = make_batch(), None
        for _ in range(args.steps):
            state, metrics = step(state, frozen, rest, batch)
            if pending is not None:
                log(pending)
            pending = metrics
            batch = make_batch()
        log(pending)
        return state

    state = step_lib.place(state0, shardings.state)
    state = blocking(state)  # compile + warm up
    results = {"blocking": [], "one_step_late": []}
    for _ in range(args.repeats):
        for name, loop in (("blocking", blocking), ("one_step_late", one_step_late)):
            began = time.perf_counter()
            state = loop(state)
            jax.block_until_ready(state.params)
            results[name].append(args.steps / (time.perf_counter() - began))
    for name, rates in results.items():
        print(f"{name}: steps/s per repeat {', '.join(f'{r:.2f}' for r in rates)}; median {np.median(rates):.2f}")
    ratios = [late / block for late, block in zip(results["one_step_late"], results["blocking"])]
    print(f"one_step_late / blocking per repeat: {', '.join(f'{r:.3f}' for r in ratios)}")
    print(json.dumps({"args": vars(args), "steps_per_second": results, "ratios": ratios}))


if __name__ == "__main__":
    main()
