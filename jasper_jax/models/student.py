"""The Jasper student: an encoder, pooling, optional vector dropout and named linear heads.

Paper layout ("heads"): independent `Linear(hidden -> d, bias)` heads on the pooled vector (fc1 12288,
fc2 1024, fc3 512, fc4 256); every head's output is L2-normalised. The official code's "prefix" convention
(one head whose first d components, renormalised, are the reduced vectors) is the objective's `mrl_mode` and
`encode`'s `NAME@D`; the model is the same. A student without heads outputs the normalised pooled vector
under the name "pooled".
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jasper_jax.models import layers
from jasper_jax.models import remat as remat_lib
from jasper_jax.models.attention import check_implementation as check_attention
from jasper_jax.models.bert import BertConfig, BertEncoder
from jasper_jax.models.image_inputs import ImageInputs
from jasper_jax.models.mpnet import MPNetConfig, MPNetEncoder
from jasper_jax.models.packed import PackedLayout, pool_packed
from jasper_jax.models.pooling import POOLING_MODES, l2_normalize, pool
from jasper_jax.models.qwen2 import Qwen2Config, Qwen2Encoder
from jasper_jax.models.qwen3 import Qwen3Config, Qwen3Encoder
from jasper_jax.models.siglip import SiglipVisionConfig
from jasper_jax.models.token_compression import CompressionConfig, TokenCompressor

Array = jax.Array
POOLED = "pooled"
ENCODER_FAMILIES = {
    "bert": (BertConfig, BertEncoder),
    "mpnet": (MPNetConfig, MPNetEncoder),
    "qwen2": (Qwen2Config, Qwen2Encoder),
    "qwen3": (Qwen3Config, Qwen3Encoder),
}


@dataclasses.dataclass
class StudentConfig:
    """What a `JasperStudent` is made of (see docs/INTERFACES.md)."""

    encoder: BertConfig | MPNetConfig | Qwen2Config | Qwen3Config
    pooling: str = "mean"
    heads: dict[str, int] = dataclasses.field(default_factory=dict)
    vector_dropout: float = 0.0
    compute_dtype: str = "float32"
    # rematerialisation policy of the encoder layers (jasper_jax.models.remat; true/false read as full/none)
    remat: str = "none"
    # attention implementation of every encoder layer, text and vision (jasper_jax.models.attention);
    # configs saved before the field existed load with the default
    attention: str = "auto"
    # the encoder layers under one jax.lax.scan (one compiled layer; parameters stay per layer)
    scan_layers: bool = False
    # images (stage 4): a SigLIP tower, n pooled rows per image, the (start, token, end) marker token ids
    vision: SiglipVisionConfig | None = None
    image_tokens: int = 0
    image_token_ids: tuple[int, int, int] | None = None
    # dynamic token compression before the encoder (jasper_jax.models.token_compression); None: off
    token_compression: CompressionConfig | None = None

    def __post_init__(self):
        if self.vision is not None and (self.image_tokens <= 0 or self.image_token_ids is None):
            raise ValueError(
                f"a student with a vision tower needs image_tokens > 0 (got {self.image_tokens}) and "
                f"image_token_ids (start, token, end) (got {self.image_token_ids}); see add_image_tokens"
            )
        if self.image_token_ids is not None:
            object.__setattr__(self, "image_token_ids", tuple(int(i) for i in self.image_token_ids))
        if self.pooling not in POOLING_MODES:
            raise ValueError(f"pooling={self.pooling!r}; choose from {POOLING_MODES}")
        if POOLED in self.heads:
            raise ValueError(f"{POOLED!r} is reserved for the pooled vector; rename that head")
        if self.compute_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"compute_dtype={self.compute_dtype!r}; choose 'float32' or 'bfloat16'")
        check_attention(self.attention, self.compute_dtype)
        if isinstance(self.token_compression, dict):
            self.token_compression = CompressionConfig.from_dict(self.token_compression)
        if self.token_compression is not None and self.vision is not None:
            raise ValueError("token_compression and a vision tower cannot be combined (text students only)")
        self.remat = remat_lib.normalize(self.remat)
        self.scan_layers = bool(self.scan_layers)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (the encoder as its Hugging Face config dict)."""
        values = dataclasses.asdict(self)
        values["encoder"] = self.encoder.to_hf()
        values["vision"] = self.vision.to_hf() if self.vision is not None else None
        values["token_compression"] = self.token_compression.to_dict() if self.token_compression else None
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> StudentConfig:
        """Inverse of `to_dict`."""
        values = dict(values)
        values.pop("prefix_layout", None)  # saved before 2026-12: a flag that changed nothing
        encoder = values["encoder"]
        family = encoder.get("model_type")
        if family not in ENCODER_FAMILIES:
            raise ValueError(f"unsupported encoder model_type {family!r}; supported: {sorted(ENCODER_FAMILIES)}")
        values["encoder"] = ENCODER_FAMILIES[family][0].from_hf(encoder)
        values["heads"] = dict(values.get("heads", {}))
        if values.get("vision"):
            values["vision"] = SiglipVisionConfig.from_hf(values["vision"])
        return cls(**values)


