"""`jasper-jax compile-check --config configs/jasper_paper.py --stage 3 --devices 8`.

Lowers and compiles one stage's train step at full scale from abstract shapes only (no weights are
created, no data is read) on N fake CPU devices with the config's mesh and sharding rules, then prints the
per-device memory of the compiled program (`compiled.memory_analysis()`) and checks it against a budget
(default 80 GB, an H100/A100-80GB). This is how the paper-scale sharding is verified without the hardware.
`--remat all` compiles once per remat policy and ends with a table of peak memory and compile time (the
exit code is 0 when at least one fits). The persistent compilation cache (`compilation_cache_dir`) is on
as in training: a second compile-check of the same step loads it from disk.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

from jasper_jax.errors import UserError

GIB = 1024**3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="config file (e.g. configs/jasper_paper.py)")
    parser.add_argument("--stage", type=int, default=3, help="stage number (default 3)")
    parser.add_argument("--devices", type=int, default=8, help="number of fake CPU devices (default 8)")
    parser.add_argument("--batch-size", type=int, default=0, help="global batch (default: the stage's)")
    parser.add_argument("--length", type=int, default=0, help="sequence length (default: data.max_length)")
    parser.add_argument("--budget-gb", type=float, default=80.0, help="per-device memory budget in GB (default 80)")
    parser.add_argument("--platform", default="cpu", help="compile for this platform (default cpu: fake devices)")
    parser.add_argument(
        "--remat",
        default="",
        help="remat policy to compile with (default: the config's), or 'all': one compile per policy, "
        "then a table of memory and compile time",
    )
    from jasper_jax.train.cli import _accept_config_overrides

    _accept_config_overrides(parser)


def _prepare_devices(count: int, platform: str) -> None:
    if platform == "cpu":
        os.environ["JAX_PLATFORMS"] = "cpu"
        flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "host_platform_device_count" not in f]
        os.environ["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={count}"])
    import jax

    if platform == "cpu":
        try:
            jax.config.update("jax_num_cpu_devices", count)
        except RuntimeError:  # JAX already started in this process (e.g. called from Python, not the command)
            if jax.device_count() != count:
                raise UserError(
                    f"--devices {count}: JAX already runs with {jax.device_count()} devices in this "
                    "process; run compile-check as its own command"
                ) from None


def compile_stage_step(config, stage_number: int, *, batch_size: int = 0, length: int = 0):
    """`(compiled, summary)`: the stage's step compiled for the current devices from abstract shapes."""
    import jax

    from jasper_jax.train.mesh import make_mesh
    from jasper_jax.train.settings import settings_from_config
    from jasper_jax.train.stage_build import abstract_stage_batch, abstract_stage_model, build_stage_step

    run = settings_from_config(config)
    stage = run.stage(stage_number)
    if batch_size:  # the global batch override (checked against micro_batch_size like the stage's own)
        stage = dataclasses.replace(stage, batch_size=batch_size)
    built = abstract_stage_model(run, stage)
    mesh = make_mesh(run.mesh)
    step = build_stage_step(run, stage, built, mesh)
    batch = stage.batch_size  # the real rows; the compiled batch is padded to the mesh (`padded_batch_size`)
    length = length or run.data.max_length

    def with_sharding(tree, tree_shardings):
        return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, tree_shardings)

    args = (
        with_sharding(step.abstract_state, step.shardings.state),
        with_sharding(step.frozen, step.shardings.frozen),
        with_sharding(step.rest, step.shardings.rest),
        abstract_stage_batch(run, stage, built, step, batch, length),
    )
    started = time.perf_counter()
    lowered = step.step_fn.lower(*args)
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    finished = time.perf_counter()
    count = lambda tree: sum(int(x.size) for x in jax.tree.leaves(tree))  # noqa: E731
    summary = {
        "stage": stage_number,
        "devices": jax.device_count(),
        "mesh": dict(mesh.shape),
        "batch": batch,
        "length": length,
        "micro_batch_size": stage.micro_batch_size or 0,
        "parameters": count(step.trainable) + count(step.frozen),
        "trainable_parameters": count(step.trainable),
        "compute_dtype": built.config.compute_dtype,
        "remat": built.config.remat,
        "scan_layers": built.config.scan_layers,
        "attention": built.config.attention,
        **{  # a token compressor: the compiled compressed length T of each kind of text
            key.replace("compressed_mask", "compressed_length"): value.shape[-1]
            for key, value in args[3].items()
            if key.endswith("compressed_mask")
        },
        "lower_seconds": lowered_at - started,
        "compile_seconds": finished - lowered_at,
    }
    return compiled, summary


