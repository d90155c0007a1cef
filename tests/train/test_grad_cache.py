"""GradCache (`stage.micro_batch_size`) equals the plain step on the same global batch.

Reference: today's plain step (`train_step_fn` without micro-batches) and `jax.value_and_grad` of the
same loss over the whole batch. B=32 in micro-batches of 8, a tiny random BERT student, vector dropout
on (the same draws in both paths), float32; tolerance 1e-5. The optimizer's eps is 1e-3 so that Adam's
first steps (about g / |g|) do not amplify float rounding of near-zero gradient entries into the params.
Packed (`data.packing`): the same 32 texts in rows of 12 tokens (24 row bucket: micro-batches of 8 rows,
texts spread over all three), against the plain packed step and the plain padded step.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jasper_jax.data.packing import pack_batch
from jasper_jax.losses import ObjectiveConfig
from jasper_jax.models import BertConfig, JasperStudent, StudentConfig
from jasper_jax.train import grad_cache
from jasper_jax.train import optimizer as optimizer_lib
from jasper_jax.train import sharding as sharding_lib
from jasper_jax.train import step as step_lib
from jasper_jax.train.mesh import batch_size_divisor, make_mesh
from jasper_jax.train.settings import OptimizerSettings, StageSettings, TrainingError
from tests.train.train_helpers import make_batch

BATCH, MICRO, LENGTH, TOL = 32, 8, 12, 1e-5
OPT = OptimizerSettings(warmup_fraction=0.0, eps=1e-3)
ENCODER = dict(
    vocab_size=64,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=16,
)
# stage -> (trainable patterns, heads, objective), as the paper's stages 1-3 (configs/jasper_paper.py)
STAGES = {
    "stage1": (("heads/fc1/.*",), {"fc1": 24}, ObjectiveConfig()),
    "stage2": (("heads/fc1/.*", optimizer_lib.last_layers_pattern(2, 1)), {"fc1": 24}, ObjectiveConfig()),
    "stage3_heads": ((".*",), {"fc1": 24, "fc2": 8, "fc3": 4}, ObjectiveConfig(reduced_head_weight=0.5)),
    "stage3_prefix": ((".*",), {"fc1": 24}, ObjectiveConfig(mrl_mode="prefix", mrl_dims=(8, 16, 24))),
}


def global_batch(packing: bool, seed: int):
    """The step's global batch of B texts: padded to LENGTH, or the same texts packed (data.packing) into
    rows of LENGTH, the row count a multiple of MICRO (as the pipeline's row buckets are with GradCache)."""
    padded = make_batch(batch_size=BATCH, length=LENGTH, teacher_dim=24, seed=seed)
    if not packing:
        return padded
    ids = [row[mask.astype(bool)].tolist() for row, mask in zip(padded["input_ids"], padded["attention_mask"])]
    packed = pack_batch(ids, LENGTH, 0, row_multiple=MICRO)
    assert packed["input_ids"].shape[0] > MICRO  # several micro-batches of rows
    return {**packed, "teacher": padded["teacher"], "row_mask": padded["row_mask"]}


def build(stage: str, micro: int, mesh_sizes, devices, dropout=0.2, packing=False):
    patterns, heads, objective_config = STAGES[stage]
    config = StudentConfig(encoder=BertConfig(**ENCODER), heads=heads, vector_dropout=dropout)
    with nnx.use_eager_sharding(False):
        model = JasperStudent(config, rngs=nnx.Rngs(params=0, dropout=1))
    graphdef, trainable, frozen, rest = optimizer_lib.split_model(model, patterns)
    tx, schedule = optimizer_lib.make_optimizer(OPT, 1e-2, 10)
    state = step_lib.init_train_state(trainable, tx)
    mesh = make_mesh(mesh_sizes, devices)
    keys = step_lib.PACKED_BATCH_KEYS if packing else step_lib.BATCH_KEYS
    shardings = step_lib.step_shardings(
        mesh, sharding_lib.rules_from_config(None), state, frozen, rest, batch_keys=keys
    )
    objective = step_lib.text_objective(objective_config)
    fn = step_lib.train_step_fn(
        graphdef,
        tx,
        objective,
        schedule,
        deterministic=dropout == 0.0,
        activation_sharding=sharding_lib.activation_sharding(mesh),
        micro_batch_size=micro,
        batch_shards=batch_size_divisor(mesh),
    )
    placed = [step_lib.place(x, s) for x, s in ((state, shardings.state), (frozen, shardings.frozen))]
    placed.append(step_lib.place(rest, shardings.rest))
    return step_lib.jit_train_step(fn, shardings, mesh), placed, shardings, (graphdef, objective, frozen, rest)


def run_steps(stage, micro, packing, mesh_sizes=None, devices=None, n_steps=2):
    devices = devices or jax.devices()[:1]
    step, (state, frozen, rest), shardings, _ = build(stage, micro, mesh_sizes or {"data": 1}, devices, packing=packing)
    metrics_seen = []
    for i in range(n_steps):
        state, metrics = step(state, frozen, rest, step_lib.place(global_batch(packing, i), shardings.batch))
        metrics_seen.append({k: float(v) for k, v in metrics.items()})
    assert int(state.nonfinite_total) == 0
    return state, frozen, metrics_seen


def assert_trees_close(a, b, relative_to_leaf=False):
    """Entrywise within TOL (params, O(1)); gradients within TOL times the leaf's largest entry (float32
    sums of O(100) terms round at about 1e-7 of that scale)."""
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x), np.asarray(y)
        scale = max(float(np.max(np.abs(y))), 1.0) if relative_to_leaf else 1.0
        np.testing.assert_allclose(x, y, rtol=TOL, atol=TOL * scale)


