"""Stacked layer storage (`jasper_jax.train.layer_stacking`): the stacks' names, values and sharding axes,
and a train step over stacked states equal to today's scanned step over per-layer states (losses and updated
parameters within 1e-5 in float32; stage-2 and stage-3 splits, weight decay on, GradCache too). Scanned
against unrolled layers is tests/train/test_scan_step.py's."""

import jax
import numpy as np
import pytest
from flax import nnx

from jasper_jax.losses import ObjectiveConfig
from jasper_jax.models import JasperStudent, StudentConfig
from jasper_jax.models.params import flat_params, path_string
from jasper_jax.models.qwen2 import Qwen2Config
from jasper_jax.train import layer_stacking
from jasper_jax.train import optimizer as optimizer_lib
from jasper_jax.train import sharding as sharding_lib
from jasper_jax.train import step as step_lib
from jasper_jax.train.mesh import make_mesh
from jasper_jax.train.settings import OptimizerSettings
from tests.train.train_helpers import make_batch

ENCODER = Qwen2Config(
    vocab_size=64,
    hidden_size=32,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=64,
)
STAGE2 = ("heads/.*", "encoder/layers/(2|3)/.*")
STAGE3 = (".*",)


def split_student(patterns, scan_layers=True):
    config = StudentConfig(encoder=ENCODER, heads={"fc1": 24, "fc2": 8}, scan_layers=scan_layers, vector_dropout=0.1)
    with nnx.use_eager_sharding(False):
        model = JasperStudent(config, rngs=nnx.Rngs(params=0, dropout=1))
    return optimizer_lib.split_model(model, patterns)


def test_consecutive_like_layers_stack_under_one_key_and_split_back_exactly():
    _, trainable, frozen, _ = split_student(STAGE2)
    stacked_frozen, stacked_trainable = layer_stacking.stack_state(frozen), layer_stacking.stack_state(trainable)
    frozen_names = {path_string(p) for p, _ in nnx.to_flat_state(stacked_frozen)}
    trainable_names = {path_string(p) for p, _ in nnx.to_flat_state(stacked_trainable)}
    assert "encoder/layers/0-1/mlp/up/kernel" in frozen_names and "encoder/layers/2-3/mlp/up/kernel" in trainable_names
    assert not any("/layers/0/" in name or "/layers/2/" in name for name in frozen_names | trainable_names)
    # one array per kind of layer parameter instead of one per layer
    per_layer = len([n for n in flat_params(frozen) if n.startswith("encoder/layers/")])
    assert len([n for n in frozen_names if n.startswith("encoder/layers/")]) == per_layer // 2
    for state, stacked in ((frozen, stacked_frozen), (trainable, stacked_trainable)):
        stacked_values = flat_params(stacked)
        for name, value in flat_params(state).items():
            parts = name.split("/")
            if parts[:2] == ["encoder", "layers"]:
                first = 0 if int(parts[2]) < 2 else 2
                key = "/".join(["encoder", "layers", f"{first}-{first + 1}", *parts[3:]])
                np.testing.assert_array_equal(stacked_values[key][int(parts[2]) - first], value, err_msg=name)
        back = flat_params(layer_stacking.unstack_state(stacked))
        original = flat_params(state)
        assert back.keys() == original.keys()
        for name, value in original.items():
            np.testing.assert_array_equal(back[name], value, err_msg=name)
    # the layer axis is never sharded; the other axes keep their logical names
    up = stacked_trainable["encoder"]["layers"]["2-3"]["mlp"]["up"]["kernel"]
    single = trainable["encoder"]["layers"][2]["mlp"]["up"]["kernel"]
    assert up.get_metadata()["out_sharding"] == (None, *single.get_metadata()["out_sharding"])
    mesh = make_mesh({"data": 2, "fsdp": 4}, jax.devices())
    rules = sharding_lib.rules_from_config(None)
    stacked_spec = sharding_lib.state_specs(stacked_trainable, rules, mesh)["encoder"]["layers"]["2-3"]["mlp"]["up"]
    single_spec = sharding_lib.state_specs(trainable, rules, mesh)["encoder"]["layers"][2]["mlp"]["up"]
    assert tuple(stacked_spec["kernel"].get_value()) == (None, *single_spec["kernel"].get_value())


