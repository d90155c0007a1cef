"""The device mesh from the config: axes `data`, `fsdp`, `tensor`, Auto axis types.

`config.mesh` maps each axis name to a size; one size may be -1 and takes whatever devices are left.
Axis types are Auto so the step can be jitted with explicit in/out shardings and XLA inserts the
collectives (Explicit axes would refuse `with_sharding_constraint` and `nnx.Embed`).

Multi-host: `config.mesh.dcn` (same axis names) is the part of each axis that spans hosts or slices, the
slow network (DCN); the plain sizes are then the part inside one host or slice (ICI, NVLink). Axis `a`
has size `mesh[a] * dcn[a]`. With `dcn = {"data": 2}` and `fsdp = -1` on 2 hosts of 4 devices, FSDP's
parameter gathers stay inside a host and only the gradient all-reduce of the data axis crosses hosts.
The device array comes from `jax.experimental.mesh_utils.create_hybrid_device_mesh` (granules: the
devices' slices where they have several, else the processes). A dcn product of 1 (the default) gives
today's single-level mesh over all devices.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")
DCN_KEY = "dcn"


def mesh_shape(sizes: Mapping[str, int], device_count: int, *, where: str = "config.mesh") -> tuple[int, ...]:
    """Resolve the axis sizes (in `MESH_AXES` order) against `device_count`; -1 fills the rest.

    Raises ValueError naming the sizes when they do not multiply to the device count.
    """
    sizes = {axis: size for axis, size in dict(sizes).items() if axis != DCN_KEY}
    unknown = set(sizes) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"{where} has unknown axes {sorted(unknown)}; the axes are {MESH_AXES}")
    shape = [int(sizes.get(axis, 1)) for axis in MESH_AXES]
    fill = [i for i, size in enumerate(shape) if size == -1]
    if len(fill) > 1:
        raise ValueError(f"{where} {sizes}: at most one axis may be -1")
    known = int(np.prod([size for size in shape if size != -1]))
    if any(size == 0 or size < -1 for size in shape) or device_count % known:
        raise ValueError(
            f"{where} {sizes} does not divide the {device_count} devices; "
            "choose sizes whose product divides the device count and set one of them to -1"
        )
    if fill:
        shape[fill[0]] = device_count // known
    if int(np.prod(shape)) != device_count:
        raise ValueError(
            f"{where} {sizes} uses {int(np.prod(shape))} devices but {device_count} are present; "
            "set one axis to -1 to use them all"
        )
    return tuple(shape)


def dcn_sizes(sizes: Mapping[str, Any]) -> dict[str, int]:
    """The `dcn` block of a mesh config as `axis -> size` ({} when absent)."""
    block = sizes.get(DCN_KEY) or {}
    if hasattr(block, "to_dict"):
        block = block.to_dict()
    if not isinstance(block, Mapping):
        raise ValueError(f"config.mesh.dcn={block!r}: expected axis sizes, e.g. {{'data': 2}}")
    return {str(axis): int(size) for axis, size in block.items()}


def granule_attr(devices: Sequence[jax.Device]) -> str:
    """`slice_index` when the devices span several slices (TPU multislice), else `process_index`."""
    slices = {getattr(device, "slice_index", None) for device in devices}
    return "slice_index" if len(slices) > 1 and None not in slices else "process_index"


def granules(devices: Sequence[jax.Device]) -> list[list[jax.Device]]:
    """The devices grouped by slice or process (`granule_attr`), in key order: the units of the dcn axes."""
    attr = granule_attr(devices)
    groups: dict[int, list[jax.Device]] = {}
    for device in devices:
        groups.setdefault(getattr(device, attr), []).append(device)
    return [groups[key] for key in sorted(groups)]


def simulated_granules(devices: Sequence[jax.Device], hosts: int) -> list[list[jax.Device]]:
    """`hosts` contiguous groups of the devices: a layout of `hosts` processes simulated in one (compile-check)."""
    devices = list(devices)
    if hosts < 1 or len(devices) % hosts:
        raise ValueError(f"--hosts {hosts} does not divide the {len(devices)} devices")
    per_host = len(devices) // hosts
    return [devices[i * per_host : (i + 1) * per_host] for i in range(hosts)]


def hybrid_shapes(
    sizes: Mapping[str, Any], granule_count: int, devices_per_granule: int
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """`(ici_shape, dcn_shape)` in `MESH_AXES` order: dcn against the granule count, ici against one granule.

    Raises ValueError naming `config.mesh.dcn` or `config.mesh` when a product does not match."""
    dcn = dcn_sizes(sizes)
    try:
        dcn_shape = mesh_shape(dcn, granule_count, where="config.mesh.dcn")
    except ValueError:
        raise ValueError(
            f"config.mesh.dcn {dcn} needs sizes that multiply to the {granule_count} hosts or slices present "
            f"(processes: {jax.process_count()}); set the dcn sizes to that product (one may be -1), or all "
            "to 1 for a single-level mesh"
        ) from None
    ici_shape = mesh_shape(sizes, devices_per_granule, where=f"config.mesh (inside one of {granule_count} hosts)")
    if dcn_shape[MESH_AXES.index("fsdp")] > 1 and ici_shape[MESH_AXES.index("data")] > 1:
        raise ValueError(
            f"config.mesh.dcn {dcn} with config.mesh.data > 1 would give each host non-contiguous batch rows; "
            "put the across-host part on data (config.mesh.dcn.data) instead"
        )
    return ici_shape, dcn_shape


def make_mesh(
    sizes: Mapping[str, Any],
    devices: Sequence[jax.Device] | None = None,
    *,
    hosts: int | None = None,
) -> Mesh:
    """A mesh with axes `MESH_AXES` from `sizes` (e.g. `{"data": -1, "fsdp": 1, "tensor": 1}`).

    `devices` defaults to all global devices; passing a subset gives a smaller mesh (tests, restores).
    `sizes["dcn"]` (optional): the across-host part of each axis (module docstring). `hosts`: lay the
    devices out as that many simulated hosts of contiguous devices (compile-check on fake devices) instead
    of the real processes or slices.
    """
    devices = list(jax.devices() if devices is None else devices)
    axis_types = (AxisType.Auto,) * len(MESH_AXES)
    dcn = dcn_sizes(sizes)
    if any(size != 1 for size in dcn.values()):
        groups = simulated_granules(devices, hosts) if hosts else granules(devices)
        if len({len(group) for group in groups}) != 1:
            raise ValueError(
                f"config.mesh.dcn {dcn}: the hosts or slices have different device counts "
                f"{[len(group) for group in groups]}"
            )
        ici_shape, dcn_shape = hybrid_shapes(sizes, len(groups), len(groups[0]))
        if hosts:  # what create_hybrid_device_mesh does, with the simulated hosts as granules
            meshes = [mesh_utils.create_device_mesh(ici_shape, group) for group in groups]
            order = np.arange(len(groups)).reshape(dcn_shape)
            array = np.block(np.vectorize(lambda i: meshes[i], otypes=[object])(order).tolist())
        else:
            array = mesh_utils.create_hybrid_device_mesh(
                ici_shape, dcn_shape, devices, process_is_granule=granule_attr(devices) == "process_index"
            )
        return Mesh(array, MESH_AXES, axis_types=axis_types)
    shape = mesh_shape(sizes, len(devices))
    if len(devices) == jax.device_count():
        return jax.make_mesh(shape, MESH_AXES, axis_types=axis_types, devices=devices)
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=axis_types)


def batch_size_divisor(mesh: Mesh) -> int:
    """The number of shards of the batch dimension (the product of the batch axes)."""
    return int(np.prod([mesh.shape[axis] for axis in BATCH_AXES]))
