"""`jasper-jax export`: any model `jasper_jax.loader` resolves (an alias such as `minilm`, a model folder or a
training checkpoint, whose tokenizer comes from its training config unless `--tokenizer` names one) as a
Hugging Face + sentence-transformers folder, written by `jasper_jax.convert.export.export_model`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from jasper_jax.convert.export import export_model
from jasper_jax.convert.load import JASPER_CONFIG, load_model_folder
from jasper_jax.data.tokenization import TokenizerNotFoundError
from jasper_jax.loader import (
    is_model_folder,
    load_checkpoint,
    resolve_model_path,
    source_max_seq_length,
    tokenizer_from_training_config,
)

DEFAULT_MAX_SEQ_LENGTH = 512


def export_checkpoint(
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    step: int | None = None,
    tokenizer_folder: str | Path | None = None,
    active_head: str | None = None,
    max_seq_length: int | None = None,
) -> Path:
    """Export a trainer checkpoint; the tokenizer comes from `tokenizer_folder` or the training config.

    `max_seq_length` (sentence-transformers' truncation) defaults to the source model's own maximum length
    (`loader.source_max_seq_length`; MiniLM: 256), else the encoder's position count, else 512: never the
    training length, which would silently truncate every text a user encodes to what training used."""
    model, config, metadata = load_checkpoint(checkpoint, step=step)
    if max_seq_length is None:
        max_seq_length = (
            source_max_seq_length(metadata.get("config", {}))
            or getattr(config.encoder, "max_position_embeddings", None)
            or DEFAULT_MAX_SEQ_LENGTH
        )
    tokenizer = (
        Path(tokenizer_folder) if tokenizer_folder else tokenizer_from_training_config(metadata.get("config", {}))
    )
    if tokenizer is None:
        raise TokenizerNotFoundError(
            f"no tokenizer for checkpoint {checkpoint}: the training config names none with a tokenizer.json; "
            "pass --tokenizer FOLDER"
        )
    return export_model(model, config, tokenizer, out_dir, active_head=active_head, max_seq_length=max_seq_length)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
        "--model",
        dest="checkpoint",
        required=True,
        help="a training checkpoint (step, stage or workdir directory), a Hugging Face or "
        "sentence-transformers folder, a jasper-jax export, or a model alias (minilm)",
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--head", default=None, help="the head active by default (default: the first head)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    parser.add_argument(
        "--tokenizer", default=None, help="tokenizer folder (default: from the model or training config)"
    )
    parser.add_argument(
        "--max-seq-length",
        type=int,
        default=None,
        help="sentence-transformers max_seq_length (default: the source model's own, e.g. MiniLM's 256)",
    )


def run(args: argparse.Namespace) -> int:
    checkpoint = resolve_model_path(args.checkpoint)
    if is_model_folder(checkpoint):
        loaded = load_model_folder(checkpoint)
        out = export_model(
            loaded.model,
            loaded.config,
            args.tokenizer or loaded.tokenizer_folder,
            args.out,
            active_head=args.head or (loaded.default_head if loaded.config.heads else None),
            prompts=loaded.prompts,
            max_seq_length=args.max_seq_length or loaded.max_seq_length or DEFAULT_MAX_SEQ_LENGTH,
        )
        heads = loaded.config.heads
    else:
        out = export_checkpoint(
            checkpoint,
            args.out,
            step=args.step,
            tokenizer_folder=args.tokenizer,
            active_head=args.head,
            max_seq_length=args.max_seq_length,
        )
        heads = json.loads((out / JASPER_CONFIG).read_text())["student"]["heads"]
    print(f"exported {args.checkpoint} -> {out} (heads: {', '.join(heads) or 'none'})")
    return 0
