"""Corpus building: preprocessing rates, determinism, dedupe, filters, exclusion, mixing, every input format."""

from __future__ import annotations

import csv
import json
import math
import random
from collections import Counter

import pytest

from jasper_jax.cli import main
from jasper_jax.data.corpus import (
    CorpusConfig,
    SourceSpec,
    build_corpus,
    chunk_document,
    normalised_key,
    parse_source,
    read_documents,
    split_sentences,
)


def make_documents(count: int, sentences: int = 12, prefix: str = "doc") -> list[str]:
    rng = random.Random(count)
    words = ["river", "stone", "light", "market", "theory", "Quiet", "green", "engine", "paper", "cloud"]
    return [
        " ".join(f"{prefix} {d} sentence {s} " + " ".join(rng.choices(words, k=6)) + "." for s in range(sentences))
        for d in range(count)
    ]


def write_jsonl(path, documents, field="text"):
    path.write_text("".join(json.dumps({field: d}) + "\n" for d in documents))
    return path


def texts_of(rows):
    return [text for text, _ in rows]


def within(observed: int, trials: int, rate: float, sigmas: float = 4.0) -> bool:
    return abs(observed - trials * rate) <= sigmas * math.sqrt(trials * rate * (1 - rate)) + 1


def test_paper_defaults():
    config = CorpusConfig()
    assert (config.chunk_fraction, config.max_chunk_sentences, config.shuffle_words_fraction, config.seed) == (
        0.3,
        10,
        0.0008,
        666,
    )


def test_chunking_rate_and_chunks_cover_documents(tmp_path):
    documents = make_documents(3000)
    source = write_jsonl(tmp_path / "docs.jsonl", documents)
    rows, summary = build_corpus([SourceSpec(str(source))], CorpusConfig(shuffle_words_fraction=0.0))
    stats = summary["per_source"]["docs"]
    assert stats["documents"] == 3000
    assert within(stats["chunked_documents"], 3000, 0.3), stats
    whole = set(documents)
    chunks = [text for text in texts_of(rows) if text not in whole]
    assert len(texts_of(rows)) - len(chunks) == 3000 - stats["chunked_documents"]
    sizes = Counter(len(split_sentences(chunk)) for chunk in chunks)
    assert set(sizes) <= set(range(1, 11)) and {1, 10} <= set(sizes), sizes
    # chunks of one document are adjacent and rebuild it exactly
    rebuilt, current = [], []
    for text in texts_of(rows):
        if text in whole:
            continue
        current.append(text)
        joined = " ".join(current)
        if joined in whole:
            rebuilt.append(joined)
            current = []
    assert not current and len(rebuilt) == stats["chunked_documents"]


def test_word_shuffle_rate_and_content(tmp_path):
    documents = make_documents(4000, sentences=1)
    source = write_jsonl(tmp_path / "docs.jsonl", documents)
    rows, summary = build_corpus(
        [SourceSpec(str(source))], CorpusConfig(chunk_fraction=0.0, shuffle_words_fraction=0.05)
    )
    shuffled = [(text, original) for text, original in zip(texts_of(rows), documents) if text != original]
    assert summary["per_source"]["docs"]["word_shuffled"] >= len(shuffled) > 0
    assert within(summary["per_source"]["docs"]["word_shuffled"], 4000, 0.05)
    assert all(sorted(text.split()) == sorted(original.split()) for text, original in shuffled)


def test_deterministic_given_the_seed(tmp_path):
    source = write_jsonl(tmp_path / "docs.jsonl", make_documents(300))
    args = ["corpus", "build", "--source", f"{source},ratio=1", "--shuffle-words-fraction", "0.05"]
    assert main(args + ["--out", str(tmp_path / "a.jsonl")]) == 0
    assert main(args + ["--out", str(tmp_path / "b.jsonl")]) == 0
    assert main(args + ["--out", str(tmp_path / "c.jsonl"), "--seed", "1"]) == 0
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert (tmp_path / "a.jsonl").read_bytes() != (tmp_path / "c.jsonl").read_bytes()
    stats = json.loads((tmp_path / "a.jsonl.stats.json").read_text())
    assert stats["rows"] == len((tmp_path / "a.jsonl").read_text().splitlines())
    first = json.loads((tmp_path / "a.jsonl").read_text().splitlines()[0])
    assert set(first) == {"text", "source"} and first["source"] == "docs"


