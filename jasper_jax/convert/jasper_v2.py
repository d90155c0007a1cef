"""The released Jasper-Token-Compression-600M folder layout (`JasperV2Encoder`) -> our student's parts.

The folder's `config.json` is a Qwen3 config (model_type qwen3) whose `architectures` name
`JasperV2Encoder`; `model.safetensors` holds the Qwen3 encoder under `model.*`, the compressor's MLP under
`jasper_mlp.{gate,up,down}_proj.weight` and the output projection `linear_1.{weight,bias}` (hidden -> 2048)
applied to the mean-pooled vector. Its `modules.json` names a `custom_st.JasperTransformer` (the model does
its own pooling) and a Normalize. The compression threshold (80) and default ratio (0.5) are constants of
the released code, not of the files.
"""

from __future__ import annotations

import numpy as np

from jasper_jax.models.token_compression import CompressionConfig

ARCHITECTURE = "JasperV2Encoder"
THRESHOLD = 80
DEFAULT_RATIO = 0.5
HEAD = "linear_1"
MLP_KEYS = {
    "gate": "jasper_mlp.gate_proj.weight",
    "up": "jasper_mlp.up_proj.weight",
    "down": "jasper_mlp.down_proj.weight",
}


def is_jasper_v2(hf_config: dict) -> bool:
    """Whether a config.json dict is the released model's (a `JasperV2Encoder`)."""
    return ARCHITECTURE in (hf_config.get("architectures") or [])


def split_tensors(tensors: dict[str, np.ndarray], hf_config: dict, source: str):
    """`(encoder tensors, compressor params {path: array}, (head kernel (hidden, d), bias), CompressionConfig)`.

    Raises the conversion error naming the missing keys when the folder lacks the compressor or head."""
    from jasper_jax.convert.hf import ConversionError

    wanted = [*MLP_KEYS.values(), f"{HEAD}.weight", f"{HEAD}.bias"]
    missing = [key for key in wanted if key not in tensors]
    if missing:
        raise ConversionError(f"{source}: a {ARCHITECTURE} folder needs the weights {', '.join(missing)}")
    encoder = {key: value for key, value in tensors.items() if key not in wanted}
    compressor = {f"compressor/mlp/{name}/kernel": np.asarray(tensors[key]).T for name, key in MLP_KEYS.items()}
    head = (np.asarray(tensors[f"{HEAD}.weight"]).T, np.asarray(tensors[f"{HEAD}.bias"]))
    config = CompressionConfig(
        intermediate_size=int(tensors[MLP_KEYS["gate"]].shape[0]),
        threshold=THRESHOLD,
        ratio=DEFAULT_RATIO,
        hidden_act=hf_config.get("hidden_act", "silu"),
    )
    return encoder, compressor, head, config
