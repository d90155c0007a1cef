"""bfloat16 compute: the parameters are cast on their shards before FSDP gathers them; the step is unchanged.

On 8 fake CPU devices (data 2 x fsdp 4), a tiny real BERT student. The parameters the model casts to its
compute dtype at use (`layers.compute_dtype_casts`: projection kernels and biases) are cast in the step
(`train_step_fn(gather_in_compute_dtype=True)`, the default), so the all-gathers of the weight matrices
move bfloat16; in float32 they move float32. The dtype is read from the HLO right after SPMD partitioning
(an XLA dump of the compile): the CPU backend's later `float-normalization-bf16` pass upcasts every bf16
collective to f32 (the CPU runtime has no bf16 collectives), so the final `compiled.as_text()` shows f32
gathers of bf16-rounded values on CPU whatever the step does; a GPU or TPU keeps the partitioner's dtype.

The reference for the values is the same step with `gather_in_compute_dtype=False` (each layer casts the
float32 arrays itself): float32 params after a step equal it to 1e-6; in bfloat16 the gradients (recorded
by an optimizer whose state is the last gradient) equal it within bfloat16 rounding. The model's own
forward (BERT; Qwen2 with its RMSNorm scales) is bit-identical with the listed parameters cast beforehand.
"""

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jasper_jax.losses import ObjectiveConfig
from jasper_jax.models import BertConfig, JasperStudent, Qwen2Config, StudentConfig
from jasper_jax.models.layers import compute_dtype_casts
from jasper_jax.models.params import path_string
from jasper_jax.train import optimizer as optimizer_lib
from jasper_jax.train import sharding as sharding_lib
from jasper_jax.train import step as step_lib
from jasper_jax.train.mesh import batch_size_divisor, make_mesh
from jasper_jax.train.settings import OptimizerSettings
from jasper_jax.train.step_parts import cast_state
from tests.train.train_helpers import make_batch

GATHER = re.compile(r"= (\w+)\[([0-9,]*)\]\S* all-gather(?:-start)?\(")


def student(compute_dtype):
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
        compute_dtype=compute_dtype,
    )
    with nnx.use_eager_sharding(False):
        return JasperStudent(config, rngs=nnx.Rngs(params=0, dropout=1))


def gradient_recorder() -> optax.GradientTransformation:
    """An optimizer that leaves the params as they are and keeps the step's gradient as its state."""
    return optax.GradientTransformation(
        init=lambda params: jax.tree.map(jnp.zeros_like, params),
        update=lambda grads, state, params=None: (jax.tree.map(jnp.zeros_like, grads), grads),
    )


def built_step(compute_dtype, *, cast=True, micro_batch_size=0, tx=None):
    """(jitted step, placed args) of the tiny student on data 2 x fsdp 4, every parameter trained."""
    graphdef, trainable, frozen, rest = optimizer_lib.split_model(student(compute_dtype), (".*",))
    tx_default, schedule = optimizer_lib.make_optimizer(OptimizerSettings(), 1e-2, 10)
    tx = tx or tx_default
    state = step_lib.init_train_state(trainable, tx)
    mesh = make_mesh({"data": 2, "fsdp": 4}, jax.devices())
    shardings = step_lib.step_shardings(mesh, sharding_lib.rules_from_config(None), state, frozen, rest)
    fn = step_lib.train_step_fn(
        graphdef,
        tx,
        step_lib.text_objective(ObjectiveConfig(full_head="fc1")),
        schedule,
        activation_sharding=sharding_lib.activation_sharding(mesh),
        objective_sharding=sharding_lib.replicated(mesh),
        micro_batch_size=micro_batch_size,
        batch_shards=batch_size_divisor(mesh),
        gather_in_compute_dtype=cast,
    )
    args = (
        step_lib.place(state, shardings.state),
        step_lib.place(frozen, shardings.frozen),
        step_lib.place(rest, shardings.rest),
        step_lib.place(make_batch(batch_size=16, length=8, seed=0), shardings.batch),
    )
    return step_lib.jit_train_step(fn, shardings, mesh), args


def partitioned_hlo(step, args, folder: Path) -> str:
    """The step's HLO as the SPMD partitioner leaves it (before the backend's own dtype passes).

    The dump options are not part of JAX's persistent-cache key: a process whose first compile ran with the
    cache on (`train()` enables it, in a folder that outlives the run) may load this step from disk and dump
    nothing. So the cache is off for this compile; JAX decides once per process whether it uses the cache
    (`is_cache_used` memoises it), hence the resets around the switch."""
    from jax.experimental.compilation_cache import compilation_cache

    previous = jax.config.jax_enable_compilation_cache
    compilation_cache.reset_cache()
    jax.config.update("jax_enable_compilation_cache", False)  # compile here, whatever ran before in this process
    try:
        step.lower(*args).compile(
            compiler_options={"xla_dump_to": str(folder), "xla_dump_hlo_pass_re": "spmd-partitioning"}
        )
    finally:
        jax.config.update("jax_enable_compilation_cache", previous)
        compilation_cache.reset_cache()
    dumps = [path for path in folder.iterdir() if "after_spmd-partitioning" in path.name]
    assert len(dumps) == 1, f"no single HLO dump in {folder} (persistent compilation cache hit?): {dumps}"
    return dumps[0].read_text()


