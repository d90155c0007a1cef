"""`jasper-jax teachers encode | import-rag | check`: build and validate teacher stores.

    jasper-jax teachers encode --corpus corpus.jsonl --teacher PATH [--teacher PATH ...] --out STORE
        [--name N ...] [--prompt P ...] [--backend auto|torch|jax ...] [--dtype float16|float32]
        [--shard-rows 16384] [--batch-size 64] [--max-length 512]
    jasper-jax teachers import-rag --vectors FILE --texts FILE --dim D --out STORE
        [--teacher-dims 4096,8192] [--names nv,stella] [--source-dtype float32] [--dtype float32] [--wrap]
    jasper-jax teachers check STORE [--expect-teachers a,b] [--no-checksums]

`encode` resumes: killed at any moment, the same command continues from the last finished shard.
`check` exits 1 and prints one message per problem (file, row, what to do); it never modifies the store.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys

from jasper_jax.errors import EXIT_FAILED, UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="teachers_command", metavar="SUBCOMMAND", required=True)

    encode = sub.add_parser("encode", help="encode a corpus with teachers into a store (resumable)")
    encode.add_argument("--corpus", required=True, help="JSONL ({'text': ...} per line) or plain text, one per line")
    encode.add_argument("--field", default=None, help="JSONL field holding the text (default: text, else query)")
    encode.add_argument(
        "--teacher",
        action="append",
        required=True,
        metavar="PATH",
        help="a sentence-transformers folder or a model our JAX encoders load; repeat per teacher",
    )
    encode.add_argument("--name", action="append", help="store name of each teacher (default: folder name)")
    encode.add_argument(
        "--prompt",
        action="append",
        help="query prompt: once for all teachers or once each; s2p_query / s2s_query or literal text",
    )
    encode.add_argument(
        "--backend",
        action="append",
        choices=["auto", "torch", "jax"],
        help="torch = sentence-transformers, jax = jasper_jax.encode (default auto)",
    )
    encode.add_argument("--out", required=True, help="store folder (created, or resumed if this command began it)")
    encode.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    encode.add_argument("--shard-rows", type=int, default=16384)
    encode.add_argument("--batch-size", type=int, default=64)
    encode.add_argument("--max-length", type=int, default=512)
    encode.add_argument("--no-progress", action="store_true")

    rag = sub.add_parser("import-rag", help="import the official RAG-Retrieval float32 memmap + text.jsonl")
    rag.add_argument("--vectors", required=True, help="raw (N, D) memmap file, no header")
    rag.add_argument("--texts", required=True, help="text.jsonl with one {'query': text} per row")
    rag.add_argument("--dim", type=int, required=True, help="D, the total number of columns")
    rag.add_argument("--out", required=True)
    rag.add_argument(
        "--teacher-dims", default=None, help="comma-separated column widths of the teachers, e.g. 4096,8192"
    )
    rag.add_argument("--names", default=None, help="comma-separated teacher names, one per column block")
    rag.add_argument(
        "--source-dtype",
        default="float32",
        choices=["float16", "float32"],
        help="dtype the vectors file was written in (the official code: float32)",
    )
    rag.add_argument("--dtype", default="float32", choices=["float16", "float32"], help="dtype in the store")
    rag.add_argument("--shard-rows", type=int, default=16384)
    rag.add_argument(
        "--wrap",
        action="store_true",
        help="do not copy the vectors: the store reads the official file in place (keep it there)",
    )

    check = sub.add_parser("check", help="validate a store (read-only); exit 1 when something is wrong")
    check.add_argument("store")
    check.add_argument("--expect-teachers", default=None, help="comma-separated teacher names the training expects")
    check.add_argument("--no-checksums", action="store_true", help="skip re-hashing files (faster on huge stores)")


def _report(problems: list[str], store: str) -> int:
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        print(f"{store}: {len(problems)} problem(s); the store was not modified.", file=sys.stderr)
        return 1
    print(f"{store}: ok")
    return 0


@contextlib.contextmanager
def _as_user_error():
    """Bad input met while encoding or importing (a missing file, a malformed row, an occupied folder): the
    command ends with its message and exit code 1, like a store that fails its check."""
    try:
        yield
    except UserError:
        raise
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        raise UserError(str(error), EXIT_FAILED) from None


def run(args: argparse.Namespace) -> int:
    from jasper_jax.data.check import check_store

    if args.teachers_command == "encode":
        from jasper_jax.data.teacher_encoding import encode_store, read_corpus, specs_from_arguments
        from jasper_jax.loader import resolve_model_path

        with _as_user_error():
            specs = specs_from_arguments(args.teacher, args.name, args.prompt, args.backend)
            texts = read_corpus(args.corpus, args.field)
            empty = [row for row, text in enumerate(texts) if not text.strip()]
            if empty:
                shown = ", ".join(map(str, empty[:5])) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
                raise ValueError(
                    f"{args.corpus}: empty text in row(s) {shown} (0-based): remove them (e.g. with "
                    "`jasper-jax corpus build`) before encoding; nothing was encoded."
                )
            # an alias (minilm) becomes its folder, and a missing teacher is refused before the store is begun
            specs = [dataclasses.replace(spec, path=str(resolve_model_path(spec.path))) for spec in specs]
            encode_store(
                texts,
                args.out,
                specs,
                dtype=args.dtype,
                shard_rows=args.shard_rows,
                batch_size=args.batch_size,
                max_length=args.max_length,
                progress=not args.no_progress,
            )
        return _report(check_store(args.out, verify_checksums=False), args.out)

    if args.teachers_command == "import-rag":
        from jasper_jax.data.rag_import import import_rag

        with _as_user_error():
            import_rag(
                args.vectors,
                args.texts,
                args.dim,
                args.out,
                teacher_dims=[int(d) for d in args.teacher_dims.split(",")] if args.teacher_dims else None,
                names=args.names.split(",") if args.names else None,
                source_dtype=args.source_dtype,
                dtype=args.dtype,
                shard_rows=args.shard_rows,
                wrap=args.wrap,
            )
        return _report(check_store(args.out), args.out)

    if args.teachers_command == "check":
        expected = args.expect_teachers.split(",") if args.expect_teachers else None
        return _report(check_store(args.store, expected, verify_checksums=not args.no_checksums), args.store)
    raise AssertionError(args.teachers_command)
