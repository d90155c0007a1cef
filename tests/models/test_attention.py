"""Attention implementations against the einsum reference: values and gradients, in float32, to 1e-5.

Every implementation that runs on CPU ("xla", "auto", and "splash" in Pallas interpret mode) is compared
with "einsum" (the reference the transformers comparisons were made with), for the attention function
itself (GQA, padding, causal, segment ids) and through BERT, Qwen2 (bidirectional and causal, GQA) and
SigLIP: encoder outputs at real tokens, and the gradients of a scalar of the pooled outputs with respect
to every parameter and to the inputs (token embeddings, pixels). The "auto" rule per platform, the
refusals and the StudentConfig field (old saved configs load; it round-trips) are checked too.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jasper_jax.models import BertConfig, JasperStudent, Qwen2Config, StudentConfig, layers
from jasper_jax.models import attention as attention_lib
from jasper_jax.models.bert import BertEncoder
from jasper_jax.models.qwen2 import Qwen2Encoder
from jasper_jax.models.qwen3 import Qwen3Config, Qwen3Encoder
from jasper_jax.models.siglip import SiglipVisionEncoder, tiny_siglip_config

TOLERANCE = 1e-5
CPU_IMPLEMENTATIONS = ("xla", "auto")
LENGTHS = (9, 6, 1)  # a full row, a padded one, a row with a single real token
LENGTH = 9

TINY_BERT = BertConfig(
    vocab_size=64,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=48,
    max_position_embeddings=32,
)
TINY_QWEN2 = Qwen2Config(
    vocab_size=64,
    hidden_size=48,
    num_hidden_layers=2,
    num_attention_heads=6,
    num_key_value_heads=2,
    intermediate_size=64,
)  # GQA: 3 query heads per kv head
TEXT_ENCODERS = {
    "bert": (BertEncoder, TINY_BERT),
    "qwen2": (Qwen2Encoder, TINY_QWEN2),
    "qwen2_causal": (Qwen2Encoder, Qwen2Config(**{**TINY_QWEN2.__dict__, "causal": True})),
    "qwen3": (Qwen3Encoder, Qwen3Config(**{**TINY_QWEN2.__dict__, "model_type": "qwen3", "head_dim": 16})),
}


def assert_close(actual, expected, what: str, tolerance: float = TOLERANCE) -> None:
    """|actual - expected| <= tolerance * max(1, max |expected|), naming the worst difference."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    scale = max(1.0, float(np.max(np.abs(expected))))
    worst = float(np.max(np.abs(actual - expected)))
    assert worst <= tolerance * scale, f"{what}: max difference {worst:.3g} > {tolerance:g} x {scale:.3g}"


def padding_mask(lengths=LENGTHS, length=LENGTH) -> jax.Array:
    return (jnp.arange(length)[None] < jnp.asarray(lengths)[:, None]).astype(jnp.int32)


def qkv(batch=3, length=LENGTH, heads=6, kv_heads=2, head_dim=8, seed=0):
    keys = jax.random.split(jax.random.key(seed), 3)
    return (
        jax.random.normal(keys[0], (batch, length, heads, head_dim)),
        jax.random.normal(keys[1], (batch, length, kv_heads, head_dim)),
        jax.random.normal(keys[2], (batch, length, kv_heads, head_dim)),
    )


# ------------------------------------------------------------------------------------------ the function


# (query heads, kv heads, segment ids, causal)
FUNCTION_CASES = {
    "mha": (4, 4, False, False),
    "gqa_causal": (6, 2, False, True),
    "gqa_segments": (6, 2, True, False),
    "gqa_segments_causal": (6, 2, True, True),
    "mqa_segments_causal": (4, 1, True, True),
}


@pytest.mark.parametrize("heads,kv_heads,segments,causal", list(FUNCTION_CASES.values()), ids=list(FUNCTION_CASES))
@pytest.mark.parametrize("implementation", CPU_IMPLEMENTATIONS)
def test_function_equals_einsum_in_values_and_gradients(implementation, heads, kv_heads, segments, causal):
    query, key, value = qkv(heads=heads, kv_heads=kv_heads)
    mask = padding_mask()
    segment_ids = None
    if segments:  # three texts; two segments then padding; one segment
        segment_ids = jnp.asarray([[0, 0, 0, 1, 1, 1, 1, 2, 2], [0, 0, 1, 1, 1, 1, 0, 0, 0], [5] * LENGTH])
    weights = jax.random.normal(jax.random.key(7), query.shape)

    def scalar(name):
        def f(q, k, v):
            out = attention_lib.dot_product_attention(
                q, k, v, mask, causal=causal, segment_ids=segment_ids, implementation=name
            )
            return jnp.sum(out * weights * mask[:, :, None, None]), out

        return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))

    (_, expected), expected_grads = scalar("einsum")(query, key, value)
    (_, actual), actual_grads = scalar(implementation)(query, key, value)
    assert actual.shape == query.shape and actual.dtype == query.dtype
    assert_close(actual, expected, f"{implementation} output")
    for name, got, want in zip("qkv", actual_grads, expected_grads):
        assert_close(got, want, f"{implementation} gradient w.r.t. {name}")