def test_dedupe_length_filter_and_exclusion(tmp_path):
    documents = [
        "The same text here.",
        "the  SAME text here.",
        "short",
        "x" * 200,
        "Held out evaluation text.",
        "A normal training text.",
        "Another training text. Held out sentence.",
    ]
    source = write_jsonl(tmp_path / "docs.jsonl", documents)
    (tmp_path / "heldout.txt").write_text("held out evaluation TEXT.\nHeld out sentence.\n")
    config = CorpusConfig(
        chunk_fraction=0.0,
        shuffle_words_fraction=0.0,
        min_chars=10,
        max_chars=100,
        exclude=[str(tmp_path / "heldout.txt")],
    )
    rows, summary = build_corpus([SourceSpec(str(source))], config)
    assert texts_of(rows) == [
        "The same text here.",
        "A normal training text.",
        "Another training text. Held out sentence.",
    ]
    stats = summary["per_source"]["docs"]
    assert (stats["duplicates"], stats["too_short"], stats["too_long"], stats["excluded"]) == (1, 1, 1, 1)
    # a held-out sentence never enters as a chunk either
    rows, _ = build_corpus(
        [SourceSpec(str(source))],
        CorpusConfig(chunk_fraction=1.0, max_chunk_sentences=1, min_chars=1, exclude=config.exclude),
    )
    keys = {normalised_key(t) for t in texts_of(rows)}
    assert normalised_key("Held out sentence.") not in keys and normalised_key("Another training text.") in keys
    nodedupe, _ = build_corpus([SourceSpec(str(source))], CorpusConfig(chunk_fraction=0.0, dedupe=False, min_chars=1))
    assert len(nodedupe) == len(documents)


def test_mixing_by_ratios_interleaves_sources(tmp_path):
    web = write_jsonl(tmp_path / "web.jsonl", make_documents(2000, sentences=3, prefix="web"))
    pairs = write_jsonl(tmp_path / "pairs.jsonl", make_documents(2000, sentences=1, prefix="pair"), field="query")
    sources = [parse_source(f"{web},ratio=0.8,name=fineweb"), parse_source(f"{pairs},ratio=0.2,field=query")]
    rows, summary = build_corpus(sources, CorpusConfig(size=1000))
    counts = Counter(label for _, label in rows)
    assert counts == {"fineweb": 800, "pairs": 200} and len(rows) == 1000
    assert {label for _, label in rows[:100]} == {"fineweb", "pairs"}, "sources are interleaved, not concatenated"
    short, _ = build_corpus([parse_source(f"{pairs},field=query")], CorpusConfig(size=5000))
    assert len(short) == 2000


def test_sentence_split_and_chunk_sizes():
    assert split_sentences('He said "Stop." Then he left! Why? Fine.\nNext line') == [
        'He said "Stop."',
        "Then he left!",
        "Why?",
        "Fine.",
        "Next line",
    ]
    rng = random.Random(0)
    document = " ".join(f"S{i}." for i in range(50))
    chunks = chunk_document(document, rng, 10)
    assert " ".join(chunks) == document and all(1 <= len(split_sentences(c)) <= 10 for c in chunks)


def test_every_input_format_reads_the_same_documents(tmp_path):
    pytest.importorskip("pyarrow")
    import pyarrow as pa
    import pyarrow.parquet as pq

    documents = make_documents(20, sentences=2)
    (tmp_path / "d.txt").write_text("\n".join(documents) + "\n")
    write_jsonl(tmp_path / "d.jsonl", documents, field="body")
    with open(tmp_path / "d.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text"])
        writer.writerows(enumerate(documents))
    pq.write_table(pa.table({"text": documents}), tmp_path / "d.parquet")
    for spec in ("d.txt", "d.jsonl,field=body", "d.csv", "d.parquet"):
        assert list(read_documents(parse_source(str(tmp_path / spec)))) == documents, spec


def test_tfds_array_record_source(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    documents = make_documents(12, sentences=2)

    class CorpusTestTexts(tfds.core.GeneratorBasedBuilder):
        # for a builder inside a package (tests.data) tfds 4.9 looks its code up with the `importlib_resources`
        # backport, which it installs only on Python < 3.9; a module name outside any package avoids that
        __module__ = "test_corpus"
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self, features=tfds.features.FeaturesDict({"text": tfds.features.Text()})
            )

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for index, document in enumerate(documents):
                yield index, {"text": document}

    CorpusTestTexts(data_dir=str(tmp_path / "tfds"), file_format="array_record").download_and_prepare()
    spec = parse_source(f"tfds:corpus_test_texts,split=train,data_dir={tmp_path / 'tfds'}")
    assert sorted(read_documents(spec)) == sorted(documents)  # tfds shuffles records when preparing
    rows, _ = build_corpus([spec], CorpusConfig(chunk_fraction=0.0, shuffle_words_fraction=0.0))
    assert sorted(texts_of(rows)) == sorted(documents)


def test_bad_source_options_are_explained():
    with pytest.raises(ValueError, match="unknown option 'rate=2'"):
        parse_source("a.jsonl,rate=2")
    with pytest.raises(ValueError, match="distinct names"):
        build_corpus([SourceSpec("a/x.jsonl"), SourceSpec("b/x.jsonl")], CorpusConfig())


@pytest.mark.parametrize(
    "options, message",
    [
        ({"chunk_fraction": 1.5}, r"chunk_fraction is a probability per document: give a value in \[0, 1\], got 1.5"),
        ({"shuffle_words_fraction": -0.1}, r"shuffle_words_fraction is a probability"),
        ({"max_chunk_sentences": 0}, r"max_chunk_sentences must be >= 1, got 0"),
        ({"size": 0}, r"size must be >= 1"),
    ],
)
def test_bad_corpus_settings_are_explained(options, message):
    with pytest.raises(ValueError, match=message):
        CorpusConfig(**options)
