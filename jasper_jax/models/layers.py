"""Layers shared by every encoder family: projections, embeddings, norms, rotary positions, attention, MLPs.

Conventions (all families):
- Parameters are float32 and carry logical axis names as nnx sharding metadata (`vocab`, `embed`, `heads`,
  `kv_heads`, `head_dim`, `mlp`, `head_out`, `position`, `token_type`); the trainer maps them to mesh axes.
- Computation runs in a selectable `dtype` (float32 or bfloat16): weights are cast at use. Norms, softmax
  and rotary angles are computed in float32 whatever the compute dtype.
- Attention itself (scores, mask, softmax) is `attention.dot_product_attention`, whose implementation
  (einsum, xla, cudnn, splash, auto) each model selects with its `attention` argument.
- Attention projections keep the head structure in the kernel: query (embed, heads, head_dim), key/value
  (embed, kv_heads, head_dim), output (heads, head_dim, embed), so that heads can be sharded directly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from flax.core import meta as flax_meta
from flax.core import spmd as flax_spmd

from jasper_jax.models import attention as attention_lib
from jasper_jax.models import remat as remat_lib
from jasper_jax.models.params import path_string

Array = jax.Array
Initializer = Callable[..., Array]

default_kernel_init = nnx.initializers.normal(stddev=0.02)


def parameter_context():
    """Creation context: record the logical names as metadata only, unless they can be placed right away.

    Flax 0.12 shards variables eagerly when they carry sharding metadata, which needs a mesh and, for our
    logical names, a rule table mapping them to mesh axes. Under `jax.set_mesh(mesh)` together with
    `nnx.logical_axis_rules(rules)` parameters are created sharded; otherwise eager sharding is switched off
    for the construction and the trainer places parameters itself (nnx.get_partition_spec + its rules).
    """
    if flax_meta.get_global_mesh() is None or not flax_spmd.get_logical_axis_rules():
        return nnx.use_eager_sharding(False)
    return contextlib.nullcontext()


def make_param(rngs: nnx.Rngs, init: Initializer, shape: Sequence[int], names: Sequence[str]) -> nnx.Param:
    """A float32 parameter of `shape` initialised by `init`, annotated with one logical name per axis."""
    assert len(names) == len(shape), (names, shape)
    return nnx.Param(init(rngs.params(), tuple(shape), jnp.float32), out_sharding=tuple(names))


def as_dtype(dtype: str | jnp.dtype) -> jnp.dtype:
    """'float32' / 'bfloat16' (or a dtype) -> a jnp dtype."""
    return jnp.dtype(dtype)


class Projection(nnx.Module):
    """A linear map with a multi-axis kernel: `y = einsum(equation, x, kernel) + bias`.

    `kernel_shape`/`kernel_names` describe the kernel; the bias has the output axes (those of the kernel
    that the equation does not contract)."""

    compute_cast = ("kernel", "bias")  # cast to `dtype` at use (`compute_dtype_casts`)

    def __init__(
        self,
        equation: str,
        kernel_shape: Sequence[int],
        kernel_names: Sequence[str],
        bias_shape: Sequence[int] | None,
        bias_names: Sequence[str] | None,
        *,
        dtype: str = "float32",
        rngs: nnx.Rngs,
        kernel_init: Initializer = default_kernel_init,
    ):
        self.equation = equation
        self.dtype = as_dtype(dtype)
        self.kernel = make_param(rngs, kernel_init, kernel_shape, kernel_names)
        if bias_shape is not None:
            self.bias = make_param(rngs, nnx.initializers.zeros, bias_shape, bias_names or ())
        else:
            self.bias = None

    def __call__(self, x: Array) -> Array:
        y = jnp.einsum(self.equation, x.astype(self.dtype), self.kernel[...].astype(self.dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


def dense(
    in_features: int, out_features: int, in_name: str, out_name: str, *, use_bias: bool, dtype: str, rngs: nnx.Rngs
) -> Projection:
    """A plain (in, out) linear layer."""
    return Projection(
        "...i,io->...o",
        (in_features, out_features),
        (in_name, out_name),
        (out_features,) if use_bias else None,
        (out_name,),
        dtype=dtype,
        rngs=rngs,
    )


class Embedding(nnx.Module):
    """A lookup table (num, features) with logical names (`table_name`, 'embed')."""

    def __init__(self, num: int, features: int, table_name: str, *, dtype: str = "float32", rngs: nnx.Rngs):
        self.dtype = as_dtype(dtype)
        self.embedding = make_param(rngs, default_kernel_init, (num, features), (table_name, "embed"))

    def __call__(self, ids: Array) -> Array:
        return jnp.take(self.embedding[...], ids, axis=0).astype(self.dtype)


class LayerNorm(nnx.Module):
    """LayerNorm with scale and bias, statistics in float32."""

    def __init__(self, features: int, eps: float, *, dtype: str = "float32", rngs: nnx.Rngs):
        self.eps = eps
        self.dtype = as_dtype(dtype)
        self.scale = make_param(rngs, nnx.initializers.ones, (features,), ("embed",))
        self.bias = make_param(rngs, nnx.initializers.zeros, (features,), ("embed",))

    def __call__(self, x: Array) -> Array:
        x32 = x.astype(jnp.float32)
        mean = x32.mean(-1, keepdims=True)
        variance = jnp.square(x32 - mean).mean(-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(variance + self.eps)
        return (y * self.scale[...] + self.bias[...]).astype(self.dtype)


class RMSNorm(nnx.Module):
    """RMSNorm as in Qwen2/Llama: normalise in float32, cast back, then scale.

    `axis_name`: the logical name of the normalised axis ('embed'; 'head_dim' for Qwen3's per-head q/k norm)."""

    compute_cast = ("scale",)  # cast to `dtype` at use (`compute_dtype_casts`)

    def __init__(self, features: int, eps: float, *, dtype: str = "float32", axis_name: str = "embed", rngs: nnx.Rngs):
        self.eps = eps
        self.dtype = as_dtype(dtype)
        self.scale = make_param(rngs, nnx.initializers.ones, (features,), (axis_name,))

    def __call__(self, x: Array) -> Array:
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.square(x32).mean(-1, keepdims=True) + self.eps)
        return self.scale[...].astype(self.dtype) * y.astype(self.dtype)