def test_segment_ids_keep_packed_texts_apart():
    """A token's output depends only on the keys of its own segment: packed = each text alone."""
    query, key, value = qkv(batch=1, length=7, heads=4, kv_heads=2)
    segment_ids = jnp.asarray([[0, 0, 0, 1, 1, 1, 1]])
    for name in ("einsum", "xla"):
        attend = jax.jit(
            lambda q, k, v, s, name=name: attention_lib.dot_product_attention(
                q, k, v, None, segment_ids=s, implementation=name
            )
        )
        packed = attend(query, key, value, segment_ids)
        first = attend(query[:, :3], key[:, :3], value[:, :3], None)
        second = attend(query[:, 3:], key[:, 3:], value[:, 3:], None)
        assert_close(packed, jnp.concatenate([first, second], axis=1), f"{name} packed vs separate")


@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
def test_splash_kernel_in_interpret_mode_equals_einsum_at_real_tokens(causal):
    """The TPU kernel's call path (padding to 128, segment ids, GQA, scaling) run by the Pallas interpreter."""
    pytest.importorskip("jax.experimental.pallas.ops.tpu.splash_attention")
    query, key, value = qkv(batch=2, length=20, heads=4, kv_heads=2, head_dim=8)
    mask = padding_mask((20, 13), 20)
    segment_ids = jnp.asarray([[0] * 8 + [1] * 12, [0] * 20])
    weights = jax.random.normal(jax.random.key(3), query.shape) * mask[:, :, None, None]

    def run(name):
        def f(q, k, v):
            out = attention_lib.dot_product_attention(
                q, k, v, mask, causal=causal, segment_ids=segment_ids, implementation=name, interpret=True
            )
            return jnp.sum(out * weights), out

        return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))(query, key, value)

    (_, expected), expected_grads = run("einsum")
    (_, actual), actual_grads = run("splash")
    real = np.asarray(mask, bool)
    assert_close(np.asarray(actual)[real], np.asarray(expected)[real], "splash output at real tokens")
    for name, got, want in zip("qkv", actual_grads, expected_grads):
        assert_close(got, want, f"splash gradient w.r.t. {name}")


def test_splash_under_a_mesh_runs_per_device_and_equals_einsum():
    """Under `kernel_partitioning(mesh)` (as the trainer's jitted step traces) the kernel runs inside
    shard_map over the batch axes (data=2 x fsdp=4 of 8 fake devices): values and gradients equal einsum at
    real tokens (1e-5), the traced program holds a shard_map, and without the context it holds none."""
    pytest.importorskip("jax.experimental.pallas.ops.tpu.splash_attention")
    from jax.sharding import NamedSharding, PartitionSpec

    from jasper_jax.train.mesh import BATCH_AXES as batch_axes
    from jasper_jax.train.mesh import make_mesh

    mesh = make_mesh({"data": 2, "fsdp": 4, "tensor": 1})  # the trainer's mesh (Auto axes)
    query, key, value = qkv(batch=8, length=12, heads=4, kv_heads=2, head_dim=8, seed=5)
    lengths = (12, 7, 1, 12, 3, 9, 12, 5)
    mask = padding_mask(lengths, 12)
    weights = jax.random.normal(jax.random.key(4), query.shape) * mask[:, :, None, None]
    batch_sharded = NamedSharding(mesh, PartitionSpec(batch_axes))
    query, key, value = (jax.device_put(x, batch_sharded) for x in (query, key, value))

    def loss(name):
        def f(q, k, v):
            out = attention_lib.dot_product_attention(q, k, v, mask, implementation=name, interpret=True)
            return jnp.sum(out * weights), out

        return jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True)

    (_, expected), expected_grads = jax.jit(loss("einsum"))(query, key, value)
    with attention_lib.kernel_partitioning(mesh, batch_axes):
        traced = str(jax.make_jaxpr(loss("splash"))(query, key, value))
        (_, actual), actual_grads = jax.jit(loss("splash"))(query, key, value)
    assert "shard_map" in traced
    assert "shard_map" not in str(jax.make_jaxpr(loss("splash"))(query, key, value))
    real = np.asarray(mask, bool)
    assert_close(np.asarray(actual)[real], np.asarray(expected)[real], "sharded splash output at real tokens")
    for name, got, want in zip("qkv", actual_grads, expected_grads):
        assert_close(got, want, f"sharded splash gradient w.r.t. {name}")


