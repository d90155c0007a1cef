"""Loss microbenchmark: the official RAG-Retrieval objective in PyTorch against ours (jitted JAX).

Both compute the same objective on identical inputs, value and gradient with respect to the student:
10 * cosine + 200 * similarity + 20 * relative similarity, with the official code's prefix Matryoshka
over dims 256, 512, 1024 and the full width (each prefix renormalised; sums divided by the number of dims).

(a) `official_torch_objective` restates the official code's approach: the relative-similarity term builds
    the dense (P x P) matrices of score differences and labels over the P = B(B-1)/2 in-batch pairs.
(b) `jasper_jax.losses.distillation_objective(..., mrl_mode="prefix")`, jitted.

Every (implementation, batch) runs in a fresh subprocess so that its peak memory is its own: peak resident
memory is sampled every 2 ms while it runs, minus the resident memory just before (after the inputs are
loaded and, for JAX, after compilation); for JAX the compiled program's own temporary-buffer size
(XLA memory analysis) is reported too. (a) is skipped where its P x P matrices cannot fit in memory.

    .venv/bin/python benchmarks/losses.py                       # B in 32,128,512,1024,4096
    .venv/bin/python benchmarks/losses.py --batches 32,128 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

DIM = 12288
MRL_DIMS = (256, 512, 1024, DIM)
MARGIN = 0.015
# (a) holds about eight P x P float32 matrices at once (differences, labels, hinge, mask and their grads).
TORCH_MATRICES = 8


def official_torch_objective(student, teacher, dims=MRL_DIMS, margin=MARGIN):
    """The official RAG-Retrieval distillation loss restated in PyTorch (dense pair-of-pair matrices)."""
    import torch
    import torch.nn.functional as F

    teacher = F.normalize(teacher, dim=-1)
    full = F.normalize(student, dim=-1)
    cosine = F.cosine_embedding_loss(full, teacher, torch.ones(len(full)))  # mean of 1 - cos
    teacher_sim = teacher @ teacher.T
    rows, cols = torch.triu_indices(len(full), len(full), offset=1)
    teacher_pairs = teacher_sim[rows, cols]
    teacher_diff = teacher_pairs[None, :] - teacher_pairs[:, None]  # [a, b] = t_b - t_a
    labels = torch.where(teacher_diff < 0, 1.0, -1.0)
    upper = torch.triu(torch.ones_like(teacher_diff, dtype=torch.bool), diagonal=1)
    similarity = relative = 0.0
    for dim in dims:
        prefix = F.normalize(student[:, :dim], dim=-1)
        student_sim = prefix @ prefix.T
        similarity = similarity + F.mse_loss(student_sim, teacher_sim)
        student_pairs = student_sim[rows, cols]
        student_diff = student_pairs[None, :] - student_pairs[:, None]  # [a, b] = s_b - s_a
        hinge = F.relu(labels * student_diff + margin)
        relative = relative + hinge[upper].mean()
    return 10.0 * cosine + 200.0 * similarity / len(dims) + 20.0 * relative / len(dims)


def _resident_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Samples resident memory in a thread; `peak - baseline` is what the measured code added."""

    def __enter__(self):
        self.baseline = self.peak = _resident_bytes()
        self._running = True
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while self._running:
            self.peak = max(self.peak, _resident_bytes())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._running = False
        self._thread.join()
        self.peak = max(self.peak, _resident_bytes())

    @property
    def added(self) -> int:
        return self.peak - self.baseline


def run_torch(student_np, teacher_np, repeats):
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    teacher = torch.from_numpy(teacher_np)
    times, result = [], None
    with PeakMemory() as memory:
        for _ in range(repeats):
            student = torch.from_numpy(student_np).requires_grad_(True)
            start = time.perf_counter()
            loss = official_torch_objective(student, teacher)
            loss.backward()
            times.append(time.perf_counter() - start)
            result = (float(loss.detach()), student.grad.numpy())
    return times, memory.added, None, result


def run_jax(student_np, teacher_np, repeats):
    import jax

    from jasper_jax.losses import ObjectiveConfig, distillation_objective

    config = ObjectiveConfig(mrl_mode="prefix", mrl_dims=MRL_DIMS, margin=MARGIN)
    fn = jax.jit(jax.value_and_grad(lambda s, t: distillation_objective({"fc1": s}, t, config=config)[0]))
    student, teacher = jax.device_put(student_np), jax.device_put(teacher_np)
    compiled = fn.lower(student, teacher).compile()
    temp_bytes = compiled.memory_analysis().temp_size_in_bytes
    jax.block_until_ready(compiled(student, teacher))  # warm-up
    times, result = [], None
    with PeakMemory() as memory:
        for _ in range(repeats):
            start = time.perf_counter()
            value, grad = jax.block_until_ready(compiled(student, teacher))
            times.append(time.perf_counter() - start)
            result = (float(value), np.asarray(grad))
    return times, memory.added, temp_bytes, result


