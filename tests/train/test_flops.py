"""Model FLOPs per step (`jasper_jax.train.flops`) against hand formulas and XLA's own count.

Hand formulas: 2 x (products' weights) per token forward, 4 x n x d per token for the attention scores,
times 3 for trained layers, 1 for frozen layers below every trained parameter. XLA: the compiled forward
and forward+backward of a tiny BERT and Qwen2 (`cost_analysis()["flops"]`, which also counts norms,
softmax, activations: ours counts products only, so XLA's is 0-6% higher on these shapes).
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from jasper_jax.models import BertConfig, JasperStudent, Qwen2Config, StudentConfig
from jasper_jax.models.params import path_string
from jasper_jax.train import flops
from jasper_jax.train import optimizer as optimizer_lib

BERT = BertConfig(
    vocab_size=100, hidden_size=256, num_hidden_layers=2, num_attention_heads=4, intermediate_size=1024,
    max_position_embeddings=64,
)  # fmt: skip
QWEN2 = Qwen2Config(
    vocab_size=100, hidden_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    intermediate_size=1024,
)  # fmt: skip


def kernel_sizes(config: StudentConfig) -> dict[str, int]:
    """Parameter path -> size of every kernel (from the model itself, not from `flops`)."""
    model = nnx.eval_shape(lambda: JasperStudent(config, rngs=nnx.Rngs(0)))
    return {
        path_string(path): math.prod(value.shape)
        for path, value in nnx.to_flat_state(nnx.state(model, nnx.Param))
        if path_string(path).endswith("kernel")
    }


@pytest.mark.parametrize("encoder", [BERT, QWEN2], ids=["bert", "qwen2"])
def test_hand_formulas_all_trained_heads_only_and_last_layer(encoder):
    config = StudentConfig(encoder=encoder, heads={"fc1": 48, "fc2": 16})
    sizes = kernel_sizes(config)
    layer = {i: sum(v for k, v in sizes.items() if k.startswith(f"encoder/layers/{i}/")) for i in range(2)}
    qkv1 = sum(v for k, v in sizes.items() if k.startswith("encoder/layers/1/attention/") and "output" not in k)
    heads = sum(v for k, v in sizes.items() if k.startswith("heads/"))
    d, tokens, squares, rows = encoder.hidden_size, 300.0, 9000.0, 5
    attention = 4 * d * squares  # per layer, forward: q.k and p.v over every (query, key) pair of a text
    forward = 2 * (layer[0] + layer[1]) * tokens + 2 * attention + 2 * heads * rows
    everything = flops.step_flop_model(config, lambda prefix: True)
    assert everything.total(tokens, squares, rows) == pytest.approx(3 * forward, rel=1e-12)
    nothing = flops.step_flop_model(config, lambda prefix: False)
    assert nothing.total(tokens, squares, rows) == pytest.approx(forward, rel=1e-12)
    # heads only: the encoder forward only, the heads forward + weight gradients (no input gradient)
    heads_only = flops.step_flop_model(config, flops.patterns_predicate(["heads/.*"]))
    expected = 2 * (layer[0] + layer[1]) * tokens + 2 * attention + 2 * 2 * heads * rows
    assert heads_only.total(tokens, squares, rows) == pytest.approx(expected, rel=1e-12)
    # stage 2's shape: the last layer and fc1 train; layer 0 forward only; BERT's layer-1 query/key/value
    # need no input gradient (nothing trains below them; Qwen2's pre-norm scale before them does);
    # fc2 (frozen, above a trained layer) gets dx only
    no_dx = qkv1 if encoder.model_type == "bert" else 0
    fc1, fc2 = sizes["heads/fc1/kernel"], sizes["heads/fc2/kernel"]
    last = flops.step_flop_model(config, flops.patterns_predicate(["heads/fc1/.*", "encoder/layers/1/.*"]))
    expected = (
        2 * layer[0] * tokens
        + attention
        + (3 * 2 * layer[1] - 2 * no_dx) * tokens
        + 3 * attention
        + 3 * 2 * fc1 * rows
        + 2 * 2 * fc2 * rows
    )
    assert last.total(tokens, squares, rows) == pytest.approx(expected, rel=1e-12)


def test_trainable_paths_equal_patterns_and_causal_counts_half_the_pairs():
    config = StudentConfig(encoder=QWEN2, heads={"fc1": 48})
    model = JasperStudent(config, rngs=nnx.Rngs(0))
    patterns = ("heads/.*", "encoder/layers/1/.*")
    _, trainable, _, _ = optimizer_lib.split_model(model, patterns)
    by_paths = flops.step_flop_model(config, flops.trainable_paths(trainable))
    assert by_paths == flops.step_flop_model(config, flops.patterns_predicate(patterns))
    causal = StudentConfig(encoder=dataclasses.replace(QWEN2, causal=True), heads={"fc1": 48})
    bidirectional = flops.step_flop_model(config, lambda p: True)
    one_way = flops.step_flop_model(causal, lambda p: True)
    n = 10.0  # one text of 10 tokens: 100 pairs bidirectional, 55 causal
    pair_cost = bidirectional.per_pair
    assert bidirectional.total(n, n * n, 1) - one_way.total(n, n * n, 1) == pytest.approx(pair_cost * 45)


@pytest.mark.parametrize(
    ("encoder", "patterns"),
    [(BERT, (".*",)), (BERT, ("heads/fc1/.*", "encoder/layers/1/.*")), (QWEN2, ("encoder/layers/0/.*",))],
    ids=["bert-all", "bert-last-layer", "qwen2-first-layer"],
)
def test_against_xla_cost_analysis(encoder, patterns):
    config = StudentConfig(encoder=encoder, heads={"fc1": 128})
    model = JasperStudent(config, rngs=nnx.Rngs(0))
    graphdef, trainable, frozen, rest = optimizer_lib.split_model(model, patterns)
    batch, length = 4, 64  # every token real: XLA computes exactly the real tokens
    ids, mask = jnp.ones((batch, length), jnp.int32), jnp.ones((batch, length), jnp.int32)

    def loss(trainable, frozen):
        return jnp.sum(nnx.merge(graphdef, trainable, frozen, rest)(ids, mask)["fc1"])

    xla_forward = jax.jit(loss).lower(trainable, frozen).compile().cost_analysis()["flops"]
    xla_step = jax.jit(jax.grad(loss)).lower(trainable, frozen).compile().cost_analysis()["flops"]
    paths = flops.trainable_paths(trainable)
    args = (batch * length, batch * length**2, batch)
    ours_forward = flops.step_flop_model(config, paths, backward=False).total(*args)
    ours_step = flops.step_flop_model(config, paths).total(*args)
    # XLA also counts the element-wise work (norms, softmax, GELU/SiLU) that ours leaves out
    assert 1.0 <= xla_forward / ours_forward <= 1.06, (xla_forward, ours_forward)
    assert 1.0 <= xla_step / ours_step <= 1.06, (xla_step, ours_step)
    # the backward rule (which products need dW / dx): the same step/forward ratio within 3% (a wrong
    # rule for one layer's query/key/value input gradient alone would move it by ~11% here)
    assert xla_step / xla_forward == pytest.approx(ours_step / ours_forward, rel=0.03)


def test_peak_tflops_detection():
    assert flops.peak_tflops_for("NVIDIA H100 80GB HBM3") == 989.0
    assert flops.peak_tflops_for("NVIDIA H200") == 989.0
    assert flops.peak_tflops_for("TPU v5p") == 459.0
    assert flops.peak_tflops_for("TPU v6e") == 918.0 and flops.peak_tflops_for("TPU v6 lite") == 918.0
    assert flops.peak_tflops_for("cpu") is None
    assert flops.resolve_peak_tflops(0.0, "cpu")[0] is None
    assert flops.resolve_peak_tflops(123.0, "cpu") == (123.0, "hardware.peak_tflops")