def test_the_jitted_train_step_traces_under_kernel_partitioning():
    """`jit_train_step` makes its mesh the kernels' mesh while the step traces, and only then."""
    from jasper_jax.train import step as step_lib
    from jasper_jax.train.mesh import BATCH_AXES, make_mesh

    mesh = make_mesh({"data": 8, "fsdp": 1, "tensor": 1})
    seen = []

    def step_fn(state, frozen, rest, batch):
        seen.append(attention_lib._kernel_mesh[-1] if attention_lib._kernel_mesh else None)
        return state, batch["x"].sum()

    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    shardings = step_lib.StepShardings(replicated, replicated, replicated, replicated, replicated)
    jitted = step_lib.jit_train_step(step_fn, shardings, mesh)
    jitted.lower(jnp.zeros(2), {}, {}, {"x": jnp.ones(8)})
    assert seen == [(mesh, tuple(BATCH_AXES))]
    assert attention_lib._kernel_mesh == []


def test_auto_picks_per_platform_and_dtype():
    float32, bfloat16 = jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)
    resolve = attention_lib.resolve_implementation
    assert resolve("auto", float32, 64) == "xla"  # this machine: CPU
    assert resolve("auto", float32, 64, "cpu") == "xla"
    assert resolve("auto", bfloat16, 64, "cpu") == "xla"
    assert resolve("auto", bfloat16, 128, "gpu") == "cudnn"
    assert resolve("auto", bfloat16, 72, "gpu") == "cudnn"  # SigLIP so400m's head size
    assert resolve("auto", float32, 64, "gpu") == "xla"  # cuDNN flash attention has no float32
    assert resolve("auto", bfloat16, 6, "gpu") == "xla"  # head_dim not a multiple of 8
    assert resolve("auto", bfloat16, 256, "gpu") == "xla"  # above 128 only from Hopper on
    assert resolve("auto", bfloat16, 128, "tpu") == "xla"
    assert resolve("einsum", bfloat16, 128, "gpu") == "einsum"


def test_refusals_name_the_input_and_what_to_do():
    with pytest.raises(ValueError, match="attention='flash'.*choose from"):
        attention_lib.check_implementation("flash", "float32")
    with pytest.raises(ValueError, match="bfloat16 or float16 only.*float32.*compute_dtype='bfloat16'"):
        StudentConfig(encoder=TINY_BERT, attention="cudnn")
    StudentConfig(encoder=TINY_BERT, attention="cudnn", compute_dtype="bfloat16")  # accepted: GPU decides at run
    query, key, value = (x.astype(jnp.bfloat16) for x in qkv())
    with pytest.raises(ValueError, match="needs an NVIDIA GPU.*'cpu'"):
        attention_lib.dot_product_attention(query, key, value, None, implementation="cudnn")
    with pytest.raises(ValueError, match="TPU Pallas kernel.*'cpu'"):
        attention_lib.dot_product_attention(query, key, value, None, implementation="splash")


# ------------------------------------------------------------------------------------------ through the models


def _build(encoder_class, config):
    with layers.parameter_context():
        return encoder_class(config, rngs=nnx.Rngs(0))


def _attention_modules(model: nnx.Module) -> list[layers.Attention]:
    return [module for _, module in nnx.iter_graph(model) if isinstance(module, layers.Attention)]


def _set_implementation(model: nnx.Module, implementation: str) -> nnx.Module:
    """The same parameters with another attention implementation (a static attribute: jit retraces)."""
    for module in _attention_modules(model):
        module.implementation = implementation
    return model


def _text_scalar(model, embeddings, ids, mask, weights):
    hidden = model(ids, mask, inputs_embeds=embeddings)
    pooled = jnp.sum(hidden * mask[:, :, None], axis=1) / jnp.sum(mask, axis=1, keepdims=True)
    return jnp.sum(pooled * weights), hidden


