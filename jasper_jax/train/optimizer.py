"""AdamW with warmup + cosine decay, and freezing by trainable-parameter regexes.

Freezing partitions the model's parameters into a trainable and a frozen `nnx.State` (by regexes over the
parameter names of `jasper_jax.models.params`, e.g. `heads/fc1/.*`, `encoder/layers/(25|26|27)/.*`).
Only the trainable part is differentiated and optimised, so frozen parameters carry no optimizer state
(no Adam moments: the memory of stages 1-2 is that of the heads and the last layers) and stay
bit-identical: they are inputs of the step, never outputs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import jax
import optax
from flax import nnx

from jasper_jax.models.params import path_names, path_string
from jasper_jax.train.layer_stacking import is_stacked_path
from jasper_jax.train.settings import OptimizerSettings


def last_layers_pattern(num_layers: int, count: int, prefix: str = "encoder/layers") -> str:
    """The regex of the last `count` of `num_layers` layers, e.g. `encoder/layers/(25|26|27)/.*`."""
    if count <= 0:
        raise ValueError(f"trainable_last_layers must be positive, got {count}")
    if count > num_layers:
        raise ValueError(f"trainable_last_layers={count} but the encoder has only {num_layers} layers")
    indices = "|".join(str(i) for i in range(num_layers - count, num_layers))
    return f"{prefix}/({indices})/.*"


def trainable_patterns(trainable: Sequence[str], last_layers: int, num_layers: int) -> tuple[str, ...]:
    """A stage's trainable regexes: `trainable` plus, if `last_layers`, the last `last_layers` encoder layers."""
    patterns = tuple(trainable)
    if last_layers:
        patterns += (last_layers_pattern(num_layers, last_layers),)
    if not patterns:
        raise ValueError("the stage trains nothing: set stage.trainable (regexes) or stage.trainable_last_layers")
    return patterns


def trainable_filter(patterns: Sequence[str]):
    """An NNX filter `(path, value) -> bool` selecting the parameters whose path fully matches a pattern."""
    compiled = [re.compile(pattern) for pattern in patterns]

    def is_trainable(path: Sequence[Any], value: Any) -> bool:
        if not isinstance(value, nnx.Param):
            return False
        name = path_string(path)
        return any(pattern.fullmatch(name) for pattern in compiled)

    return is_trainable


def split_model(model: nnx.Module, patterns: Sequence[str]):
    """`(graphdef, trainable, frozen, rest)`: trainable and frozen params, everything else (RNG state).

    Raises ValueError when no parameter matches the patterns (a typo would otherwise train nothing).
    """
    graphdef, trainable, frozen, rest = nnx.split(model, trainable_filter(patterns), nnx.Param, ...)
    if not jax.tree.leaves(trainable):
        names = [path_string(path) for path, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))]
        raise ValueError(
            f"no parameter matches the trainable patterns {list(patterns)}; parameter paths look like "
            f"{names[:3]} ... {names[-3:]}"
        )
    return graphdef, trainable, frozen, rest


NO_DECAY_NAMES = ("bias", "scale")  # biases (q/k/v biases are (heads, head_dim)) and norm scales


def decay_mask(params: Any) -> Any:
    """True where weight decay applies: matrices (kernels, embeddings), not biases nor norm scales, whatever
    their rank (the attention's q/k/v biases are (heads, head_dim)). A stack of layers (`layer_stacking`: a
    leading layer axis) is judged by the rank of one layer's parameter."""

    def decays(path, x) -> bool:
        names = path_names(path)
        if names and names[-1] in NO_DECAY_NAMES:
            return False
        return getattr(x, "ndim", 0) - is_stacked_path(path) >= 2

    return jax.tree_util.tree_map_with_path(decays, params)


def learning_rate_schedule(peak: float, steps: int, warmup_fraction: float, end_fraction: float = 0.0):
    """Linear warmup over `warmup_fraction * steps` from 0 to `peak`, then cosine decay to `end_fraction * peak`."""
    warmup = int(round(warmup_fraction * steps))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=peak,
        warmup_steps=warmup,
        decay_steps=max(steps, warmup + 1),
        end_value=peak * end_fraction,
    )


def make_optimizer(settings: OptimizerSettings, peak_lr: float, steps: int):
    """`(tx, schedule)`: global-norm clipping (`clip_norm` 0 = none) then AdamW (decay mask above) on the
    warmup + cosine schedule."""
    schedule = learning_rate_schedule(peak_lr, steps, settings.warmup_fraction, settings.end_lr_fraction)
    parts = [optax.clip_by_global_norm(settings.clip_norm)] if settings.clip_norm > 0 else []
    parts.append(
        optax.adamw(
            schedule,
            b1=settings.b1,
            b2=settings.b2,
            eps=settings.eps,
            weight_decay=settings.weight_decay,
            mask=decay_mask,
        )
    )
    return optax.chain(*parts), schedule
