"""Scanned encoder layers (`scan_layers`) and remat policies against today's unrolled, un-rematerialised
layers as the reference: same outputs and gradients (float32, tolerances stated per test)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jasper_jax.models import JasperStudent, StudentConfig
from jasper_jax.models import remat as remat_lib
from jasper_jax.models.params import flat_params
from jasper_jax.models.qwen2 import Qwen2Config
from jasper_jax.models.qwen3 import Qwen3Config
from jasper_jax.train import optimizer as optimizer_lib
from tests.models.test_student import TINY_BERT, TINY_QWEN2, inputs

FOUR_LAYER_QWEN2 = Qwen2Config(**{**TINY_QWEN2.__dict__, "num_hidden_layers": 4})
ENCODERS = {
    "bert": TINY_BERT,
    "qwen2": TINY_QWEN2,
    "qwen2_causal": Qwen2Config(**{**TINY_QWEN2.__dict__, "causal": True}),
    "qwen3": Qwen3Config(**{**TINY_QWEN2.__dict__, "model_type": "qwen3", "head_dim": 8}),
}


def student(encoder, **options):
    return JasperStudent(StudentConfig(encoder=encoder, heads={"fc1": 8}, **options), rngs=nnx.Rngs(3))


def loss(model, ids, mask):
    return jnp.sum(model(ids, mask)["fc1"] ** 3)


def outputs_and_grads(model, ids, mask, jit=False):
    def run(model):
        value, grads = nnx.value_and_grad(loss)(model, ids, mask)
        return value, model(ids, mask)["fc1"], grads

    value, outputs, grads = (jax.jit(run) if jit else run)(model)
    return value, outputs, flat_params(grads)


@pytest.mark.parametrize("family", sorted(ENCODERS))
def test_scanned_layers_equal_unrolled_outputs_and_gradients(family):
    ids, mask = inputs()
    reference = outputs_and_grads(student(ENCODERS[family]), ids, mask)
    scanned = outputs_and_grads(student(ENCODERS[family], scan_layers=True), ids, mask)
    np.testing.assert_allclose(scanned[0], reference[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scanned[1], reference[1], atol=1e-5)
    assert scanned[2].keys() == reference[2].keys()  # gradients per layer, as the parameters
    for name, gradient in reference[2].items():
        np.testing.assert_allclose(scanned[2][name], gradient, atol=1e-5, err_msg=name)
    assert max(float(np.abs(g).max()) for g in reference[2].values()) > 0


def test_scanned_model_keeps_per_layer_parameter_names():
    plain, scanned = flat_params(student(TINY_QWEN2)), flat_params(student(TINY_QWEN2, scan_layers=True))
    assert plain.keys() == scanned.keys() and "encoder/layers/1/mlp/up/kernel" in plain
    for name, value in plain.items():
        np.testing.assert_array_equal(scanned[name], value)


@pytest.mark.parametrize("policy", ["full", "dots_saveable", "dots_with_no_batch_dims_saveable"])
@pytest.mark.parametrize("scan", [False, True])
def test_every_remat_policy_gives_the_gradients_of_none(policy, scan):
    ids, mask = inputs()
    reference = outputs_and_grads(student(TINY_QWEN2), ids, mask, jit=True)
    got = outputs_and_grads(student(TINY_QWEN2, remat=policy, scan_layers=scan), ids, mask, jit=True)
    for name, gradient in reference[2].items():
        np.testing.assert_allclose(got[2][name], gradient, atol=1e-6, rtol=1e-6, err_msg=name)


def test_frozen_lower_layers_and_trained_upper_layers_scan_apart():
    """Stage 2's split (last layers trained): the frozen group is scanned without a backward pass, and the
    trained layers' gradients equal the unrolled model's (1e-5)."""
    ids, mask = inputs()
    patterns = optimizer_lib.trainable_patterns(("heads/fc1/.*",), 2, FOUR_LAYER_QWEN2.num_hidden_layers)
    grads = []
    for scan in (False, True):
        graphdef, trainable, frozen, rest = optimizer_lib.split_model(
            student(FOUR_LAYER_QWEN2, scan_layers=scan, remat="full"), patterns
        )

        def objective(params, frozen, rest, graphdef=graphdef):
            return loss(nnx.merge(graphdef, params, frozen, rest), ids, mask)

        grads.append(flat_params(jax.jit(jax.grad(objective))(trainable, frozen, rest)))
        if scan:
            jaxpr = jax.make_jaxpr(jax.grad(objective))(trainable, frozen, rest)
            scans = [eqn for eqn in jaxpr.jaxpr.eqns if eqn.primitive.name == "scan"]
            assert [eqn.params["length"] for eqn in scans] == [2, 2, 2]  # frozen fwd, trained fwd + bwd
    assert grads[0].keys() == grads[1].keys() and "encoder/layers/3/mlp/up/kernel" in grads[0]
    for name, gradient in grads[0].items():
        np.testing.assert_allclose(grads[1][name], gradient, atol=1e-5, err_msg=name)


def test_remat_names_and_legacy_booleans():
    assert remat_lib.normalize(True) == "full" and remat_lib.normalize(False) == "none"
    assert remat_lib.normalize("false") == "none" and remat_lib.normalize("dots_saveable") == "dots_saveable"
    assert StudentConfig.from_dict(StudentConfig(encoder=TINY_BERT, remat=True).to_dict()).remat == "full"
    with pytest.raises(ValueError, match="choose from none, full"):
        remat_lib.normalize("sometimes")
    with pytest.raises(ValueError, match="pinned host memory"):
        remat_lib.check_platform("offload", "cpu")
    remat_lib.check_platform("offload", "gpu")
