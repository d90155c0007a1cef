"""Pieces shared by the plain train step (`jasper_jax.train.step`) and GradCache's
(`jasper_jax.train.grad_cache`): the objective's type, the per-step RNG reseeding, the encoder-layer
batch-sharding constraint and the merge with the parameters cast to the compute dtype. Their own module so
that the two steps import them without importing each other.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding

from jasper_jax.models.layers import compute_dtype_casts
from jasper_jax.models.params import path_string
from jasper_jax.train.layer_stacking import per_layer_name, unstack_state

# `objective(head_outputs, teacher, row_mask) -> (loss, metrics)`
Objective = Callable[[Mapping[str, jax.Array], jax.Array, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]


def reseed(rest: nnx.State, step: jax.Array) -> nnx.State:
    """Every RNG key in `rest` folded with the step number; counts reset (dropout reproducible per step)."""

    def fold(variable: Any) -> Any:
        if isinstance(variable, nnx.RngKey):
            return variable.replace(jax.random.fold_in(variable[...], step))
        if isinstance(variable, nnx.RngCount):
            return variable.replace(jnp.zeros_like(variable[...]))
        return variable

    return jax.tree.map(fold, rest, is_leaf=lambda x: isinstance(x, nnx.Variable))


class _BatchShardedLayer(nnx.Module):
    """Wraps an encoder layer: its input is constrained to be sharded over the batch axes."""

    def __init__(self, layer: nnx.Module, sharding: NamedSharding):
        self.layer = layer
        self.sharding = sharding

    def __call__(self, hidden, *args, **kwargs):
        return self.layer(jax.lax.with_sharding_constraint(hidden, self.sharding), *args, **kwargs)


def constrain_layer_inputs(model: nnx.Module, sharding: NamedSharding) -> None:
    """Pin every encoder layer's input (B, L, hidden) to batch sharding (the documented `encoder.layers`).

    Without it XLA's sharding propagation follows the FSDP-sharded embedding table (its hidden dimension
    is split over `fsdp`) and keeps the activations of the GLOBAL batch on every device: at paper scale
    (stage 3, batch 128 x 512, 8 devices) 135 GiB per device instead of 55 GiB (see compile-check).
    """
    layers = getattr(getattr(model, "encoder", None), "layers", None)
    if layers is None:
        return
    model.encoder.layers = nnx.List([_BatchShardedLayer(layer, sharding) for layer in layers])


def compute_casts(graphdef: nnx.GraphDef, params: nnx.State, frozen: nnx.State, rest: nnx.State) -> dict[str, Any]:
    """`{parameter path: dtype}` of the parameters the model casts to its compute dtype at use
    (`layers.compute_dtype_casts`; empty for a float32 model). Read from a throwaway merge at trace time
    (per-layer names: stacked states, `layer_stacking`, are split for it; the unused slices are dropped)."""
    merged = nnx.merge(graphdef, unstack_state(params), unstack_state(frozen), jax.tree.map(lambda x: x, rest))
    return compute_dtype_casts(merged)


def cast_state(state: nnx.State, casts: Mapping[str, Any]) -> nnx.State:
    """`state` with the arrays named in `casts` cast to their dtype, the others untouched.

    Inside the jitted step the cast runs on each device's shard of a parameter, so the all-gather FSDP
    then needs moves the compute dtype (bfloat16: half the bytes of the float32 master copy). The cast is
    differentiable: the gradient reaching the float32 parameter is the compute-dtype one, converted back.
    A stack of layers (`layer_stacking`) is cast whole, as its first layer's name says."""

    def cast(path, x):
        dtype = casts.get(per_layer_name(path_string(path)))
        return x if dtype is None else x.astype(dtype)

    return jax.tree_util.tree_map_with_path(cast, state)


def merge_for_compute(
    graphdef: nnx.GraphDef, params: nnx.State, frozen: nnx.State, rest: nnx.State, casts: Mapping[str, Any]
) -> nnx.Module:
    """The model from its states, trainable and frozen parameters cast per `casts` (`compute_casts`) first,
    stacked layers (`layer_stacking`) split into per-layer arrays after the cast; fresh Variable objects for
    `rest` (dropout mutates its RNG count at this trace level)."""
    if casts:
        params, frozen = cast_state(params, casts), cast_state(frozen, casts)
    return nnx.merge(graphdef, unstack_state(params), unstack_state(frozen), jax.tree.map(lambda x: x, rest))
