"""The sharded step equals the single-device step; frozen params stay bit-identical; NaN steps are skipped."""

import jax
import numpy as np
import pytest
from flax import nnx

from jasper_jax.losses import ObjectiveConfig
from jasper_jax.models import JasperStudent, StudentConfig
from jasper_jax.train import optimizer as optimizer_lib
from jasper_jax.train import sharding as sharding_lib
from jasper_jax.train import step as step_lib
from jasper_jax.train.mesh import make_mesh
from jasper_jax.train.settings import OptimizerSettings
from tests.models.test_student import TINY_BERT, TINY_QWEN2
from tests.train.train_helpers import make_batch, make_student, simple_objective

OPT = OptimizerSettings(warmup_fraction=0.2, clip_norm=1.0, weight_decay=0.01)


def build(mesh_sizes, devices, patterns=(".*",), dropout=0.0, steps=10):
    model = make_student(dropout=dropout)
    graphdef, trainable, frozen, rest = optimizer_lib.split_model(model, patterns)
    tx, schedule = optimizer_lib.make_optimizer(OPT, 1e-2, steps)
    state = step_lib.init_train_state(trainable, tx)
    mesh = make_mesh(mesh_sizes, devices)
    rules = sharding_lib.rules_from_config(None)
    shardings = step_lib.step_shardings(mesh, rules, state, frozen, rest)
    fn = step_lib.train_step_fn(
        graphdef,
        tx,
        simple_objective,
        schedule,
        deterministic=dropout == 0.0,
        activation_sharding=sharding_lib.activation_sharding(mesh),
    )
    step = step_lib.jit_train_step(fn, shardings, mesh)
    state = step_lib.place(state, shardings.state)
    frozen = step_lib.place(frozen, shardings.frozen)
    rest = step_lib.place(rest, shardings.rest)
    return step, state, frozen, rest, shardings


def run(mesh_sizes, devices, n_steps=3, **kwargs):
    step, state, frozen, rest, shardings = build(mesh_sizes, devices, **kwargs)
    losses = []
    for i in range(n_steps):
        batch = step_lib.place(make_batch(seed=i), shardings.batch)
        state, metrics = step(state, frozen, rest, batch)
        losses.append(float(metrics["loss"]))
    return state, frozen, losses, shardings


@pytest.mark.parametrize("sizes", [{"data": 4, "fsdp": 2}, {"data": 2, "tensor": 4}, {"fsdp": 8}])
def test_sharded_step_equals_single_device(sizes):
    single, _, single_losses, _ = run({"data": 1}, jax.devices()[:1], dropout=0.2)
    sharded, _, sharded_losses, shardings = run(sizes, jax.devices(), dropout=0.2)
    np.testing.assert_allclose(sharded_losses, single_losses, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(sharded.params), jax.tree.leaves(single.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    # the rules really sharded something: the up-projection kernel is split over fsdp or tensor
    kernel = sharded.params["encoder"]["layers"][0]["up"]["kernel"][...]
    assert kernel.sharding.spec != jax.sharding.PartitionSpec(), kernel.sharding
    mu = sharded.opt_state[1][0].mu["encoder"]["layers"][0]["up"]["kernel"][...]
    assert mu.sharding.spec == kernel.sharding.spec, (mu.sharding, kernel.sharding)


def test_frozen_params_unchanged_and_no_optimizer_state():
    model = make_student()
    before = {
        optimizer_lib.path_string(p): np.asarray(v[...]) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))
    }
    patterns = ("heads/fc1/.*", optimizer_lib.last_layers_pattern(3, 1))
    state, frozen, _, _ = run({"data": 4, "fsdp": 2}, jax.devices(), patterns=patterns)
    trainable_names = {optimizer_lib.path_string(p) for p, _ in nnx.to_flat_state(state.params)}
    assert trainable_names == {n for n in before if n.startswith(("heads/fc1/", "encoder/layers/2/"))}
    for path, v in nnx.to_flat_state(frozen):
        name = optimizer_lib.path_string(path)
        assert np.array_equal(np.asarray(v[...]), before[name]), name
    for path, v in nnx.to_flat_state(state.params):
        assert not np.array_equal(np.asarray(v[...]), before[optimizer_lib.path_string(path)])
    # Adam moments exist only for the trainable params
    n_opt = sum(x.size for x in jax.tree.leaves(state.opt_state) if x.ndim > 0)
    n_trainable = sum(x.size for x in jax.tree.leaves(state.params))
    assert n_opt == 2 * n_trainable, (n_opt, n_trainable)


