"""Train-step throughput: jasper-jax's jitted step against a PyTorch reference step, same batch, same CPU.

Both sides: all-MiniLM-L6-v2 (offline kit) -> masked mean pooling -> Linear fc1 (384 -> teacher dim) ->
L2 normalise; loss = 10 cosine + 200 similarity + 20 relative similarity (PAPER.md); AdamW (lr 1e-4, wd
0.01), all parameters trainable, float32. PyTorch: transformers' BertModel, the relative similarity loss
written densely from the formula, the fastest of 1..cpu_count intra-op threads (on a loaded machine one
thread can beat two). The two steps alternate, so that both see the same background load. Reports tokens
(non-padding) per second of each and the ratio.

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


def setup_jax(path: str, batch: dict[str, np.ndarray], teacher_dim: int):
    """A callable running one jitted jasper-jax step (compiled on the first call) and returning the loss."""
    import jax
    from flax import nnx

    from jasper_jax.convert import load_model
    from jasper_jax.losses import ObjectiveConfig
    from jasper_jax.train import optimizer as optimizer_lib
    from jasper_jax.train import sharding as sharding_lib
    from jasper_jax.train import step as step_lib
    from jasper_jax.train.mesh import make_mesh
    from jasper_jax.train.settings import OptimizerSettings

    with nnx.use_eager_sharding(False):
        model, _ = load_model(path, heads={"fc1": teacher_dim}, rngs=nnx.Rngs(0))
    graphdef, trainable, frozen, rest = optimizer_lib.split_model(model, (".*",))
    tx, schedule = optimizer_lib.make_optimizer(OptimizerSettings(warmup_fraction=0.0, clip_norm=0.0), 1e-4, 1000)
    state = step_lib.init_train_state(trainable, tx)
    mesh = make_mesh({"data": 1}, jax.devices()[:1])
    shardings = step_lib.step_shardings(mesh, sharding_lib.rules_from_config(None), state, frozen, rest)
    objective = step_lib.text_objective(ObjectiveConfig())
    step = step_lib.jit_train_step(step_lib.train_step_fn(graphdef, tx, objective, schedule), shardings, mesh)
    state, frozen, rest = (
        step_lib.place(x, s) for x, s in ((state, shardings.state), (frozen, shardings.frozen), (rest, shardings.rest))
    )
    device_batch = step_lib.place(batch, shardings.batch)
    holder = {"state": state}

    def one_step() -> float:
        holder["state"], metrics = step(holder["state"], frozen, rest, device_batch)
        return float(jax.block_until_ready(metrics)["loss"])

    return one_step


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


def setup_torch(path: str, batch: dict[str, np.ndarray], teacher_dim: int):
    """A callable running one PyTorch reference step and returning the loss."""
    import torch
    from transformers import BertModel

    torch.manual_seed(0)
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

    return one_step


def timed(step) -> tuple[float, float]:
    started = time.perf_counter()
    loss = step()
    return time.perf_counter() - started, loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--teacher-dim", type=int, default=1152)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--torch-threads", type=int, default=0, help="0: try 1..cpu_count, keep the fastest")
    args = parser.parse_args()
    import torch

    from jasper_jax.assets import minilm_path

    path = str(minilm_path())
    batch = make_batch(args.batch, args.length, args.teacher_dim, vocab=30522)
    tokens = int(batch["attention_mask"].sum())
    steps = {"jax": setup_jax(path, batch, args.teacher_dim), "torch": setup_torch(path, batch, args.teacher_dim)}
    first = {name: timed(step)[0] for name, step in steps.items()}  # compilation / warm-up
    threads = args.torch_threads
    if threads == 0:  # on a loaded machine one thread can beat two: give the reference its best setting
        probe = {}
        for n in range(1, (os.cpu_count() or 1) + 1):
            torch.set_num_threads(n)
            probe[n] = min(timed(steps["torch"])[0] for _ in range(2))
        threads = min(probe, key=probe.get)
    torch.set_num_threads(threads)
    times: dict[str, list[float]] = {"jax": [], "torch": []}
    losses = {}
    for _ in range(args.steps):  # alternate, so that both see the same background load
        for name, step in steps.items():
            seconds, losses[name] = timed(step)
            times[name].append(seconds)
    print(
        f"batch {args.batch} x length {args.length} ({tokens} real tokens), teacher {args.teacher_dim}, "
        f"median of {args.steps} alternating steps, {os.cpu_count()} CPU cores, torch threads {threads}"
    )
    results = {}
    for name in steps:
        seconds = float(np.median(times[name]))
        results[name] = {
            "step_seconds": seconds,
            "tokens_per_second": tokens / seconds,
            "first_step_seconds": first[name],
            "loss": losses[name],
            "all_seconds": times[name],
        }
        print(
            f"  {name:>5}: {seconds * 1000:8.1f} ms/step  {tokens / seconds:9.0f} tokens/s"
            f"  (first step {first[name]:.1f} s, loss {losses[name]:.3f})"
        )
    ratio = results["jax"]["tokens_per_second"] / results["torch"]["tokens_per_second"]
    print(f"  speed-up jax / torch: {ratio:.2f}x (target >= 1.2x)")
    print(json.dumps({**results, "ratio": ratio, "torch_threads": threads}))


if __name__ == "__main__":
    main()
