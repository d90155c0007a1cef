"""Model FLOPs of a train step and MFU: what the step must compute, from the model config and the real tokens.

Counted: the matrix products of the encoder layers (query/key/value and output projections, the MLP's
up/gate/down), the attention scores and their weighted sum (4 x n x d FLOPs per token of a text of n real
tokens: q.k and p.v over the heads), and the heads (one product per text). Not counted: embedding
look-ups (gathers), norms, activations, softmax, biases and the losses (small next to the products), and
remat's recomputation (these are model FLOPs, not hardware FLOPs). Padding is not counted: a text of n
real tokens costs n tokens and n x n score pairs (n(n+1)/2 for a causal encoder), whatever its bucket.

Forward and backward, op by op in forward order (a matmul y = x W costs f forward):
- forward: f, every op, trained or frozen;
- weight gradient dW = x^T dy: f, if W trains;
- input gradient dx = dy W^T: f, if any parameter EARLIER in the forward order trains (an earlier layer,
  an earlier op of the same layer, a norm, or the embeddings); otherwise nothing below needs a gradient;
- the attention core (both operands are activations): 2f backward when anything earlier trains (the
  layer's own query/key/value projections count as earlier).
So a fully trained layer costs 3x its forward, a frozen layer BELOW every trained parameter (closer to the
input, e.g. layers 0-24 of stage 2) costs 1x, a frozen layer ABOVE a trained one (between it and the loss)
costs 2x (forward + input gradients), and the first trained op with nothing trained before it skips its
input gradient (stage 2's layer 25 query/key/value). Heads read the pooled vector: their input gradient
counts when anything in the encoder trains.

Per step: `StepFlops.total(tokens, token_squares, rows)` with `tokens` = sum of real lengths,
`token_squares` = sum of squared real lengths, `rows` = texts in the batch (the train step reports the
first two as the `tokens` and `token_squares` metrics). A student with a token compressor: its MLP runs
over the input tokens (`input_tokens`, the `tokens` metric) and the encoder over the compressed ones
(`tokens` = the `encoder_tokens` metric, `token_squares` of the compressed lengths). Image stages (a
vision tower) are not modelled: `step_flop_model` returns None and the trainer then logs no FLOPs or MFU.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable

from jasper_jax.models.student import StudentConfig

# dense bf16 TFLOP/s per device (no sparsity), matched in order against the lower-cased `device_kind`
PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("h200", 989.0),
    ("h100", 989.0),
    ("a100", 312.0),
    ("v6e", 918.0),
    ("v6 lite", 918.0),
    ("v5p", 459.0),
    ("v5 lite", 197.0),
    ("v5e", 197.0),
    ("tpu v5", 459.0),  # v5p reports itself as "TPU v5"
)


def peak_tflops_for(device_kind: str) -> float | None:
    """The dense bf16 peak of a device from its `jax.Device.device_kind`, or None when unknown."""
    kind = device_kind.lower()
    for pattern, peak in PEAK_TFLOPS:
        if pattern in kind:
            return peak
    return None


def resolve_peak_tflops(configured: float, device_kind: str | None = None) -> tuple[float | None, str]:
    """`(peak TFLOP/s per device or None, where it came from)`: `configured` if > 0, else detected."""
    if configured > 0:
        return float(configured), "hardware.peak_tflops"
    if device_kind is None:
        import jax

        device_kind = jax.devices()[0].device_kind
    peak = peak_tflops_for(device_kind)
    return peak, f"detected from device kind {device_kind!r}" if peak else f"unknown device kind {device_kind!r}"


@dataclasses.dataclass(frozen=True)
class Op:
    """One product in forward order: `prefix` is its weight's parameter path ("" for the attention core)."""

    prefix: str
    per_token: float = 0.0  # forward FLOPs per real token the encoder runs over (compressed, with a compressor)
    per_input_token: float = 0.0  # forward FLOPs per input token (the token compressor's MLP)
    per_pair: float = 0.0  # forward FLOPs per (query, key) pair inside one text (attention core)
    per_row: float = 0.0  # forward FLOPs per text (heads)


# a position: ops that read the same input, and the parameter prefixes (norms, embeddings) at that point
Position = tuple[tuple[Op, ...], tuple[str, ...]]


def _layer_positions(config: StudentConfig, index: int) -> list[Position]:
    encoder = config.encoder
    d, inter = encoder.hidden_size, encoder.intermediate_size
    heads, head_dim = encoder.num_attention_heads, encoder.head_dim
    kv_heads = getattr(encoder, "num_key_value_heads", heads)
    p = f"encoder/layers/{index}"
    q = Op(f"{p}/attention/query", per_token=2 * d * heads * head_dim)
    k = Op(f"{p}/attention/key", per_token=2 * d * kv_heads * head_dim)
    v = Op(f"{p}/attention/value", per_token=2 * d * kv_heads * head_dim)
    core = Op("", per_pair=4 * heads * head_dim)
    out = Op(f"{p}/attention/output", per_token=2 * heads * head_dim * d)
    down = Op(f"{p}/mlp/down", per_token=2 * inter * d)
    up = Op(f"{p}/mlp/up", per_token=2 * d * inter)
    if encoder.model_type in ("qwen2", "qwen3"):  # pre-norm, gated MLP (Qwen3: q/k norms, not counted)
        gate = Op(f"{p}/mlp/gate", per_token=2 * d * inter)
        qk_norms = (f"{p}/attention/query_norm", f"{p}/attention/key_norm") if encoder.QK_NORM else ()
        return [
            ((), (f"{p}/input_norm",)),
            ((q, k, v), ()),
            ((), qk_norms),
            ((core,), ()),
            ((out,), ()),
            ((), (f"{p}/post_attention_norm",)),
            ((gate, up), ()),
            ((down,), ()),
        ]
    return [  # BERT: post-norm
        ((q, k, v), ()),
        ((core,), ()),
        ((out,), ()),
        ((), (f"{p}/attention_norm",)),
        ((up,), ()),
        ((down,), ()),
        ((), (f"{p}/mlp_norm",)),
    ]


