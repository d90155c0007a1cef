"""Build the training corpus: read sources, apply the paper's preprocessing, mix by ratios, write JSONL.

The paper's corpus (PAPER.md, "Data") is 8M texts, 80% fineweb-edu and 20% sentence-transformers training
data, with 30% of the documents split into chunks of 1-10 sentences and 0.08% of the texts word-shuffled.
`build_corpus` does this for any sources:

- a source is a file (.txt: one document per line; .jsonl/.json: a field, default `text` then `query`;
  .csv: a column, default `text`; .parquet: a column, default `text`; .xml/.xml.bz2: a MediaWiki dump, each
  article's prose paragraphs a document, `jasper_jax.data.wikipedia`) or a TensorFlow Datasets dataset
  `tfds:NAME[/CONFIG]` read with `tfds.data_source` over ArrayRecord (random access, no TensorFlow);
- each source is read in its order; per document (seeded, one `random.Random` per source):
  held-out texts (the exclusion list) are dropped; with probability `chunk_fraction` the document is
  replaced by its chunks of 1..`max_chunk_sentences` sentences (kept adjacent, so that without shuffling
  related texts share batches, as in the official training); each resulting text goes through the length
  filter, the exclusion list again and deduplication (case- and whitespace-insensitive), and with
  probability `shuffle_words_fraction` has its words shuffled;
- with `size`, source i contributes round(size * ratio_i / sum(ratios)) texts (fewer if it runs out; the
  stats say so); without, every text of every source is kept;
- the sources are interleaved document by document, by a seeded draw weighted by what each has left.

Output (documented format): `OUT` is JSONL, one `{"text": str, "source": str}` per line, UTF-8; `OUT`.stats.json
holds the settings and per-source counts. The output is a deterministic function of the inputs and the seed.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from jasper_jax.data import wikipedia

SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[.!?][\"')\]])\s+|\n+")
WHITESPACE = re.compile(r"\s+")


@dataclass
class SourceSpec:
    """One input of the corpus: a file or `tfds:NAME[/CONFIG]`, its share, and where the text is."""

    path: str
    ratio: float = 1.0
    field: str | None = None
    name: str | None = None
    split: str = "train"  # tfds only
    data_dir: str | None = None  # tfds only

    @property
    def label(self) -> str:
        return self.name or Path(self.path.removeprefix("tfds:")).stem or self.path


def parse_source(text: str) -> SourceSpec:
    """`PATH[,ratio=R][,field=F][,name=N][,split=S][,data_dir=D]` -> SourceSpec."""
    path, *options = text.split(",")
    values: dict[str, Any] = {}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or key not in ("ratio", "field", "name", "split", "data_dir"):
            raise ValueError(
                f"--source {text!r}: unknown option {option!r}; use ratio=, field=, name=, split=, data_dir="
            )
        values[key] = float(value) if key == "ratio" else value
    return SourceSpec(path=path, **values)


@dataclass
class CorpusConfig:
    """Preprocessing and mixing settings (defaults: the paper's)."""

    size: int | None = None
    seed: int = 666
    chunk_fraction: float = 0.3
    max_chunk_sentences: int = 10
    shuffle_words_fraction: float = 0.0008
    min_chars: int = 10
    max_chars: int = 50_000
    dedupe: bool = True
    exclude: list[str] = field(default_factory=list)

    def __post_init__(self):
        for name in ("chunk_fraction", "shuffle_words_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(
                    f"{name} is a probability per document: give a value in [0, 1], got {getattr(self, name)}"
                )
        if self.max_chunk_sentences < 1:
            raise ValueError(f"max_chunk_sentences must be >= 1, got {self.max_chunk_sentences}")
        if self.size is not None and self.size < 1:
            raise ValueError(f"size must be >= 1 (or None: keep every text), got {self.size}")


def normalised_key(text: str) -> bytes:
    """The identity of a text for dedupe and exclusion: case-folded, whitespace-collapsed, hashed."""
    return hashlib.blake2b(WHITESPACE.sub(" ", text).strip().casefold().encode("utf-8"), digest_size=16).digest()


def split_sentences(text: str) -> list[str]:
    """Sentences of a text: split after . ! ? (and closing quotes/brackets) before whitespace, and at newlines."""
    return [sentence.strip() for sentence in SENTENCE_END.split(text) if sentence and sentence.strip()]


def chunk_document(text: str, rng: random.Random, max_sentences: int) -> list[str]:
    """Consecutive groups of 1..max_sentences sentences (sizes drawn uniformly), covering the document."""
    sentences = split_sentences(text)
    chunks, start = [], 0
    while start < len(sentences):
        size = rng.randint(1, max_sentences)
        chunks.append(" ".join(sentences[start : start + size]))
        start += size
    return chunks


def shuffle_words(text: str, rng: random.Random) -> str:
    words = text.split()
    rng.shuffle(words)
    return " ".join(words)


def _text_of(record: Any, field_name: str | None, where: str) -> str | None:
    keys = [field_name] if field_name else ["text", "query", "content", "sentence"]
    for key in keys:
        if key in record:
            value = record[key]
            if isinstance(value, bytes):
                value = value.decode("utf-8")
            elif hasattr(value, "item"):  # numpy scalar from tfds
                value = value.item()
                value = value.decode("utf-8") if isinstance(value, bytes) else value
            return value if isinstance(value, str) else None
    raise ValueError(f"{where}: no field {keys} (has {sorted(record)}); give the source a field= option")


def read_documents(source: SourceSpec) -> Iterator[str]:
    """The documents of a source, in its order."""
    path = source.path
    if path.startswith("tfds:"):
        import tensorflow_datasets as tfds  # reads ArrayRecord without TensorFlow

        data = tfds.data_source(
            path.removeprefix("tfds:"), split=source.split, data_dir=source.data_dir, download=False
        )
        for index in range(len(data)):
            text = _text_of(data[index], source.field, f"{path}[{index}]")
            if text is not None:
                yield text
        return
    suffix = Path(path).suffix.lower()
    if wikipedia.is_dump(path):
        yield from wikipedia.article_paragraphs(path)
    elif suffix in (".jsonl", ".json"):
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if line.strip():
                    text = _text_of(json.loads(line), source.field, f"{path}:{number}")
                    if text is not None:
                        yield text
    elif suffix == ".csv":
        with open(path, encoding="utf-8", newline="") as handle:
            for number, row in enumerate(csv.DictReader(handle), 2):
                text = _text_of(row, source.field, f"{path}:{number}")
                if text is not None:
                    yield text
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        column = source.field or "text"
        parquet = pq.ParquetFile(path)
        if column not in parquet.schema_arrow.names:
            raise ValueError(f"{path}: no column {column!r} (has {parquet.schema_arrow.names}); give field=")
        for batch in parquet.iter_batches(columns=[column]):
            for text in batch.column(0).to_pylist():
                if isinstance(text, str):
                    yield text
    else:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    yield line.rstrip("\n")


def read_exclusions(paths: Sequence[str]) -> set[bytes]:
    """Normalised keys of held-out texts (files: .txt one per line, .jsonl/.csv/.parquet with a text field)."""
    keys: set[bytes] = set()
    for path in paths:
        for text in read_documents(SourceSpec(path=path)):
            keys.add(normalised_key(text))
    return keys


def _source_texts(
    source: SourceSpec,
    index: int,
    quota: int | None,
    config: CorpusConfig,
    excluded: set[bytes],
    seen: set[bytes],
    stats: dict[str, int],
    progress: bool = False,
) -> list[list[str]]:
    """Texts of one source grouped by document, up to `quota` texts."""
    from tqdm import tqdm

    rng = random.Random(f"{config.seed}:{index}:{source.label}")
    documents: list[list[str]] = []
    total = 0
    bar = tqdm(
        read_documents(source),
        desc=f"corpus {source.label}",
        unit="doc",
        disable=not progress,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    for document in bar:
        if quota is not None and total >= quota:
            break
        stats["documents"] += 1
        document = document.strip()
        if normalised_key(document) in excluded:
            stats["excluded"] += 1
            continue
        if rng.random() < config.chunk_fraction:
            pieces = chunk_document(document, rng, config.max_chunk_sentences)
            stats["chunked_documents"] += 1
            stats["chunks"] += len(pieces)
        else:
            pieces = [document]
        kept = []
        for piece in pieces:
            if len(piece) < config.min_chars:
                stats["too_short"] += 1
                continue
            if len(piece) > config.max_chars:
                stats["too_long"] += 1
                continue
            key = normalised_key(piece)
            if key in excluded:
                stats["excluded"] += 1
                continue
            if config.dedupe:
                if key in seen:
                    stats["duplicates"] += 1
                    continue
                seen.add(key)
            if rng.random() < config.shuffle_words_fraction:
                piece = shuffle_words(piece, rng)
                stats["word_shuffled"] += 1
            kept.append(piece)
            if quota is not None and total + len(kept) >= quota:
                break
        if kept:
            documents.append(kept)
            total += len(kept)
    bar.close()
    stats["texts"] = total
    if quota is not None and total < quota:
        stats["short_of_quota"] = quota - total
    return documents


def build_corpus(
    sources: Sequence[SourceSpec], config: CorpusConfig, progress: bool = False
) -> tuple[list[tuple[str, str]], dict[str, Any]]:
    """(text, source label) rows of the corpus, in output order, and the stats (progress bars on stderr)."""
    if not sources:
        raise ValueError("no --source given")
    if len({s.label for s in sources}) != len(sources):
        raise ValueError(f"sources need distinct names (name=...), got {[s.label for s in sources]}")
    ratio_sum = sum(s.ratio for s in sources)
    if any(s.ratio < 0 for s in sources) or ratio_sum <= 0:
        raise ValueError(f"ratios must be >= 0 with a positive sum, got {[s.ratio for s in sources]}")
    quotas: list[int | None] = [None] * len(sources)
    if config.size is not None:
        quotas = [int(round(config.size * s.ratio / ratio_sum)) for s in sources]
        quotas[-1] += config.size - sum(quotas)  # rounding: the total is exactly `size`
    excluded = read_exclusions(config.exclude)
    seen: set[bytes] = set()
    per_source, stats = [], {}
    for index, (source, quota) in enumerate(zip(sources, quotas)):
        counts = dict.fromkeys(
            (
                "documents",
                "excluded",
                "chunked_documents",
                "chunks",
                "too_short",
                "too_long",
                "duplicates",
                "word_shuffled",
                "texts",
            ),
            0,
        )
        per_source.append(_source_texts(source, index, quota, config, excluded, seen, counts, progress))
        stats[source.label] = {"quota": quota, **counts}
    # interleave document by document, weighted by the texts each source has left
    rng = random.Random(f"{config.seed}:mix")
    positions = [0] * len(sources)
    left = [sum(len(doc) for doc in docs) for docs in per_source]
    rows: list[tuple[str, str]] = []
    while any(left):
        pick = rng.choices(range(len(sources)), weights=left)[0]
        document = per_source[pick][positions[pick]]
        positions[pick] += 1
        left[pick] -= len(document)
        rows.extend((text, sources[pick].label) for text in document)
    summary = {
        "rows": len(rows),
        "config": asdict(config),
        "sources": [asdict(s) for s in sources],
        "per_source": stats,
    }
    return rows, summary


def write_corpus(rows: Sequence[tuple[str, str]], summary: dict[str, Any], out: str | Path) -> None:
    """Write OUT (JSONL) and OUT.stats.json, each atomically."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        for text, label in rows:
            handle.write(json.dumps({"text": text, "source": label}, ensure_ascii=False) + "\n")
    os.replace(tmp, out)
    stats_path = out.with_name(out.name + ".stats.json")
    stats_path.write_text(json.dumps(summary, indent=1))
    for label, counts in summary["per_source"].items():
        if counts.get("short_of_quota"):
            print(
                f"warning: source {label} ran out {counts['short_of_quota']} texts short of its quota "
                f"{counts['quota']}",
                file=sys.stderr,
            )
