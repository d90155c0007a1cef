"""Checkpoints: exact resume, restore onto a different mesh (8 -> 4 devices), partial saves ignored."""

import jax
import numpy as np
from flax import nnx

from jasper_jax.train import optimizer as optimizer_lib
from jasper_jax.train import sharding as sharding_lib
from jasper_jax.train import step as step_lib
from jasper_jax.train.checkpoint import StageCheckpointer
from jasper_jax.train.mesh import make_mesh
from jasper_jax.train.settings import OptimizerSettings
from tests.train.train_helpers import make_batch, make_student, simple_objective

OPT = OptimizerSettings(warmup_fraction=0.2)
PATTERNS = ("heads/.*", "encoder/layers/2/.*")


class CountingIterator:
    def __init__(self):
        self.position = 0

    def get_state(self):
        return {"position": self.position}

    def set_state(self, state):
        self.position = state["position"]


def setup(mesh_sizes, devices, heads=None):
    model = make_student(heads)
    graphdef, trainable, frozen, rest = optimizer_lib.split_model(model, PATTERNS)
    tx, schedule = optimizer_lib.make_optimizer(OPT, 1e-2, 10)
    state = step_lib.init_train_state(trainable, tx)
    mesh = make_mesh(mesh_sizes, devices)
    shardings = step_lib.step_shardings(mesh, sharding_lib.rules_from_config(None), state, frozen, rest)
    fn = step_lib.train_step_fn(graphdef, tx, simple_objective, schedule)
    step = step_lib.jit_train_step(fn, shardings, mesh)
    return step, state, frozen, rest, shardings


def advance(step, state, frozen, rest, shardings, seeds):
    losses = []
    for seed in seeds:
        state, metrics = step(state, frozen, rest, step_lib.place(make_batch(seed=seed), shardings.batch))
        losses.append(float(metrics["loss"]))
    return state, losses


def test_resume_on_another_mesh_continues_the_same_trajectory(tmp_path):
    step8, state, frozen, rest, sh8 = setup({"fsdp": 8}, jax.devices())
    state = step_lib.place(state, sh8.state)
    frozen, rest = step_lib.place(frozen, sh8.frozen), step_lib.place(rest, sh8.rest)
    state, _ = advance(step8, state, frozen, rest, sh8, [0, 1])
    iterator = CountingIterator()
    iterator.position = 2
    checkpointer = StageCheckpointer(tmp_path / "ckpt", every=2, keep=2)
    checkpointer.save(2, state, frozen, iterator, {"stage": 1})
    checkpointer.wait()
    _, reference_losses = advance(step8, state, frozen, rest, sh8, [2, 3])

    # a fresh process-like restore on 4 devices with a different layout
    step4, abstract_state, abstract_frozen, rest4, sh4 = setup({"data": 2, "tensor": 2}, jax.devices()[:4])
    reader = StageCheckpointer(tmp_path / "ckpt", every=2, keep=2)
    assert reader.latest_step() == 2
    fresh_iterator = CountingIterator()
    restored, frozen4, meta = reader.restore(2, abstract_state, sh4.state, abstract_frozen, sh4.frozen, fresh_iterator)
    assert fresh_iterator.position == 2 and meta["stage"] == 1 and meta["step"] == 2
    assert int(restored.step) == 2
    leaf = restored.params["encoder"]["layers"][2]["up"]["kernel"][...]
    assert len(leaf.sharding.device_set) == 4, leaf.sharding
    rest4 = step_lib.place(rest4, sh4.rest)
    _, resumed_losses = advance(step4, restored, frozen4, rest4, sh4, [2, 3])
    np.testing.assert_allclose(resumed_losses, reference_losses, rtol=1e-5)
    checkpointer.close()
    reader.close()


def test_partial_checkpoint_is_ignored_and_params_chain_to_a_bigger_model(tmp_path):
    step, state, frozen, rest, sh = setup({"data": 8}, jax.devices())
    state = step_lib.place(state, sh.state)
    frozen, rest = step_lib.place(frozen, sh.frozen), step_lib.place(rest, sh.rest)
    state, _ = advance(step, state, frozen, rest, sh, [0])
    checkpointer = StageCheckpointer(tmp_path / "ckpt", every=1, keep=3)
    checkpointer.save(1, state, frozen, None, {"stage": 1})
    checkpointer.close()
    # what a crash during an asynchronous save leaves behind: a temporary directory
    (tmp_path / "ckpt" / "2.orbax-checkpoint-tmp-1234").mkdir()
    reader = StageCheckpointer(tmp_path / "ckpt", every=1, keep=3)
    assert reader.latest_step() == 1

    # the next stage's model has one more head: it keeps its init, everything else comes from the checkpoint
    bigger = make_student({"fc1": 24, "fc2": 8}, seed=5)
    params = nnx.state(bigger, nnx.Param)
    params_sh = sharding_lib.state_shardings(params, sharding_lib.rules_from_config(None), make_mesh({"data": 8}))
    loaded = reader.restore_params(1, params, params_sh)
    assert "fc2" not in loaded["heads"]
    np.testing.assert_array_equal(
        np.asarray(loaded["heads"]["fc1"]["kernel"]), np.asarray(state.params["heads"]["fc1"]["kernel"][...])
    )
    np.testing.assert_array_equal(
        np.asarray(loaded["encoder"]["embed"]["embedding"]), np.asarray(frozen["encoder"]["embed"]["embedding"][...])
    )
    reader.close()