def compute_dtype_casts(model: nnx.Module) -> dict[str, jnp.dtype]:
    """`{parameter path: dtype}`: the parameters that `model` casts to a narrower compute dtype at use.

    These are the kernels and biases of the `Projection`s and the scales of the `RMSNorm`s of a bfloat16
    (or float16) encoder: the modules whose class lists them in `compute_cast`. The train step casts them
    on their shards before the model uses them, so that FSDP gathers the compute dtype instead of the
    float32 master copy; the layer sees the same values either way. Left in float32: `LayerNorm` (float32
    statistics and affine), the float32 heads, and the `Embedding` tables, which a lookup does not gather
    whole and whose gradient is a scatter-add that should accumulate in float32.
    """
    casts = {}
    for path, node in nnx.iter_graph(model):
        names = getattr(type(node), "compute_cast", ())
        dtype = jnp.dtype(getattr(node, "dtype", jnp.float32)) if names else None
        if dtype is None or dtype.itemsize >= 4:
            continue
        for name in names:
            if getattr(node, name, None) is not None:
                casts[path_string((*path, name))] = dtype
    return casts


def rotary_angles(positions: Array, head_dim: int, theta: float) -> tuple[Array, Array]:
    """cos and sin (B, L, head_dim) of the default (non-interleaved, 'rotate half') RoPE, in float32."""
    inverse_frequency = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    angles = positions.astype(jnp.float32)[..., None] * inverse_frequency
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rotary(x: Array, cos: Array, sin: Array) -> Array:
    """Rotate x (B, L, heads, head_dim) by the angles (B, L, head_dim)."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    cos = cos[:, :, None, :].astype(x.dtype)
    sin = sin[:, :, None, :].astype(x.dtype)
    return x * cos + rotated * sin


class Attention(nnx.Module):
    """Multi-head or grouped-query self-attention with a padding mask, bidirectional or causal.

    `num_kv_heads` < `num_heads` gives GQA: query head h uses key/value head h // (num_heads // num_kv_heads),
    as Hugging Face's `repeat_kv`. With `rope_theta` set, rotary embeddings are applied to queries and keys.
    `attention` names the implementation of the attention itself (`attention.IMPLEMENTATIONS`; "auto" picks
    one per platform and dtype, see `jasper_jax/models/attention.py`). `qk_norm_eps` set: queries and keys
    are RMS-normalised per head over head_dim before RoPE (Qwen3's `q_norm` / `k_norm`).
    """

    def __init__(
        self,
        hidden: int,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        *,
        qkv_bias: bool,
        output_bias: bool,
        causal: bool = False,
        rope_theta: float | None = None,
        qk_norm_eps: float | None = None,
        dtype: str = "float32",
        attention: str = "auto",
        rngs: nnx.Rngs,
    ):
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads={num_heads} is not a multiple of num_kv_heads={num_kv_heads}")
        attention_lib.check_implementation(attention, dtype)
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.causal = causal
        self.implementation = attention
        self.rope_theta = rope_theta
        self.dtype = as_dtype(dtype)

        def qkv(heads: int, heads_name: str) -> Projection:
            return Projection(
                "ble,ehd->blhd",
                (hidden, heads, head_dim),
                ("embed", heads_name, "head_dim"),
                (heads, head_dim) if qkv_bias else None,
                (heads_name, "head_dim"),
                dtype=dtype,
                rngs=rngs,
            )

        self.query = qkv(num_heads, "heads")
        # multi-head attention shards keys/values like queries; GQA's few kv heads get their own name
        kv_name = "heads" if num_kv_heads == num_heads else "kv_heads"
        self.key = qkv(num_kv_heads, kv_name)
        self.value = qkv(num_kv_heads, kv_name)
        self.output = Projection(
            "blhd,hde->ble",
            (num_heads, head_dim, hidden),
            ("heads", "head_dim", "embed"),
            (hidden,) if output_bias else None,
            ("embed",),
            dtype=dtype,
            rngs=rngs,
        )
        if qk_norm_eps is not None:
            self.query_norm = RMSNorm(head_dim, qk_norm_eps, dtype=dtype, axis_name="head_dim", rngs=rngs)
            self.key_norm = RMSNorm(head_dim, qk_norm_eps, dtype=dtype, axis_name="head_dim", rngs=rngs)
        else:
            self.query_norm = self.key_norm = None

    def __call__(
        self,
        x: Array,
        attention_mask: Array | None,
        positions: Array | None = None,
        segment_ids: Array | None = None,
        bias: Array | None = None,
    ) -> Array:
        """`attention_mask` (B, L): 1 for real tokens (None: all); `segment_ids` (B, L): packed texts attend
        within their own segment only; `bias` (B or 1, heads, L, L): added to the scores (MPNet's relative
        positions); see `attention.dot_product_attention`."""
        batch, length, _ = x.shape
        query, key, value = self.query(x), self.key(x), self.value(x)
        if self.query_norm is not None:
            query, key = self.query_norm(query), self.key_norm(key)
        if self.rope_theta is not None:
            if positions is None:
                positions = jnp.broadcast_to(jnp.arange(length), (batch, length))
            cos, sin = rotary_angles(positions, self.head_dim, self.rope_theta)
            query, key = apply_rotary(query, cos, sin), apply_rotary(key, cos, sin)
        context = attention_lib.dot_product_attention(
            query,
            key,
            value,
            attention_mask,
            causal=self.causal,
            segment_ids=segment_ids,
            implementation=self.implementation,
            bias=bias,
        )
        return self.output(context)


ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


def activation(name: str) -> Callable[[Array], Array]:
    """The activation called `name` in Hugging Face configs."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unsupported activation {name!r}; supported: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class MLP(nnx.Module):
    """`down(act(up(x)))` with biases (BERT style, GELU)."""

    def __init__(self, hidden: int, intermediate: int, act: str, *, dtype: str = "float32", rngs: nnx.Rngs):
        activation(act)  # fail at construction on an unknown activation
        self.act = act
        self.up = dense(hidden, intermediate, "embed", "mlp", use_bias=True, dtype=dtype, rngs=rngs)
        self.down = dense(intermediate, hidden, "mlp", "embed", use_bias=True, dtype=dtype, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        return self.down(activation(self.act)(self.up(x)))


class GatedMLP(nnx.Module):
    """`down(act(gate(x)) * up(x))` without biases (Qwen2/Llama style, SiLU)."""

    def __init__(self, hidden: int, intermediate: int, act: str = "silu", *, dtype: str = "float32", rngs: nnx.Rngs):
        activation(act)  # fail at construction on an unknown activation
        self.act = act
        self.gate = dense(hidden, intermediate, "embed", "mlp", use_bias=False, dtype=dtype, rngs=rngs)
        self.up = dense(hidden, intermediate, "embed", "mlp", use_bias=False, dtype=dtype, rngs=rngs)
        self.down = dense(intermediate, hidden, "mlp", "embed", use_bias=False, dtype=dtype, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        return self.down(activation(self.act)(self.gate(x)) * self.up(x))


def run_layers(layers: nnx.List, x: Array, *args, remat: bool | str = False, scan: bool = False) -> Array:
    """Apply `layers` in order, optionally rematerialised (`remat`, a `jasper_jax.models.remat` policy) and
    scanned (`scan`).

    Remat is `jax.checkpoint` over a pure function of the layer's state (split here, merged inside), not
    `nnx.remat`: the latter writes the state back into the layer's Variables afterwards, which fails
    ("Cannot mutate Param from a different trace level") for frozen layers, whose Variables the train step
    builds outside the gradient trace (stage 2's frozen layers, stage 4's whole text encoder).

    `scan`: the layers' states are stacked along a new leading axis here, at trace time, and one
    `jax.lax.scan` applies the layer body to each slice, so XLA compiles one layer instead of N. The
    parameters themselves stay per layer (`encoder/layers/3/...`): checkpoints, the Hugging Face key maps
    and the freezing regexes are unchanged. Consecutive layers are scanned together only when their states
    have the same structure and the same kind of leaves; under a gradient the frozen layers (constants of
    the trace) and the trained ones (differentiated) thus form separate scans, and the frozen group, as in
    the unrolled loop, has no backward pass (stage 2: 25 frozen layers, then 3 trained ones). Layers with
    non-parameter state (dropout RNGs) are refused: the encoder layers have none.
    """
    if not scan:
        if remat_lib.normalize(remat) == "none":
            for layer in layers:
                x = layer(x, *args)
            return x
        for layer in layers:
            graphdef, state = nnx.split(layer)
            x = remat_lib.checkpointed(_apply_layer, remat, static_argnums=0)(graphdef, state, x, *args)
        return x
    for graphdef, states in _scan_groups(layers):
        stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)

        def body(hidden, state, graphdef=graphdef):
            return _apply_layer(graphdef, state, hidden, *args), None

        x, _ = jax.lax.scan(remat_lib.checkpointed(body, remat, prevent_cse=False), x, stacked)
    return x


def _apply_layer(graphdef: nnx.GraphDef, state: nnx.State, hidden: Array, *rest) -> Array:
    return nnx.merge(graphdef, state)(hidden, *rest)


def _scan_groups(layers: Sequence[nnx.Module]) -> list[tuple[nnx.GraphDef, list[nnx.State]]]:
    """Consecutive layers with the same graphdef, state structure and leaf kinds: `(graphdef, states)`."""
    groups: list[tuple[nnx.GraphDef, list[nnx.State]]] = []
    signature = None
    for layer in layers:
        graphdef, state, others = nnx.split(layer, nnx.Param, ...)
        if jax.tree.leaves(others):
            raise ValueError(
                "scan_layers: the encoder layers carry non-parameter state (e.g. dropout RNGs); "
                "this is not supported, set model.scan_layers=false"
            )
        leaves, treedef = jax.tree.flatten(state)
        current = (graphdef, treedef, tuple(type(leaf) for leaf in leaves))
        if groups and current == signature:
            groups[-1][1].append(state)
        else:
            groups.append((graphdef, [state]))
            signature = current
    return groups