def test_weight_decay_judges_a_stack_by_one_layers_rank():
    _, trainable, _, _ = split_student(STAGE3)
    per_layer = {
        path_string(p): bool(v) for p, v in jax.tree_util.tree_leaves_with_path(optimizer_lib.decay_mask(trainable))
    }
    stacked = layer_stacking.stack_state(trainable)
    mask = {path_string(p): bool(v) for p, v in jax.tree_util.tree_leaves_with_path(optimizer_lib.decay_mask(stacked))}
    assert mask["encoder/layers/0-3/mlp/up/kernel"] and not mask["encoder/layers/0-3/input_norm/scale"]
    for name, decays in mask.items():
        assert decays == per_layer[layer_stacking.per_layer_name(name)], name


def train_three_steps(patterns, stacked: bool, micro_batch_size: int = 0):
    """Three steps of the real step on 8 fake devices (FSDP + activation sharding) with scanned layers;
    stacked=False is today's path (per-layer states, stacked at trace time), the reference. Returns the
    losses, the per-layer updated parameters, Adam's first moments and the frozen parameters."""
    graphdef, trainable, frozen, rest = split_student(patterns)
    tx, schedule = optimizer_lib.make_optimizer(OptimizerSettings(warmup_fraction=0.2, weight_decay=0.1), 1e-2, 10)
    abstract_state = jax.eval_shape(lambda p: step_lib.init_train_state(p, tx), trainable)
    abstract_frozen = jax.eval_shape(lambda f: f, frozen)
    mesh = make_mesh({"data": 2, "fsdp": 4}, jax.devices())
    rules = sharding_lib.rules_from_config(None)

    def make_shardings(state, frozen_state):
        return step_lib.step_shardings(mesh, rules, state, frozen_state, rest)

    shardings = make_shardings(abstract_state, abstract_frozen)
    stacking = layer_stacking.layer_stacking(stacked, abstract_state, abstract_frozen, shardings, make_shardings)
    assert stacking.enabled == stacked
    objective = step_lib.text_objective(ObjectiveConfig(full_head="fc1"))
    step = step_lib.jit_train_step(
        step_lib.train_step_fn(
            graphdef,
            tx,
            objective,
            schedule,
            deterministic=False,
            activation_sharding=sharding_lib.activation_sharding(mesh),
            micro_batch_size=micro_batch_size,
            batch_shards=8,
        ),
        stacking.shardings,
        mesh,
    )
    state = step_lib.place(step_lib.init_train_state(trainable, tx), shardings.state)
    state, frozen = stacking.to_step(state, step_lib.place(frozen, shardings.frozen))
    rest = step_lib.place(rest, shardings.rest)
    losses = []
    for i in range(3):
        state, metrics = step(state, frozen, rest, step_lib.place(make_batch(seed=i), stacking.shardings.batch))
        losses.append(float(metrics["loss"]))
    state, frozen = stacking.to_checkpoint(state, frozen)
    moments = state.opt_state[-1][0]  # clip, then adamw's (ScaleByAdamState, ...)
    return losses, flat_params(state.params), flat_params(moments.mu), flat_params(frozen)


@pytest.mark.parametrize("patterns,micro", [(STAGE2, 0), (STAGE3, 8)])  # stage 3 plain: the stages test
def test_the_stacked_step_equals_the_per_layer_step(patterns, micro):
    losses, params, mu, frozen = train_three_steps(patterns, stacked=False, micro_batch_size=micro)
    got_losses, got_params, got_mu, got_frozen = train_three_steps(patterns, stacked=True, micro_batch_size=micro)
    np.testing.assert_allclose(got_losses, losses, rtol=1e-5, atol=1e-6)
    assert len(set(losses)) == 3  # the steps changed something
    for expected, got in ((params, got_params), (mu, got_mu)):
        assert got.keys() == expected.keys()  # per-layer names again after to_checkpoint
        for name, value in expected.items():
            np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-5, err_msg=name)
    assert got_frozen.keys() == frozen.keys()
    for name, value in frozen.items():
        np.testing.assert_array_equal(got_frozen[name], value, err_msg=name)  # frozen: bit-identical
