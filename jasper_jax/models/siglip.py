"""SigLIP vision tower (Hugging Face `SiglipVisionModel` without its attention-pooling head).

Jasper feeds the tower's final token states (all patches, after the post-LayerNorm) through the
parameter-free pooler (`vision_pooler.py`) into the language model; the SigLIP pooling head is not used.

Layout: patch embedding (a `patch x patch` convolution with stride `patch`, written as an einsum over
patches), learned positions, pre-LN encoder blocks (x + attention(LN(x)); x + mlp(LN(x))), post-LN. The
shared `layers.Attention` / `layers.LayerNorm` / `layers.MLP` do the work. Pixels are channel-last
`(B, H, W, C)` float32, already normalised (SigLIP: `(x / 255 - 0.5) / 0.5`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jasper_jax.models import layers

Array = jax.Array
MODEL_TYPE = "siglip_vision_model"
IMAGE_MEAN = (0.5, 0.5, 0.5)
IMAGE_STD = (0.5, 0.5, 0.5)


@dataclasses.dataclass(frozen=True)
class SiglipVisionConfig:
    """Hyper-parameters of a SigLIP vision tower; field names follow Hugging Face's `SiglipVisionConfig`.

    The defaults are so400m-patch14-384 (Jasper's tower): 27 layers, hidden 1152, 729 patches."""

    hidden_size: int = 1152
    intermediate_size: int = 4304
    num_hidden_layers: int = 27
    num_attention_heads: int = 16
    num_channels: int = 3
    image_size: int = 384
    patch_size: int = 14
    hidden_act: str = "gelu_pytorch_tanh"
    layer_norm_eps: float = 1e-6
    model_type: str = MODEL_TYPE

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"SigLIP hidden_size={self.hidden_size} is not a multiple of "
                f"num_attention_heads={self.num_attention_heads}"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def grid(self) -> int:
        """Patches per side."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid**2

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> SiglipVisionConfig:
        """From a Hugging Face config dict: a `SiglipVisionConfig` one or a `SiglipConfig` (its vision_config)."""
        if hf.get("model_type") == "siglip" or "vision_config" in hf:
            hf = hf["vision_config"]
        image_size = hf.get("image_size", 224)
        if isinstance(image_size, (list, tuple)):
            if len(set(image_size)) != 1:
                raise ValueError(f"SigLIP image_size={image_size}: only square images are supported")
            image_size = image_size[0]
        values = dict(hf, image_size=int(image_size))
        names = {field.name for field in dataclasses.fields(cls)} - {"model_type"}
        return cls(**{key: values[key] for key in names if key in values and values[key] is not None})

    def to_hf(self) -> dict[str, Any]:
        """A Hugging Face config.json dict for `SiglipVisionModel` (no pooling head: Jasper uses all tokens)."""
        hf = dataclasses.asdict(self)
        hf.update(
            architectures=["SiglipVisionModel"], model_type=MODEL_TYPE, vision_use_head=False, attention_dropout=0.0
        )
        return hf


def tiny_siglip_config(**overrides) -> SiglipVisionConfig:
    """A small random tower for tests and the tiny runs (32 x 32 images, 4 x 4 patches of 8 pixels)."""
    values = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8
    )
    values.update(overrides)
    return SiglipVisionConfig(**values)


class SiglipLayer(nnx.Module):
    """Pre-LN block: x = x + attention(LN(x)); x = x + mlp(LN(x))."""

    def __init__(self, config: SiglipVisionConfig, *, dtype: str, attention: str = "auto", rngs: nnx.Rngs):
        heads = config.num_attention_heads
        self.attention_norm = layers.LayerNorm(config.hidden_size, config.layer_norm_eps, dtype=dtype, rngs=rngs)
        self.attention = layers.Attention(
            config.hidden_size,
            heads,
            heads,
            config.head_dim,
            qkv_bias=True,
            output_bias=True,
            dtype=dtype,
            attention=attention,
            rngs=rngs,
        )
        self.mlp_norm = layers.LayerNorm(config.hidden_size, config.layer_norm_eps, dtype=dtype, rngs=rngs)
        self.mlp = layers.MLP(config.hidden_size, config.intermediate_size, config.hidden_act, dtype=dtype, rngs=rngs)

    def __call__(self, x: Array, attention_mask: Array | None) -> Array:
        x = x + self.attention(self.attention_norm(x), attention_mask)
        return x + self.mlp(self.mlp_norm(x))


class SiglipVisionEncoder(nnx.Module):
    """Pixels (B, H, W, C) -> token states (B, num_patches, hidden), like `SiglipVisionModel(...).last_hidden_state`.

    `attention`: the attention implementation (`jasper_jax.models.attention.IMPLEMENTATIONS`)."""

    def __init__(
        self,
        config: SiglipVisionConfig,
        *,
        dtype: str = "float32",
        remat: bool | str = False,
        attention: str = "auto",
        scan_layers: bool = False,
        rngs: nnx.Rngs,
    ):
        self.config = config
        self.remat = remat
        self.scan_layers = scan_layers
        self.dtype = layers.as_dtype(dtype)
        with layers.parameter_context():
            patch, channels, hidden = config.patch_size, config.num_channels, config.hidden_size
            # the convolution kernel as (patch_h, patch_w, channels, hidden);
            # HF's Conv2d weight is (hidden, channels, h, w)
            self.patch_embedding = layers.Projection(
                "bypxqc,pqce->byxe",
                (patch, patch, channels, hidden),
                ("patch", "patch", "channels", "embed"),
                (hidden,),
                ("embed",),
                dtype=dtype,
                rngs=rngs,
            )
            self.position_embedding = layers.Embedding(config.num_patches, hidden, "position", dtype=dtype, rngs=rngs)
            self.layers = nnx.List(
                [
                    SiglipLayer(config, dtype=dtype, attention=attention, rngs=rngs)
                    for _ in range(config.num_hidden_layers)
                ]
            )
            self.post_norm = layers.LayerNorm(hidden, config.layer_norm_eps, dtype=dtype, rngs=rngs)

    def __call__(self, pixel_values: Array) -> Array:
        config = self.config
        batch, height, width, channels = pixel_values.shape
        if (height, width, channels) != (config.image_size, config.image_size, config.num_channels):
            raise ValueError(
                f"pixel_values of shape {pixel_values.shape}; this tower takes (B, {config.image_size}, "
                f"{config.image_size}, {config.num_channels}) channel-last images"
            )
        grid, patch = config.grid, config.patch_size
        usable = grid * patch  # HF's 'valid' convolution drops the remainder rows/columns
        pixels = pixel_values[:, :usable, :usable].reshape(batch, grid, patch, grid, patch, channels)
        x = self.patch_embedding(pixels).reshape(batch, grid * grid, config.hidden_size)
        x = x + self.position_embedding(jnp.arange(config.num_patches))[None]
        x = layers.run_layers(
            self.layers, x, None, remat=self.remat, scan=self.scan_layers
        )  # every patch attends to every patch
        return self.post_norm(x)
