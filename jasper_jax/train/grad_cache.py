"""GradCache: the exact gradient of the global-batch objective, computed in micro-batches.

`stage.micro_batch_size` (m) splits the step's global batch of B texts into B/m micro-batches:

1. pass 1 encodes every micro-batch to its pooled vectors (`JasperStudent.pooled`) in a `jax.lax.map`,
   outside any differentiation, so no activations are kept beyond one micro-batch;
2. the tail (vector dropout, heads, objective) runs on all B vectors at once and is differentiated as
   usual: the in-batch losses see the WHOLE global batch (all B(B-1)/2 pairs of the relative-similarity
   loss), and give the head parameters' gradients and the gradient with respect to the B pooled vectors;
3. pass 2 re-runs each micro-batch under `jax.vjp` with its slice of those vector gradients (a
   `jax.lax.scan`) and sums the encoder parameters' gradients. A stage that trains no encoder parameter
   (stage 1: heads only) skips it.

The result equals the plain step's gradient up to float rounding of the sums; memory is that of one
micro-batch's activations plus the (B, hidden) vectors, which is what lets the global-batch losses reach
B = 1024-4096. The split is at the pooled vector, before vector dropout, so the dropout mask is the plain
step's own (B, hidden) draw; encoder passes see the RNG keys folded with the micro-batch index, the same
in both passes (no encoder draws today; any later encoder dropout gets equal draws in pass 1 and pass 2).

Micro-batch i takes m / shards rows from each shard's block of the batch (shards = the data-parallel
size), so every micro-batch stays spread over all devices and no rows move between them.

Packed batches (`data.packing`, `jasper_jax.models.packed`): m counts packed ROWS, not texts. The R rows
(R a multiple of m: the pipeline's row buckets are, `stage_build.text_iterator`) form R / m micro-batches
as above; pass 1 on micro-batch k pools every text whose row lies in it and gives 0 for the others, and
the B pooled vectors are the sum over micro-batches (each text is in exactly one, so the sum is exact);
pass 2 re-runs micro-batch k under `jax.vjp` with the whole (B, hidden) cotangent (the texts outside it
have zero derivative). Memory is that of m packed rows, as on padded batches of m rows at max_length.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from jasper_jax.models.packed import PackedLayout
from jasper_jax.train import step_parts

ENCODER_INPUTS = ("input_ids", "attention_mask")
PACKED_ROW_INPUTS = ("input_ids", "attention_mask", "segment_ids", "positions")  # (R, L) packed rows


def micro_batch_count(batch_size: int, micro_batch_size: int, shards: int) -> int:
    """B / m, after checking that m divides B and that the data-parallel size divides m."""
    if micro_batch_size <= 0 or batch_size % micro_batch_size:
        raise ValueError(f"micro_batch_size {micro_batch_size} does not divide the global batch {batch_size}")
    if micro_batch_size % shards:
        raise ValueError(
            f"micro_batch_size {micro_batch_size} is not divisible by the {shards} shards of the batch axes"
        )
    return batch_size // micro_batch_size


def to_micro(x: jax.Array, count: int, shards: int) -> jax.Array:
    """(B, ...) -> (count, m, ...): micro-batch i holds rows i*m/shards.. of each shard's block."""
    rest = x.shape[1:]
    per_shard = x.shape[0] // (count * shards)
    return x.reshape(shards, count, per_shard, *rest).swapaxes(0, 1).reshape(count, shards * per_shard, *rest)


