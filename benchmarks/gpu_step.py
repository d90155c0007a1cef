"""Paper stage 3 on one accelerator: tokens/s and MFU per step variant, and the objective alone at B=4096.

One prepared script for a GPU session (budget: under 8 minutes on one H100/H200, variants past the time
budget are reported as skipped). It builds the stage the way `jasper-jax train` does
(`jasper_jax.train.stage_build.build_stage_step` on a RunSettings equal to configs/jasper_paper.py's stage
3: the 1.5B Qwen2 student, heads fc1 12288 + fc2/fc3/fc4, bf16 compute, remat, vector dropout, AdamW, the
three losses), with random weights and SYNTHETIC batches built here (not the Grain pipeline): random token
ids with the paper's length mix (30% chunks of 1-10 sentences of ~25 tokens, 70% documents cut at
max_length), padded to the batch's power-of-two bucket as the pipeline pads, or packed by its packer.

Variants (each a config switch; one that this checkout lacks is reported "skipped: <the config error>"):
- `padded`: today's path, `model.attention=einsum`, padded batches;
- `cudnn`: `model.attention=cudnn` (with `--small` on a CPU: `xla`, said in the table);
- `packing`: `data.packing=true`; `cudnn+packing`: both;
- `gradcache`: `stage.micro_batch_size` (rows per micro-batch) at global batch `--gradcache-batch` 1024;
- `objective`: `distillation_objective` forward+backward w.r.t. the four heads' vectors at B=4096
  (teacher passed as an argument), nothing else.

tokens/s counts real (unpadded) tokens; MFU = model FLOPs (`jasper_jax.train.flops`: real tokens, frozen
parts forward only, remat recomputation not counted) / step time / peak (`--peak-tflops`, 0 = detected
from the device kind; unknown: not reported).

    python benchmarks/gpu_step.py                  # on the GPU: table + $OUT/gpu_step.json (OUT default ./gpu_step_out)
    python benchmarks/gpu_step.py --small          # the same code with a tiny model and batches (CPU, tests)

Imports jax, flax, optax, numpy and jasper_jax's model/step modules only: no grain, no ml_collections.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
import traceback
from pathlib import Path

import numpy as np

TEACHER_DIM = 4096 + 8192
PAPER_HEADS = {"fc1": TEACHER_DIM, "fc2": 1024, "fc3": 512, "fc4": 256}
VARIANT_ORDER = ("padded", "cudnn", "objective", "gradcache", "packing", "cudnn+packing")


# --------------------------------------------------------------------------------------------- settings


def paper_stage3_values(small: bool) -> dict:
    """configs/jasper_paper.py's run settings for stage 3 as plain values (checked by the test)."""
    encoder = {"vocab_size": 151646}
    heads = dict(PAPER_HEADS)
    max_length, batch = 512, 128
    if small:
        encoder = dict(
            vocab_size=512,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=128,
        )
        heads = {"fc1": 48, "fc2": 16, "fc3": 8}
        max_length, batch = 64, 8
    return {
        "seed": 666,
        "model": dict(
            source="random",
            family="qwen2",
            encoder=encoder,
            compute_dtype="bfloat16",
            remat="full",
            scan_layers="true",
            vector_dropout=0.2,
        ),
        "data": dict(max_length=max_length, prompt=""),
        "optimizer": dict(warmup_fraction=0.05, weight_decay=0.01, clip_norm=1.0),
        "stage3": dict(trainable=(".*",), heads=heads, batch_size=batch, lr=7e-5, steps=2200, data_start="continue"),
    }


def run_settings(values: dict, overrides: dict):
    """A RunSettings from `values` with `overrides` ({"model": {...}, "data": {...}, "stage3": {...}}) applied;
    an override naming a field this checkout lacks raises TrainingError (the variant is then skipped)."""
    from jasper_jax.losses import ObjectiveConfig
    from jasper_jax.train import settings
    from jasper_jax.train.sharding import DEFAULT_RULES

    def block(name):
        return {**values[name], **overrides.get(name, {})}

    stage = settings.build(settings.StageSettings, block("stage3"), "stages.stage3", number=3)
    return settings.RunSettings(
        workdir=Path("gpu_step_run"),
        seed=values["seed"],
        mesh={"data": 1},
        sharding_rules=DEFAULT_RULES,
        activation_sharding=True,
        distributed=settings.DistributedSettings(),
        model=settings.build(settings.ModelSettings, block("model"), "config.model"),
        data=settings.build(settings.DataSettings, block("data"), "config.data"),
        optimizer=settings.build(settings.OptimizerSettings, block("optimizer"), "config.optimizer"),
        objective=ObjectiveConfig(),
        checkpoint=settings.CheckpointSettings(),
        log_every=1,
        max_consecutive_nonfinite=10,
        progress=False,
        debug_nonfinite_steps=(),
        stages={3: stage},
    )


