"""A generated corpus, word-level tokenizer and teacher store for the tiny config and the tests.

The "teachers" are fixed random functions of the text (a bag of random word vectors through a fixed
random non-linearity, one per teacher), so a tiny student can really learn them: losses fall within a
minute of CPU training. Written in the official memmap + text.jsonl format and imported with
`jasper_jax.data.rag_import.import_rag`, so the generated store goes through the real reader and check.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")


def _words(count: int) -> list[str]:
    consonants, vowels = "bdfgklmnprstvz", "aeiou"
    words = []
    for i in range(count):
        a, b = divmod(i, len(vowels))
        c, d = divmod(a, len(consonants))
        words.append(consonants[d] + vowels[b] + consonants[c % len(consonants)] + vowels[(b + c) % len(vowels)])
    return words


def write_tokenizer(folder: str | Path, words: Sequence[str]) -> Path:
    """A word-level `tokenizer.json` ([CLS] text [SEP]) plus `tokenizer_config.json` naming [PAD]."""
    import tokenizers
    from tokenizers import models, pre_tokenizers, processors

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {token: i for i, token in enumerate(list(SPECIAL_TOKENS) + list(words))}
    tokenizer = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"pad_token": "[PAD]"}))
    return folder


def generate_tiny_data(
    folder: str | Path,
    *,
    rows: int = 512,
    words: int = 200,
    teacher_dims: Sequence[int] = (24, 8),
    min_words: int = 3,
    max_words: int = 20,
    seed: int = 0,
) -> tuple[Path, Path]:
    """Write `folder/tokenizer/` and `folder/store/` (skipped if the store exists); returns both paths.

    Texts are random word sequences; teacher k's vector of a text is tanh(W_k . mean of its word vectors).
    """
    folder = Path(folder)
    tokenizer_dir, store_dir = folder / "tokenizer", folder / "store"
    if (store_dir / "manifest.json").exists() and (tokenizer_dir / "tokenizer.json").exists():
        return tokenizer_dir, store_dir
    from jasper_jax.data.rag_import import import_rag

    rng = np.random.default_rng(seed)
    vocabulary = _words(words)
    write_tokenizer(tokenizer_dir, vocabulary)
    word_vectors = rng.normal(size=(words, 16))
    # Zipf-like word frequencies, so some words are common and batches share vocabulary
    frequencies = 1.0 / np.arange(1, words + 1)
    frequencies /= frequencies.sum()
    texts, bags = [], []
    for _ in range(rows):
        length = int(rng.integers(min_words, max_words + 1))
        ids = rng.choice(words, size=length, p=frequencies)
        texts.append(" ".join(vocabulary[i] for i in ids))
        bags.append(word_vectors[ids].mean(0))
    bags = np.stack(bags)
    blocks = [np.tanh(bags @ rng.normal(size=(16, dim))) for dim in teacher_dims]
    vectors = np.concatenate(blocks, axis=1).astype(np.float32)
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        vector_file, text_file = Path(scratch) / "teacher.fp32", Path(scratch) / "teacher.text.jsonl"
        vectors.tofile(vector_file)
        text_file.write_text("".join(json.dumps({"query": text}) + "\n" for text in texts))
        import_rag(
            vector_file,
            text_file,
            int(sum(teacher_dims)),
            store_dir,
            teacher_dims=list(teacher_dims),
            names=[f"teacher{i}" for i in range(len(teacher_dims))],
        )
    return tokenizer_dir, store_dir
