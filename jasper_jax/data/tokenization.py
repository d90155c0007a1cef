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

MIN_BUCKET = 16


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
        raise FileNotFoundError(
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