def memory_report(compiled) -> dict[str, int]:
    """Per-device bytes of the compiled program (arguments, outputs, temporaries, aliased, generated code)."""
    analysis = compiled.memory_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0]
    fields = (
        "argument_size_in_bytes",
        "output_size_in_bytes",
        "temp_size_in_bytes",
        "alias_size_in_bytes",
        "generated_code_size_in_bytes",
    )
    report = {field: int(getattr(analysis, field, 0) or 0) for field in fields}
    # donated state is aliased: its outputs reuse the argument buffers
    report["peak_estimate_bytes"] = (
        report["argument_size_in_bytes"]
        + report["output_size_in_bytes"]
        - report["alias_size_in_bytes"]
        + report["temp_size_in_bytes"]
        + report["generated_code_size_in_bytes"]
    )
    return report


def _print_compiled(summary: dict, report: dict[str, int], budget_gb: float) -> bool:
    """Print one compile's summary and memory; whether its peak fits the budget."""
    for key, value in summary.items():
        print(f"  {key:>22}: {value:.1f}" if isinstance(value, float) else f"  {key:>22}: {value}")
    print("  per-device memory of the compiled step:")
    for key, value in report.items():
        print(f"  {key:>30}: {value / GIB:8.2f} GiB")
    peak_gb = report["peak_estimate_bytes"] / 1e9
    fits = peak_gb <= budget_gb
    print(
        f"  {'peak estimate':>30}: {peak_gb:.2f} GB {'<=' if fits else '>'} budget {budget_gb:g} GB: "
        f"{'fits' if fits else 'DOES NOT FIT'}",
        flush=True,
    )
    return fits


def _policies(choice: str, platform: str) -> list[str]:
    from jasper_jax.models import remat as remat_lib

    if choice != "all":
        return [remat_lib.normalize(choice)]
    policies = []
    for policy in remat_lib.POLICIES:
        try:
            remat_lib.check_platform(policy, platform)
        except ValueError as error:
            print(f"  remat {policy}: skipped ({error})", flush=True)
            continue
        policies.append(policy)
    return policies


def run(args: argparse.Namespace) -> int:
    from jasper_jax.train import compile_cache
    from jasper_jax.train.config_base import load_config

    config = load_config(args.config, getattr(args, "config_overrides", []))
    _prepare_devices(args.devices, args.platform)
    folder = compile_cache.enable(config.get("compilation_cache_dir", compile_cache.AUTO))
    config.model.source = "random"  # shapes only: nothing is loaded
    print(
        f"compile-check: {args.config} stage {args.stage} on {args.devices} fake {args.platform} devices "
        f"(compilation cache: {folder or 'off'}) ...",
        flush=True,
    )
    policies = _policies(args.remat, args.platform) if args.remat else [None]
    results = []
    for policy in policies:
        if policy is not None:
            config.model.remat = policy
            print(f"compile-check: remat {policy}", flush=True)
        compiled, summary = compile_stage_step(config, args.stage, batch_size=args.batch_size, length=args.length)
        report = memory_report(compiled)
        del compiled
        results.append((summary, report, _print_compiled(summary, report, args.budget_gb)))
    if len(results) > 1:
        print("  remat policy                     peak GB  compile s  fits", flush=True)
        for summary, report, fits in results:
            print(
                f"  {summary['remat']:<32} {report['peak_estimate_bytes'] / 1e9:7.2f}  "
                f"{summary['compile_seconds']:9.1f}  {'yes' if fits else 'NO'}",
                flush=True,
            )
    return 0 if any(fits for _, _, fits in results) else 1


if __name__ == "__main__":  # pragma: no cover
    from jasper_jax.cli import main

    sys.exit(main(["compile-check", *sys.argv[1:]]))
