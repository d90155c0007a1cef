"""Write a student as a Hugging Face + sentence-transformers folder (the PyTorch side of `jasper-jax export`).

The folder holds `config.json` + `model.safetensors` for transformers' AutoModel (a BERT loads as
`BertModel`; a bidirectional Qwen2 / Qwen3 loads as `BidirectionalQwen2Model` / `BidirectionalQwen3Model`
from the shipped `modeling_jasper_qwen2.py` / `modeling_jasper_qwen3.py`, a causal one as `Qwen2Model` /
`Qwen3Model`), the tokenizer files, and the
sentence-transformers modules: Transformer, Pooling, `JasperHeads` (every head, one active; shipped
`jasper_heads.py`), Normalize. `config_sentence_transformers.json` carries the prompts; `jasper_jax.json`
the student's exact config so that import -> export -> import is lossless (bit-identical weights).

    SentenceTransformer(DIR, trust_remote_code=True)                                   # active head
    SentenceTransformer(DIR, trust_remote_code=True, config_kwargs={"jasper_head": "fc2"})  # another one

A student with a token compressor exports instead in the released Jasper-Token-Compression-600M layout
(`JasperV2Encoder`: `model.*`, `jasper_mlp.*`, `linear_1.*`, the shipped `modeling_jasper_jax_v2.py`;
modules Transformer + Normalize), which takes the ratio per call:

    SentenceTransformer(DIR, trust_remote_code=True).encode(texts, compression_ratio=0.33)

`jasper_jax.export` is the command: it exports any model `jasper_jax.loader` resolves.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from jasper_jax.convert import jasper_v2
from jasper_jax.convert.hf import ConversionError, encoder_params_to_hf, write_weights
from jasper_jax.convert.load import JASPER_CONFIG, POOLING_TO_ST
from jasper_jax.data.tokenization import TokenizerNotFoundError
from jasper_jax.models.params import flat_params
from jasper_jax.models.student import JasperStudent, StudentConfig
from jasper_jax.prompts import PAPER_PROMPTS

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
)
SHIPPED = Path(__file__).parent / "pytorch"
ST_TRANSFORMER = "sentence_transformers.base.modules.transformer.Transformer"
ST_POOLING = "sentence_transformers.sentence_transformer.modules.pooling.Pooling"
ST_NORMALIZE = "sentence_transformers.base.modules.normalize.Normalize"
# family -> (shipped module, class) of its bidirectional PyTorch encoder
BIDIRECTIONAL_MODELING = {
    "qwen2": ("modeling_jasper_qwen2", "BidirectionalQwen2Model"),
    "qwen3": ("modeling_jasper_qwen3", "BidirectionalQwen3Model"),
}


def _write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n")


def _encoder_config_json(config: StudentConfig) -> dict:
    hf = config.encoder.to_hf()
    hf["dtype"] = "float32"
    family = config.encoder.model_type
    if family in BIDIRECTIONAL_MODELING:
        hf["use_cache"] = False
        if not config.encoder.causal:
            module, name = BIDIRECTIONAL_MODELING[family]
            hf["architectures"] = [name]
            hf["auto_map"] = {"AutoModel": f"{module}.{name}"}
    return hf


def export_model(
    model: JasperStudent,
    config: StudentConfig,
    tokenizer_folder: str | Path,
    out_dir: str | Path,
    *,
    active_head: str | None = None,
    prompts: dict[str, str] | None = None,
    max_seq_length: int | None = 512,
) -> Path:
    """Write `model` to `out_dir` (created; existing files overwritten). `active_head` defaults to the first head."""
    out = Path(out_dir)
    tokenizer_folder = Path(tokenizer_folder)
    if not (tokenizer_folder / "tokenizer.json").exists():
        raise TokenizerNotFoundError(
            f"no tokenizer to export: {tokenizer_folder / 'tokenizer.json'} does not exist; pass the folder of "
            "the model the student was initialised from"
        )
    heads = dict(config.heads)
    if active_head is not None and active_head not in heads:
        raise ConversionError(
            f"active head {active_head!r} is not one of the model's heads {sorted(heads)}; pass one of them "
            "to --head, or leave --head out for the first"
        )
    active_head = active_head or (next(iter(heads)) if heads else None)
    if config.token_compression is not None:
        return _export_compressed(model, config, tokenizer_folder, out, prompts, max_seq_length)
    out.mkdir(parents=True, exist_ok=True)

    params = flat_params(model)
    encoder = {key[len("encoder/") :]: value for key, value in params.items() if key.startswith("encoder/")}
    write_weights(encoder_params_to_hf(encoder, config.encoder), out / "model.safetensors")
    _write_json(out / "config.json", _encoder_config_json(config))
    if config.encoder.model_type in BIDIRECTIONAL_MODELING and not config.encoder.causal:
        module = BIDIRECTIONAL_MODELING[config.encoder.model_type][0]
        shutil.copyfile(SHIPPED / f"{module}.py", out / f"{module}.py")
    _copy_tokenizer(tokenizer_folder, out)
    _write_json(out / "sentence_bert_config.json", {"max_seq_length": max_seq_length, "do_lower_case": False})

    modules = [{"idx": 0, "name": "0", "path": "", "type": ST_TRANSFORMER}]
    pooling_dir = out / "1_Pooling"
    pooling_dir.mkdir(exist_ok=True)
    _write_json(
        pooling_dir / "config.json",
        {
            "embedding_dimension": config.encoder.hidden_size,
            "pooling_mode": POOLING_TO_ST[config.pooling],
            "include_prompt": True,
        },
    )
    modules.append({"idx": 1, "name": "1", "path": "1_Pooling", "type": ST_POOLING})
    if heads:
        heads_dir = out / "2_JasperHeads"
        heads_dir.mkdir(exist_ok=True)
        _write_json(
            heads_dir / "config.json",
            {
                "in_features": config.encoder.hidden_size,
                "heads": heads,
                "active_head": active_head,
            },
        )
        tensors = {}
        for name in heads:
            tensors[f"{name}.weight"] = np.ascontiguousarray(params[f"heads/{name}/kernel"].T)
            tensors[f"{name}.bias"] = params[f"heads/{name}/bias"]
        write_weights(tensors, heads_dir / "model.safetensors")
        shutil.copyfile(SHIPPED / "jasper_heads.py", out / "jasper_heads.py")
        modules.append({"idx": 2, "name": "2", "path": "2_JasperHeads", "type": "jasper_heads.JasperHeads"})
    normalize_dir = out / f"{len(modules)}_Normalize"
    normalize_dir.mkdir(exist_ok=True)
    _write_json(normalize_dir / "config.json", {})
    modules.append({"idx": len(modules), "name": str(len(modules)), "path": normalize_dir.name, "type": ST_NORMALIZE})
    _write_json(out / "modules.json", modules)

    _write_common(out, config, active_head, prompts)
    if config.vision is not None:
        _export_vision(model, config, out, max_seq_length)
    return out


def _copy_tokenizer(tokenizer_folder: Path, out: Path) -> None:
    for name in TOKENIZER_FILES:
        if (tokenizer_folder / name).exists() and (tokenizer_folder / name).resolve() != (out / name).resolve():
            shutil.copyfile(tokenizer_folder / name, out / name)


def _write_common(out: Path, config: StudentConfig, active_head: str | None, prompts: dict[str, str] | None) -> None:
    """`config_sentence_transformers.json` (the prompts) and `jasper_jax.json` (the exact student config)."""
    _write_json(
        out / "config_sentence_transformers.json",
        {
            "model_type": "SentenceTransformer",
            "prompts": {**PAPER_PROMPTS, **(prompts or {})},
            "default_prompt_name": None,
            "similarity_fn_name": "cosine",
        },
    )
    _write_json(out / JASPER_CONFIG, {"student": config.to_dict(), "active_head": active_head, "format": 1})


def _check_compressed(config: StudentConfig) -> str:
    """The one head of a student that the released `JasperV2Encoder` layout can hold; otherwise a
    ConversionError (one line at the command) naming what does not fit: a Qwen3 encoder, mean pooling,
    exactly one head."""
    layout = "a student with token_compression exports in the released JasperV2Encoder layout, which"
    if config.encoder.model_type != "qwen3":
        raise ConversionError(f"{layout} needs a Qwen3 encoder; this student's is {config.encoder.model_type}")
    if config.pooling != "mean":
        raise ConversionError(f"{layout} mean-pools; this student's pooling is {config.pooling!r}")
    if len(config.heads) != 1:
        heads = sorted(config.heads)
        raise ConversionError(f"{layout} holds exactly one head (linear_1); this student has heads {heads}")
    return next(iter(config.heads))


def _export_compressed(
    model: JasperStudent,
    config: StudentConfig,
    tokenizer_folder: Path,
    out: Path,
    prompts: dict[str, str] | None,
    max_seq_length: int | None,
) -> Path:
    """A student with a token compressor as the released Jasper-Token-Compression folder: config.json
    (`JasperV2Encoder`, auto_map to the shipped `modeling_jasper_jax_v2.py`), weights `model.*`,
    `jasper_mlp.*`, `linear_1.*` (`jasper_v2.export_tensors`), the tokenizer, and the sentence-transformers
    modules Transformer (the model returns the vector; `compression_ratio` is an `encode` kwarg: modules.json
    `kwargs`) and Normalize."""
    head = _check_compressed(config)
    out.mkdir(parents=True, exist_ok=True)
    params = flat_params(model)
    encoder = {key[len("encoder/") :]: value for key, value in params.items() if key.startswith("encoder/")}
    tensors = jasper_v2.export_tensors(encoder_params_to_hf(encoder, config.encoder), params, head)
    write_weights(tensors, out / "model.safetensors")
    hf = _encoder_config_json(config)
    hf.pop("auto_map", None)
    hf.update(jasper_v2.config_entries(config.token_compression, head, config.heads[head]))
    _write_json(out / "config.json", hf)
    shutil.copyfile(SHIPPED / f"{jasper_v2.MODELING}.py", out / f"{jasper_v2.MODELING}.py")
    _copy_tokenizer(tokenizer_folder, out)
    _write_json(
        out / "sentence_bert_config.json",
        {
            "max_seq_length": max_seq_length,
            "do_lower_case": False,
            # the model's forward returns the sentence vector itself (no Pooling module)
            "modality_config": {"text": {"method": "forward", "method_output_name": None}},
            "module_output_name": "sentence_embedding",
        },
    )
    (out / "1_Normalize").mkdir(exist_ok=True)
    _write_json(out / "1_Normalize" / "config.json", {})
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": ST_TRANSFORMER, "kwargs": ["compression_ratio"]},
        {"idx": 1, "name": "1", "path": "1_Normalize", "type": ST_NORMALIZE},
    ]
    _write_json(out / "modules.json", modules)
    _write_common(out, config, head, prompts)
    return out


def _export_vision(model: JasperStudent, config: StudentConfig, out: Path, max_seq_length: int | None) -> None:
    """`vision/` (SigLIP folder, markers, image input ids) and the shipped `jasper_vision.py` (PyTorch side)."""
    from jasper_jax.convert.siglip import export_vision
    from jasper_jax.data.tokenization import add_image_tokens, image_token_ids, load_tokenizer, save_tokenizer

    tokenizer = load_tokenizer(out, max(max_seq_length or 512, config.image_tokens + 8))
    had_markers = tokenizer.tokenizer.get_vocab_size(with_added_tokens=True)
    ids = add_image_tokens(tokenizer)
    if ids != tuple(config.image_token_ids):
        raise ValueError(
            f"the exported tokenizer gives image marker ids {ids} but the model was trained with "
            f"{tuple(config.image_token_ids)}: export with the tokenizer of the stage-4 run (--tokenizer)"
        )
    if tokenizer.tokenizer.get_vocab_size(with_added_tokens=True) != had_markers:
        save_tokenizer(tokenizer, out, out)
    export_vision(model, out, image_token_ids(tokenizer, config.image_tokens))
    shutil.copyfile(SHIPPED / "jasper_vision.py", out / "jasper_vision.py")
