"""Logical-axis rules -> partition specs for parameters, optimizer state and batches.

Parameters carry logical axis names as NNX sharding metadata (`vocab`, `embed`, `heads`, `kv_heads`,
`head_dim`, `mlp`, `head_out`, `position`, `token_type`; see docs/INTERFACES.md). The config's rule table
maps each logical name to a mesh axis, a tuple of mesh axes or None. A name the table does not know, a
dimension whose size the mesh axes do not divide, or a mesh axis already used by an earlier dimension of
the same array gives a replicated dimension: the rules can never produce an invalid sharding.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jasper_jax.models.params import path_names
from jasper_jax.train.mesh import BATCH_AXES

# logical name -> mesh axes; the defaults follow maxtext's FSDP + tensor-parallel layout.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("head_out", "tensor"),
    ("position", None),
    ("token_type", None),
)

_METADATA_KEYS = ("out_sharding", "sharding_names", "sharding")


def rules_from_config(rules: Iterable[Sequence[Any]] | None) -> dict[str, tuple[str, ...]]:
    """Normalise a rule table (pairs `(logical, mesh axes)`) to `name -> tuple of mesh axes`."""
    table: dict[str, tuple[str, ...]] = {}
    for name, axes in rules if rules is not None else DEFAULT_RULES:
        if axes is None:
            table[str(name)] = ()
        elif isinstance(axes, str):
            table[str(name)] = (axes,)
        else:
            table[str(name)] = tuple(str(axis) for axis in axes)
    return table


def logical_names(variable: nnx.Variable) -> tuple[str | None, ...] | None:
    """The logical axis names of a variable from its NNX metadata, or None when it has none."""
    metadata = variable.get_metadata()
    for key in _METADATA_KEYS:
        names = metadata.get(key)
        if names is not None and not isinstance(names, (NamedSharding, PartitionSpec)):
            return tuple(names)
        if isinstance(names, PartitionSpec):
            return tuple(names)
    return None


def logical_to_spec(
    names: Sequence[str | None] | None,
    shape: Sequence[int],
    rules: Mapping[str, tuple[str, ...]],
    mesh: Mesh,
) -> PartitionSpec:
    """The partition spec of an array of `shape` whose dimensions have logical `names`."""
    if not names:
        return PartitionSpec()
    used: set[str] = set()
    spec: list[Any] = []
    for name, size in zip(names, shape):
        axes = tuple(axis for axis in rules.get(name, ()) if axis in mesh.shape) if name else ()
        axes = tuple(axis for axis in axes if mesh.shape[axis] > 1)
        shards = int(np.prod([mesh.shape[axis] for axis in axes])) if axes else 1
        if not axes or used.intersection(axes) or size % shards:
            spec.append(None)
            continue
        used.update(axes)
        spec.append(axes[0] if len(axes) == 1 else axes)
    while spec and spec[-1] is None:
        spec.pop()
    return PartitionSpec(*spec)


def _is_variable(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


def state_specs(state: nnx.State, rules: Mapping[str, tuple[str, ...]], mesh: Mesh) -> nnx.State:
    """A State of the same structure whose variables hold PartitionSpecs instead of arrays."""

    def spec(variable: nnx.Variable) -> nnx.Variable:
        return variable.replace(logical_to_spec(logical_names(variable), variable.shape, rules, mesh))

    return jax.tree.map(spec, state, is_leaf=_is_variable)


def state_shardings(state: nnx.State, rules: Mapping[str, tuple[str, ...]], mesh: Mesh) -> nnx.State:
    """Like `state_specs` with `NamedSharding`s: usable as jit in/out shardings and restore targets."""
    specs = state_specs(state, rules, mesh)
    return jax.tree.map(lambda p: NamedSharding(mesh, p), specs, is_leaf=lambda x: isinstance(x, PartitionSpec))


def tree_shardings_like_params(tree: Any, params_specs: nnx.State, mesh: Mesh) -> Any:
    """Shardings for a pytree whose param-shaped leaves mirror `params_specs` (e.g. optimizer state).

    A leaf whose path ends with a parameter's path (Adam's `mu/<param path>`) and whose rank matches
    gets that parameter's spec; everything else (step counts, scalars) is replicated.
    """
    by_path: dict[tuple[Any, ...], PartitionSpec] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(
        params_specs, is_leaf=lambda x: isinstance(x, PartitionSpec)
    )[0]:
        by_path[path_names(path)] = leaf

    def sharding(path: Sequence[Any], leaf: Any) -> NamedSharding:
        names = path_names(path)
        for start in range(len(names)):
            spec = by_path.get(names[start:])
            if spec is not None and len(spec) <= len(getattr(leaf, "shape", ())):
                return NamedSharding(mesh, spec)
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree_util.tree_map_with_path(sharding, tree)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Rows over the batch axes (`data` x `fsdp`), every other dimension replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def activation_sharding(mesh: Mesh, enabled: bool = True) -> NamedSharding | None:
    """The sharding encoder-layer inputs are pinned to (batch axes), or None when disabled."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES)) if enabled else None