def child(args) -> None:
    """Run one implementation on the stored inputs; write timings and results next to them."""
    folder = Path(args.child_folder)
    student = np.load(folder / "student.npy")
    teacher = np.load(folder / "teacher.npy")
    runner = run_torch if args.child == "torch" else run_jax
    times, added, temp_bytes, (value, grad) = runner(student, teacher, args.repeats)
    np.save(folder / f"{args.child}_grad.npy", grad)
    (folder / f"{args.child}.json").write_text(
        json.dumps({"times": times, "peak_added_bytes": added, "xla_temp_bytes": temp_bytes, "value": value})
    )


def torch_fits(batch: int, limit_bytes: int) -> bool:
    pairs = batch * (batch - 1) // 2
    return TORCH_MATRICES * 4 * pairs * pairs <= limit_bytes


def measure(batch: int, repeats: int, torch_limit: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed + batch)
    student = rng.normal(size=(batch, DIM)).astype(np.float32)
    teacher = rng.normal(size=(batch, DIM)).astype(np.float32)
    row: dict = {"batch": batch, "pairs": batch * (batch - 1) // 2}
    with tempfile.TemporaryDirectory() as folder:
        np.save(Path(folder) / "student.npy", student)
        np.save(Path(folder) / "teacher.npy", teacher)
        for name in ("torch", "jax"):
            if name == "torch" and not torch_fits(batch, torch_limit):
                need = TORCH_MATRICES * 4 * row["pairs"] ** 2
                row["torch"] = {"skipped": f"needs ~{need / 2**30:.0f} GiB for its P x P matrices"}
                continue
            command = [sys.executable, __file__, "--child", name, "--child-folder", folder, "--repeats", str(repeats)]
            subprocess.run(command, check=True)
            stats = json.loads((Path(folder) / f"{name}.json").read_text())
            stats["median_s"] = statistics.median(stats["times"])
            row[name] = stats
        if "value" in row.get("torch", {}):
            torch_grad = np.load(Path(folder) / "torch_grad.npy")
            jax_grad = np.load(Path(folder) / "jax_grad.npy")
            row["max_abs_diff_value"] = abs(row["torch"]["value"] - row["jax"]["value"])
            row["max_abs_diff_grad"] = float(np.max(np.abs(torch_grad - jax_grad)))
            row["max_abs_grad"] = float(np.max(np.abs(torch_grad)))
    return row


def format_table(rows: list[dict]) -> str:
    def mib(value):
        return "-" if value is None else f"{value / 2**20:,.0f}"

    lines = [
        "| B | pairs P | (a) torch median s | (a) peak MiB | (b) ours median s | (b) peak MiB | (b) XLA temp MiB "
        "| speed-up | memory ratio | max abs diff value | max abs diff grad |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        ours, theirs = row["jax"], row.get("torch", {})
        if "median_s" in theirs:
            torch_cells = f"{theirs['median_s']:.3f} | {mib(theirs['peak_added_bytes'])}"
            speedup = f"{theirs['median_s'] / ours['median_s']:.1f}x"
            memory = f"{max(ours['peak_added_bytes'], 1) / max(theirs['peak_added_bytes'], 1):.3f}"
            diffs = (
                f"{row['max_abs_diff_value']:.1e} | {row['max_abs_diff_grad']:.1e} (max |g| {row['max_abs_grad']:.1e})"
            )
        else:
            torch_cells, speedup, memory, diffs = f"skipped: {theirs.get('skipped', '')} | -", "-", "-", "- | -"
        lines.append(
            f"| {row['batch']} | {row['pairs']:,} | {torch_cells} | {ours['median_s']:.3f} | "
            f"{mib(ours['peak_added_bytes'])} | {mib(ours['xla_temp_bytes'])} | {speedup} | {memory} | {diffs} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="32,128,512,1024,4096")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per batch (B >= 1024: at most 2)")
    parser.add_argument("--torch-memory-limit-gib", type=float, default=12.0)
    parser.add_argument("--out", default="benchmarks/out/losses.json")
    parser.add_argument("--child", choices=["torch", "jax"], help=argparse.SUPPRESS)
    parser.add_argument("--child-folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    rows = []
    for batch in (int(b) for b in args.batches.split(",")):
        repeats = min(args.repeats, 2) if batch >= 1024 else args.repeats
        print(f"B={batch} ...", file=sys.stderr, flush=True)
        rows.append(measure(batch, repeats, int(args.torch_memory_limit_gib * 2**30)))
    table = format_table(rows)
    print(table)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"dim": DIM, "mrl_dims": MRL_DIMS, "rows": rows}, indent=1))
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
