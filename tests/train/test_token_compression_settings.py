"""`model.token_compression`: a random student gets the compressor (its MLP width defaulting to the
encoder's), gradients reach the compressor's MLP, and bad fields are one clear TrainingError."""

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jasper_jax.models import JasperStudent
from jasper_jax.train.settings import ModelSettings, TrainingError
from jasper_jax.train.stage_build import student_config_for

ENCODER = dict(
    vocab_size=64,
    hidden_size=16,
    num_hidden_layers=1,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=8,
    intermediate_size=24,
)


def test_random_student_gets_the_compressor_and_it_trains():
    model_settings = ModelSettings(family="qwen3", encoder=ENCODER, token_compression={"threshold": 6, "ratio": 0.5})
    config = student_config_for(SimpleNamespace(model=model_settings), {"fc1": 8}, None)
    assert config.encoder.model_type == "qwen3" and config.encoder.causal
    compression = config.token_compression
    assert (compression.threshold, compression.ratio, compression.intermediate_size) == (6, 0.5, 24)
    with nnx.use_eager_sharding(False):
        student = JasperStudent(config, rngs=nnx.Rngs(0))
    lengths = np.array([20, 6, 3])
    ids = jnp.asarray(np.where(np.arange(20)[None] < lengths[:, None], 5, 0), jnp.int32)
    mask = (ids > 0).astype(jnp.int32)
    graphdef, params = nnx.split(student, nnx.Param)

    def loss(params):
        return jnp.sum(nnx.merge(graphdef, params)(ids, mask)["fc1"][:, 0])

    grads = nnx.to_flat_state(jax.grad(loss)(params))
    norms = {"/".join(map(str, path)): float(jnp.abs(value[...]).max()) for path, value in grads}
    assert norms["compressor/mlp/gate/kernel"] > 0 and norms["compressor/mlp/down/kernel"] > 0


@pytest.mark.parametrize(
    "value,message",
    [({"treshold": 80}, "unknown keys"), ({"ratio": 1.5}, "ratio=1.5"), ({"threshold": 0}, "threshold=0")],
)
def test_bad_token_compression_fields_name_the_field(value, message):
    with pytest.raises(TrainingError, match=f"model.token_compression.*{message}|{message}"):
        ModelSettings(family="qwen3", encoder=ENCODER, token_compression=value)
