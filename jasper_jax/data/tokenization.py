"""Tokenisation shared by `encode`, teacher encoding and the training pipeline.

Tokenizers load from `tokenizer.json` with the `tokenizers` library (fast, no PyTorch). We never build a
tokenizer from `vocab.txt`: in transformers 5 `BertTokenizer(vocab_file=...)` silently yields a 5-token
vocabulary. Batches are padded to a few bucket lengths (powers of two up to `max_length`) so a jitted
encoder compiles a handful of times instead of once per distinct length.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tokenizers

from jasper_jax.errors import UserError

MIN_BUCKET = 16


class TokenizerNotFoundError(UserError, FileNotFoundError):
    """A folder without the `tokenizer.json` a model or a command needs; the message says what to pass."""


@dataclass
class TextTokenizer:
    """A fast tokenizer with truncation to `max_length` and the pad id the model expects."""

    tokenizer: tokenizers.Tokenizer
    pad_id: int
    max_length: int

    def encode(self, texts: list[str], prompt: str = "") -> list[list[int]]:
        """Token ids of `prompt + text` for each text, special tokens added, truncated to max_length."""
        encodings = self.tokenizer.encode_batch([prompt + text for text in texts])
        return [encoding.ids for encoding in encodings]

    def batch(self, texts: list[str], prompt: str = "", length: int | None = None) -> dict[str, np.ndarray]:
        """`input_ids` and `attention_mask` (int32, B x L) with L the bucket of the longest text."""
        ids = self.encode(texts, prompt)
        longest = max((len(row) for row in ids), default=1)
        return pad_batch(ids, length or bucket_length(longest, self.max_length), self.pad_id)


def _pad_id(folder: Path, tokenizer: tokenizers.Tokenizer) -> int:
    """The pad id from tokenizer_config.json / special_tokens_map.json, else the tokenizer's padding, else 0."""
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        path = folder / name
        if path.exists():
            pad = json.loads(path.read_text()).get("pad_token")
            if isinstance(pad, dict):
                pad = pad.get("content")
            if isinstance(pad, str) and tokenizer.token_to_id(pad) is not None:
                return int(tokenizer.token_to_id(pad))
    if tokenizer.padding is not None:
        return int(tokenizer.padding["pad_id"])
    return 0


def load_tokenizer(folder: str | Path, max_length: int = 512) -> TextTokenizer:
    """Load `folder/tokenizer.json` (a Hugging Face or sentence-transformers folder)."""
    folder = Path(folder)
    path = folder / "tokenizer.json"
    if not path.exists():
        raise TokenizerNotFoundError(
            f"no tokenizer in {folder}: expected {path}. Save the model's fast tokenizer there "
            "(AutoTokenizer.from_pretrained(...).save_pretrained(folder)) and try again."
        )
    tokenizer = tokenizers.Tokenizer.from_file(str(path))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_length)
    return TextTokenizer(tokenizer=tokenizer, pad_id=_pad_id(folder, tokenizer), max_length=max_length)


def bucket_length(length: int, max_length: int, min_bucket: int = MIN_BUCKET) -> int:
    """The smallest power of two >= length (at least min_bucket), capped at max_length."""
    if length > max_length:
        raise ValueError(f"sequence of {length} tokens is longer than max_length={max_length}")
    bucket = max(min_bucket, 1 << max(0, int(length) - 1).bit_length())
    return min(bucket, max_length)


def pad_batch(ids: list[list[int]], length: int, pad_id: int) -> dict[str, np.ndarray]:
    """Right-pad (and truncate) token id lists to `length`: int32 `input_ids` and `attention_mask`."""
    input_ids = np.full((len(ids), length), pad_id, dtype=np.int32)
    attention_mask = np.zeros((len(ids), length), dtype=np.int32)
    for row, tokens in enumerate(ids):
        tokens = tokens[:length]
        input_ids[row, : len(tokens)] = tokens
        attention_mask[row, : len(tokens)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


# ------------------------------------------------------------------------------------------------ images


def add_image_tokens(tokenizer: TextTokenizer | tokenizers.Tokenizer) -> tuple[int, int, int]:
    """Add `<|jasper_img_start|>`, `<|jasper_img_token|>`, `<|jasper_img_end|>` as special tokens (kept if
    present, as in Jasper's released tokenizer); returns their ids (start, token, end)."""
    from jasper_jax.models.image_inputs import IMAGE_MARKERS

    raw = tokenizer.tokenizer if isinstance(tokenizer, TextTokenizer) else tokenizer
    missing = [marker for marker in IMAGE_MARKERS if raw.token_to_id(marker) is None]
    if missing:
        raw.add_special_tokens([tokenizers.AddedToken(marker, special=True, normalized=False) for marker in missing])
    return tuple(int(raw.token_to_id(marker)) for marker in IMAGE_MARKERS)


def image_token_ids(tokenizer: TextTokenizer, n_tokens: int, prompt: str = "") -> list[int]:
    """Token ids of an image input: `prompt` + start + n x image token + end, with the tokenizer's own
    special tokens ([CLS]/[SEP] for BERT, none for Qwen2). Needs `add_image_tokens` first; refuses a
    max_length that would cut the image."""
    from jasper_jax.models.image_inputs import IMAGE_END, IMAGE_START, IMAGE_TOKEN

    if tokenizer.tokenizer.token_to_id(IMAGE_TOKEN) is None:
        raise ValueError("the tokenizer has no image tokens: call add_image_tokens(tokenizer) first")
    raw = tokenizer.tokenizer
    raw.no_truncation()
    try:
        ids = raw.encode(prompt + IMAGE_START + IMAGE_TOKEN * n_tokens + IMAGE_END).ids
    finally:
        raw.enable_truncation(max_length=tokenizer.max_length)
    if len(ids) > tokenizer.max_length:
        raise ValueError(
            f"an image input takes {len(ids)} tokens ({n_tokens} image tokens + markers and prompt) but "
            f"max_length={tokenizer.max_length}; raise max_length or lower image_tokens"
        )
    return ids


def save_tokenizer(tokenizer: TextTokenizer, source_folder: str | Path, out_folder: str | Path) -> Path:
    """Write `tokenizer` (e.g. with image tokens added) to `out_folder/tokenizer.json`, copying the
    source folder's tokenizer_config.json / special_tokens_map.json (pad token and the like)."""
    import shutil

    out = Path(out_folder)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.tokenizer.save(str(out / "tokenizer.json"))
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        if (Path(source_folder) / name).exists() and (Path(source_folder) / name).resolve() != (out / name).resolve():
            shutil.copyfile(Path(source_folder) / name, out / name)
    return out
