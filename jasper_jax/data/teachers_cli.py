"""`jasper-jax teachers encode | import-rag | check`: build and validate teacher stores.

    jasper-jax teachers encode --corpus corpus.jsonl --teacher PATH[,key=value...] [--teacher ...] --out STORE
        [--teachers teachers.yaml] [--name N ...] [--prompt P ...] [--backend auto|torch|jax ...]
        [--dtype float16|float32] [--shard-rows 16384] [--batch-size 64] [--max-length 512]
        [--worker I --workers N] [--device auto|cuda|cpu] [--torch-dtype bfloat16|float16|float32]
        [--jax-dtype bfloat16|float32] [--python ENV/bin/python] [--preflight N [--reference FILE]]
    jasper-jax teachers merge STORE [--no-checksums]
    jasper-jax teachers import-rag --vectors FILE --texts FILE --dim D --out STORE
        [--teacher-dims 4096,8192] [--names nv,stella] [--source-dtype float32] [--dtype float32] [--wrap]
    jasper-jax teachers check STORE [--expect-teachers a,b] [--no-checksums]

`encode` resumes: killed at any moment, the same command continues from the last finished shard. Worker I of
N encodes shards s = I mod N (defaults from SLURM, a Kubernetes Indexed Job or JAX's process variables); the
last worker to finish, or `teachers merge`, writes the manifest. Teacher options (after the path, or keys of a
`--teachers` file): name, prompt, backend, dense, instruction, append_eos, padding_side, trust_remote_code, python.
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
        default=[],
        metavar="PATH[,key=value...]",
        help="a sentence-transformers folder or a model our JAX encoders load, then options such as "
        "dense=8192, append_eos=true, instruction=TEXT, padding_side=right, trust_remote_code=true; repeat per teacher",
    )
    encode.add_argument("--teachers", default=None, help="a YAML or JSON list of teachers (path and options each)")
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
    encode.add_argument("--worker", type=int, default=None, help="this worker's index (default: from the launcher)")
    encode.add_argument("--workers", type=int, default=None, help="number of workers (default: from the launcher)")
    encode.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"], help="torch backend device")
    encode.add_argument("--torch-dtype", default="float32", choices=["bfloat16", "float16", "float32"])
    encode.add_argument("--jax-dtype", default="float32", choices=["bfloat16", "float32"], help="JAX compute dtype")
    encode.add_argument(
        "--python", default=None, help="run the torch teachers' encoding in this Python (another environment)"
    )
    encode.add_argument(
        "--preflight",
        type=int,
        default=None,
        metavar="N",
        help="encode N texts, report speed and checks, write nothing",
    )
    encode.add_argument("--reference", default=None, help="with --preflight: .npz of texts and vectors to match")

    merge = sub.add_parser("merge", help="write the manifest of a store once every worker's shards exist")
    merge.add_argument("store")
    merge.add_argument("--no-checksums", action="store_true", help="check sizes only, do not re-hash the shards")

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
        from jasper_jax.data import teacher_encoding as te
        from jasper_jax.loader import resolve_model_path

        with _as_user_error():
            specs = te.specs_from_arguments(args.teacher, args.name, args.prompt, args.backend)
            if args.teachers:
                specs += te.specs_from_file(args.teachers)
            if not specs:
                raise UserError("give at least one --teacher PATH or a --teachers file")
            if args.python:
                specs = [dataclasses.replace(spec, python=spec.python or args.python) for spec in specs]
            texts = te.read_corpus(args.corpus, args.field)
            empty = [row for row, text in enumerate(texts) if not text.strip()]
            if empty:
                shown = ", ".join(map(str, empty[:5])) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
                raise ValueError(
                    f"{args.corpus}: empty text in row(s) {shown} (0-based): remove them (e.g. with "
                    "`jasper-jax corpus build`) before encoding; nothing was encoded."
                )
            # an alias (minilm) becomes its folder, and a missing teacher is refused before the store is begun
            specs = [dataclasses.replace(spec, path=str(resolve_model_path(spec.path))) for spec in specs]
            for spec in specs:
                te.check_teacher(spec)
            settings = te.EncodeSettings(
                batch_size=args.batch_size,
                max_length=args.max_length,
                device=args.device,
                torch_dtype=args.torch_dtype,
                jax_dtype=args.jax_dtype,
            )
            if args.preflight is not None:
                from jasper_jax.data.preflight import preflight

                return preflight(texts, specs, settings, args.preflight, reference=args.reference)
            env_worker, env_workers = te.worker_from_environment()
            worker = args.worker if args.worker is not None else (env_worker or 0)
            workers = args.workers if args.workers is not None else (env_workers or 1)
            manifest = te.encode_store(
                texts,
                args.out,
                specs,
                dtype=args.dtype,
                shard_rows=args.shard_rows,
                progress=not args.no_progress,
                worker=worker,
                workers=workers,
                settings=settings,
            )
        if not manifest.get("complete"):
            print(
                f"{args.out}: worker {worker} of {workers} finished its shards; the last worker to finish, or "
                f"`jasper-jax teachers merge {args.out}`, writes the manifest."
            )
            return 0
        return _report(check_store(args.out, verify_checksums=False), args.out)

    if args.teachers_command == "merge":
        from jasper_jax.data.teacher_encoding import merge_store

        with _as_user_error():
            merge_store(args.store, verify_checksums=not args.no_checksums)
        return _report(check_store(args.store, verify_checksums=False), args.store)

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