# ---------------------------------------------------------------------------------------------- batches


def paper_lengths(rng: np.random.Generator, rows: int, max_length: int, small: bool) -> np.ndarray:
    """Real lengths with the paper's mix: 30% chunks of 1-10 sentences, 70% documents cut at max_length."""
    sentence = 4 if small else 25
    chunks = rng.integers(1, 11, size=rows) * np.maximum(1, rng.normal(sentence, sentence / 3, size=rows))
    documents = rng.lognormal(math.log(max_length * 0.9), 0.6, size=rows)
    lengths = np.where(rng.random(rows) < 0.3, chunks, documents)
    return np.clip(lengths.astype(np.int64), 2, max_length)


def bucket(length: int, max_length: int) -> int:
    """The pipeline's padded length: the smallest power of two >= length (>= 16), capped at max_length."""
    return min(max(16, 1 << max(0, length - 1).bit_length()), max_length)


def synthetic_batch(rng, rows: int, max_length: int, vocab: int, teacher_dim: int, small: bool, packed: bool):
    """`(batch, lengths)`: random token ids with the paper's length mix, padded to the batch's bucket as the
    pipeline pads, or (`packed`) laid into rows of max_length by the pipeline's own packer (`data.packing`)."""
    lengths = paper_lengths(rng, rows, max_length, small)
    vectors = {"teacher": rng.normal(size=(rows, teacher_dim)).astype(np.float32), "row_mask": np.ones(rows, bool)}
    if packed:
        from jasper_jax.data.packing import pack_batch

        ids = [rng.integers(1, vocab, size=int(n)).tolist() for n in lengths]
        return {**pack_batch(ids, max_length, pad_id=0), **vectors}, lengths
    width = bucket(int(lengths.max()), max_length)
    mask = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int32)
    ids = (rng.integers(1, vocab, size=(rows, width)) * mask).astype(np.int32)
    return {"input_ids": ids, "attention_mask": mask, **vectors}, lengths


# ------------------------------------------------------------------------------------------- measuring


