"""`jasper-jax encode`: embed texts with a student or any importable model; rows L2-normalised, input order.

Texts are sorted by token length and cut into batches of `batch_size` rows padded to a few bucket lengths
(powers of two, see `jasper_jax.data.tokenization`), and the last batch is padded with empty rows, so the
jitted encoder compiles once per bucket (a handful of times) rather than once per batch.

Heads: the model's default head (the first, or the one an export marks active), any head by name,
`pooled` for the normalised pooled vector, and `NAME@D` for the first D components of a head renormalised
(the Matryoshka prefix convention). Prompts: a name from the model's prompts (s2p_query, s2s_query, ...)
or literal text.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from jasper_jax.convert.load import LoadedModel, load_model_folder
from jasper_jax.data.tokenization import TextTokenizer, bucket_length, load_tokenizer, pad_batch
from jasper_jax.models.pooling import l2_normalize
from jasper_jax.models.student import POOLED, JasperStudent

PAPER_PROMPTS = {
    "s2p_query": "Instruct: Given a web search query, retrieve relevant passages that answer the query.\nQuery: ",
    "s2s_query": "Instruct: Retrieve semantically similar text.\nQuery: ",
}


def parse_head(head: str | None, model: JasperStudent, default: str) -> tuple[str, int | None]:
    """`NAME` or `NAME@D` -> (name, D or None), checked against the model's heads."""
    head = head or default
    name, _, dim = head.partition("@")
    available = list(model.config.heads) + [POOLED]
    if name not in available:
        raise ValueError(f"unknown head {name!r}; this model has: {', '.join(available)}")
    return name, int(dim) if dim else None


def resolve_prompt(prompt: str | None, prompts: dict[str, str]) -> str:
    """A prompt name (the model's own prompts, then the paper's) or literal prompt text."""
    if not prompt:
        return ""
    return {**PAPER_PROMPTS, **prompts}.get(prompt, prompt)


class _JittedEncoder:
    """The model split once into (graphdef, state); one jitted function per head, one compile per shape."""

    def __init__(self, model: JasperStudent):
        self.graphdef, self.state = nnx.split(model)

        def run(state, input_ids, attention_mask, head):
            model = nnx.merge(self.graphdef, state)
            pooled = model.pooled(input_ids, attention_mask)
            if head == POOLED:
                return l2_normalize(pooled)
            return l2_normalize(model.heads[head](pooled))

        self.run = jax.jit(run, static_argnums=3)

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray, head: str) -> np.ndarray:
        return np.asarray(self.run(self.state, jnp.asarray(input_ids), jnp.asarray(attention_mask), head))


def _loaded(model_path_or_model, tokenizer) -> LoadedModel:
    if isinstance(model_path_or_model, LoadedModel):
        return model_path_or_model
    if isinstance(model_path_or_model, JasperStudent):
        if tokenizer is None:
            raise ValueError("encoding a JasperStudent object needs tokenizer= (a folder with tokenizer.json)")
        folder = tokenizer if not isinstance(tokenizer, TextTokenizer) else Path(".")
        default = next(iter(model_path_or_model.config.heads), POOLED)
        return LoadedModel(model_path_or_model, model_path_or_model.config, Path(folder), default_head=default)
    return load_any(model_path_or_model)


def load_any(path: str | Path, compute_dtype: str | None = None) -> LoadedModel:
    """A model folder (`load_model_folder`) or a trainer checkpoint (its tokenizer from the training config)."""
    from jasper_jax.convert.export import is_model_folder

    path = Path(path)
    if not path.is_dir() or is_model_folder(path):
        return load_model_folder(path, compute_dtype=compute_dtype)
    from jasper_jax.convert.export import load_checkpoint, tokenizer_from_training_config

    model, config, metadata = load_checkpoint(path)
    tokenizer = tokenizer_from_training_config(metadata.get("config", {}))
    if tokenizer is None:
        raise FileNotFoundError(f"no tokenizer for checkpoint {path}: its training config names no folder with tokenizer.json")
    return LoadedModel(model, config, tokenizer, default_head=next(iter(config.heads), POOLED))


