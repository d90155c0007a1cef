"""The conversion key maps both ways, on tiny random models of every family (BERT, Qwen2 and Qwen3
bidirectional and causal, SigLIP vision): ours -> Hugging Face -> ours and Hugging Face -> ours -> Hugging Face are the
identity, bit for bit, and the Hugging Face side has exactly the keys and shapes of transformers' own model."""

from __future__ import annotations

import numpy as np
import pytest
from flax import nnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jasper_jax.convert.hf import encoder_config_from_hf, encoder_params_from_hf, encoder_params_to_hf
from jasper_jax.convert.siglip import siglip_params_from_tensors, siglip_tensors
from jasper_jax.models.bert import BertConfig, BertEncoder
from jasper_jax.models.params import param_shapes
from jasper_jax.models.qwen2 import Qwen2Config, Qwen2Encoder
from jasper_jax.models.qwen3 import Qwen3Config, Qwen3Encoder
from jasper_jax.models.siglip import SiglipVisionConfig, SiglipVisionEncoder

transformers = pytest.importorskip("transformers")  # its PyTorch models are the reference key sets

ENCODERS = {
    BertConfig: BertEncoder,
    Qwen2Config: Qwen2Encoder,
    Qwen3Config: Qwen3Encoder,
    SiglipVisionConfig: SiglipVisionEncoder,
}
EXAMPLES = settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SEEDS = st.integers(0, 2**32 - 1)


@st.composite
def bert_configs(draw) -> BertConfig:
    heads = draw(st.integers(1, 4))
    return BertConfig(
        vocab_size=draw(st.integers(8, 40)),
        hidden_size=heads * draw(st.sampled_from([2, 4, 8])),
        num_hidden_layers=draw(st.integers(1, 3)),
        num_attention_heads=heads,
        intermediate_size=draw(st.integers(4, 48)),
        max_position_embeddings=draw(st.integers(4, 24)),
        type_vocab_size=draw(st.integers(1, 2)),
    )


@st.composite
def qwen2_configs(draw, family=Qwen2Config) -> Qwen2Config:
    kv_heads = draw(st.integers(1, 3))
    heads = kv_heads * draw(st.integers(1, 3))
    explicit_head_dim = draw(st.booleans())  # head_dim given apart from hidden_size / heads, as Qwen2 allows
    head_dim = draw(st.sampled_from([2, 4, 8]))
    return family(
        vocab_size=draw(st.integers(8, 40)),
        hidden_size=draw(st.sampled_from([8, 12, 16, 24])) if explicit_head_dim else heads * head_dim,
        num_hidden_layers=draw(st.integers(1, 3)),
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=draw(st.integers(4, 48)),
        max_position_embeddings=64,
        head_dim=head_dim if explicit_head_dim else None,
        causal=draw(st.booleans()),
        pad_token_id=0,
    )


@st.composite
def siglip_configs(draw) -> SiglipVisionConfig:
    heads = draw(st.integers(1, 4))
    patch = draw(st.sampled_from([2, 4, 8]))
    return SiglipVisionConfig(
        hidden_size=heads * draw(st.sampled_from([2, 4, 8])),
        intermediate_size=draw(st.integers(4, 48)),
        num_hidden_layers=draw(st.integers(1, 3)),
        num_attention_heads=heads,
        num_channels=draw(st.integers(1, 3)),
        image_size=patch * draw(st.integers(1, 4)),
        patch_size=patch,
    )


def our_shapes(config) -> dict[str, tuple[int, ...]]:
    """`{parameter path: shape}` of our encoder for `config`, built abstractly (no weights)."""
    encoder = ENCODERS[type(config)]
    with nnx.use_eager_sharding(False):  # no mesh here: the sharding annotations stay metadata
        return param_shapes(nnx.eval_shape(lambda: encoder(config, rngs=nnx.Rngs(0))))


def hf_shapes(config) -> dict[str, tuple[int, ...]]:
    """`{key: shape}` of transformers' own model for `config` (built from our `config.to_hf()`), without the
    `vision_model.` prefix that SiglipVisionModel adds and our export leaves out."""
    hf = config.to_hf()
    if isinstance(config, BertConfig):
        model = transformers.BertModel(transformers.BertConfig(**hf), add_pooling_layer=False)
    elif isinstance(config, Qwen3Config):
        model = transformers.Qwen3Model(transformers.Qwen3Config(**hf))
    elif isinstance(config, Qwen2Config):
        model = transformers.Qwen2Model(transformers.Qwen2Config(**hf))
    else:
        model = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**hf))
    return {key.removeprefix("vision_model."): tuple(tensor.shape) for key, tensor in model.state_dict().items()}


def random_arrays(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {key: rng.standard_normal(shape).astype(np.float32) for key, shape in sorted(shapes.items())}


def to_hf(params: dict[str, np.ndarray], config) -> dict[str, np.ndarray]:
    if isinstance(config, SiglipVisionConfig):
        return siglip_tensors(params, config)
    return encoder_params_to_hf(params, config)


def from_hf(tensors: dict[str, np.ndarray], config) -> dict[str, np.ndarray]:
    if isinstance(config, SiglipVisionConfig):
        return siglip_params_from_tensors(tensors, config)
    return encoder_params_from_hf(tensors, config, our_shapes(config))


def assert_bit_identical(before: dict[str, np.ndarray], after: dict[str, np.ndarray], what: str) -> None:
    assert sorted(after) == sorted(before), (
        f"{what}: keys lost {sorted(set(before) - set(after))}, gained {sorted(set(after) - set(before))}"
    )
    for key in before:
        assert after[key].dtype == before[key].dtype, f"{what}: {key} is {after[key].dtype}, was {before[key].dtype}"
        assert np.array_equal(after[key], before[key]), f"{what}: {key} changed (shape {before[key].shape})"


def check_both_ways(config, seed: int) -> None:
    ours = random_arrays(our_shapes(config), seed)
    exported = to_hf(ours, config)
    assert_bit_identical(ours, from_hf(exported, config), f"ours -> HF -> ours, {config}")
    reference = hf_shapes(config)
    assert {key: value.shape for key, value in exported.items()} == reference, (
        f"our export's keys / shapes differ from transformers' model for {config}"
    )
    tensors = random_arrays(reference, seed + 1)
    assert_bit_identical(tensors, to_hf(from_hf(tensors, config), config), f"HF -> ours -> HF, {config}")


@EXAMPLES
@given(config=bert_configs(), seed=SEEDS)
def test_bert_key_map_round_trips(config, seed):
    check_both_ways(config, seed)
    assert encoder_config_from_hf(config.to_hf()) == config


@EXAMPLES
@given(config=qwen2_configs(), seed=SEEDS)
def test_qwen2_key_map_round_trips_bidirectional_and_causal(config, seed):
    check_both_ways(config, seed)
    assert encoder_config_from_hf(config.to_hf()) == config


@EXAMPLES
@given(config=qwen2_configs(Qwen3Config), seed=SEEDS)
def test_qwen3_key_map_round_trips_bidirectional_and_causal(config, seed):
    check_both_ways(config, seed)
    assert encoder_config_from_hf(config.to_hf()) == config


@EXAMPLES
@given(config=siglip_configs(), seed=SEEDS)
def test_siglip_vision_key_map_round_trips(config, seed):
    check_both_ways(config, seed)
    assert SiglipVisionConfig.from_hf(config.to_hf()) == config
