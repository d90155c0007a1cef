"""`jasper-jax corpus build`: mix sources, apply the paper's preprocessing, write the corpus JSONL.

    jasper-jax corpus build --source fineweb.parquet,ratio=0.8 --source st_data.jsonl,ratio=0.2,field=query \
        --size 8000000 --out corpus.jsonl [--seed 666] [--chunk-fraction 0.3] [--max-chunk-sentences 10] \
        [--shuffle-words-fraction 0.0008] [--min-chars 10] [--max-chars 50000] [--no-dedupe] [--exclude FILE ...]

A source is PATH[,ratio=R][,field=F][,name=N] for .txt/.jsonl/.csv/.parquet files, or
tfds:NAME[/CONFIG][,split=S][,data_dir=D][,field=F] for a prepared TensorFlow Datasets dataset (ArrayRecord).
The output is one {"text": ..., "source": ...} per line (see jasper_jax/data/corpus.py), plus OUT.stats.json.
"""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="corpus_command", metavar="SUBCOMMAND", required=True)
    build = sub.add_parser("build", help="build the training corpus (deterministic given the seed)")
    build.add_argument(
        "--source",
        action="append",
        required=True,
        help="PATH or tfds:NAME[/CONFIG], with ,ratio=R ,field=F ,name=N ,split=S ,data_dir=D",
    )
    build.add_argument("--out", required=True, help="output JSONL file")
    build.add_argument("--size", type=int, default=None, help="total texts (default: everything)")
    build.add_argument("--seed", type=int, default=666)
    build.add_argument("--chunk-fraction", type=float, default=0.3, help="documents split into sentence chunks")
    build.add_argument("--max-chunk-sentences", type=int, default=10)
    build.add_argument("--shuffle-words-fraction", type=float, default=0.0008, help="texts with shuffled words")
    build.add_argument("--min-chars", type=int, default=10)
    build.add_argument("--max-chars", type=int, default=50_000)
    build.add_argument("--no-dedupe", action="store_true")
    build.add_argument("--no-progress", action="store_true")
    build.add_argument(
        "--exclude",
        action="append",
        default=[],
        help="held-out texts that must never enter (.txt one per line, or .jsonl/.csv/.parquet)",
    )


def run(args: argparse.Namespace) -> int:
    from jasper_jax.data.corpus import CorpusConfig, build_corpus, parse_source, write_corpus

    try:
        sources = [parse_source(text) for text in args.source]
        config = CorpusConfig(
            size=args.size,
            seed=args.seed,
            chunk_fraction=args.chunk_fraction,
            max_chunk_sentences=args.max_chunk_sentences,
            shuffle_words_fraction=args.shuffle_words_fraction,
            min_chars=args.min_chars,
            max_chars=args.max_chars,
            dedupe=not args.no_dedupe,
            exclude=list(args.exclude),
        )
        rows, summary = build_corpus(sources, config, progress=not args.no_progress)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    write_corpus(rows, summary, args.out)
    print(json.dumps({"rows": summary["rows"], "per_source": summary["per_source"]}, indent=1))
    return 0
