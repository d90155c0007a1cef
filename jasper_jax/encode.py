"""`jasper-jax encode`: embed texts (or images) with a student or any model; rows L2-normalised, input order.

Texts are sorted by token length and cut into batches of `batch_size` rows padded to a few bucket lengths
(powers of two, see `jasper_jax.data.tokenization`), and the last batch is padded with empty rows, so the
jitted encoder compiles once per bucket (a handful of times) rather than once per batch.

Heads: the model's default head (the first, or the one an export marks active), any head by name,
`pooled` for the normalised pooled vector, and `NAME@D` for the first D components of a head renormalised
(the Matryoshka prefix convention). Prompts: a name from the model's prompts (s2p_query, s2s_query, ...)
or literal text.

Images (`encode_images`, a student with a vision tower): an image is the input `<|jasper_img_start|>` + n x
`<|jasper_img_token|>` + `<|jasper_img_end|>` (with the tokenizer's own special tokens) whose image-token
embeddings are the pooled SigLIP rows of the image (see `jasper_jax.models.image_inputs`);
`jasper-jax encode --model M --images LIST --out OUT.npy` (LIST: one image path per line).

The model is anything `jasper_jax.loader.load_any` loads (an alias such as `minilm`, a model folder, a
training checkpoint), a `LoadedModel`, or a `JasperStudent` with its tokenizer folder.
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

from jasper_jax.convert.load import LoadedModel
from jasper_jax.data.tokenization import (
    TextTokenizer,
    add_image_tokens,
    bucket_length,
    image_token_ids,
    load_tokenizer,
    pad_batch,
)
from jasper_jax.errors import UserError
from jasper_jax.loader import load_any
from jasper_jax.models.pooling import l2_normalize
from jasper_jax.models.student import POOLED, JasperStudent
from jasper_jax.models.token_compression import check_ratio
from jasper_jax.prompts import PAPER_PROMPTS


class UnknownHeadError(UserError, ValueError):
    """A head name the model does not have; the message lists the heads it has."""


def parse_head(head: str | None, model: JasperStudent, default: str) -> tuple[str, int | None]:
    """`NAME` or `NAME@D` -> (name, D or None), checked against the model's heads."""
    head = head or default
    name, _, dim = head.partition("@")
    available = list(model.config.heads) + [POOLED]
    if name not in available:
        raise UnknownHeadError(f"unknown head {name!r}; this model has: {', '.join(available)}")
    return name, int(dim) if dim else None


def resolve_prompt(prompt: str | None, prompts: dict[str, str]) -> str:
    """A prompt name (the model's own prompts, then the paper's) or literal prompt text."""
    if not prompt:
        return ""
    return {**PAPER_PROMPTS, **prompts}.get(prompt, prompt)


class JittedEncoder:
    """The model split once into (graphdef, state) and one jitted forward (the head static): one compile per
    head, compression ratio and input shape. `pixel_values` is None for texts, (B, H, W, 3) images for image
    inputs; `compression_ratio` (static) for a student with a token compressor (None: its default)."""

    def __init__(self, model: JasperStudent):
        self.graphdef, self.state = nnx.split(model)

        def run(state, input_ids, attention_mask, pixel_values, head, compression_ratio):
            model = nnx.merge(self.graphdef, state)
            pooled = model.pooled(
                input_ids, attention_mask, pixel_values=pixel_values, compression_ratio=compression_ratio
            )
            return l2_normalize(pooled if head == POOLED else model.heads[head](pooled))

        self.run = jax.jit(run, static_argnums=(4, 5))

    def __call__(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        head: str,
        pixel_values: np.ndarray | None = None,
        compression_ratio: float | None = None,
    ) -> np.ndarray:
        pixels = None if pixel_values is None else jnp.asarray(pixel_values)
        ids, mask = jnp.asarray(input_ids), jnp.asarray(attention_mask)
        return np.asarray(self.run(self.state, ids, mask, pixels, head, compression_ratio))


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


def _encoder(loaded: LoadedModel) -> JittedEncoder:
    """The model's compiled encoder, made once and kept on the `LoadedModel` (texts and images share it)."""
    if loaded._jitted is None:
        loaded._jitted = JittedEncoder(loaded.model)
    return loaded._jitted


def _truncate(vectors: np.ndarray, dim: int | None) -> np.ndarray:
    """The first `dim` components renormalised (NAME@D), or the vectors as they are."""
    if not dim:
        return vectors
    vectors = vectors[:, :dim]
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


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
    compression_ratio: float | None = None,
) -> np.ndarray:
    """Embed `texts`: float32 (N, d), rows L2-normalised, in input order.

    `model_path_or_model`: a model alias, folder or trainer checkpoint (`jasper_jax.loader.load_any`), a
    `LoadedModel`, or a `JasperStudent` together with `tokenizer`. `max_length` is capped by the model's own
    max_seq_length. `compression_ratio`: for a student with token compression, the share of the tokens past
    its threshold that are kept (default: the model's)."""
    loaded = _loaded(model_path_or_model, tokenizer)
    if compression_ratio is not None:
        if loaded.config.token_compression is None:
            raise ValueError("compression_ratio given but this model has no token compression (token_compression)")
        compression_ratio = check_ratio(compression_ratio)
    name, truncate_dim = parse_head(head, loaded.model, loaded.default_head)
    length_cap = min(max_length, loaded.max_seq_length or max_length)
    if isinstance(tokenizer, TextTokenizer):
        text_tokenizer = tokenizer
    else:
        text_tokenizer = load_tokenizer(loaded.tokenizer_folder, length_cap)
    encoder = _encoder(loaded)
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
        vectors = encoder(batch["input_ids"], batch["attention_mask"], name, compression_ratio=compression_ratio)[
            : len(rows)
        ]
        out[rows] = _truncate(vectors, truncate_dim)
        bar.update(len(rows))
    bar.close()
    return out