@pytest.mark.parametrize("family", sorted(TEXT_ENCODERS))
@pytest.mark.parametrize("implementation", CPU_IMPLEMENTATIONS)
def test_text_encoders_equal_einsum_in_values_and_gradients(family, implementation):
    encoder_class, config = TEXT_ENCODERS[family]
    mask = padding_mask()
    ids = jax.random.randint(jax.random.key(1), mask.shape, 1, config.vocab_size) * mask
    weights = jax.random.normal(jax.random.key(2), (len(LENGTHS), config.hidden_size))
    results = {}
    model = _build(encoder_class, config)
    for name in ("einsum", implementation):
        _set_implementation(model, name)
        table = model.word_embeddings if family == "bert" else model.embed
        embeddings = table(ids)
        grad = nnx.jit(nnx.grad(_text_scalar, argnums=(0, 1), has_aux=True))
        (param_grads, input_grads), hidden = grad(model, embeddings, ids, mask, weights)
        results[name] = (hidden, nnx.to_flat_state(param_grads), input_grads)
    (hidden, param_grads, input_grads), (ref_hidden, ref_param_grads, ref_input_grads) = (
        results[implementation],
        results["einsum"],
    )
    real = np.asarray(mask, bool)
    assert_close(np.asarray(hidden)[real], np.asarray(ref_hidden)[real], f"{family} {implementation} hidden states")
    assert_close(input_grads, ref_input_grads, f"{family} {implementation} gradient w.r.t. the token embeddings")
    assert len(param_grads) == len(ref_param_grads) > 0
    for (path, got), (ref_path, want) in zip(param_grads, ref_param_grads):
        assert path == ref_path
        assert_close(got[...], want[...], f"{family} {implementation} gradient w.r.t. {'/'.join(map(str, path))}")


@pytest.mark.parametrize("implementation", CPU_IMPLEMENTATIONS)
def test_siglip_equals_einsum_in_values_and_gradients(implementation):
    config = tiny_siglip_config()
    pixels = jax.random.normal(jax.random.key(4), (2, config.image_size, config.image_size, config.num_channels))
    weights = jax.random.normal(jax.random.key(5), (2, config.num_patches, config.hidden_size))

    def scalar(model, pixel_values):
        states = model(pixel_values)
        return jnp.sum(states * weights), states

    results = {}
    model = _build(SiglipVisionEncoder, config)
    for name in ("einsum", implementation):
        _set_implementation(model, name)
        grad = nnx.jit(nnx.grad(scalar, argnums=(0, 1), has_aux=True))
        (param_grads, pixel_grads), states = grad(model, pixels)
        results[name] = (states, nnx.to_flat_state(param_grads), pixel_grads)
    (states, param_grads, pixel_grads), (ref_states, ref_param_grads, ref_pixel_grads) = (
        results[implementation],
        results["einsum"],
    )
    assert_close(states, ref_states, f"siglip {implementation} token states")
    assert_close(pixel_grads, ref_pixel_grads, f"siglip {implementation} gradient w.r.t. the pixels")
    for (path, got), (_, want) in zip(param_grads, ref_param_grads):
        assert_close(got[...], want[...], f"siglip {implementation} gradient w.r.t. {'/'.join(map(str, path))}")


# ------------------------------------------------------------------------------------------ the config field


@pytest.mark.parametrize(
    "encoder_class,config",
    [(BertEncoder, TINY_BERT), (Qwen2Encoder, TINY_QWEN2), (SiglipVisionEncoder, tiny_siglip_config())],
    ids=["bert", "qwen2", "siglip"],
)
def test_encoders_pass_their_attention_argument_to_every_layer(encoder_class, config):
    with layers.parameter_context():
        model = nnx.eval_shape(lambda: encoder_class(config, attention="einsum", rngs=nnx.Rngs(0)))
    modules = _attention_modules(model)
    assert len(modules) == config.num_hidden_layers
    assert {module.implementation for module in modules} == {"einsum"}


def test_student_config_field_reaches_every_layer_and_round_trips():
    config = StudentConfig(encoder=TINY_QWEN2, heads={"fc1": 8}, attention="xla")
    model = JasperStudent(config, rngs=nnx.Rngs(0))
    assert {module.implementation for module in _attention_modules(model)} == {"xla"}
    with_vision = StudentConfig(
        encoder=TINY_QWEN2,
        attention="einsum",
        vision=tiny_siglip_config(),
        image_tokens=2,
        image_token_ids=(64, 65, 66),
    )
    abstract = nnx.eval_shape(lambda: JasperStudent(with_vision, rngs=nnx.Rngs(0)))
    modules = _attention_modules(abstract)
    assert len(modules) == TINY_QWEN2.num_hidden_layers + tiny_siglip_config().num_hidden_layers
    assert {module.implementation for module in modules} == {"einsum"}
    assert StudentConfig.from_dict(config.to_dict()) == config
    saved_before_the_field = config.to_dict()
    del saved_before_the_field["attention"]
    assert StudentConfig.from_dict(saved_before_the_field).attention == "auto"
    mask = padding_mask()
    ids = jax.random.randint(jax.random.key(1), mask.shape, 1, 64) * mask
    reference = JasperStudent(StudentConfig(encoder=TINY_QWEN2, heads={"fc1": 8}, attention="einsum"), rngs=nnx.Rngs(0))
    assert_close(model(ids, mask)["fc1"], reference(ids, mask)["fc1"], "student xla vs einsum")