def test_nonfinite_step_is_skipped_and_counted():
    step, state, frozen, rest, shardings = build({"data": 8}, jax.devices())
    state, _ = step(state, frozen, rest, step_lib.place(make_batch(seed=0), shardings.batch))
    params_before = [np.asarray(x) for x in jax.tree.leaves(state.params)]
    opt_before = [np.asarray(x) for x in jax.tree.leaves(state.opt_state)]
    for expected in (1, 2):
        state, metrics = step(state, frozen, rest, step_lib.place(make_batch(seed=1, nan=True), shardings.batch))
        assert not bool(metrics["finite"])
        assert int(state.nonfinite_consecutive) == expected
    for a, b in zip(jax.tree.leaves(state.params), params_before):
        np.testing.assert_array_equal(np.asarray(a), b)
    for a, b in zip(jax.tree.leaves(state.opt_state), opt_before):
        np.testing.assert_array_equal(np.asarray(a), b)
    state, metrics = step(state, frozen, rest, step_lib.place(make_batch(seed=2), shardings.batch))
    assert bool(metrics["finite"]) and int(state.nonfinite_consecutive) == 0
    assert int(state.nonfinite_total) == 2 and int(state.step) == 4


def test_weight_decay_mask_and_schedule():
    model = make_student()
    _, trainable, _, _ = optimizer_lib.split_model(model, (".*",))
    mask = optimizer_lib.decay_mask(trainable)
    flags = {optimizer_lib.path_string(p): bool(v) for p, v in jax.tree_util.tree_flatten_with_path(mask)[0]}
    flags = {k.removesuffix("/value"): v for k, v in flags.items()}
    assert flags["heads/fc1/kernel"] and flags["encoder/embed/embedding"]
    assert not flags["heads/fc1/bias"] and not flags["encoder/layers/0/norm/scale"]
    # a real encoder: every bias and norm scale is left alone, also the (heads, head_dim) q/k/v biases
    for encoder in (TINY_QWEN2, TINY_BERT):
        with nnx.use_eager_sharding(False):
            student = JasperStudent(StudentConfig(encoder=encoder, heads={"fc1": 8}), rngs=nnx.Rngs(0))
        mask = optimizer_lib.decay_mask(nnx.state(student, nnx.Param))
        flags = {optimizer_lib.path_string(p): bool(v) for p, v in jax.tree_util.tree_leaves_with_path(mask)}
        assert not flags["encoder/layers/0/attention/query/bias"]  # (heads, head_dim)
        assert flags["encoder/layers/0/attention/query/kernel"]
        for name, decays in flags.items():
            assert decays == name.endswith(("kernel", "embedding")), name
    schedule = optimizer_lib.learning_rate_schedule(1e-3, 100, 0.1)
    assert float(schedule(0)) == 0.0 and abs(float(schedule(10)) - 1e-3) < 1e-9 and float(schedule(100)) < 1e-8


def test_trainable_patterns_errors():
    assert optimizer_lib.last_layers_pattern(28, 3) == "encoder/layers/(25|26|27)/.*"
    with pytest.raises(ValueError, match="no parameter matches"):
        optimizer_lib.split_model(make_student(), ("heads/typo/.*",))
    with pytest.raises(ValueError, match="only 3 layers"):
        optimizer_lib.trainable_patterns((), 4, 3)


@pytest.mark.parametrize("sizes", [{"data": 2, "fsdp": 4}, {"data": 2, "tensor": 4}])
def test_real_student_and_objective_sharded_equals_single_device(sizes):
    from jasper_jax.models import BertConfig, JasperStudent, StudentConfig

    config = StudentConfig(
        encoder=BertConfig(
            vocab_size=64,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=16,
        ),
        heads={"fc1": 24, "fc2": 8},
    )
    objective = step_lib.text_objective(ObjectiveConfig(full_head="fc1"))

    def run_real(mesh_sizes, devices):
        with nnx.use_eager_sharding(False):
            model = JasperStudent(config, rngs=nnx.Rngs(params=0, dropout=1))
        graphdef, trainable, frozen, rest = optimizer_lib.split_model(model, ("heads/.*", "encoder/layers/1/.*"))
        tx, schedule = optimizer_lib.make_optimizer(OPT, 1e-2, 10)
        state = step_lib.init_train_state(trainable, tx)
        mesh = make_mesh(mesh_sizes, devices)
        shardings = step_lib.step_shardings(mesh, sharding_lib.rules_from_config(None), state, frozen, rest)
        step = step_lib.jit_train_step(
            step_lib.train_step_fn(
                graphdef, tx, objective, schedule, activation_sharding=sharding_lib.activation_sharding(mesh)
            ),
            shardings,
            mesh,
        )
        state, frozen, rest = (
            step_lib.place(x, s)
            for x, s in ((state, shardings.state), (frozen, shardings.frozen), (rest, shardings.rest))
        )
        losses = []
        for i in range(3):
            state, metrics = step(state, frozen, rest, step_lib.place(make_batch(seed=i), shardings.batch))
            losses.append(float(metrics["loss"]))
        return losses, state

    single_losses, single = run_real({"data": 1}, jax.devices()[:1])
    losses, sharded = run_real(sizes, jax.devices())
    np.testing.assert_allclose(losses, single_losses, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(sharded.params), jax.tree.leaves(single.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