class JasperStudent(nnx.Module):
    """Encoder + pooling + named heads; `model(input_ids, attention_mask)` -> {head: (B, d) L2-normalised}."""

    def __init__(self, config: StudentConfig, *, rngs: nnx.Rngs):
        self.config = config
        with layers.parameter_context():
            family = config.encoder.model_type
            if family not in ENCODER_FAMILIES:
                raise ValueError(f"unsupported encoder model_type {family!r}; supported: {sorted(ENCODER_FAMILIES)}")
            encoder_class = ENCODER_FAMILIES[family][1]
            self.encoder = encoder_class(
                config.encoder,
                dtype=config.compute_dtype,
                remat=config.remat,
                attention=config.attention,
                scan_layers=config.scan_layers,
                rngs=rngs,
            )
            hidden = config.encoder.hidden_size
            self.heads = nnx.Dict(
                {
                    name: layers.dense(hidden, dim, "embed", "head_out", use_bias=True, dtype="float32", rngs=rngs)
                    for name, dim in config.heads.items()
                }
            )
            self.dropout = nnx.Dropout(config.vector_dropout, rngs=rngs) if config.vector_dropout > 0 else None
            self.compressor = None
            if config.token_compression is not None:
                self.compressor = nnx.data(
                    TokenCompressor(config.token_compression, hidden, dtype=config.compute_dtype, rngs=rngs)
                )
            self.vision = None
            if config.vision is not None:
                self.vision = nnx.data(
                    ImageInputs(
                        config.vision,
                        hidden,
                        config.image_tokens,
                        config.image_token_ids,
                        dtype=config.compute_dtype,
                        remat=config.remat,
                        attention=config.attention,
                        scan_layers=config.scan_layers,
                        rngs=rngs,
                    )
                )

    def token_embeddings(self, input_ids: Array) -> Array:
        """The encoder's token embeddings (B, L, hidden) of `input_ids`."""
        table = self.encoder.word_embeddings if hasattr(self.encoder, "word_embeddings") else self.encoder.embed
        return table(input_ids)

    def pooled(
        self,
        input_ids: Array,
        attention_mask: Array,
        token_type_ids: Array | None = None,
        pixel_values: Array | None = None,
        packed: PackedLayout | None = None,
        compression_ratio: float | None = None,
        compressed_mask: Array | None = None,
    ) -> Array:
        """The pooled (not normalised) float32 vector (B, hidden).

        `pixel_values` (B, H, W, C): one image per row, whose pooled rows replace the embeddings at that
        row's image-token positions (see `image_inputs.py`); rows without image tokens ignore theirs.
        `packed`: the inputs are packed rows (R, L) holding B texts (`jasper_jax.models.packed`); the result
        is then the B texts' vectors in their input order (text students only).
        A student with a token compressor compresses the token embeddings first: by `compression_ratio`
        (a Python float, default the config's) or to the host-built `compressed_mask` (B, T); pooling then
        runs over the compressed tokens (see `token_compression.py`)."""
        if self.compressor is not None:
            if packed is not None:
                raise ValueError("packed inputs are not supported with token compression (set data packing off)")
            embeddings, mask = self.compressor(
                self.token_embeddings(input_ids), attention_mask, ratio=compression_ratio, new_mask=compressed_mask
            )
            # compressed positions are no tokens: ids of the compressed shape (unused beside the embeddings)
            hidden = self.encoder(jnp.zeros(mask.shape, input_ids.dtype), mask, None, inputs_embeds=embeddings)
            return pool(hidden, mask, self.config.pooling)
        if compression_ratio is not None or compressed_mask is not None:
            raise ValueError("compression_ratio given but this student has no token compressor (token_compression)")
        if packed is not None:
            if self.vision is not None or pixel_values is not None:
                raise ValueError("packed inputs are for text-only students (no vision tower, no pixel_values)")
            hidden = self.encoder(
                input_ids,
                attention_mask,
                token_type_ids,
                positions=packed.positions,
                segment_ids=packed.segment_ids,
            )
            return pool_packed(hidden, attention_mask, packed, self.config.pooling)
        if self.vision is None:
            if pixel_values is not None:
                raise ValueError("pixel_values given but this student has no vision tower (StudentConfig.vision)")
            hidden = self.encoder(input_ids, attention_mask, token_type_ids)
        else:
            # marker ids may lie past the encoder's vocabulary: look up row 0 there (replaced by `embed`)
            is_marker = jnp.isin(input_ids, jnp.asarray(self.vision.marker_ids))
            table_ids = jnp.where(is_marker, 0, input_ids)
            embeddings = self.vision.embed(input_ids, self.token_embeddings(table_ids), pixel_values)
            hidden = self.encoder(input_ids, attention_mask, token_type_ids, inputs_embeds=embeddings)
        return pool(hidden, attention_mask, self.config.pooling)

    def __call__(
        self,
        input_ids: Array,
        attention_mask: Array,
        *,
        deterministic: bool = True,
        token_type_ids: Array | None = None,
        pixel_values: Array | None = None,
        packed: PackedLayout | None = None,
        compression_ratio: float | None = None,
        compressed_mask: Array | None = None,
    ) -> dict[str, Array]:
        vector = self.pooled(
            input_ids, attention_mask, token_type_ids, pixel_values, packed, compression_ratio, compressed_mask
        )
        return self.head_outputs(vector, deterministic=deterministic)

    def head_outputs(self, vector: Array, *, deterministic: bool = True) -> dict[str, Array]:
        """The pooled vectors (B, hidden) through vector dropout and the heads (the tail of `__call__`;
        GradCache differentiates it over the whole global batch, `jasper_jax.train.grad_cache`)."""
        if not self.heads:
            return {POOLED: l2_normalize(vector)}
        if self.dropout is not None:
            vector = self.dropout(vector, deterministic=deterministic)
        return {name: l2_normalize(head(vector)) for name, head in self.heads.items()}


def count_parameters(model: nnx.Module) -> int:
    """Number of parameter scalars (works on abstract models too)."""
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))


def paper_student_config(vocab_size: int = 151646, heads: dict[str, int] | None = None, **kwargs) -> StudentConfig:
    """The paper-scale student: stella_en_1.5B_v5's Qwen2 text tower, bidirectional, mean pooling."""
    heads = {"fc1": 12288, "fc2": 1024, "fc3": 512, "fc4": 256} if heads is None else heads
    return StudentConfig(encoder=Qwen2Config(vocab_size=vocab_size), heads=heads, **kwargs)
