"""Load a `JasperStudent` from a local folder: Hugging Face (BERT / Qwen2), sentence-transformers, or our export.

A sentence-transformers folder is read from its `modules.json`: the Transformer module's folder holds the
encoder, `Pooling` gives the pooling mode, each `Dense` (identity activation) becomes a head, `Normalize` is
implied (every head is normalised). Stella's layout keeps several heads in `2_Dense_{d}/` folders of which
modules.json names one: all become heads, named `dense_{d}`, the named one first (the default head). Our own
exports carry a `JasperHeads` module and `jasper_jax.json` with the student's exact config.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
from flax import nnx

from jasper_jax.convert import jasper_v2
from jasper_jax.convert.hf import (
    ConversionError,
    ModelNotFoundError,
    encoder_config_from_hf,
    encoder_params_from_hf,
    read_json,
    read_weights,
)
from jasper_jax.convert.siglip import read_vision
from jasper_jax.models.params import assign_params, param_shapes
from jasper_jax.models.student import POOLED, JasperStudent, StudentConfig

JASPER_CONFIG = "jasper_jax.json"
POOLING_FROM_ST = {"mean": "mean", "cls": "cls", "lasttoken": "last"}
POOLING_TO_ST = {value: key for key, value in POOLING_FROM_ST.items()}


@dataclasses.dataclass
class LoadedModel:
    """A model with what `encode` needs besides the weights."""

    model: JasperStudent
    config: StudentConfig
    tokenizer_folder: Path
    max_seq_length: int | None = None
    prompts: dict[str, str] = dataclasses.field(default_factory=dict)
    default_head: str = POOLED
    _jitted: object = dataclasses.field(default=None, repr=False, compare=False)  # encode's compiled model


@dataclasses.dataclass
class _Head:
    name: str
    kernel: np.ndarray  # (in, out)
    bias: np.ndarray


# sentence-transformers < 3 wrote one boolean per mode instead of `pooling_mode`
_POOLING_FLAGS = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_lasttoken": "lasttoken",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
}


def _pooling_mode(folder: Path) -> str:
    """Our pooling name from a sentence-transformers Pooling config (new or old format)."""
    config = read_json(folder / "config.json")
    mode = config.get("pooling_mode")
    if mode is None:
        modes = [name for flag, name in _POOLING_FLAGS.items() if config.get(flag)]
        mode = modes[0] if len(modes) == 1 else "+".join(modes) or "none"
    if not isinstance(mode, str) or mode not in POOLING_FROM_ST:
        raise ConversionError(f"{folder}: pooling mode {mode!r} is not supported; supported: {sorted(POOLING_FROM_ST)}")
    return POOLING_FROM_ST[mode]


def _read_module_weights(folder: Path) -> dict[str, np.ndarray]:
    if (folder / "model.safetensors").exists():
        from safetensors.numpy import load_file

        return dict(load_file(str(folder / "model.safetensors")))
    if (folder / "pytorch_model.bin").exists():
        import torch  # only for old-style Dense folders such as Stella's

        state = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
        return {key: value.float().numpy() for key, value in state.items()}
    raise FileNotFoundError(f"{folder}: no model.safetensors or pytorch_model.bin")


def _dense_head(folder: Path, name: str) -> _Head:
    config = read_json(folder / "config.json")
    activation = config.get("activation_function") or "torch.nn.modules.linear.Identity"
    if not activation.endswith("Identity"):
        raise ConversionError(
            f"{folder}: Dense activation {activation!r} is not supported; heads are linear (Identity)"
        )
    weights = _read_module_weights(folder)
    expected = {"linear.weight"} | ({"linear.bias"} if config.get("bias", True) else set())
    if set(weights) != expected:
        raise ConversionError(f"{folder}: Dense weights {sorted(weights)} do not match the expected {sorted(expected)}")
    kernel = weights["linear.weight"].T
    bias = weights.get("linear.bias", np.zeros(kernel.shape[1], np.float32))
    return _Head(name, np.asarray(kernel, np.float32), np.asarray(bias, np.float32))


def _dense_name(path: str) -> str:
    return re.sub(r"^\d+_", "", Path(path).name).lower()


def _jasper_heads(folder: Path) -> tuple[list[_Head], str]:
    from safetensors.numpy import load_file

    config = read_json(folder / "config.json")
    weights = dict(load_file(str(folder / "model.safetensors")))
    expected = {f"{name}.{kind}" for name in config["heads"] for kind in ("weight", "bias")}
    if set(weights) != expected:
        raise ConversionError(
            f"{folder}: head weights do not match heads {config['heads']}: missing "
            f"{sorted(expected - set(weights))}, unexpected {sorted(set(weights) - expected)}"
        )
    heads = [_Head(name, weights[f"{name}.weight"].T, weights[f"{name}.bias"]) for name in config["heads"]]
    return heads, config.get("active_head") or next(iter(config["heads"]))


def read_sentence_transformers(folder: Path) -> dict:
    """The parts of a sentence-transformers folder: transformer folder, pooling, heads, prompts, max length."""
    modules = read_json(folder / "modules.json")
    transformer, pooling, heads, active = None, "mean", [], None
    for module in modules:
        kind = module["type"].rsplit(".", 1)[-1]
        sub = folder / module.get("path", "")
        if kind in ("Transformer", "JasperTransformer"):  # the latter: the released JasperV2Encoder's
            transformer = sub
        elif kind == "Pooling":
            pooling = _pooling_mode(sub)
        elif kind == "Dense":
            heads.append(_dense_head(sub, _dense_name(module["path"])))
            active = active or heads[-1].name
        elif kind == "JasperHeads":
            module_heads, active = _jasper_heads(sub)
            heads.extend(module_heads)
        elif kind != "Normalize":
            raise ConversionError(
                f"{folder / 'modules.json'}: module type {module['type']!r} is not supported; supported: "
                "Transformer, Pooling (mean/cls/lasttoken), Dense (Identity activation), Normalize, JasperHeads"
            )
    if transformer is None:
        raise ConversionError(f"{folder / 'modules.json'} has no Transformer module")
    # Stella's layout: further heads in 2_Dense_{d}/ folders that modules.json does not name.
    named = {head.name for head in heads}
    extra = [path for path in folder.glob("*_Dense_*") if path.is_dir() and _dense_name(path.name) not in named]
    for path in sorted(extra, key=lambda p: (len(p.name), p.name)):
        heads.append(_dense_head(path, _dense_name(path.name)))
    max_seq_length = None
    for config_folder in (transformer, folder):
        if (config_folder / "sentence_bert_config.json").exists():
            max_seq_length = read_json(config_folder / "sentence_bert_config.json").get("max_seq_length")
            break
    prompts = {}
    if (folder / "config_sentence_transformers.json").exists():
        prompts = read_json(folder / "config_sentence_transformers.json").get("prompts", {}) or {}
    return {
        "transformer": transformer,
        "pooling": pooling,
        "heads": heads,
        "active": active,
        "max_seq_length": max_seq_length,
        "prompts": prompts,
    }


def load_model_folder(
    path: str | Path,
    *,
    heads: dict[str, int] | None = None,
    rngs: nnx.Rngs | None = None,
    causal: bool | None = None,
    compute_dtype: str | None = None,
    remat: bool | str | None = None,
    vector_dropout: float | None = None,
    attention: str | None = None,
    scan_layers: bool | None = None,
) -> LoadedModel:
    """Load a student and its encode settings from a local folder (see the module docstring)."""
    folder = Path(path)
    if not folder.is_dir():
        raise ModelNotFoundError(
            f"model folder {folder} does not exist (expected a Hugging Face or sentence-transformers folder)"
        )
    if (folder / "modules.json").exists():
        parts = read_sentence_transformers(folder)
    else:
        parts = {
            "transformer": folder,
            "pooling": "mean",
            "heads": [],
            "active": None,
            "max_seq_length": None,
            "prompts": {},
        }
    transformer = parts["transformer"]
    if not (transformer / "config.json").exists():
        raise ModelNotFoundError(f"{transformer}: no config.json; not a Hugging Face model folder")
    hf_config = read_json(transformer / "config.json")
    encoder_config = encoder_config_from_hf(hf_config, source=str(transformer / "config.json"), causal=causal)
    tensors = read_weights(transformer)
    compression, compressor_params = None, {}
    if jasper_v2.is_jasper_v2(hf_config):
        tensors, compressor_params, (kernel, bias), compression = jasper_v2.split_tensors(
            tensors, hf_config, str(transformer)
        )
        name = jasper_v2.head_name(hf_config)
        parts["heads"] = [_Head(name, np.asarray(kernel, np.float32), np.asarray(bias, np.float32))]
        parts["active"] = name
    saved = read_json(folder / JASPER_CONFIG) if (folder / JASPER_CONFIG).exists() else {}
    loaded_heads = {head.name: head for head in parts["heads"]}
    head_dims = {name: int(head.kernel.shape[1]) for name, head in loaded_heads.items()}
    for name, head in loaded_heads.items():
        if head.kernel.shape[0] != encoder_config.hidden_size:
            raise ConversionError(
                f"head {name!r} takes {head.kernel.shape[0]} inputs but the encoder's hidden size is "
                f"{encoder_config.hidden_size}"
            )
    for name, dim in (heads or {}).items():
        if name in head_dims and head_dims[name] != dim:
            raise ConversionError(f"head {name!r} exists in {folder} with dim {head_dims[name]}, asked for {dim}")
        head_dims.setdefault(name, int(dim))
    student = saved.get("student", {})
    vision = read_vision(folder)  # an export of a student with images (stage 4)
    config = StudentConfig(
        encoder=encoder_config,
        pooling=parts["pooling"],
        heads=head_dims,
        vector_dropout=student.get("vector_dropout", 0.0) if vector_dropout is None else vector_dropout,
        compute_dtype=compute_dtype or student.get("compute_dtype", "float32"),
        remat=student.get("remat", False) if remat is None else remat,
        attention=attention or student.get("attention", "auto"),
        scan_layers=student.get("scan_layers", False) if scan_layers is None else scan_layers,
        token_compression=compression,
        **(vision[0] if vision else {}),
    )
    model = JasperStudent(config, rngs=rngs or nnx.Rngs(0))
    params = encoder_params_from_hf(tensors, encoder_config, param_shapes(model.encoder), source=str(transformer))
    values = {f"encoder/{key}": value for key, value in params.items()}
    values.update({key: np.asarray(value, np.float32) for key, value in compressor_params.items()})
    for name, head in loaded_heads.items():
        values[f"heads/{name}/kernel"], values[f"heads/{name}/bias"] = head.kernel, head.bias
    if vision:
        values.update(vision[1])
    assign_params(model, values)
    default_head = saved.get("active_head") or parts["active"] or (next(iter(head_dims)) if head_dims else POOLED)
    return LoadedModel(model, config, transformer, parts["max_seq_length"], dict(parts["prompts"]), default_head)


def load_model(path: str | Path, *, heads: dict[str, int] | None = None, rngs: nnx.Rngs | None = None, **overrides):
    """(JasperStudent, StudentConfig) from a HF folder (BERT/Qwen2), a sentence-transformers folder or our
    export; `heads` adds freshly initialised heads (name -> dim). `overrides`: causal, compute_dtype, remat,
    vector_dropout, attention, scan_layers."""
    loaded = load_model_folder(path, heads=heads, rngs=rngs, **overrides)
    return loaded.model, loaded.config
