"""Stacked storage of the encoder layers' parameters in the train step (`model.scan_layers`).

The model, its checkpoints, the Hugging Face key maps and the freezing regexes name one parameter per layer
(`encoder/layers/3/mlp/up/kernel`). With scanned layers the train step holds them stacked instead: the
trainable and frozen states it takes (and so the gradients, the AdamW moments and the FSDP collectives)
have one array per kind of layer parameter with a leading layer axis, under a key naming the layers it
holds (`encoder/layers/25-27/mlp/up/kernel`, shape (3, hidden, intermediate)). Consecutive layers are
stacked together when they hold the same parameters (same names, shapes and dtypes), so stage 2's frozen
layers 0-24 and trained layers 25-27 form two stacks, one in each state.

Why: with per-layer leaves a step that trains the layers compiles the gradient bookkeeping, the optimizer
update and the gathers once per layer and leaf (28 x 12 at paper scale), which is most of its compile
time even when the layer body is scanned; stacked, it compiles them once per leaf (RESULTS.md, "stacked
layer storage").

Inside the step `unstack_state` splits the stacks back into per-layer arrays before `nnx.merge` (the model
is unchanged), and the scan of `layers.run_layers` stacks them again: XLA folds the slices and the
concatenation. The split has a custom VJP whose backward pass is one `stack` of the layer gradients: the
default transpose (one pad per layer and leaf, added up) doubled the stacked step's compile time when
measured (RESULTS.md).

Everything outside the step keeps per-layer names: `LayerStacking.to_step` stacks a placed state when a
stage starts, `LayerStacking.to_checkpoint` unstacks it for a checkpoint save, so checkpoints, exports and
the next stage read the same files whether or not the layers were stacked.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jasper_jax.models.params import key_name

LAYER_LISTS = "layers"  # the name of every scanned list of layers (encoder, vision tower)
STACK_KEY = re.compile(r"^(\d+)-(\d+)$")
_SHARDING_METADATA = ("out_sharding", "sharding_names", "sharding")


def stack_key(first: int, last: int) -> str:
    return f"{first}-{last}"


def stacked_layers(name: Any) -> tuple[int, int] | None:
    """`(first, last)` for a stack key (`"25-27"`), else None."""
    match = STACK_KEY.match(key_name(name))
    return (int(match.group(1)), int(match.group(2))) if match else None


def _layer_position(path: Sequence[Any]) -> int | None:
    """The index in `path` of the part after the first `layers` part (a layer index or a stack key)."""
    names = [key_name(part) for part in path]
    for position in range(len(names) - 1):
        if names[position] == LAYER_LISTS:
            return position + 1
    return None


def is_stacked_path(path: Sequence[Any]) -> bool:
    """Whether a parameter path (names, or a jax tree path) goes through a stack of layers."""
    position = _layer_position(path)
    return position is not None and stacked_layers(path[position]) is not None


def per_layer_name(name: str) -> str:
    """The per-layer name of a parameter's first layer: `encoder/layers/25-27/mlp/up/kernel` ->
    `encoder/layers/25/mlp/up/kernel` (a per-layer name is returned as it is)."""
    parts = name.split("/")
    position = _layer_position(parts)
    if position is not None:
        layers = stacked_layers(parts[position])
        if layers is not None:
            parts[position] = str(layers[0])
    return "/".join(parts)


def _with_sharding_names(variable: nnx.Variable, value: Any, change: Callable[[tuple], tuple]) -> nnx.Variable:
    """`variable` holding `value`, its logical axis names changed by `change` (a layer axis added/removed)."""
    metadata = variable.get_metadata()
    updates = {
        key: change(tuple(metadata[key])) for key in _SHARDING_METADATA if isinstance(metadata.get(key), (tuple, list))
    }
    return variable.replace(value, **updates)


def _leaf_value(leaf: Any) -> Any:
    return leaf.get_value() if isinstance(leaf, nnx.Variable) else leaf


def _signature(leaves: dict[tuple, Any]) -> tuple:
    return tuple(
        (suffix, type(leaf), tuple(_leaf_value(leaf).shape), str(_leaf_value(leaf).dtype))
        for suffix, leaf in sorted(leaves.items(), key=lambda item: tuple(map(str, item[0])))
    )


def _stack(leaves: list[Any]) -> Any:
    value = jnp.stack([_leaf_value(leaf) for leaf in leaves])
    if isinstance(leaves[0], nnx.Variable):
        return _with_sharding_names(leaves[0], value, lambda names: (None, *names))
    return value


def stack_state(state: nnx.State) -> nnx.State:
    """`state` with the parameters of consecutive like layers stacked under stack keys (see the module
    docstring); the other entries unchanged. Jittable; `jax.eval_shape` gives the abstract stacked state."""
    others: list[tuple[tuple, Any]] = []
    layers: dict[tuple, dict[int, dict[tuple, Any]]] = {}  # list prefix -> layer index -> suffix -> leaf
    for path, leaf in nnx.to_flat_state(state):
        position = _layer_position(path)
        if position is None or not str(key_name(path[position])).isdigit():
            others.append((tuple(path), leaf))
            continue
        index = int(key_name(path[position]))
        layers.setdefault(tuple(path[:position]), {}).setdefault(index, {})[tuple(path[position + 1 :])] = leaf
    flat = list(others)
    for prefix, by_index in layers.items():
        for run in _runs(by_index):
            key = stack_key(run[0], run[-1])
            for suffix in by_index[run[0]]:
                flat.append(((*prefix, key, *suffix), _stack([by_index[index][suffix] for index in run])))
    return nnx.from_flat_state(flat)


def _runs(by_index: dict[int, dict[tuple, Any]]) -> list[list[int]]:
    """Maximal runs of consecutive layer indices whose parameters have the same names, shapes and dtypes."""
    runs: list[list[int]] = []
    previous_signature = None
    for index in sorted(by_index):
        signature = _signature(by_index[index])
        if runs and index == runs[-1][-1] + 1 and signature == previous_signature:
            runs[-1].append(index)
        else:
            runs.append([index])
        previous_signature = signature
    return runs


@jax.custom_vjp
def _split_layers(stacked: jax.Array) -> tuple[jax.Array, ...]:
    return tuple(stacked[i] for i in range(stacked.shape[0]))


def _split_forward(stacked):
    return _split_layers(stacked), None


def _split_backward(_, layer_cotangents):
    return (jnp.stack(layer_cotangents),)


_split_layers.defvjp(_split_forward, _split_backward)


def unstack_state(state: nnx.State) -> nnx.State:
    """The inverse of `stack_state`: per-layer entries (integer layer keys) again; a state without stacks is
    returned as it is. Differentiable, with a one-`stack` backward pass (module docstring)."""
    flat = list(nnx.to_flat_state(state))
    if not any(is_stacked_path(path) for path, _ in flat):
        return state
    unstacked: list[tuple[tuple, Any]] = []
    for path, leaf in flat:
        position = _layer_position(path)
        layers = stacked_layers(path[position]) if position is not None else None
        if layers is None:
            unstacked.append((tuple(path), leaf))
            continue
        slices = _split_layers(_leaf_value(leaf))
        for offset, value in enumerate(slices):
            part = (
                _with_sharding_names(leaf, value, lambda names: names[1:]) if isinstance(leaf, nnx.Variable) else value
            )
            unstacked.append(((*path[:position], layers[0] + offset, *path[position + 1 :]), part))
    return nnx.from_flat_state(unstacked)


def map_states(function: Callable[[nnx.State], nnx.State], tree: Any) -> Any:
    """`function` applied to every `nnx.State` inside `tree` (an optimizer state: Adam's moments)."""
    is_state = lambda x: isinstance(x, nnx.State)  # noqa: E731
    return jax.tree.map(lambda x: function(x) if is_state(x) else x, tree, is_leaf=is_state)


@dataclasses.dataclass
class LayerStacking:
    """The layout of the step's states next to the per-layer one (`StageStep.abstract_state`, `.shardings`).

    `enabled` False (unscanned layers): the step takes per-layer states; the conversions return their
    arguments. Otherwise `abstract_state`, `abstract_frozen` and `shardings` are the stacked states the
    jitted step takes, and `to_step` / `to_checkpoint` convert placed states between the two layouts on
    the devices (the layer axis is never sharded, so no data moves between devices)."""

    enabled: bool
    abstract_state: Any  # step.TrainState of ShapeDtypeStructs, stacked
    abstract_frozen: nnx.State
    shardings: Any  # step.StepShardings of the stacked states
    _to_step: Callable | None = None
    _to_checkpoint: Callable | None = None

    def to_step(self, state, frozen):
        """Per-layer `(TrainState, frozen)` placed on the per-layer shardings -> the step's layout."""
        return (state, frozen) if not self.enabled else self._to_step(state, frozen)

    def to_checkpoint(self, state, frozen):
        """The step's `(TrainState, frozen)` -> per-layer arrays (what a checkpoint holds)."""
        return (state, frozen) if not self.enabled else self._to_checkpoint(state, frozen)


def stack_train_state(state):
    """A `step.TrainState` with its params and optimizer moments stacked."""
    return dataclasses.replace(
        state, params=stack_state(state.params), opt_state=map_states(stack_state, state.opt_state)
    )


def unstack_train_state(state):
    """The inverse of `stack_train_state`."""
    return dataclasses.replace(
        state, params=unstack_state(state.params), opt_state=map_states(unstack_state, state.opt_state)
    )


def layer_stacking(enabled: bool, abstract_state, abstract_frozen, shardings, make_shardings) -> LayerStacking:
    """The step's layout: per-layer (`enabled` False: the given abstract states and shardings) or stacked
    (`make_shardings(abstract_state, abstract_frozen)` gives the stacked states' `StepShardings`)."""
    if not enabled:
        return LayerStacking(False, abstract_state, abstract_frozen, shardings)
    stacked_state = jax.eval_shape(stack_train_state, abstract_state)
    stacked_frozen = jax.eval_shape(stack_state, abstract_frozen)
    stacked = make_shardings(stacked_state, stacked_frozen)
    to_step = jax.jit(
        lambda state, frozen: (stack_train_state(state), stack_state(frozen)),
        in_shardings=(shardings.state, shardings.frozen),
        out_shardings=(stacked.state, stacked.frozen),
    )
    to_checkpoint = jax.jit(
        lambda state, frozen: (unstack_train_state(state), unstack_state(frozen)),
        in_shardings=(stacked.state, stacked.frozen),
        out_shardings=(shardings.state, shardings.frozen),
    )
    return LayerStacking(True, stacked_state, stacked_frozen, stacked, to_step, to_checkpoint)
