"""Scaled dot-product attention with a selectable implementation, shared by every encoder family.

`dot_product_attention(query, key, value, attention_mask, causal=..., segment_ids=..., implementation=...)`
takes queries (B, L, N, H) and keys/values (B, L, K, H) with K dividing N (grouped-query attention: query
head h uses key/value head h // (N // K), as Hugging Face's `repeat_kv`; the keys and values are never
repeated), and returns (B, L, N, H) in the query's dtype. A query attends to the keys that are real tokens
(`attention_mask` nonzero; None = all), earlier or equal positions only with `causal`, and, with
`segment_ids` (B, L) int (sequence packing), the keys of its own segment only. The softmax is float32.
`bias` (B or 1, N, L, L), if given, is added to the scaled scores before masking (MPNet's relative position
bias); only "einsum" and "xla" take one ("cudnn" and "splash" refuse it with a ValueError).

Implementations (`StudentConfig.attention`, the `attention` argument of the encoders):
- "einsum": the scores as a float32 (B, N, L, L) array from two einsums; the reference the others are
  tested against (tests/models/test_attention.py).
- "xla": `jax.nn.dot_product_attention(implementation="xla")`: the same computation written by JAX (logits
  accumulated in float32 even for bfloat16 inputs), padding and segments as a boolean mask.
- "cudnn": cuDNN flash attention (`implementation="cudnn"`, NVIDIA GPUs): bfloat16/float16 only (a float32
  model is refused with a ValueError at construction), head_dim a multiple of 8 and at most 128 (256 from
  Hopper on); padding as key lengths, which assumes right padding (each row of `attention_mask` is ones
  then zeros, as the tokenizer pads); segment ids as a boolean mask.
- "splash": the TPU Pallas splash-attention kernel (`jax.experimental.pallas.ops.tpu.splash_attention`),
  per example (vmapped), sequence padded to a multiple of 128 with padding and segments as segment ids;
  refused on other platforms. XLA cannot partition a Pallas kernel, so under a multi-device mesh it runs
  inside `jax.shard_map` over the mesh's batch axes, each device on its own examples: the trainer's jitted
  step traces under `kernel_partitioning(mesh)`, which says which mesh and axes (without it, one device).
- "auto" (default): "cudnn" on a GPU when the compute dtype is bfloat16/float16 and head_dim % 8 == 0 and
  head_dim <= 128, else "xla" (CPU, float32 on GPU, and TPU; splash there is opt-in, since it has not been
  measured against xla on TPU in this project). On CPU "auto" is "xla", equal to "einsum" to 1e-5 in float32.

Rows whose output is not used (padding queries) may differ between implementations: "einsum", "xla" and
"cudnn" let a padding query attend to the real keys; "splash" lets it attend to the other padding
positions. Outputs at real tokens, and anything pooled over them, agree.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec

Array = jax.Array
IMPLEMENTATIONS = ("auto", "xla", "cudnn", "splash", "einsum")
FLASH_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
SPLASH_BLOCK = 128
_kernel_mesh: list[tuple[Mesh, tuple[str, ...]]] = []  # innermost last: see kernel_partitioning


@contextlib.contextmanager
def kernel_partitioning(mesh: Mesh, batch_axes: Sequence[str]) -> Iterator[None]:
    """While tracing inside this block, the splash kernel runs under `jax.shard_map` over `batch_axes` of
    `mesh` (the batch dimension split over them; any other axis, e.g. "tensor", replicated).

    Why: XLA does not partition Pallas custom calls; without shard_map a sharded batch would be gathered
    onto every device (or refused) around each attention call. Other implementations ignore it."""
    _kernel_mesh.append((mesh, tuple(batch_axes)))
    try:
        yield
    finally:
        _kernel_mesh.pop()


def check_implementation(implementation: str, dtype: str | jnp.dtype) -> None:
    """Fail early, with what to do, on an unknown implementation or cuDNN with a float32 compute dtype."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"attention={implementation!r}; choose from {IMPLEMENTATIONS}")
    if implementation == "cudnn" and jnp.dtype(dtype) not in FLASH_DTYPES:
        raise ValueError(
            f"attention='cudnn' runs in bfloat16 or float16 only, but the compute dtype is {jnp.dtype(dtype).name}; "
            "set compute_dtype='bfloat16', or attention='auto' (cuDNN for bfloat16 on GPU, xla otherwise)"
        )


