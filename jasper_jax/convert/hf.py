"""Hugging Face folders <-> our encoder parameters, through the family key maps (no PyTorch needed).

Reads `config.json` and safetensors weights (one `model.safetensors` or a sharded
`model.safetensors.index.json`) with `safetensors.numpy`; writes the same layout back.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from jasper_jax.convert import keymaps
from jasper_jax.errors import UserError
from jasper_jax.models.bert import BertConfig
from jasper_jax.models.mpnet import MPNetConfig
from jasper_jax.models.qwen2 import Qwen2Config
from jasper_jax.models.qwen3 import Qwen3Config

SUPPORTED_MODEL_TYPES = ("bert", "mpnet", "qwen2", "qwen3")
QWEN_CONFIGS = {"qwen2": Qwen2Config, "qwen3": Qwen3Config}


class ConversionError(UserError, ValueError):
    """Weights or configs that do not fit the model; the message lists the offending keys."""


class ModelNotFoundError(UserError, FileNotFoundError):
    """A model path, file or checkpoint that is not there; the message says what was looked for."""


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def encoder_config_from_hf(hf: dict, *, source: str = "config.json", causal: bool | None = None):
    """A `BertConfig`, `MPNetConfig`, `Qwen2Config` or `Qwen3Config` from a Hugging Face config dict; others are
    refused. `causal` overrides the attention of a Qwen (default: the file's, else the family's)."""
    model_type = hf.get("model_type")
    if model_type == "bert":
        return BertConfig.from_hf(hf)
    if model_type == "mpnet":
        try:
            return MPNetConfig.from_hf(hf)
        except ValueError as error:
            raise ConversionError(f"{source}: {error}") from None
    if model_type in QWEN_CONFIGS:
        family = QWEN_CONFIGS[model_type]
        try:
            config = family.from_hf(hf)
        except ValueError as error:
            raise ConversionError(f"{source}: {error}") from None
        if causal is not None:
            config = family(**{**config.__dict__, "causal": causal})
        return config
    raise ConversionError(
        f"{source}: unsupported model_type {model_type!r}; supported model types: {', '.join(SUPPORTED_MODEL_TYPES)}"
    )


def read_weights(folder: Path) -> dict[str, np.ndarray]:
    """All tensors of a Hugging Face folder: `model.safetensors` or the shards of its index."""
    folder = Path(folder)
    single = folder / "model.safetensors"
    index = folder / "model.safetensors.index.json"
    if single.exists():
        return dict(load_file(str(single)))
    if index.exists():
        tensors: dict[str, np.ndarray] = {}
        for shard in sorted(set(read_json(index)["weight_map"].values())):
            tensors.update(load_file(str(folder / shard)))
        return tensors
    found = sorted(path.name for path in folder.iterdir()) if folder.is_dir() else []
    raise ModelNotFoundError(
        f"no safetensors weights in {folder}: expected model.safetensors or model.safetensors.index.json "
        f"(found: {', '.join(found) or 'nothing'}). Convert .bin checkpoints with transformers' "
        "save_pretrained(..., safe_serialization=True)."
    )


def encoder_params_from_hf(
    tensors: dict[str, np.ndarray],
    config: BertConfig | Qwen2Config | Qwen3Config,
    expected_shapes: dict[str, tuple[int, ...]],
    *,
    source: str = "checkpoint",
) -> dict[str, np.ndarray]:
    """Our encoder parameters (path -> array) from Hugging Face tensors; raises listing every missing,
    unexpected or mis-shaped key."""
    family = config.model_type
    prefix = keymaps.find_prefix(family, list(tensors))
    rules = keymaps.expand_rules(family, config)
    params, missing, misshaped = {}, [], []
    used = set()
    for rule in rules:
        key = prefix + rule.hf
        if key not in tensors:
            missing.append(key)
            continue
        used.add(key)
        value = rule.to_ours(np.asarray(tensors[key]), config)
        want = tuple(expected_shapes[rule.ours])
        if tuple(value.shape) != want:
            misshaped.append(f"{key}: shape {tuple(tensors[key].shape)} does not give {want} for {rule.ours}")
            continue
        params[rule.ours] = value.astype(np.float32)
    unexpected = sorted(
        key
        for key in tensors
        if key not in used and not keymaps.is_ignored(family, key[len(prefix) :] if key.startswith(prefix) else key)
    )
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
    if misshaped:
        problems.append(f"mis-shaped keys ({len(misshaped)}): {'; '.join(misshaped)}")
    if problems:
        raise ConversionError(
            f"{source} does not match a {family} encoder with {config.num_hidden_layers} layers, hidden "
            f"{config.hidden_size}: " + " | ".join(problems)
        )
    return params


def encoder_params_to_hf(
    params: dict[str, np.ndarray], config: BertConfig | Qwen2Config | Qwen3Config
) -> dict[str, np.ndarray]:
    """Hugging Face tensors (key -> contiguous array, no prefix) from our encoder parameters."""
    rules = keymaps.expand_rules(config.model_type, config)
    missing = [rule.ours for rule in rules if rule.ours not in params]
    if missing:
        raise ConversionError(f"encoder parameters missing for export: {', '.join(missing)}")
    return {rule.hf: np.ascontiguousarray(rule.to_hf(np.asarray(params[rule.ours]), config)) for rule in rules}


def write_weights(tensors: dict[str, np.ndarray], path: Path) -> None:
    """Save tensors as safetensors with the metadata PyTorch loaders expect."""
    save_file(
        {key: np.ascontiguousarray(value) for key, value in tensors.items()}, str(path), metadata={"format": "pt"}
    )