@pytest.mark.slow
@pytest.mark.parametrize("packing", [False, True])
@pytest.mark.parametrize("stage", sorted(STAGES))
def test_gradients_equal_plain(stage, packing):
    """d loss / d params of GradCache's three passes vs `jax.value_and_grad` over the whole batch."""
    _, (state, frozen, rest), _, (graphdef, objective, _, _) = build(stage, MICRO, {"data": 1}, jax.devices()[:1])
    batch = {k: jnp.asarray(v) for k, v in global_batch(packing, 0).items()}
    rest_now = step_lib.reseed(rest, jnp.asarray(3, jnp.int32))

    def plain_loss(params):
        model = nnx.merge(graphdef, params, frozen, jax.tree.map(lambda x: x, rest_now))
        outputs, teacher = step_lib.text_forward(model, batch, False)  # packed or padded, as the plain step
        return objective(outputs, teacher, batch["row_mask"])

    (loss, metrics), grads = jax.jit(jax.value_and_grad(plain_loss, has_aux=True))(state.params)
    cached = grad_cache.gradient_fn(graphdef, objective, micro_batch_size=MICRO, deterministic=False)
    (cached_loss, cached_metrics), cached_grads = jax.jit(cached)(state.params, frozen, rest_now, batch)
    np.testing.assert_allclose(float(cached_loss), float(loss), rtol=TOL)
    assert set(cached_metrics) == set(metrics)
    assert_trees_close(cached_grads, grads, relative_to_leaf=True)
    assert float(optax_norm(grads)) > 0


def optax_norm(tree):
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


@pytest.mark.slow
@pytest.mark.parametrize("packing", [False, True])
@pytest.mark.parametrize("stage", sorted(STAGES))
def test_updated_params_equal_plain_step(stage, packing):
    """Two steps (dropout on): losses, gradient norms and updated params equal; frozen params untouched."""
    plain, frozen_before, plain_metrics = run_steps(stage, 0, packing)
    cached, frozen_after, cached_metrics = run_steps(stage, MICRO, packing)
    for p, c in zip(plain_metrics, cached_metrics):
        for key in ("loss", "grad_norm"):
            np.testing.assert_allclose(c[key], p[key], rtol=TOL)
    assert_trees_close(cached.params, plain.params)
    assert_trees_close(cached.opt_state, plain.opt_state, relative_to_leaf=True)
    for a, b in zip(jax.tree.leaves(frozen_after), jax.tree.leaves(frozen_before)):
        assert np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["stage2", "stage3_heads"])