def image_input_ids(loaded: LoadedModel) -> list[int]:
    """The token ids of an image input for `loaded`: its tokenizer must give the image marker ids the model
    was trained with."""
    config = loaded.config
    if config.vision is None:
        raise ValueError("this model has no vision tower: images need a student trained with stage 4")
    tokenizer = load_tokenizer(loaded.tokenizer_folder, max(loaded.max_seq_length or 512, config.image_tokens + 8))
    ids = add_image_tokens(tokenizer)
    if ids != tuple(config.image_token_ids):
        raise ValueError(
            f"the tokenizer in {loaded.tokenizer_folder} gives image marker ids {ids}, the model expects "
            f"{tuple(config.image_token_ids)}: use the tokenizer of the model's stage-4 run"
        )
    return image_token_ids(tokenizer, config.image_tokens)


def encode_images(
    model_path_or_model,
    paths: list[str | Path],
    *,
    head: str | None = None,
    batch_size: int = 16,
    progress: bool = True,
    tokenizer: str | Path | None = None,
) -> np.ndarray:
    """Embed image files: float32 (N, d), rows L2-normalised, input order. `head` as in `encode_texts`
    (a name, `pooled` or NAME@D); the model as in `encode_texts`, with a vision tower."""
    from jasper_jax.data.images import load_image  # PIL: only for images

    loaded = _loaded(model_path_or_model, tokenizer)
    name, truncate_dim = parse_head(head, loaded.model, loaded.default_head)
    ids = np.asarray(image_input_ids(loaded), np.int32)
    encoder = _encoder(loaded)
    dim = loaded.config.encoder.hidden_size if name == POOLED else loaded.config.heads[name]
    out = np.zeros((len(paths), truncate_dim or dim), np.float32)
    size = loaded.config.vision.image_size
    input_ids = np.tile(ids, (batch_size, 1))
    mask = np.ones_like(input_ids)
    bar = tqdm(total=len(paths), desc="encode images", unit="image", disable=not progress)
    for start in range(0, len(paths), batch_size):
        chunk = [load_image(path, size) for path in paths[start : start + batch_size]]
        real = len(chunk)
        chunk += [chunk[-1]] * (batch_size - real)  # fixed shape: one compile
        vectors = encoder(input_ids, mask, name, pixel_values=np.stack(chunk))[:real]
        out[start : start + real] = _truncate(vectors, truncate_dim)
        bar.update(real)
    bar.close()
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        required=True,
        help="Hugging Face / sentence-transformers folder, jasper-jax export, training checkpoint "
        "or model alias (minilm)",
    )
    parser.add_argument("--input", default=None, help="text file, one text per line")
    parser.add_argument(
        "--images",
        default=None,
        help="instead of --input: a file with one image path per line (a model with a vision tower)",
    )
    parser.add_argument("--out", required=True, help="output .npy (float32, N x d, rows L2-normalised)")
    parser.add_argument(
        "--head", default=None, help="head name, 'pooled', or NAME@D (default: the model's default head)"
    )
    parser.add_argument("--prompt", default=None, help="prompt name (e.g. s2p_query, s2s_query) or literal text")
    parser.add_argument("--max-length", type=int, default=512, help="maximum tokens per text (prompt included)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="compute dtype")
    parser.add_argument(
        "--compression-ratio",
        type=float,
        default=None,
        help="a model with token compression: share of the tokens past its threshold kept, in (0, 1] "
        "(default: the model's; the released Jasper-Token-Compression-600M: 0.5)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    if (args.input is None) == (args.images is None):
        raise SystemExit("jasper-jax encode: give exactly one of --input (texts) and --images (image paths)")
    loaded = load_any(args.model, compute_dtype=args.dtype)
    if args.compression_ratio is not None:
        if loaded.config.token_compression is None:
            raise SystemExit(
                f"jasper-jax encode: --compression-ratio needs a model with token compression; {args.model} has none"
            )
        if not 0.0 < args.compression_ratio <= 1.0:
            raise SystemExit(f"jasper-jax encode: --compression-ratio {args.compression_ratio} must be in (0, 1]")
    if args.images is not None:
        listing = Path(args.images)
        paths = [line.strip() for line in listing.read_text(encoding="utf-8").splitlines() if line.strip()]
        paths = [
            path if Path(path).is_absolute() or Path(path).exists() else str(listing.parent / path) for path in paths
        ]
        vectors = encode_images(
            loaded, paths, head=args.head, batch_size=min(args.batch_size, 16), progress=not args.no_progress
        )
        np.save(args.out, vectors)
        print(f"encoded {len(paths)} images -> {args.out} {vectors.shape}", file=sys.stderr)
        return 0
    texts = Path(args.input).read_text(encoding="utf-8").splitlines()
    vectors = encode_texts(
        loaded,
        texts,
        head=args.head,
        prompt=args.prompt or "",
        max_length=args.max_length,
        batch_size=args.batch_size,
        progress=not args.no_progress,
        compression_ratio=args.compression_ratio,
    )
    np.save(args.out, vectors)
    print(f"encoded {len(texts)} texts -> {args.out} {vectors.shape}", file=sys.stderr)
    return 0