def from_micro(y: jax.Array, shards: int) -> jax.Array:
    """The inverse of `to_micro`: (count, m, ...) -> (B, ...) in the batch's own row order."""
    count, micro = y.shape[:2]
    rest = y.shape[2:]
    return y.reshape(count, shards, micro // shards, *rest).swapaxes(0, 1).reshape(count * micro, *rest)


def packed_text_blocks(text_row: jax.Array, rows: int, count: int, shards: int) -> tuple[jax.Array, jax.Array]:
    """`(block, local)` (B,) int32: packed text i lies in micro-batch `block[i]` at its row `local[i]`, for
    the `to_micro` layout of R = `rows` rows in `count` micro-batches."""
    per_shard, per_micro = rows // shards, rows // (count * shards)
    row = text_row.astype(jnp.int32)
    shard, within = row // per_shard, row % per_shard
    return within // per_micro, shard * per_micro + within % per_micro


def trains_encoder(params: nnx.State) -> bool:
    """Whether any trainable parameter lies outside the heads (then pass 2 is needed)."""
    return any(str(path[0]) != "heads" for path, _ in nnx.to_flat_state(params))


def gradient_fn(
    graphdef: nnx.GraphDef,
    objective: step_parts.Objective,
    *,
    micro_batch_size: int,
    batch_shards: int = 1,
    deterministic: bool = True,
    activation_sharding: NamedSharding | None = None,
    objective_sharding: NamedSharding | None = None,
    gather_in_compute_dtype: bool = True,
) -> Callable[..., tuple[tuple[jax.Array, dict[str, jax.Array]], nnx.State]]:
    """`(params, frozen, rest, batch) -> ((loss, metrics), grads)`, as `jax.value_and_grad` of the plain step.

    `rest` is the step's reseeded RNG state; `activation_sharding` (batch axes) also pins the micro-batch
    inputs and vectors so that each micro-batch is split over every device. `objective_sharding` (replicated),
    as in the plain step: the head outputs of all B vectors, the teacher and the row mask are constrained to
    it before the objective, so the in-batch losses run locally on every device with no collective inside
    their loops. `gather_in_compute_dtype`: the parameters the model casts to its compute dtype are cast on
    their shards first, as in the plain step (`step_parts.compute_casts`); both passes and the tail see
    them, the gradients stay float32."""

    def constrain(x: jax.Array) -> jax.Array:  # (count, m, ...): m over the batch axes
        if activation_sharding is None:
            return x
        spec = PartitionSpec(None, *activation_sharding.spec[:1])
        return jax.lax.with_sharding_constraint(x, NamedSharding(activation_sharding.mesh, spec))

    def model_for(params, frozen, rest, casts):
        model = step_parts.merge_for_compute(graphdef, params, frozen, rest, casts)
        if activation_sharding is not None:
            step_parts.constrain_layer_inputs(model, activation_sharding)
        return model

    def gradients(params: nnx.State, frozen: nnx.State, rest: nnx.State, batch: Mapping[str, jax.Array]):
        casts = step_parts.compute_casts(graphdef, params, frozen, rest) if gather_in_compute_dtype else {}
        packed = "segment_ids" in batch
        keys = PACKED_ROW_INPUTS if packed else ENCODER_INPUTS
        if "compressed_mask" in batch:  # a token compressor: each micro-batch's rows of the compressed mask
            keys = keys + ("compressed_mask",)
        rows = batch["input_ids"].shape[0]  # texts, or packed rows
        try:
            count = micro_batch_count(rows, micro_batch_size, batch_shards)
        except ValueError as error:
            if packed:
                raise ValueError(f"{error} (packed: {rows} rows; the row buckets must be multiples of it)") from None
            raise
        inputs = {key: constrain(to_micro(batch[key], count, batch_shards)) for key in keys}
        indices = jnp.arange(count, dtype=jnp.int32)
        if packed:
            text_block, text_local = packed_text_blocks(batch["text_row"], rows, count, batch_shards)

        def encode(p, micro, index):
            model = model_for(p, frozen, step_parts.reseed(rest, index), casts)
            if not packed:
                compressed = micro.get("compressed_mask")
                extra = {} if compressed is None else {"compressed_mask": compressed}
                return model.pooled(micro["input_ids"], micro["attention_mask"], **extra).astype(jnp.float32)
            # every text of the batch: those in this micro-batch point at its local row, the others past
            # its last row (their scatter into the token table is dropped) and are zeroed
            in_block = text_block == index
            layout = PackedLayout(
                segment_ids=micro["segment_ids"],
                positions=micro["positions"],
                text_row=jnp.where(in_block, text_local, micro["input_ids"].shape[0]),
                text_segment=batch["text_segment"],
            )
            vectors = model.pooled(micro["input_ids"], micro["attention_mask"], packed=layout).astype(jnp.float32)
            return jnp.where(in_block[:, None], vectors, 0.0)

        # pass 1: every vector, one micro-batch at a time, nothing kept for a backward pass
        if packed:  # (B, hidden) per micro-batch, zero outside it: summed as they come

            def add_block(total, xs):
                return total + encode(params, *xs), None

            first = jax.tree.map(lambda x: x[0], (inputs, indices))
            zeros = jnp.zeros(jax.eval_shape(lambda xs: encode(params, *xs), first).shape, jnp.float32)
            pooled, _ = jax.lax.scan(add_block, zeros, (inputs, indices))
        else:
            pooled = jax.lax.map(lambda xs: encode(params, *xs), (inputs, indices))
            pooled = from_micro(constrain(pooled), batch_shards)

        def tail(p, vectors):
            outputs = model_for(p, frozen, rest, casts).head_outputs(vectors, deterministic=deterministic)
            outputs = {name: value.astype(jnp.float32) for name, value in outputs.items()}
            teacher, row_mask = batch["teacher"], batch["row_mask"]
            if objective_sharding is not None:
                outputs, teacher, row_mask = jax.lax.with_sharding_constraint(
                    (outputs, teacher, row_mask), objective_sharding
                )
            loss, metrics = objective(outputs, teacher, row_mask)
            return loss.astype(jnp.float32), metrics

        # the objective over the whole global batch: head gradients and d loss / d vectors
        (loss, metrics), (grads, vector_grads) = jax.value_and_grad(tail, argnums=(0, 1), has_aux=True)(params, pooled)
        if not trains_encoder(params):
            return (loss, metrics), grads
        # packed: every micro-batch pulls back the whole (B, hidden) cotangent (None: nothing to slice)
        cotangents = None if packed else constrain(to_micro(vector_grads, count, batch_shards))

        # pass 2: each micro-batch again, its vector gradients pulled back to the parameters, summed
        def accumulate(total, xs):
            micro, index, cotangent = xs
            cotangent = vector_grads if cotangent is None else cotangent
            _, pullback = jax.vjp(lambda p: encode(p, micro, index), params)
            (micro_grads,) = pullback(cotangent)
            return jax.tree.map(jnp.add, total, micro_grads), None

        encoder_grads, _ = jax.lax.scan(accumulate, jax.tree.map(jnp.zeros_like, params), (inputs, indices, cotangents))
        return (loss, metrics), jax.tree.map(jnp.add, grads, encoder_grads)

    return gradients