def forward_positions(config: StudentConfig) -> list[Position]:
    """The student's products and parameter groups in forward order (embeddings, layers, final norm, heads)."""
    encoder = config.encoder
    if encoder.model_type in ("qwen2", "qwen3"):
        first, last = ("encoder/embed",), ("encoder/final_norm",)
    else:
        first = tuple(
            f"encoder/{name}"
            for name in ("word_embeddings", "position_embeddings", "token_type_embeddings", "embeddings_norm")
        )
        last = ()
    positions: list[Position] = [((), first)]
    if config.token_compression is not None:  # its gated MLP over the input tokens, before the encoder
        inter, d = config.token_compression.intermediate_size, encoder.hidden_size
        mlp = "compressor/mlp"
        gate = Op(f"{mlp}/gate", per_input_token=2 * d * inter)
        up = Op(f"{mlp}/up", per_input_token=2 * d * inter)
        positions += [((gate, up), ()), ((Op(f"{mlp}/down", per_input_token=2 * inter * d),), ())]
    for index in range(encoder.num_hidden_layers):
        positions += _layer_positions(config, index)
    positions.append(((), last))
    d = encoder.hidden_size
    heads = tuple(Op(f"heads/{name}", per_row=2 * d * dim) for name, dim in config.heads.items())
    positions.append((heads, ()))
    return positions


@dataclasses.dataclass(frozen=True)
class StepFlops:
    """Model FLOPs of one step as `per_token * tokens + per_pair * pairs + per_row * rows
    + per_input_token * input_tokens` (see module doc)."""

    per_token: float
    per_pair: float
    per_row: float
    causal: bool = False
    per_input_token: float = 0.0

    def total(self, tokens: float, token_squares: float, rows: float, input_tokens: float | None = None) -> float:
        """`tokens`, `token_squares`: of the texts the encoder runs over; `input_tokens` (default `tokens`):
        before a token compressor, which differs from `tokens` only with one."""
        pairs = (token_squares + tokens) / 2 if self.causal else token_squares
        inputs = tokens if input_tokens is None else input_tokens
        return self.per_token * tokens + self.per_pair * pairs + self.per_row * rows + self.per_input_token * inputs


def _trains(prefix: str, trainable: Callable[[str], bool] | frozenset[str]) -> bool:
    if not prefix:
        return False
    if callable(trainable):
        return trainable(prefix)
    return any(path == prefix or path.startswith(prefix + "/") for path in trainable)


def step_flop_model(
    config: StudentConfig, trainable: Iterable[str] | Callable[[str], bool], *, backward: bool = True
) -> StepFlops | None:
    """The step's FLOP coefficients for a student whose parameters `trainable` (paths such as
    `encoder/layers/3/mlp/up/kernel`, or a predicate over a parameter-group prefix) train.

    `backward=False`: the forward alone (encoding). None for a student with a vision tower (not modelled)."""
    if config.vision is not None:
        return None
    if not callable(trainable):
        trainable = frozenset(trainable)
    per = {"per_token": 0.0, "per_pair": 0.0, "per_row": 0.0, "per_input_token": 0.0}
    earlier_trains = False
    for ops, groups in forward_positions(config):
        trains_here = False
        for op in ops:
            weight_trains = _trains(op.prefix, trainable)
            if not backward:
                factor = 1.0
            elif op.prefix:  # forward + dW + dx
                factor = 1.0 + weight_trains + earlier_trains
            else:  # attention core: forward + both operands' gradients
                factor = 1.0 + 2.0 * earlier_trains
            for key in per:
                per[key] += factor * getattr(op, key)
            trains_here |= weight_trains
        trains_here |= any(_trains(group, trainable) for group in groups)
        earlier_trains |= trains_here
    return StepFlops(**per, causal=bool(getattr(config.encoder, "causal", False)))


def trainable_paths(state) -> frozenset[str]:
    """The parameter paths of an `nnx.State` (the step's trainable part) as `a/b/c` strings."""
    from flax import nnx

    from jasper_jax.models.params import path_string

    return frozenset(path_string(path) for path, _ in nnx.to_flat_state(state))


def patterns_predicate(patterns: Iterable[str]) -> Callable[[str], bool]:
    """Whether a parameter group trains under the stage's regexes (any `kernel` or `bias` of it matches)."""
    compiled = [re.compile(pattern) for pattern in patterns]
    leaves = ("kernel", "bias", "scale", "embedding")
    return lambda prefix: any(c.fullmatch(f"{prefix}/{leaf}") for c in compiled for leaf in leaves)
