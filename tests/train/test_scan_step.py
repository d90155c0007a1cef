"""A train step with scanned encoder layers equals the unrolled one (real BERT student, stage-2 style split:
heads and the last layer trained, FSDP + activation sharding on 8 fake devices): losses and updated
parameters within 1e-5 (float32)."""

import jax
import numpy as np
import pytest
from flax import nnx

from jasper_jax.losses import ObjectiveConfig
from jasper_jax.models import BertConfig, JasperStudent, StudentConfig
from jasper_jax.models.params import flat_params
from jasper_jax.train import optimizer as optimizer_lib
from jasper_jax.train import sharding as sharding_lib
from jasper_jax.train import step as step_lib
from jasper_jax.train.mesh import make_mesh
from jasper_jax.train.settings import OptimizerSettings
from tests.train.train_helpers import make_batch

ENCODER = BertConfig(
    vocab_size=64,
    hidden_size=32,
    num_hidden_layers=3,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=16,
)


def train_three_steps(scan_layers: bool, remat: str, patterns):
    config = StudentConfig(
        encoder=ENCODER, heads={"fc1": 24, "fc2": 8}, remat=remat, scan_layers=scan_layers, vector_dropout=0.1
    )
    with nnx.use_eager_sharding(False):
        model = JasperStudent(config, rngs=nnx.Rngs(params=0, dropout=1))
    graphdef, trainable, frozen, rest = optimizer_lib.split_model(model, patterns)
    tx, schedule = optimizer_lib.make_optimizer(OptimizerSettings(warmup_fraction=0.2), 1e-2, 10)
    state = step_lib.init_train_state(trainable, tx)
    mesh = make_mesh({"data": 2, "fsdp": 4}, jax.devices())
    shardings = step_lib.step_shardings(mesh, sharding_lib.rules_from_config(None), state, frozen, rest)
    objective = step_lib.text_objective(ObjectiveConfig(full_head="fc1"))
    step = step_lib.jit_train_step(
        step_lib.train_step_fn(
            graphdef,
            tx,
            objective,
            schedule,
            deterministic=False,
            activation_sharding=sharding_lib.activation_sharding(mesh),
        ),
        shardings,
        mesh,
    )
    state, frozen, rest = (
        step_lib.place(x, s) for x, s in ((state, shardings.state), (frozen, shardings.frozen), (rest, shardings.rest))
    )
    losses = []
    for i in range(3):
        state, metrics = step(state, frozen, rest, step_lib.place(make_batch(seed=i), shardings.batch))
        losses.append(float(metrics["loss"]))
    return losses, flat_params(state.params)


@pytest.mark.parametrize(
    "patterns,remat", [(("heads/.*", "encoder/layers/2/.*"), "none"), ((".*",), "dots_with_no_batch_dims_saveable")]
)
def test_scanned_step_equals_unrolled_step(patterns, remat):
    losses, params = train_three_steps(False, remat, patterns)
    scanned_losses, scanned_params = train_three_steps(True, remat, patterns)
    np.testing.assert_allclose(scanned_losses, losses, rtol=1e-5, atol=1e-6)
    assert scanned_params.keys() == params.keys()
    for name, value in params.items():
        np.testing.assert_allclose(scanned_params[name], value, rtol=1e-5, atol=1e-5, err_msg=name)
    assert len(set(losses)) == 3  # the steps changed something