def weight_matrix_shapes() -> set[str]:
    """The shapes ("32,4,8") of the weight matrices the model casts to its compute dtype (projection kernels)."""
    model = student("bfloat16")
    cast = set(compute_dtype_casts(model))
    params = {path_string(path): variable[...] for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    return {",".join(map(str, params[name].shape)) for name in cast if name.endswith("/kernel")}


@pytest.mark.parametrize(
    "compute_dtype, micro_batch_size, gathered",
    [("bfloat16", 0, "bf16"), ("bfloat16", 8, "bf16"), ("float32", 0, "f32")],
    ids=["bf16", "bf16-gradcache", "f32"],
)
def test_weight_matrices_are_gathered_in_the_compute_dtype(tmp_path, compute_dtype, micro_batch_size, gathered):
    step, args = built_step(compute_dtype, micro_batch_size=micro_batch_size)
    gathers = GATHER.findall(partitioned_hlo(step, args, tmp_path))
    shapes = weight_matrix_shapes()
    assert shapes == {"32,4,8", "4,8,32", "32,64", "64,32"}, shapes  # q/k/v, output, mlp up, mlp down
    of_weights = [(dtype, shape) for dtype, shape in gathers if shape in shapes]
    # FSDP gathers every kernel (embed over fsdp), in the compute dtype only
    assert {shape for _, shape in of_weights} == shapes, gathers
    assert {dtype for dtype, _ in of_weights} == {gathered}, of_weights
    # the float32 heads and the LayerNorm parameters stay float32 in either dtype
    assert ("f32", "32,24") in gathers and ("f32", "32") in gathers, gathers


def test_float32_step_is_unchanged_by_the_cast():
    assert compute_dtype_casts(student("float32")) == {}
    results = []
    for cast in (True, False):
        step, args = built_step("float32", cast=cast)
        state, metrics = step(*args)
        results.append((jax.device_get(state.params), float(metrics["loss"])))
    (params, loss), (reference, reference_loss) = results
    np.testing.assert_allclose(loss, reference_loss, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(reference)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("micro_batch_size", [0, 8], ids=["plain", "gradcache"])
def test_bf16_gradients_equal_the_uncast_step(micro_batch_size):
    results = []
    for cast in (True, False):
        step, args = built_step("bfloat16", cast=cast, micro_batch_size=micro_batch_size, tx=gradient_recorder())
        state, metrics = step(*args)
        results.append((jax.device_get(state.opt_state), jax.device_get(metrics)))
    (grads, metrics), (reference, reference_metrics) = results
    # the gradients reach the float32 master params: float32, like the optimizer state
    assert {leaf.dtype for leaf in jax.tree.leaves(grads)} == {np.dtype(np.float32)}
    # the layers see the same values; only the order of the bf16 sums may differ (bit-identical on XLA CPU
    # today): a few bf16 ulps (2^-8 = 0.4%) of each gradient, and 0.1% of its largest entry
    np.testing.assert_allclose(metrics["loss"], reference_metrics["loss"], rtol=1e-3)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(reference)):
        scale = float(np.max(np.abs(b))) or 1.0
        np.testing.assert_allclose(a, b, rtol=1e-2, atol=1e-3 * scale, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("family", ["bert", "qwen2"])
def test_casting_the_listed_parameters_leaves_the_bf16_forward_unchanged(family):
    """The model's own forward, with the parameters `compute_dtype_casts` lists cast to bfloat16 beforehand
    (Qwen2: RMSNorm scales too), equals the forward on the float32 parameters bit for bit."""
    model = student("bfloat16")
    if family == "qwen2":
        encoder = Qwen2Config(
            vocab_size=64,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
        )
        config = StudentConfig(encoder=encoder, heads={"fc1": 24}, compute_dtype="bfloat16")
        with nnx.use_eager_sharding(False):
            model = JasperStudent(config, rngs=nnx.Rngs(params=0, dropout=1))
    casts = compute_dtype_casts(model)
    assert family != "qwen2" or any(name.endswith("norm/scale") for name in casts), sorted(casts)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    cast_model = nnx.merge(graphdef, cast_state(params, casts), rest)
    dtypes = {np.dtype(leaf.dtype) for leaf in jax.tree.leaves(nnx.state(cast_model, nnx.Param))}
    assert dtypes == {np.dtype(jnp.bfloat16), np.dtype(np.float32)}, dtypes  # cast ones, LayerNorm / heads
    batch = make_batch(batch_size=4, length=8, seed=1)
    expected = model(batch["input_ids"], batch["attention_mask"])
    got = cast_model(batch["input_ids"], batch["attention_mask"])
    for name in expected:
        np.testing.assert_array_equal(np.asarray(got[name]), np.asarray(expected[name]), err_msg=name)