def encode_texts(
    model_path_or_model,
    texts: list[str],
    *,
    head: str | None = None,
    prompt: str = "",
    max_length: int = 512,
    batch_size: int = 64,
    progress: bool = True,
    tokenizer: str | Path | TextTokenizer | None = None,
) -> np.ndarray:
    """Embed `texts`: float32 (N, d), rows L2-normalised, in input order.

    `model_path_or_model`: a model folder (see `jasper_jax.convert.load_model`) or a trainer checkpoint
    directory, a `LoadedModel`, or a
    `JasperStudent` together with `tokenizer`. `max_length` is capped by the model's own max_seq_length."""
    loaded = _loaded(model_path_or_model, tokenizer)
    name, truncate_dim = parse_head(head, loaded.model, loaded.default_head)
    length_cap = min(max_length, loaded.max_seq_length or max_length)
    if isinstance(tokenizer, TextTokenizer):
        text_tokenizer = tokenizer
    else:
        text_tokenizer = load_tokenizer(loaded.tokenizer_folder, length_cap)
    encoder = getattr(loaded, "_jitted", None)
    if encoder is None:
        encoder = _JittedEncoder(loaded.model)
        loaded._jitted = encoder
    dim = loaded.config.encoder.hidden_size if name == POOLED else loaded.config.heads[name]
    out = np.zeros((len(texts), truncate_dim or dim), np.float32)
    if not texts:
        return out
    ids = text_tokenizer.encode(list(texts), resolve_prompt(prompt, loaded.prompts))
    order = np.argsort([len(row) for row in ids], kind="stable")[::-1]
    bar = tqdm(total=len(texts), desc="encode", unit="text", disable=not progress)
    for start in range(0, len(texts), batch_size):
        rows = order[start : start + batch_size]
        chunk = [ids[row] for row in rows]
        chunk += [chunk[-1][:1]] * (batch_size - len(chunk))  # fixed batch shape: pad with 1-token rows
        length = bucket_length(max(len(row) for row in chunk), text_tokenizer.max_length)
        batch = pad_batch(chunk, length, text_tokenizer.pad_id)
        vectors = encoder(batch["input_ids"], batch["attention_mask"], name)[: len(rows)]
        if truncate_dim:
            vectors = vectors[:, :truncate_dim]
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        out[rows] = vectors
        bar.update(len(rows))
    bar.close()
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="Hugging Face / sentence-transformers folder or jasper-jax export")
    parser.add_argument("--input", default=None, help="text file, one text per line")
    parser.add_argument("--images", default=None,
                        help="instead of --input: a file with one image path per line (a model with a vision tower)")
    parser.add_argument("--out", required=True, help="output .npy (float32, N x d, rows L2-normalised)")
    parser.add_argument("--head", default=None, help="head name, 'pooled', or NAME@D (default: the model's default head)")
    parser.add_argument("--prompt", default=None, help="prompt name (e.g. s2p_query, s2s_query) or literal text")
    parser.add_argument("--max-length", type=int, default=512, help="maximum tokens per text (prompt included)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="compute dtype")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    if (args.input is None) == (args.images is None):
        raise SystemExit("jasper-jax encode: give exactly one of --input (texts) and --images (image paths)")
    loaded = load_any(args.model, compute_dtype=args.dtype)
    if args.images is not None:
        from jasper_jax.encode_images import encode_images

        listing = Path(args.images)
        paths = [line.strip() for line in listing.read_text(encoding="utf-8").splitlines() if line.strip()]
        paths = [path if Path(path).is_absolute() or Path(path).exists() else str(listing.parent / path) for path in paths]
        vectors = encode_images(loaded, paths, head=args.head, batch_size=min(args.batch_size, 16),
                                progress=not args.no_progress)
        np.save(args.out, vectors)
        print(f"encoded {len(paths)} images -> {args.out} {vectors.shape}", file=sys.stderr)
        return 0
    texts = Path(args.input).read_text(encoding="utf-8").splitlines()
    vectors = encode_texts(
        loaded, texts, head=args.head, prompt=args.prompt or "", max_length=args.max_length,
        batch_size=args.batch_size, progress=not args.no_progress,
    )
    np.save(args.out, vectors)
    print(f"encoded {len(texts)} texts -> {args.out} {vectors.shape}", file=sys.stderr)
    return 0
