"""The released Jasper-Token-Compression-600M folder layout (`JasperV2Encoder`) <-> our student's parts.

The folder's `config.json` is a Qwen3 config (model_type qwen3) whose `architectures` name
`JasperV2Encoder`; `model.safetensors` holds the Qwen3 encoder under `model.*`, the compressor's MLP under
`jasper_mlp.{gate,up,down}_proj.weight` and the output projection `linear_1.{weight,bias}` (hidden -> 2048)
applied to the mean-pooled vector. Its `modules.json` names a `custom_st.JasperTransformer` (the model does
its own pooling) and a Normalize. The compression threshold (80) and default ratio (0.5) are constants of
the released code, not of the files.

Our export of a compressed student (`export_files`) writes the same layout and adds what the released
files leave to code constants, under keys that our import and the shipped `modeling_jasper_jax_v2.py` read
(each defaulting to the released value): `jasper_compression_threshold`, `jasper_compression_ratio`,
`jasper_compression_hidden_act`, `jasper_compression_intermediate_size` (the MLP's width, released: the
encoder's), `projection_dim` (linear_1's width; sentence-transformers reads it as the
embedding dimension) and `jasper_head_name` (the student's head, `linear_1` in the released folder).
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
MODELING = "modeling_jasper_jax_v2"  # the shipped PyTorch module of an export


def is_jasper_v2(hf_config: dict) -> bool:
    """Whether a config.json dict is the released model's (a `JasperV2Encoder`)."""
    return ARCHITECTURE in (hf_config.get("architectures") or [])


def head_name(hf_config: dict) -> str:
    """The student's name of the `linear_1` head (ours: the exported head's; released: `linear_1`)."""
    return hf_config.get("jasper_head_name") or HEAD


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
        threshold=int(hf_config.get("jasper_compression_threshold", THRESHOLD)),
        ratio=float(hf_config.get("jasper_compression_ratio", DEFAULT_RATIO)),
        hidden_act=hf_config.get("jasper_compression_hidden_act") or hf_config.get("hidden_act", "silu"),
    )
    return encoder, compressor, head, config


def export_tensors(encoder: dict[str, np.ndarray], params: dict[str, np.ndarray], head: str) -> dict[str, np.ndarray]:
    """The inverse of `split_tensors`: encoder tensors (Hugging Face keys, no prefix) under `model.`, the
    compressor MLP (`params`: our flat `compressor/...` paths) as `jasper_mlp.*` and head `head` as `linear_1.*`."""
    tensors = {f"model.{key}": value for key, value in encoder.items()}
    for name, key in MLP_KEYS.items():
        tensors[key] = np.ascontiguousarray(params[f"compressor/mlp/{name}/kernel"].T)
    tensors[f"{HEAD}.weight"] = np.ascontiguousarray(params[f"heads/{head}/kernel"].T)
    tensors[f"{HEAD}.bias"] = params[f"heads/{head}/bias"]
    return tensors


def config_entries(compression: CompressionConfig, head: str, head_dim: int) -> dict:
    """The config.json entries of an exported compressed student (besides the Qwen3 config)."""
    return {
        "architectures": [ARCHITECTURE],
        "auto_map": {"AutoModel": f"{MODELING}.{ARCHITECTURE}"},
        "jasper_compression_threshold": compression.threshold,
        "jasper_compression_ratio": compression.ratio,
        "jasper_compression_hidden_act": compression.hidden_act,
        "jasper_compression_intermediate_size": compression.intermediate_size,
        "projection_dim": int(head_dim),
        "jasper_head_name": head,
    }