def test_packed_micro_batches_equal_plain_padded_step(stage):
    """GradCache on packed rows (8 rows per micro-batch) against the plain step on the padded batch of the
    same texts: losses, gradient norms and updated params after two steps."""
    padded, _, padded_metrics = run_steps(stage, 0, False)
    cached, _, cached_metrics = run_steps(stage, MICRO, True)
    for p, c in zip(padded_metrics, cached_metrics):
        for key in ("loss", "grad_norm"):
            np.testing.assert_allclose(c[key], p[key], rtol=TOL)
    assert_trees_close(cached.params, padded.params)


@pytest.mark.slow
def test_sharded_micro_batches_equal_plain_single_device():
    """On 8 fake devices (data 4 x fsdp 2, one row per device per micro-batch) against one device, plain."""
    plain, _, plain_metrics = run_steps("stage3_heads", 0, False)
    cached, _, cached_metrics = run_steps("stage3_heads", MICRO, False, {"data": 4, "fsdp": 2}, jax.devices())
    np.testing.assert_allclose([m["loss"] for m in cached_metrics], [m["loss"] for m in plain_metrics], rtol=TOL)
    assert_trees_close(cached.params, plain.params)


@pytest.mark.slow
def test_sharded_packed_micro_batches_equal_plain_padded_single_device():
    """Packed rows on 8 fake devices (one row per device per micro-batch) against one device, plain, padded."""
    plain, _, plain_metrics = run_steps("stage3_heads", 0, False)
    cached, _, cached_metrics = run_steps("stage3_heads", MICRO, True, {"data": 4, "fsdp": 2}, jax.devices())
    np.testing.assert_allclose([m["loss"] for m in cached_metrics], [m["loss"] for m in plain_metrics], rtol=TOL)
    assert_trees_close(cached.params, plain.params)


def test_packed_text_blocks_follow_the_micro_layout():
    """Each text's (micro-batch, local row) is where `to_micro` puts its row (R=32, 4 micro-batches, 2 shards)."""
    text_row = jnp.asarray([0, 5, 31, 20, 4, 16, 15, 7], jnp.int32)
    block, local = grad_cache.packed_text_blocks(text_row, 32, 4, 2)
    rows = grad_cache.to_micro(jnp.arange(32), 4, 2)
    np.testing.assert_array_equal(rows[block, local], text_row)


def test_micro_layout_round_trip():
    x = jnp.arange(32 * 3).reshape(32, 3)
    micro = grad_cache.to_micro(x, 4, 2)
    assert micro.shape == (4, 8, 3)
    # micro-batch 1 takes rows 4..7 of shard 0's block (rows 0..15) and 20..23 of shard 1's
    np.testing.assert_array_equal(micro[1, :, 0] // 3, [4, 5, 6, 7, 20, 21, 22, 23])
    np.testing.assert_array_equal(grad_cache.from_micro(micro, 2), x)


@pytest.mark.parametrize(
    "micro, match",
    [(12, "micro_batch_size=12 does not divide batch_size 32"), (4, "micro_batch_size=4 is not divisible by the 8")],
)
def test_bad_micro_batch_size_is_refused(micro, match):
    from jasper_jax.train.stage_build import check_micro_batch_size

    mesh = make_mesh({"data": 8}, jax.devices())
    stage = StageSettings(number=3, batch_size=32, micro_batch_size=micro)
    with pytest.raises(TrainingError, match=match) as error:
        check_micro_batch_size(stage, mesh)
    assert "stages.stage3.micro_batch_size" in str(error.value)
    check_micro_batch_size(StageSettings(number=3, batch_size=32, micro_batch_size=16), mesh)  # fine
    check_micro_batch_size(StageSettings(number=3, batch_size=32, micro_batch_size=None), mesh)  # off
    with pytest.raises(TrainingError, match="stages.stage3.micro_batch_size .GradCache. is for text stages"):
        check_micro_batch_size(StageSettings(number=3, batch_size=32, micro_batch_size=16, pairs="x"), mesh)