def measure_stage(run, steps: int, peak_tflops: float | None, rng, small: bool) -> dict:
    """Build the stage with the library, initialise it on the device, time `steps` steps after the first."""
    import jax
    from flax import nnx

    from jasper_jax.models import JasperStudent
    from jasper_jax.train import flops as flops_lib
    from jasper_jax.train import optimizer as optimizer_lib
    from jasper_jax.train import step as step_lib
    from jasper_jax.train.mesh import make_mesh
    from jasper_jax.train.stage_build import abstract_stage_model, build_stage_step

    stage = run.stages[3]
    mesh = make_mesh(run.mesh, jax.devices()[:1])
    built = abstract_stage_model(run, stage)
    step = build_stage_step(run, stage, built, mesh)
    shardings = step.shardings

    @jax.jit
    def initialise():
        with nnx.use_eager_sharding(False):
            model = JasperStudent(built.config, rngs=nnx.Rngs(params=run.seed, dropout=run.seed + 1))
        _, trainable, frozen, rest = optimizer_lib.split_model(model, step.patterns)
        return step_lib.init_train_state(trainable, step.tx), frozen, rest

    state, frozen, rest = initialise()
    state, frozen, rest = (
        step_lib.place(state, shardings.state),
        step_lib.place(frozen, shardings.frozen),
        step_lib.place(rest, shardings.rest),
    )
    state, frozen = step.stacking.to_step(state, frozen)  # scanned layers: the step takes them stacked
    encoder = built.config.encoder
    teacher_dim = stage.heads[stage.objective.full_head]
    made = [
        synthetic_batch(
            rng, stage.batch_size, run.data.max_length, encoder.vocab_size, teacher_dim, small, run.data.packing
        )
        for _ in range(1 if small else 3)  # --small: one batch shape, one compile per variant (the suite's time)
    ]
    batches, text_lengths = [batch for batch, _ in made], [lengths.astype(np.float64) for _, lengths in made]
    flop_model = flops_lib.step_flop_model(built.config, flops_lib.trainable_paths(step.trainable))

    def step_flops(lengths):  # per text: a packed row's attention stays inside each of its texts
        return flop_model.total(lengths.sum(), np.square(lengths).sum(), len(lengths))

    placed = [step_lib.place(b, shardings.batch) for b in batches]
    began = time.perf_counter()
    state, metrics = step.step_fn(state, frozen, rest, placed[0])
    jax.block_until_ready(metrics)
    first = time.perf_counter() - began
    for batch in placed[1:]:  # the other batches' shapes compile before the clock starts (not timed)
        state, metrics = step.step_fn(state, frozen, rest, batch)
    jax.block_until_ready(metrics)
    tokens = flops = 0.0
    began = time.perf_counter()
    for i in range(steps):  # dispatched back to back, as the trainer does
        which = (i + 1) % len(batches)
        state, metrics = step.step_fn(state, frozen, rest, placed[which])
        tokens += float(text_lengths[which].sum())
        flops += step_flops(text_lengths[which])
    metrics = jax.device_get(metrics)
    seconds = (time.perf_counter() - began) / steps
    device = jax.devices()[0]
    stats = getattr(device, "memory_stats", lambda: None)() or {}
    padded = sum(b["attention_mask"].size for b in batches) / len(batches)
    real = sum(float(b["attention_mask"].sum()) for b in batches) / len(batches)
    return {
        "batch": stage.batch_size,
        "length": int(batches[0]["attention_mask"].shape[1]),
        "pad_fraction": 1.0 - real / padded,
        "first_step_seconds": first,
        "step_seconds": seconds,
        "tokens_per_second": tokens / steps / seconds,
        "model_tflops_per_second": flops / steps / seconds / 1e12,
        "mfu": None if not peak_tflops else flops / steps / seconds / (peak_tflops * 1e12),
        "loss": float(metrics["loss"]),
        "peak_memory_gib": stats.get("peak_bytes_in_use", 0) / 2**30 or None,
    }


def measure_objective(batch: int, heads: dict[str, int], repeats: int, rng) -> dict:
    """`distillation_objective` value and gradient w.r.t. the heads' vectors (teacher as an argument)."""
    import jax

    from jasper_jax.losses import ObjectiveConfig, distillation_objective

    full = max(heads, key=heads.get)
    config = ObjectiveConfig(full_head=full)
    student = {name: jax.device_put(rng.normal(size=(batch, dim)).astype(np.float32)) for name, dim in heads.items()}
    teacher = jax.device_put(rng.normal(size=(batch, heads[full])).astype(np.float32))
    fn = jax.jit(jax.value_and_grad(lambda s, t: distillation_objective(s, t, config=config)[0]))
    began = time.perf_counter()
    jax.block_until_ready(fn(student, teacher))
    first = time.perf_counter() - began
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        jax.block_until_ready(fn(student, teacher))
        times.append(time.perf_counter() - began)
    return {"batch": batch, "first_step_seconds": first, "step_seconds": float(np.median(times))}


# ---------------------------------------------------------------------------------------------- variants


def variant_overrides(name: str, platform: str, micro_batch: int, gradcache_batch: int) -> tuple[dict, str]:
    """`(overrides, note)` of a step variant; cuDNN is replaced by xla off GPUs (noted)."""
    flash, note = ("cudnn", "") if platform == "gpu" else ("xla", f"cudnn -> xla on {platform}")
    return {
        "padded": ({"model": {"attention": "einsum"}}, ""),
        "cudnn": ({"model": {"attention": flash}}, note),
        "packing": ({"model": {"attention": "einsum"}, "data": {"packing": True}}, ""),
        "cudnn+packing": ({"model": {"attention": flash}, "data": {"packing": True}}, note),
        "gradcache": (
            {"model": {"attention": flash}, "stage3": {"batch_size": gradcache_batch, "micro_batch_size": micro_batch}},
            note,
        ),
    }[name]


