"""Parameter names: a parameter path as one string, flat and nested views of the weights, assignment.

Every part of the project names a parameter the same way: the `/`-joined path of `nnx.state(model,
nnx.Param)`, e.g. `encoder/layers/3/mlp/up/kernel` or `heads/fc1/bias` (the freezing regexes, the key maps
of the Hugging Face conversion, the checkpoints' nested dicts and the sharding of optimizer state all use
it). A path may come from `nnx.to_flat_state` (strings and ints) or from a jax tree path (`DictKey`,
`SequenceKey`, `GetAttrKey`, ending in the Variable's `value`); both give the same name here.

Two views of the weights: flat (`{"heads/fc1/kernel": array}`) and nested (`{"heads": {"fc1": {"kernel":
array}}}`, string keys: what Orbax checkpoints hold). `flatten_tree` turns either into the flat view, so the
functions that take weights accept both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

SEPARATOR = "/"
_KEY_ATTRIBUTES = ("key", "idx", "name")  # DictKey / FlattenedIndexKey, SequenceKey, GetAttrKey


def key_name(part: Any) -> str:
    """One part of a path as a string: a str or int as is, a jax tree-path key by its key, index or name."""
    if not isinstance(part, (str, int)):
        for attribute in _KEY_ATTRIBUTES:
            if hasattr(part, attribute):
                part = getattr(part, attribute)
                break
    return str(part)


def path_names(path: Sequence[Any]) -> tuple[str, ...]:
    """The names of a state or tree path, without the trailing `value` of a jax path through a Variable."""
    names = tuple(key_name(part) for part in path)
    return names[:-1] if names and names[-1] == "value" else names


def path_string(path: Sequence[Any]) -> str:
    """A path as one name: `("encoder", "layers", 3, "mlp", "kernel")` -> `encoder/layers/3/mlp/kernel`."""
    return SEPARATOR.join(path_names(path))


def _variables(model_or_state: nnx.Module | nnx.State) -> list[tuple[tuple[Any, ...], Any]]:
    state = model_or_state if isinstance(model_or_state, nnx.State) else nnx.state(model_or_state, nnx.Param)
    return list(nnx.to_flat_state(state))


def _value(variable: Any) -> Any:
    return variable.get_value() if isinstance(variable, nnx.Variable) else variable


def flat_params(model_or_state: nnx.Module | nnx.State) -> dict[str, np.ndarray]:
    """The parameters of a model (or every variable of a State) as `{path string: numpy array}`."""
    return {path_string(path): np.asarray(_value(variable)) for path, variable in _variables(model_or_state)}


def param_shapes(model_or_state: nnx.Module | nnx.State) -> dict[str, tuple[int, ...]]:
    """`{path string: shape}` of the parameters; works on abstract models (`nnx.eval_shape`) too."""
    return {path_string(path): tuple(_value(variable).shape) for path, variable in _variables(model_or_state)}


def state_to_tree(state: nnx.State) -> dict[str, Any]:
    """A State as a nested dict with string keys (`{"encoder": {"layers": {"0": ...}}}`), values unwrapped."""
    tree: dict[str, Any] = {}
    for path, variable in nnx.to_flat_state(state):
        names = path_names(path)
        node = tree
        for name in names[:-1]:
            node = node.setdefault(name, {})
        node[names[-1]] = _value(variable)
    return tree


def flatten_tree(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested dict as `{path string: leaf}`; keys that are already path strings pass through."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(flatten_tree(value, f"{prefix}{key}{SEPARATOR}"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def unflatten_tree(flat: Mapping[str, Any]) -> dict[str, Any]:
    """`{path string: leaf}` as a nested dict (the inverse of `flatten_tree`)."""
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, last = key.split(SEPARATOR)
        node = tree
        for name in parents:
            node = node.setdefault(name, {})
        node[last] = value
    return tree


def tree_paths(tree: Mapping[str, Any]) -> set[tuple[str, ...]]:
    """The leaf paths of a nested dict (e.g. `("heads", "fc1", "kernel")`)."""
    return {tuple(key.split(SEPARATOR)) for key in flatten_tree(tree)}


def tree_get(tree: Mapping[str, Any], path: Sequence[Any]) -> Any:
    """The node of a nested dict at `path` (raises KeyError when a part is missing)."""
    node: Any = tree
    for name in path_names(path):
        node = node[name]
    return node


def fill_state(state: nnx.State, values: Mapping[str, Any]) -> nnx.State:
    """`state` with each variable named in `values` (nested or flat) replaced by that value, as given.

    Variables `values` does not name keep theirs; names `values` has and `state` lacks are ignored."""
    flat = flatten_tree(values)

    def replace(path: Sequence[Any], leaf: Any) -> Any:
        return flat.get(path_string(path), leaf)

    return jax.tree_util.tree_map_with_path(replace, state)


def assign_params(model: nnx.Module, values: Mapping[str, Any]) -> None:
    """Overwrite in place the parameters of `model` named in `values` (nested or flat), as float32.

    Names `values` has and the model lacks are ignored: copying a model's `flat_params` into one built with
    fewer heads copies what both have. Shapes must match (the loaders check them with their own message)."""
    flat = flatten_tree(values)
    state = nnx.state(model, nnx.Param)
    variables = nnx.to_flat_state(state)
    for path, variable in variables:
        name = path_string(path)
        if name in flat:
            variable.set_value(jnp.asarray(flat[name], dtype=jnp.float32))
    nnx.update(model, nnx.from_flat_state(variables))