def resolve_implementation(implementation: str, dtype: jnp.dtype, head_dim: int, platform: str | None = None) -> str:
    """The implementation "auto" stands for on `platform` (default: JAX's default backend); others unchanged."""
    check_implementation(implementation, dtype)
    if implementation != "auto":
        return implementation
    platform = platform or jax.default_backend()
    if platform == "gpu" and jnp.dtype(dtype) in FLASH_DTYPES and head_dim % 8 == 0 and head_dim <= 128:
        return "cudnn"
    return "xla"


def dot_product_attention(
    query: Array,
    key: Array,
    value: Array,
    attention_mask: Array | None,
    *,
    causal: bool = False,
    segment_ids: Array | None = None,
    implementation: str = "auto",
    interpret: bool = False,
    bias: Array | None = None,
) -> Array:
    """softmax(q k^T / sqrt(H) masked) v per head (see the module docstring for shapes and masking).

    `interpret` runs the splash kernel in Pallas interpret mode (any platform, slow: for tests)."""
    batch, length, heads, head_dim = query.shape
    kv_heads = key.shape[2]
    if heads % kv_heads:
        raise ValueError(f"query heads {heads} are not a multiple of key/value heads {kv_heads}")
    if segment_ids is not None and tuple(segment_ids.shape) != (batch, length):
        raise ValueError(
            f"segment_ids of shape {tuple(segment_ids.shape)}; expected (batch, length) = {(batch, length)}"
        )
    name = resolve_implementation(implementation, query.dtype, head_dim)
    if bias is not None and name not in ("einsum", "xla"):
        raise ValueError(f"attention={name!r} takes no additive score bias; use attention='xla' or 'einsum'")
    platform = jax.default_backend()
    if name == "einsum":
        return _einsum_attention(query, key, value, attention_mask, causal, segment_ids, bias)
    if name == "xla":
        return jax.nn.dot_product_attention(
            query,
            key,
            value,
            bias=None if bias is None else bias.astype(query.dtype),
            mask=_boolean_mask(attention_mask, segment_ids),
            is_causal=causal,
            implementation="xla",
        )
    if name == "cudnn":
        if platform != "gpu":
            raise ValueError(
                f"attention='cudnn' needs an NVIDIA GPU, but JAX's default backend is {platform!r}; "
                "use attention='auto' or 'xla'"
            )
        lengths = None
        if attention_mask is not None:
            # at least one key per row: an all-padding row then attends to position 0 instead of giving NaN
            lengths = jnp.maximum(jnp.sum(attention_mask.astype(jnp.int32), axis=1), 1).astype(jnp.int32)
        mask = _boolean_mask(None, segment_ids)
        return jax.nn.dot_product_attention(
            query, key, value, mask=mask, is_causal=causal, key_value_seq_lengths=lengths, implementation="cudnn"
        )
    if platform != "tpu" and not interpret:
        raise ValueError(
            f"attention='splash' is the TPU Pallas kernel, but JAX's default backend is {platform!r}; "
            "use attention='auto' or 'xla'"
        )
    return _splash_attention(query, key, value, attention_mask, causal, segment_ids, interpret)


def _boolean_mask(attention_mask: Array | None, segment_ids: Array | None) -> Array | None:
    """(B, 1, 1 or L, L) bool: key is a real token, and (with segments) in the query's segment."""
    mask = None
    if attention_mask is not None:
        mask = attention_mask.astype(bool)[:, None, None, :]
    if segment_ids is not None:
        same = (segment_ids[:, :, None] == segment_ids[:, None, :])[:, None]
        mask = same if mask is None else mask & same
    return mask


