"""`jasper-jax pairs texts | build | mine`: (query, positive, hard negatives) data for contrastive stages.

    jasper-jax pairs texts --input pairs.jsonl --out corpus.jsonl        # the distinct texts, to encode
    jasper-jax teachers encode --corpus corpus.jsonl --teacher ... --out STORE
    jasper-jax pairs build --input pairs.jsonl --store STORE --out PAIRS [--max-negatives K]
    jasper-jax pairs mine --pairs PAIRS --out MINED --negatives 7 [--threshold 0.95] [--sample-from N]
        [--seed 0] [--pool documents|store]

The input is JSONL with `query`, `pos` and optionally `neg` (strings or lists). Bad input (a text not in
the store, a negative equal to its positive, an empty query) ends the command with one line naming the
file and line, and nothing is written. Formats: `jasper_jax.data.pairs`.
"""

from __future__ import annotations

import argparse
import json

from jasper_jax.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="pairs_command", metavar="SUBCOMMAND", required=True)
    texts = sub.add_parser("texts", help="write the distinct texts of a pairs file ({'text': ...} JSONL)")
    texts.add_argument("--input", required=True, help="JSONL with query, pos, neg")
    texts.add_argument("--out", required=True)

    build = sub.add_parser("build", help="index a pairs file over a teacher store's rows")
    build.add_argument("--input", required=True, help="JSONL with query, pos, neg")
    build.add_argument("--store", required=True, help="a teacher store holding every text of the input")
    build.add_argument("--out", required=True, help="the pairs folder to create")
    build.add_argument("--max-negatives", type=int, default=None, help="keep the first K negatives of a line")

    mine = sub.add_parser("mine", help="replace the negatives with hard ones by teacher similarity")
    mine.add_argument("--pairs", required=True, help="a pairs folder (from `pairs build`)")
    mine.add_argument("--out", required=True, help="the new pairs folder")
    mine.add_argument("--negatives", type=int, required=True, help="hard negatives per example")
    mine.add_argument(
        "--threshold",
        type=float,
        default=0.95,
        help="drop candidates scoring above this fraction of the positive's score (inf: no guard)",
    )
    mine.add_argument("--sample-from", type=int, default=None, help="draw the negatives from the top N (seeded)")
    mine.add_argument("--seed", type=int, default=0)
    mine.add_argument("--pool", default="documents", choices=["documents", "store"])


def run(args: argparse.Namespace) -> int:
    from jasper_jax.data import pairs

    try:
        if args.pairs_command == "texts":
            from pathlib import Path

            out = Path(args.out)
            if out.exists():
                raise pairs.PairsError(f"{out} already exists: remove it or choose another --out")
            distinct = pairs.distinct_texts(args.input)
            tmp = out.with_name(out.name + ".tmp")
            with open(tmp, "w", encoding="utf-8") as handle:
                for text in distinct:
                    handle.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
            tmp.replace(out)
            print(json.dumps({"texts": len(distinct), "out": str(out)}))
        elif args.pairs_command == "build":
            manifest = pairs.build_pairs(args.input, args.store, args.out, max_negatives=args.max_negatives)
            print(json.dumps({"examples": manifest["examples"], "negatives": manifest["negatives"]}))
        elif args.pairs_command == "mine":
            manifest = pairs.mine_negatives(
                args.pairs,
                args.out,
                negatives=args.negatives,
                threshold=args.threshold,
                sample_from=args.sample_from,
                seed=args.seed,
                pool=args.pool,
            )
            print(json.dumps({"examples": manifest["examples"], **manifest["mined"]}))
    except UserError:
        raise
    except (ValueError, KeyError) as error:  # an unfinished or foreign store, a bad teacher name
        raise UserError(str(error)) from None
    return 0
