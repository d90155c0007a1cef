"""Tiny self-made test inputs for the evaluation and demo tests: Lee- and NewsArticles-format files and a tiny
random BERT (MiniLM's vocabulary) exported as a sentence-transformers folder. Nothing is downloaded."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import numpy as np

TOPICS = {
    "election": "voters parliament minister campaign ballot party government leader poll vote",
    "football": "match goal striker league coach season team stadium referee cup",
    "weather": "storm rain flood wind temperature forecast drought heat snow climate",
    "markets": "shares stocks investors bank profit economy inflation trade prices rates",
    "health": "hospital doctors virus vaccine patients disease treatment nurses medicine care",
}


def _sentence(rng: random.Random, topic: str, words: int = 12) -> str:
    vocabulary = TOPICS[topic].split()
    return " ".join(rng.choice(vocabulary) for _ in range(words)).capitalize() + "."


def write_lee_files(folder: Path, documents: int = 8, background: int = 20) -> Path:
    """lee.cor (documents on 4 topics), similarities0-1.txt (upper triangle: same topic high) and background."""
    rng = random.Random(0)
    folder.mkdir(parents=True, exist_ok=True)
    topics = [list(TOPICS)[i % 4] for i in range(documents)]
    docs = [" ".join(_sentence(rng, topic) for _ in range(3)) for topic in topics]
    (folder / "lee.cor").write_text("\n".join(docs) + "\n", encoding="latin-1")
    matrix = np.zeros((documents, documents))
    for i in range(documents):
        for j in range(i, documents):
            matrix[i, j] = 1.0 if i == j else (0.8 if topics[i] == topics[j] else 0.1 + 0.05 * ((i + j) % 3))
    (folder / "similarities0-1.txt").write_text("\n".join("\t".join(f"{v:g}" for v in row) for row in matrix) + "\n")
    lines = [" ".join(_sentence(rng, rng.choice(list(TOPICS))) for _ in range(4)) for _ in range(background)]
    (folder / "lee_background.cor").write_text("\n".join(lines) + "\n", encoding="latin-1")
    return folder


def write_news_csv(path: Path, articles: int = 40) -> Path:
    """NewsArticles.csv format; also a row without text and a duplicated title (both must be dropped)."""
    rng = random.Random(1)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(articles):
        topic = list(TOPICS)[i % len(TOPICS)]
        title = f"{topic.capitalize()} report number {i}: " + _sentence(rng, topic, 5)
        text = " ".join(_sentence(rng, topic) for _ in range(6))
        rows.append(
            {
                "article_id": i + 1,
                "publish_date": "2017/2/7",
                "article_source_link": "",
                "title": title,
                "subtitle": "",
                "text": text,
            }
        )
    rows.append({**rows[0], "article_id": articles + 1, "text": ""})
    rows.append({**rows[1], "article_id": articles + 2})
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def tiny_bert_export(folder: Path, heads: dict[str, int], seed: int, tokenizer_folder: Path) -> Path:
    """A random 2-layer BERT (hidden 32) with the tokenizer of `tokenizer_folder` (the tests pass MiniLM's),
    exported as a sentence-transformers folder."""
    from flax import nnx

    from jasper_jax.convert.export import export_model
    from jasper_jax.models import JasperStudent, StudentConfig
    from jasper_jax.models.bert import BertConfig

    encoder = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    config = StudentConfig(encoder=encoder, heads=dict(heads))
    model = JasperStudent(config, rngs=nnx.Rngs(seed))
    return export_model(model, config, tokenizer_folder, folder, max_seq_length=64)
