"""Load any model the commands accept: an alias, a Hugging Face / sentence-transformers folder, our export,
or a trainer checkpoint. Every sub-command that takes a model (`encode`, `export`, `eval`, the teachers' JAX
backend) loads it here, so each accepts the same names.

- `resolve_model_path(name_or_path)`: an alias (`MODEL_ALIASES`, the one table of them: `minilm` is the
  offline kit's all-MiniLM-L6-v2) -> its folder; anything else is a path, which must exist.
- `load_any(name_or_path)` -> `LoadedModel`: a model folder through `jasper_jax.convert.load`, a checkpoint
  through `load_checkpoint` with the tokenizer its training config names.
- A checkpoint is a step directory (`.../checkpoints/<step>` with `params/`), a stage's `checkpoints/`
  directory, a stage directory (`workdir/stageN`) or a workdir (its last stage); the latest complete step
  unless one is asked for.

A name that is neither a folder, a checkpoint nor an alias raises `ModelNotFoundError`, a checkpoint whose
training config names no tokenizer `TokenizerNotFoundError` (both `UserError`s and FileNotFoundErrors),
saying what was looked for and what to pass instead.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from jasper_jax import assets
from jasper_jax.convert.hf import ConversionError, ModelNotFoundError
from jasper_jax.convert.load import LoadedModel, load_model_folder
from jasper_jax.data.tokenization import TokenizerNotFoundError
from jasper_jax.models.params import assign_params, flatten_tree, param_shapes
from jasper_jax.models.student import POOLED, JasperStudent, StudentConfig

# alias -> a function giving its folder (called only when the alias is used)
MODEL_ALIASES: dict[str, Callable[[], Path]] = {
    "minilm": assets.minilm_path,
}


def _alias_or_path(name_or_path: str | Path) -> Path:
    """The folder of an alias, else the path itself (not checked)."""
    if isinstance(name_or_path, str) and name_or_path in MODEL_ALIASES:
        return Path(MODEL_ALIASES[name_or_path]())
    return Path(name_or_path)


def resolve_model_path(name_or_path: str | Path) -> Path:
    """The folder of a model alias (`MODEL_ALIASES`), or `name_or_path` itself when it exists.

    Raises ModelNotFoundError naming the input, the aliases and what a model may be."""
    path = _alias_or_path(name_or_path)
    if path.exists():
        return path
    close = difflib.get_close_matches(str(name_or_path), list(MODEL_ALIASES), n=1)
    hint = f" (did you mean the alias {close[0]!r}?)" if close else ""
    raise ModelNotFoundError(
        f"model {str(name_or_path)!r} does not exist and is not a model alias{hint}: give a Hugging Face or "
        f"sentence-transformers folder, a jasper-jax export, a training checkpoint (step, stage or workdir "
        f"directory) or one of the aliases {', '.join(sorted(MODEL_ALIASES))}"
    )


def is_model_folder(path: str | Path) -> bool:
    """Whether `path` is a Hugging Face / sentence-transformers folder (as opposed to a training checkpoint)."""
    return (Path(path) / "config.json").exists() or (Path(path) / "modules.json").exists()


def checkpoint_location(path: Path) -> tuple[Path, int | None]:
    """(checkpoint manager directory, step or None for the latest) of a checkpoint path (module docstring)."""
    if path.name.isdigit() and (path / "params").is_dir():
        return path.parent, int(path.name)
    if (path / "checkpoints").is_dir():
        return path / "checkpoints", None
    if any(child.name.isdigit() and (child / "params").is_dir() for child in path.iterdir()):
        return path, None
    stages = sorted(
        (child for child in path.glob("stage*") if child.name[5:].isdigit() and (child / "checkpoints").is_dir()),
        key=lambda child: int(child.name[5:]),
    )
    if stages:
        return stages[-1] / "checkpoints", None
    raise ModelNotFoundError(
        f"{path}: not a model folder (config.json / modules.json) nor a training checkpoint (a step directory "
        "with params/, a stage's checkpoints/ directory, a stage directory or a workdir)"
    )


def tokenizer_from_training_config(config: Mapping[str, Any]) -> Path | None:
    """The tokenizer folder a training config points at (data.tokenizer, model.source, workdir/data/tokenizer)."""
    candidates = [config.get("data", {}).get("tokenizer"), config.get("model", {}).get("source")]
    workdir = config.get("workdir")
    if workdir:
        candidates.append(str(Path(workdir) / "data" / "tokenizer"))
    for candidate in candidates:
        if not candidate or candidate == "random":
            continue
        folder = _alias_or_path(candidate)
        if (folder / "tokenizer.json").exists():
            return folder
    return None


def source_max_seq_length(config: Mapping[str, Any]) -> int | None:
    """The maximum length of the model a training config started from (`model.source`: an alias or a folder):
    its sentence-transformers `max_seq_length` (MiniLM: 256), else its tokenizer's `model_max_length`; None
    for a random start or a source that says neither. An export records this, not the training length."""
    import json

    source = config.get("model", {}).get("source")
    if not source or source == "random":
        return None
    folder = _alias_or_path(source)
    for name, key in (("sentence_bert_config.json", "max_seq_length"), ("tokenizer_config.json", "model_max_length")):
        path = folder / name
        if path.exists():
            value = json.loads(path.read_text()).get(key)
            if isinstance(value, int) and 0 < value < 1_000_000:  # tokenizers say 1e30 for "no limit"
                return value
    return None


def load_checkpoint(checkpoint: str | Path, *, step: int | None = None) -> tuple[JasperStudent, StudentConfig, dict]:
    """(model, config, metadata) from a trainer checkpoint (Orbax; `jasper_jax.train.checkpoint`)."""
    from flax import nnx

    from jasper_jax.train.checkpoint import StageCheckpointer  # Orbax and Grain: only for checkpoints

    directory, found_step = checkpoint_location(Path(checkpoint))
    step = found_step if step is None else step
    checkpointer = StageCheckpointer(directory, every=1, keep=1 << 30, async_save=False)
    try:
        step = checkpointer.latest_step() if step is None else step
        if step is None:
            raise ModelNotFoundError(f"no complete checkpoint in {directory}: train a stage first or pass another one")
        metadata = checkpointer.metadata(step)
        params = checkpointer.host_params(step)
    finally:
        checkpointer.close()
    if "student_config" not in metadata:
        raise ConversionError(f"checkpoint {directory}/{step} has no student_config in its metadata")
    config = StudentConfig.from_dict(metadata["student_config"])
    model = JasperStudent(config, rngs=nnx.Rngs(0))
    values = flatten_tree(params)
    expected = param_shapes(model)
    missing = sorted(set(expected) - set(values))
    unexpected = sorted(set(values) - set(expected))
    misshaped = sorted(k for k in set(expected) & set(values) if tuple(values[k].shape) != expected[k])
    if missing or unexpected or misshaped:
        raise ConversionError(
            f"checkpoint {directory}/{step} does not match its student_config: missing {missing}, "
            f"unexpected {unexpected}, mis-shaped {misshaped}"
        )
    assign_params(model, values)
    return model, config, metadata


def load_any(name_or_path: str | Path, compute_dtype: str | None = None) -> LoadedModel:
    """A model alias or folder (`load_model_folder`) or a trainer checkpoint (its tokenizer from the
    training config), ready for `jasper_jax.encode`."""
    path = resolve_model_path(name_or_path)
    if not path.is_dir() or is_model_folder(path):
        return load_model_folder(path, compute_dtype=compute_dtype)
    model, config, metadata = load_checkpoint(path)
    tokenizer = tokenizer_from_training_config(metadata.get("config", {}))
    if tokenizer is None:
        raise TokenizerNotFoundError(
            f"no tokenizer for checkpoint {path}: its training config names no folder with tokenizer.json; "
            "export it with `jasper-jax export --model CHECKPOINT --tokenizer FOLDER --out DIR` and use the export"
        )
    return LoadedModel(model, config, tokenizer, default_head=next(iter(config.heads), POOLED))