def run_variants(args) -> dict:
    import jax

    from jasper_jax.train import flops as flops_lib
    from jasper_jax.train.settings import TrainingError

    platform = jax.default_backend()
    device_kind = jax.devices()[0].device_kind
    peak, peak_source = flops_lib.resolve_peak_tflops(args.peak_tflops, device_kind)
    values = paper_stage3_values(args.small)
    results: dict[str, dict] = {}
    started = time.perf_counter()
    slowest = 0.0
    for name in args.variants:
        elapsed = time.perf_counter() - started
        if elapsed + slowest > args.budget_seconds:
            results[name] = {"skipped": f"time budget: {elapsed:.0f} s used of {args.budget_seconds:.0f} s"}
            continue
        began = time.perf_counter()
        rng = np.random.default_rng(0)
        try:
            if name == "objective":
                heads = values["stage3"]["heads"]
                results[name] = measure_objective(args.objective_batch, heads, args.repeats, rng)
            else:
                overrides, note = variant_overrides(name, platform, args.micro_batch, args.gradcache_batch)
                run = run_settings(values, overrides)
                steps = max(1, args.steps // 4) if name == "gradcache" else args.steps
                results[name] = {**measure_stage(run, steps, peak, rng, args.small), **({"note": note} if note else {})}
        except TrainingError as error:
            results[name] = {"skipped": str(error)}
        except Exception as error:  # a variant that fails on this device must not lose the others
            results[name] = {
                "failed": f"{type(error).__name__}: {error}"[:500],
                "trace": traceback.format_exc()[-2000:],
            }
        slowest = max(slowest, time.perf_counter() - began)
    return {
        "device": device_kind,
        "platform": platform,
        "small": args.small,
        "peak_tflops": peak,
        "peak_source": peak_source,
        "seconds": time.perf_counter() - started,
        "variants": results,
    }


def table(report: dict) -> str:
    lines = [
        f"device: {report['device']} ({report['platform']}); peak {report['peak_tflops']} TFLOP/s "
        f"({report['peak_source']}); total {report['seconds']:.0f} s",
        "",
        "| variant | batch x length | pad | first step s | step s | real tokens/s | model TFLOP/s | MFU "
        "| peak GiB | note |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in report["variants"].items():
        if "skipped" in r or "failed" in r:
            lines.append(
                f"| {name} | | | | | | | | | "
                + (f"skipped: {r['skipped']}" if "skipped" in r else f"failed: {r['failed']}")
                + " |"
            )
            continue

        def fmt(key, spec, r=r):
            return format(r[key], spec) if r.get(key) is not None else "-"

        shape = f"{r['batch']} x {r['length']}" if "length" in r else str(r["batch"])
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "not reported"
        if name == "objective":
            mfu, note = "-", "forward+backward of the objective alone"
        else:
            note = r.get("note", "")
        lines.append(
            f"| {name} | {shape} | {fmt('pad_fraction', '.0%')} | {fmt('first_step_seconds', '.1f')} | "
            f"{fmt('step_seconds', '.3f')} | {fmt('tokens_per_second', ',.0f')} | "
            f"{fmt('model_tflops_per_second', '.3g')} | {mfu} | {fmt('peak_memory_gib', '.1f')} | {note} |"
        )
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a tiny Qwen2 and tiny batches (CPU, the tests)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant (after the first)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of the objective")
    parser.add_argument("--peak-tflops", type=float, default=0.0, help="per device; 0 = from the device kind")
    parser.add_argument("--micro-batch", type=int, default=128, help="GradCache rows per micro-batch")
    parser.add_argument("--gradcache-batch", type=int, default=1024)
    parser.add_argument("--objective-batch", type=int, default=4096)
    parser.add_argument("--budget-seconds", type=float, default=420.0, help="start no variant past this")
    parser.add_argument("--variants", default=",".join(VARIANT_ORDER))
    args = parser.parse_args(argv)
    args.variants = [v for v in args.variants.split(",") if v]
    if args.small:
        args.steps, args.repeats = min(args.steps, 2), min(args.repeats, 2)
        args.micro_batch, args.gradcache_batch, args.objective_batch = 8, 32, 256
    report = run_variants(args)
    out = Path(os.environ.get("OUT", "gpu_step_out"))
    out.mkdir(parents=True, exist_ok=True)
    text = table(report)
    (out / "gpu_step.json").write_text(json.dumps(report, indent=1))
    (out / "gpu_step.md").write_text(text + "\n")
    print(text, flush=True)
    return report


if __name__ == "__main__":
    main()
