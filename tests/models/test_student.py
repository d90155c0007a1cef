"""JasperStudent: heads, pooling, logical axis names, remat, dropout, and the paper-scale abstract build."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jasper_jax.models import (
    BertConfig,
    JasperStudent,
    Qwen2Config,
    StudentConfig,
    count_parameters,
    paper_student_config,
)
from jasper_jax.models.pooling import pool

TINY_QWEN2 = Qwen2Config(
    vocab_size=64,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=48,
)
TINY_BERT = BertConfig(
    vocab_size=64,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=48,
    max_position_embeddings=32,
)
LOGICAL_NAMES = {"vocab", "embed", "heads", "kv_heads", "head_dim", "mlp", "head_out", "position", "token_type"}


def inputs(lengths=(8, 5, 1), length=8, seed=0):
    rng = np.random.default_rng(seed)
    mask = (np.arange(length)[None] < np.asarray(lengths)[:, None]).astype(np.int32)
    return rng.integers(1, 64, (len(lengths), length)).astype(np.int32) * mask, mask


@pytest.mark.parametrize("encoder", [TINY_QWEN2, TINY_BERT], ids=["qwen2", "bert"])
def test_heads_are_named_normalised_and_linear_in_the_pooled_vector(encoder):
    config = StudentConfig(encoder=encoder, heads={"fc1": 24, "fc2": 8})
    model = JasperStudent(config, rngs=nnx.Rngs(0))
    ids, mask = inputs()
    out = model(ids, mask)
    assert set(out) == {"fc1", "fc2"} and out["fc1"].shape == (3, 24) and out["fc1"].dtype == jnp.float32
    np.testing.assert_allclose(np.linalg.norm(out["fc2"], axis=1), 1.0, atol=1e-6)
    pooled = np.asarray(model.pooled(ids, mask))
    head = model.heads["fc2"]
    expected = pooled @ np.asarray(head.kernel[...]) + np.asarray(head.bias[...])
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(out["fc2"], expected, atol=1e-5)
    assert model.heads["fc1"].kernel[...].shape == (32, 24)
    assert isinstance(model.encoder.layers, nnx.List) and len(model.encoder.layers) == 2


def test_every_parameter_has_logical_names():
    model = JasperStudent(StudentConfig(encoder=TINY_BERT, heads={"fc1": 8}), rngs=nnx.Rngs(0))
    for encoder in (TINY_QWEN2,):
        other = JasperStudent(StudentConfig(encoder=encoder, heads={"fc1": 8}), rngs=nnx.Rngs(0))
        for state in (nnx.state(model, nnx.Param), nnx.state(other, nnx.Param)):
            for path, variable in nnx.to_flat_state(state):
                names = variable.get_metadata().get("out_sharding")
                assert names is not None and len(names) == variable[...].ndim, (path, names)
                assert set(names) <= LOGICAL_NAMES, (path, names)
    specs = nnx.get_partition_spec(nnx.state(model, nnx.Param))
    assert tuple(specs["heads"]["fc1"]["kernel"].get_value()) == ("embed", "head_out")
    assert tuple(specs["encoder"]["layers"][0]["attention"]["key"]["kernel"].get_value()) == (
        "embed",
        "heads",
        "head_dim",
    )
    paths = {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(other, nnx.Param))}
    assert "encoder/layers/1/attention/key/kernel" in paths and "heads/fc1/kernel" in paths
    kv = nnx.get_partition_spec(nnx.state(other, nnx.Param))["encoder"]["layers"][0]["attention"]["key"]["kernel"]
    assert tuple(kv.get_value()) == ("embed", "kv_heads", "head_dim")


def test_pooling_modes_against_numpy():
    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(3, 6, 4)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 0, 0]], np.int32)
    mean = np.stack([hidden[i][mask[i] == 1].mean(0) for i in range(3)])
    last = np.stack([hidden[i][np.nonzero(mask[i])[0][-1]] for i in range(3)])
    np.testing.assert_allclose(pool(hidden, mask, "mean"), mean, atol=1e-6)
    np.testing.assert_allclose(pool(hidden, mask, "last"), last)
    np.testing.assert_allclose(pool(hidden, mask, "cls"), hidden[:, 0])
    with pytest.raises(ValueError, match="max"):
        pool(hidden, mask, "max")


def test_remat_gives_the_same_gradients():
    ids, mask = inputs()

    def loss(model):
        return jnp.sum(model(ids, mask)["fc1"] ** 3)

    grads = []
    for remat in (False, True):
        model = JasperStudent(StudentConfig(encoder=TINY_QWEN2, heads={"fc1": 8}, remat=remat), rngs=nnx.Rngs(3))
        grads.append(jax.tree.leaves(nnx.grad(loss)(model)))
    for plain, rematerialised in zip(*grads):
        np.testing.assert_allclose(plain, rematerialised, atol=1e-6)


def test_vector_dropout_only_in_training():
    config = StudentConfig(encoder=TINY_BERT, heads={"fc1": 8}, vector_dropout=0.5)
    model = JasperStudent(config, rngs=nnx.Rngs(0))
    ids, mask = inputs()
    first, second = model(ids, mask)["fc1"], model(ids, mask)["fc1"]
    np.testing.assert_array_equal(first, second)
    trained = model(ids, mask, deterministic=False)["fc1"]
    assert np.abs(np.asarray(trained) - np.asarray(first)).max() > 1e-3


def test_configs_saved_with_the_old_prefix_layout_flag_still_load():
    saved = StudentConfig(encoder=TINY_BERT, heads={"fc1": 8}).to_dict()
    assert "prefix_layout" not in saved
    assert StudentConfig.from_dict({**saved, "prefix_layout": False}) == StudentConfig.from_dict(saved)


def test_student_without_heads_outputs_the_normalised_pooled_vector():
    model = JasperStudent(StudentConfig(encoder=TINY_BERT), rngs=nnx.Rngs(0))
    ids, mask = inputs()
    pooled = np.asarray(model.pooled(ids, mask))
    np.testing.assert_allclose(
        model(ids, mask)["pooled"], pooled / np.linalg.norm(pooled, axis=1, keepdims=True), atol=1e-6
    )


@pytest.mark.parametrize("vocab", [151646, 151649])
def test_paper_scale_student_builds_abstractly_with_1_54b_parameters(vocab):
    config = paper_student_config(vocab_size=vocab, heads={}, compute_dtype="bfloat16", remat=True)
    model = nnx.eval_shape(lambda: JasperStudent(config, rngs=nnx.Rngs(0)))
    encoder_params = count_parameters(model)
    assert abs(encoder_params - 1.54e9) / 1.54e9 < 0.01, encoder_params
    leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert all(leaf.dtype == jnp.float32 for leaf in leaves)
    assert len(model.encoder.layers) == 28
    attention = model.encoder.layers[0].attention
    assert attention.query.kernel.get_value().shape == (1536, 12, 128) and attention.key.kernel.get_value().shape == (
        1536,
        2,
        128,
    )
    # with the paper's four heads the student adds hidden * (12288 + 1024 + 512 + 256) + biases
    with_heads = nnx.eval_shape(lambda: JasperStudent(paper_student_config(vocab_size=vocab), rngs=nnx.Rngs(0)))
    assert count_parameters(with_heads) - encoder_params == 1536 * 14080 + 14080


def test_created_sharded_under_a_mesh_with_rules_and_plain_without():
    from jax.sharding import AxisType

    mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"), axis_types=(AxisType.Auto,) * 3)
    rules = (
        ("embed", "fsdp"),
        ("mlp", "tensor"),
        ("heads", "tensor"),
        ("vocab", "tensor"),
        ("kv_heads", None),
        ("head_dim", None),
        ("head_out", None),
    )
    config = StudentConfig(encoder=TINY_QWEN2, heads={"fc1": 16})
    with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
        model = JasperStudent(config, rngs=nnx.Rngs(0))
    assert tuple(model.encoder.layers[0].mlp.up.kernel[...].sharding.spec) == ("fsdp", "tensor")
    with jax.set_mesh(mesh):  # no rules: logical names stay metadata, creation does not fail
        model = JasperStudent(config, rngs=nnx.Rngs(0))
    assert model.encoder.layers[0].mlp.up.kernel.get_metadata()["out_sharding"] == ("embed", "mlp")


@pytest.mark.slow
def test_paper_scale_forward_compiles_from_abstract_shapes():
    """28 layers, hidden 1536, bfloat16 compute, remat: the jitted forward compiles (about 15 s here)."""
    import time

    config = paper_student_config(vocab_size=151649, compute_dtype="bfloat16", remat=True)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: JasperStudent(config, rngs=nnx.Rngs(0))))

    def forward(state, input_ids, attention_mask):
        return nnx.merge(graphdef, state)(input_ids, attention_mask)

    tokens = jax.ShapeDtypeStruct((2, 64), jnp.int32)
    start = time.perf_counter()
    compiled = jax.jit(forward).lower(state, tokens, tokens).compile()
    seconds = time.perf_counter() - start
    shapes = jax.eval_shape(forward, state, tokens, tokens)
    assert {name: value.shape for name, value in shapes.items()} == {
        "fc1": (2, 12288),
        "fc2": (2, 1024),
        "fc3": (2, 512),
        "fc4": (2, 256),
    }
    assert compiled is not None and seconds < 180, f"compile took {seconds:.0f} s"
