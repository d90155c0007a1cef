"""The device mesh from the config: axes `data`, `fsdp`, `tensor`, Auto axis types.

`config.mesh` maps each axis name to a size; one size may be -1 and takes whatever devices are left.
Axis types are Auto so the step can be jitted with explicit in/out shardings and XLA inserts the
collectives (Explicit axes would refuse `with_sharding_constraint` and `nnx.Embed`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")


def mesh_shape(sizes: Mapping[str, int], device_count: int) -> tuple[int, ...]:
    """Resolve the axis sizes (in `MESH_AXES` order) against `device_count`; -1 fills the rest.

    Raises ValueError naming the sizes when they do not multiply to the device count.
    """
    unknown = set(sizes) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"config.mesh has unknown axes {sorted(unknown)}; the axes are {MESH_AXES}")
    shape = [int(sizes.get(axis, 1)) for axis in MESH_AXES]
    fill = [i for i, size in enumerate(shape) if size == -1]
    if len(fill) > 1:
        raise ValueError(f"config.mesh {dict(sizes)}: at most one axis may be -1")
    known = int(np.prod([size for size in shape if size != -1]))
    if any(size == 0 or size < -1 for size in shape) or device_count % known:
        raise ValueError(
            f"config.mesh {dict(sizes)} does not divide the {device_count} devices; "
            "choose sizes whose product divides the device count and set one of them to -1"
        )
    if fill:
        shape[fill[0]] = device_count // known
    if int(np.prod(shape)) != device_count:
        raise ValueError(
            f"config.mesh {dict(sizes)} uses {int(np.prod(shape))} devices but {device_count} are present; "
            "set one axis to -1 to use them all"
        )
    return tuple(shape)


def make_mesh(sizes: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh with axes `MESH_AXES` from `sizes` (e.g. `{"data": -1, "fsdp": 1, "tensor": 1}`).

    `devices` defaults to all global devices; passing a subset gives a smaller mesh (tests, restores).
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(sizes, len(devices))
    axis_types = (AxisType.Auto,) * len(MESH_AXES)
    if len(devices) == jax.device_count():
        return jax.make_mesh(shape, MESH_AXES, axis_types=axis_types, devices=devices)
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=axis_types)


def batch_size_divisor(mesh: Mesh) -> int:
    """The number of shards of the batch dimension (the product of the batch axes)."""
    return int(np.prod([mesh.shape[axis] for axis in BATCH_AXES]))
