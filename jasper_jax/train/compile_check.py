"""`jasper-jax compile-check --config configs/jasper_paper.py --stage 3 --devices 8`.

Lowers and compiles one stage's train step at full scale from abstract shapes only (no weights are
created, no data is read) on N fake CPU devices with the config's mesh and sharding rules, then prints the
per-device memory of the compiled program (`compiled.memory_analysis()`) and checks it against a budget
(default 80 GB, an H100/A100-80GB). This is how the paper-scale sharding is verified without the hardware.
`--remat all` compiles once per remat policy and ends with a table of peak memory and compile time (the
exit code is 0 when at least one fits). The persistent compilation cache (`compilation_cache_dir`) is on
as in training: a second compile-check of the same step loads it from disk.

`--hosts N` lays the fake devices out as N simulated hosts of contiguous devices, so that `mesh.dcn` (the
across-host part of the mesh axes, `jasper_jax.train.mesh`) applies, and also prints the bytes each step
moves across hosts: the operand bytes, per device, of the compiled program's collectives whose device groups
span more than one host (`across_host_bytes`). It is an estimate from the HLO: each collective counts once,
also inside a loop, and the network's own protocol is not modelled; it compares layouts.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
import time
from collections.abc import Sequence

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
        "--hosts",
        type=int,
        default=0,
        help="simulate this many hosts over the devices (mesh.dcn applies) and print the bytes moved across them",
    )
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


def compile_stage_step(config, stage_number: int, *, batch_size: int = 0, length: int = 0, hosts: int = 0):
    """`(compiled, summary)`: the stage's step compiled for the current devices from abstract shapes.

    `hosts` > 0: the mesh over that many simulated hosts (`make_mesh(..., hosts=)`); the summary then also
    holds `across_host_bytes` (the function of that name, over the compiled HLO)."""
    import jax

    from jasper_jax.train.mesh import make_mesh
    from jasper_jax.train.settings import settings_from_config
    from jasper_jax.train.stage_build import abstract_stage_batch, abstract_stage_model, build_stage_step

    run = settings_from_config(config)
    stage = run.stage(stage_number)
    if batch_size:  # the global batch override (checked against micro_batch_size like the stage's own)
        stage = dataclasses.replace(stage, batch_size=batch_size)
    built = abstract_stage_model(run, stage)
    mesh = make_mesh(run.mesh, hosts=hosts or None)
    step = build_stage_step(run, stage, built, mesh)
    batch = stage.batch_size  # the real rows; the compiled batch is padded to the mesh (`padded_batch_size`)
    length = length or run.data.max_length

    def with_sharding(tree, tree_shardings):
        return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, tree_shardings)

    layout = step.stacking  # the states as the step takes them (stacked layers when scanned)
    args = (
        with_sharding(layout.abstract_state, layout.shardings.state),
        with_sharding(layout.abstract_frozen, layout.shardings.frozen),
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
        "parameter_arrays": len(jax.tree.leaves(layout.abstract_state.params))
        + len(jax.tree.leaves(layout.abstract_frozen)),
        "attention": built.config.attention,
        **{  # a token compressor: the compiled compressed length T of each kind of text
            key.replace("compressed_mask", "compressed_length"): value.shape[-1]
            for key, value in args[3].items()
            if key.endswith("compressed_mask")
        },
        "lower_seconds": lowered_at - started,
        "compile_seconds": finished - lowered_at,
    }
    if hosts:
        summary["hosts"] = hosts
        summary["mesh_dcn"] = run.mesh.get("dcn") or {}
        summary["across_host_bytes"] = across_host_bytes(compiled.as_text(), logical_device_hosts(mesh, hosts))
    return compiled, summary


def logical_device_hosts(mesh, hosts: int) -> list[int]:
    """The simulated host of each logical device id of a program jitted over `mesh` (its devices in flat
    order): host of device i = i // (devices // hosts), i its index in `jax.devices()`."""
    import jax

    devices = jax.devices()
    per_host = len(devices) // hosts
    return [devices.index(device) // per_host for device in mesh.devices.flat]


COLLECTIVE = re.compile(
    r" = (?P<shape>.*?) (?P<op>all-gather|all-reduce|reduce-scatter|all-to-all|collective-permute)(?P<start>-start)?\("
)
MESH_GROUPS = re.compile(
    r"replica_groups=mesh\[([^\]]*)\](?:, device_ids=\(\[([\d,]+)\](?:T\(([\d,]+)\))?\))? \{([^}]*)\}"
)
SHAPE = re.compile(r"(pred|[a-z]+\d+[a-z0-9]*)\[([0-9,]*)\]")
ITEM_BITS = {"pred": 8, "s4": 4, "u4": 4}


def _shape_bytes(dtype: str, dims: str) -> int:
    count = 1
    for dim in filter(None, dims.split(",")):
        count *= int(dim)
    bits = ITEM_BITS.get(dtype) or int(re.search(r"\d+", dtype).group())
    return count * bits // 8


def _iota(dims: str, perm: str | None):
    import numpy as np

    shape = [int(d) for d in dims.split(",")]
    ids = np.arange(int(np.prod(shape))).reshape(shape)
    return ids.transpose([int(p) for p in perm.split(",")]) if perm else ids


def device_groups(line: str) -> list[list[int]] | None:
    """The device groups of one HLO collective: explicit `{{0,1},{2,3}}`, iota `[2,4]<=[8]` /
    `[4,2]<=[2,4]T(1,0)`, mesh `mesh['a'=4,'b'=2], device_ids=([2,4]T(1,0)) {'a'}`, or a permute's
    `source_target_pairs`; `[]` for `{}` (one group of all devices); None when the format is not known."""
    import numpy as np

    pairs = re.search(r"source_target_pairs=\{(\{[\d,{}]*\})\}", line)
    if pairs:
        return [[int(i) for i in pair.split(",")] for pair in re.findall(r"\{([\d,]+)\}", pairs.group(1))]
    explicit = re.search(r"replica_groups=\{((?:\{[\d,]*\},?)*)\}", line)
    if explicit:
        return [[int(i) for i in group.split(",")] for group in re.findall(r"\{([\d,]+)\}", explicit.group(1))]
    iota = re.search(r"replica_groups=\[(\d+),(\d+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?", line)
    if iota:
        return _iota(iota.group(3), iota.group(4)).reshape(int(iota.group(1)), int(iota.group(2))).tolist()
    mesh = MESH_GROUPS.search(line)
    if mesh:
        axes = re.findall(r"'([^']+)'=(\d+)", mesh.group(1))
        grouped = re.findall(r"'([^']+)'", mesh.group(4))
        names = [name for name, _ in axes]
        if ":" in mesh.group(4) or any(name not in names for name in grouped):
            return None  # sub-axes: not modelled
        shape = [int(size) for _, size in axes]
        ids = _iota(mesh.group(2), mesh.group(3)) if mesh.group(2) else np.arange(int(np.prod(shape)))
        ids = ids.reshape(shape)
        inner = [names.index(name) for name in grouped]
        outer = [i for i in range(len(names)) if i not in inner]
        size = int(np.prod([shape[i] for i in inner])) if inner else 1
        return ids.transpose(outer + inner).reshape(-1, size).tolist()
    return None


def across_host_bytes(hlo: str, hosts_of: Sequence[int]) -> dict[str, int]:
    """Per-device operand bytes of the collectives in `hlo` whose device groups span more than one host
    (`hosts_of[i]`: the host of logical device i), in total and per collective kind, with the count of
    collectives whose groups could not be read (`unparsed`, not counted). An estimate from the HLO text."""
    totals: dict[str, int] = {"total": 0, "unparsed": 0}
    for line in hlo.splitlines():
        found = COLLECTIVE.search(line)
        if not found:
            continue
        groups = device_groups(line)
        if groups is None:
            totals["unparsed"] += 1
            continue
        groups = groups or [list(range(len(hosts_of)))]
        if not any(len({hosts_of[i] for i in group}) > 1 for group in groups):
            continue
        shapes = [_shape_bytes(dtype, dims) for dtype, dims in SHAPE.findall(found.group("shape"))]
        op, size = found.group("op"), max(len(group) for group in groups)
        if found.group("start") and op != "all-reduce":  # async: (operand(s), result(s), ...), operands first
            operand = shapes[0] if op == "collective-permute" else sum(shapes[: len(shapes) // 2])
        elif op == "all-gather":
            operand = sum(shapes) // size
        elif op == "reduce-scatter":
            operand = sum(shapes) * size
        else:
            operand = sum(shapes)
        totals[op] = totals.get(op, 0) + operand
        totals["total"] += operand
    return totals


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
    across = summary.get("across_host_bytes")
    for key, value in summary.items():
        if key != "across_host_bytes":
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
    if across is not None:
        print(f"  bytes per step, per device, moved across the {summary['hosts']} simulated hosts (an estimate from")
        print("  the compiled HLO: operands of the collectives whose device groups span hosts, each counted once):")
        for key, value in across.items():
            text = f"{value}" if key == "unparsed" else f"{value:,} B ({value / 2**20:.2f} MiB)"
            print(f"  {key:>30}: {text}", flush=True)
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
        f"compile-check: {args.config} stage {args.stage} on {args.devices} fake {args.platform} devices"
        f"{f' as {args.hosts} simulated hosts' if args.hosts else ''} "
        f"(compilation cache: {folder or 'off'}) ...",
        flush=True,
    )
    policies = _policies(args.remat, args.platform) if args.remat else [None]
    results = []
    for policy in policies:
        if policy is not None:
            config.model.remat = policy
            print(f"compile-check: remat {policy}", flush=True)
        compiled, summary = compile_stage_step(
            config, args.stage, batch_size=args.batch_size, length=args.length, hosts=args.hosts
        )
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
