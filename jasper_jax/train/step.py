"""The train step: a pure jitted function over `(TrainState, frozen, rest, batch)`.

The model is rebuilt inside the step from its graphdef and three states (`nnx.merge`): the trainable
params (differentiated and optimised), the frozen params (read only, never returned, so bit-identical)
and the rest (RNG streams, reseeded from the step number so that a resumed run draws the same dropout
masks as an uninterrupted one). Parameters are float32 master weights; the model computes in its
`compute_dtype` (bfloat16 at scale). The parameters the model casts to that dtype at use (its projections'
kernels and biases, its RMSNorm scales: `layers.compute_dtype_casts`) are cast in the step on their shards,
before the model is merged, so FSDP's all-gathers move bfloat16; the gradients and the optimizer state stay
float32.

The batch is a set of global arrays sharded over the batch axes; the in-batch losses are computed on the
whole global batch (XLA inserts the gathers), unlike the official code's per-device losses.

A non-finite loss or gradient norm leaves parameters and optimizer state unchanged, increments
`nonfinite_total` and `nonfinite_consecutive` (reset to 0 by a good step); the loop stops after K in a row.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from jasper_jax.losses import ObjectiveConfig, distillation_objective
from jasper_jax.models import attention as attention_lib
from jasper_jax.models.packed import FIELDS as PACKED_FIELDS
from jasper_jax.models.packed import PackedLayout
from jasper_jax.train import grad_cache
from jasper_jax.train import sharding as sharding_lib
from jasper_jax.train.step_parts import Objective, compute_casts, constrain_layer_inputs, merge_for_compute, reseed

BATCH_KEYS = ("input_ids", "attention_mask", "teacher", "row_mask")
PACKED_BATCH_KEYS = BATCH_KEYS + PACKED_FIELDS  # data.packing: rows (R, L) + where each text went (B,)
# `forward(model, batch, deterministic) -> (student outputs, teacher)`: what the objective compares
Forward = Callable[[nnx.Module, Mapping[str, jax.Array], bool], tuple[Mapping[str, jax.Array], Any]]


def text_forward(model: nnx.Module, batch: Mapping[str, jax.Array], deterministic: bool):
    """Stages 1-3: the student's head outputs on the texts; the teacher vectors come with the batch.

    A packed batch (`data.packing`: its rows hold several texts) gives the same B outputs in the texts' order;
    a batch with `compressed_mask` (a student with a token compressor) compresses each text to it."""
    packed = PackedLayout.from_batch(batch)
    extra = {} if packed is None else {"packed": packed}
    if "compressed_mask" in batch:  # a token compressor at this batch's sampled ratio
        extra["compressed_mask"] = batch["compressed_mask"]
    return model(batch["input_ids"], batch["attention_mask"], deterministic=deterministic, **extra), batch["teacher"]


@jax.tree_util.register_dataclass
@dataclass
class TrainState:
    """What changes from step to step (and is checkpointed besides the frozen params)."""

    step: jax.Array  # int32 scalar: updates attempted so far (skipped ones included)
    params: nnx.State  # trainable params, float32
    opt_state: Any
    nonfinite_consecutive: jax.Array  # int32 scalar
    nonfinite_total: jax.Array  # int32 scalar


def init_train_state(params: nnx.State, tx: optax.GradientTransformation, step: int = 0) -> TrainState:
    """A fresh state: optimizer state for `params` only, counters at zero."""
    return TrainState(
        step=jnp.asarray(step, jnp.int32),
        params=params,
        opt_state=tx.init(params),
        nonfinite_consecutive=jnp.zeros((), jnp.int32),
        nonfinite_total=jnp.zeros((), jnp.int32),
    )


def text_lengths(batch: Mapping[str, jax.Array]) -> list[jax.Array]:
    """The real length of every text, float32, one array per attention mask ((B,), or (B, group) for a pair
    batch's documents). A packed batch's rows hold several texts: text i's length is the size of its
    segment (`text_segment[i]` of row `text_row[i]`). Masked rows (`row_mask` False: the padding of a final
    or uneven batch) count 0, so the tokens and FLOPs metrics are those of the real rows."""
    if "segment_ids" in batch:
        rows = batch["segment_ids"][batch["text_row"]]
        lengths = [jnp.sum(rows == batch["text_segment"][:, None], axis=1).astype(jnp.float32)]
    else:
        lengths = [
            jnp.sum(value, axis=-1).astype(jnp.float32)
            for key, value in batch.items()
            if key.endswith("attention_mask")
        ]
    if "row_mask" not in batch:
        return lengths
    real = batch["row_mask"].astype(jnp.float32)
    return [length * real.reshape(real.shape + (1,) * (length.ndim - 1)) for length in lengths]


def encoder_lengths(batch: Mapping[str, jax.Array]) -> list[jax.Array]:
    """The lengths the encoder runs over: `text_lengths`, or behind a token compressor the compressed
    lengths of `compressed_mask` (a pair batch: `query_` and `document_compressed_mask`; masked rows 0)."""
    keys = [key for key in batch if key.endswith("compressed_mask")]  # a pair batch has two
    if not keys:
        return text_lengths(batch)
    real = batch["row_mask"].astype(jnp.float32)
    lengths = [jnp.sum(batch[key], axis=-1).astype(jnp.float32) for key in keys]
    return [length * real.reshape(real.shape + (1,) * (length.ndim - 1)) for length in lengths]


def text_objective(config: ObjectiveConfig) -> Objective:
    """The stage objective `(head_outputs, teacher, row_mask) -> (loss, metrics)` of `jasper_jax.losses`."""

    def objective(head_outputs, teacher, row_mask):
        return distillation_objective(head_outputs, teacher, row_mask, config=config)

    return objective


def train_step_fn(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    objective: Objective,
    schedule: Callable[[jax.Array], jax.Array],
    *,
    deterministic: bool = True,
    activation_sharding: NamedSharding | None = None,
    forward: Forward = text_forward,
    objective_sharding: NamedSharding | None = None,
    micro_batch_size: int | None = 0,
    batch_shards: int = 1,
    gather_in_compute_dtype: bool = True,
) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
    """The un-jitted step `(state, frozen, rest, batch) -> (new_state, metrics)`.

    `activation_sharding`: if given, each encoder layer's input is constrained to it (batch axes).
    `objective_sharding`: if given (replicated: `sharding.replicated(mesh)`), the head outputs, teacher
    and row mask are constrained to it before the objective, so every device gathers the (B, D) vectors
    once and computes the in-batch losses locally; otherwise XLA's partitioner may split the losses'
    pair arrays over devices and put collectives inside the relative-similarity merge loop (one per level).
    `forward`: the model's outputs and the teacher the objective compares (default: texts vs the batch's
    teacher vectors; stage 4: `jasper_jax.train.image_stage.image_caption_forward`).
    `micro_batch_size`: if set, the gradient is GradCache's (`jasper_jax.train.grad_cache`, text stages;
    `batch_shards`: the data-parallel size); the rest of the step is shared with the plain path.
    `gather_in_compute_dtype`: cast the parameters the model casts to its compute dtype on their shards
    before the model uses them (`step_parts.compute_casts`; nothing to cast in float32). False keeps the
    float32 arrays until each layer casts them (the tests' reference).
    """

    def plain_gradients(params, frozen, rest_now, batch):
        casts = compute_casts(graphdef, params, frozen, rest_now) if gather_in_compute_dtype else {}

        def loss_fn(params):
            model = merge_for_compute(graphdef, params, frozen, rest_now, casts)
            if activation_sharding is not None:
                constrain_layer_inputs(model, activation_sharding)
            outputs, teacher = forward(model, batch, deterministic)
            outputs = {name: value.astype(jnp.float32) for name, value in outputs.items()}
            row_mask = batch["row_mask"]
            if objective_sharding is not None:
                outputs, teacher, row_mask = jax.lax.with_sharding_constraint(
                    (outputs, teacher, row_mask), objective_sharding
                )
            loss, metrics = objective(outputs, teacher, row_mask)
            return loss.astype(jnp.float32), metrics

        return jax.value_and_grad(loss_fn, has_aux=True)(params)

    gradient_fn = plain_gradients
    if micro_batch_size:
        if forward is not text_forward:
            raise ValueError("micro_batch_size (GradCache) is for the text stages' forward only")
        gradient_fn = grad_cache.gradient_fn(
            graphdef,
            objective,
            micro_batch_size=micro_batch_size,
            batch_shards=batch_shards,
            deterministic=deterministic,
            activation_sharding=activation_sharding,
            objective_sharding=objective_sharding,
            gather_in_compute_dtype=gather_in_compute_dtype,
        )

    def step_fn(state: TrainState, frozen: nnx.State, rest: nnx.State, batch: Mapping[str, jax.Array]):
        rest_now = reseed(rest, state.step)
        (loss, metrics), grads = gradient_fn(state.params, frozen, rest_now, batch)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
        consecutive = jnp.where(finite, 0, state.nonfinite_consecutive + 1).astype(jnp.int32)
        new_state = TrainState(
            step=state.step + 1,
            params=jax.tree.map(keep, new_params, state.params),
            opt_state=jax.tree.map(keep, new_opt_state, state.opt_state),
            nonfinite_consecutive=consecutive,
            nonfinite_total=state.nonfinite_total + jnp.where(finite, 0, 1).astype(jnp.int32),
        )
        metrics = dict(metrics)
        metrics.update(
            loss=loss,
            grad_norm=grad_norm,
            # optax counts applied updates only (a skipped step keeps the old optimizer state)
            lr=jnp.asarray(schedule(state.step - state.nonfinite_total), jnp.float32),
            finite=finite,
            # real text tokens of every attention mask (a pair batch has a query and a document one)
            tokens=sum(jnp.sum(lengths).astype(jnp.int32) for lengths in text_lengths(batch)),
            # sum of squared real lengths the encoder runs over: the attention part of the model FLOPs
            token_squares=sum(jnp.sum(jnp.square(lengths)) for lengths in encoder_lengths(batch)),
            nonfinite_consecutive=consecutive,
        )
        if any(key.endswith("compressed_mask") for key in batch):  # the tokens left after the token compressor
            metrics["encoder_tokens"] = sum(jnp.sum(lengths).astype(jnp.int32) for lengths in encoder_lengths(batch))
        return new_state, metrics

    return step_fn


@dataclass
class StepShardings:
    """The shardings the step is jitted with (also the restore targets of a checkpoint)."""

    state: TrainState
    frozen: nnx.State
    rest: nnx.State
    batch: dict[str, NamedSharding]
    params_specs: nnx.State  # trainable + frozen specs, for the checkpoint's full params item


def step_shardings(
    mesh: Mesh,
    rules: Mapping[str, tuple[str, ...]],
    abstract_state: TrainState,
    abstract_frozen: nnx.State,
    abstract_rest: nnx.State,
    batch_keys: tuple[str, ...] = BATCH_KEYS,
) -> StepShardings:
    """Shardings from the logical-axis rules: params and their Adam moments alike, scalars replicated;
    every batch array (`batch_keys`) split over the batch axes."""
    params_specs = sharding_lib.state_specs(abstract_state.params, rules, mesh)
    replicated = sharding_lib.replicated(mesh)
    state = TrainState(
        step=replicated,
        params=sharding_lib.state_shardings(abstract_state.params, rules, mesh),
        opt_state=sharding_lib.tree_shardings_like_params(abstract_state.opt_state, params_specs, mesh),
        nonfinite_consecutive=replicated,
        nonfinite_total=replicated,
    )
    return StepShardings(
        state=state,
        frozen=sharding_lib.state_shardings(abstract_frozen, rules, mesh),
        rest=jax.tree.map(lambda _: replicated, abstract_rest),
        batch={key: sharding_lib.batch_sharding(mesh) for key in batch_keys},
        params_specs=params_specs,
    )


def jit_train_step(step_fn: Callable, shardings: StepShardings, mesh: Mesh):
    """`jax.jit` with explicit in/out shardings; the state is donated (updated in place). The step traces
    under `attention.kernel_partitioning(mesh)`, so a Pallas attention kernel runs per device (shard_map)."""

    @functools.wraps(step_fn)
    def partitioned_step(*args):
        with attention_lib.kernel_partitioning(mesh, sharding_lib.BATCH_AXES):
            return step_fn(*args)

    return jax.jit(
        partitioned_step,
        in_shardings=(shardings.state, shardings.frozen, shardings.rest, shardings.batch),
        out_shardings=(shardings.state, sharding_lib.replicated(mesh)),
        donate_argnums=(0,),
    )


def _put(x: Any, sharding: NamedSharding) -> Any:
    if jax.process_count() > 1 and isinstance(x, jax.Array) and x.is_fully_addressable:
        # a process-local array (built on this host) onto a global sharding: go through host memory;
        # every process holds the same value (same seed), each puts its own shards
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            data = jax.device_put(np.asarray(jax.random.key_data(x)), sharding)
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
        x = np.asarray(x)
    return jax.device_put(x, sharding)


def place(tree: Any, shardings: Any) -> Any:
    """Put a (host or device) pytree onto the given shardings (also across processes)."""
    return jax.tree.map(_put, tree, shardings)