def _einsum_attention(
    query: Array,
    key: Array,
    value: Array,
    attention_mask: Array | None,
    causal: bool,
    segment_ids: Array | None,
    bias: Array | None = None,
) -> Array:
    batch, length, heads, head_dim = query.shape
    kv_heads = key.shape[2]
    groups = heads // kv_heads
    grouped = query.reshape(batch, length, kv_heads, groups, head_dim)
    scores = jnp.einsum("bqkgd,bskd->bkgqs", grouped, key).astype(jnp.float32) / jnp.sqrt(jnp.float32(head_dim))
    if bias is not None:  # (B or 1, N, L, L) -> (B or 1, K, G, L, L), heads grouped as the queries
        scores = scores + bias.astype(jnp.float32).reshape(bias.shape[0], kv_heads, groups, length, length)
    allowed = jnp.ones((batch, 1, 1, 1, length), bool)
    if attention_mask is not None:
        allowed = attention_mask.astype(bool)[:, None, None, None, :]
    if causal:
        allowed = allowed & jnp.tril(jnp.ones((length, length), dtype=bool))[None, None, None]
    if segment_ids is not None:
        allowed = allowed & (segment_ids[:, :, None] == segment_ids[:, None, :])[:, None, None]
    scores = jnp.where(allowed, scores, jnp.finfo(jnp.float32).min)
    probabilities = jax.nn.softmax(scores, axis=-1).astype(query.dtype)
    context = jnp.einsum("bkgqs,bskd->bqkgd", probabilities, value)
    return context.reshape(batch, length, heads, head_dim)


@functools.lru_cache(maxsize=32)
def _splash_kernel(length: int, heads: int, causal: bool, interpret: bool):
    from jax.experimental.pallas.ops.tpu import splash_attention

    mask_class = splash_attention.CausalMask if causal else splash_attention.FullMask
    mask = splash_attention.MultiHeadMask([mask_class((length, length)) for _ in range(heads)])
    # the kernel's block tables are arrays: made eagerly, so that a cached kernel holds no tracer of a jit
    with jax.ensure_compile_time_eval():
        return splash_attention.make_splash_mha(mask, head_shards=1, q_seq_shards=1, interpret=interpret)


def _splash_attention(
    query: Array,
    key: Array,
    value: Array,
    attention_mask: Array | None,
    causal: bool,
    segment_ids: Array | None,
    interpret: bool,
) -> Array:
    from jax.experimental.pallas.ops.tpu import splash_attention

    batch, length, heads, head_dim = query.shape
    padded = -(-length // SPLASH_BLOCK) * SPLASH_BLOCK
    # segment 0 = padding (of the batch and of the block rounding); real tokens get their segment + 1
    segments = jnp.ones((batch, length), jnp.int32) if segment_ids is None else segment_ids.astype(jnp.int32) + 1
    if attention_mask is not None:
        segments = jnp.where(attention_mask.astype(bool), segments, 0)
    segments = jnp.pad(segments, ((0, 0), (0, padded - length)))

    def heads_first(x: Array) -> Array:  # (B, L, heads, H) -> (B, heads, padded, H)
        return jnp.pad(x, ((0, 0), (0, padded - length), (0, 0), (0, 0))).transpose(0, 2, 1, 3)

    scaled = query * jnp.asarray(head_dim**-0.5, query.dtype)  # the kernel does not scale the logits
    kernel = _splash_kernel(padded, heads, causal, interpret)

    def one(q: Array, k: Array, v: Array, segment: Array) -> Array:
        return kernel(q, k, v, segment_ids=splash_attention.SegmentIds(q=segment, kv=segment))

    per_example = jax.vmap(one)
    if _kernel_mesh and _kernel_mesh[-1][0].size > 1:
        mesh, axes = _kernel_mesh[-1]
        spec = PartitionSpec(axes)  # the batch dimension over the batch axes, the rest whole
        # check_vma off: the kernel's pallas_call has no varying-manual-axes rule
        per_example = jax.shard_map(per_example, mesh=mesh, in_specs=spec, out_specs=spec, check_vma=False)
    context = per_example(heads_first(scaled), heads_first(key), heads_first(value), segments)
    return context.transpose(0, 2, 1, 3)[:, :length].astype(query.dtype)
