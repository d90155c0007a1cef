"""The `jasper-jax` command: one sub-command per job, each defined in the module that does the job.

Each entry of `COMMANDS` names a module exposing `add_arguments(parser)` and `run(args) -> int`. Modules
are imported only when their command runs, so `jasper-jax --help` stays fast and a missing optional
dependency only breaks the command that needs it.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from jasper_jax.errors import EXIT_BAD_INPUT, EXIT_OK, UserError

# command name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "encode": ("jasper_jax.encode", "embed texts (one per line) with a model; rows L2-normalised"),
    "export": ("jasper_jax.export", "write a sentence-transformers / Hugging Face folder"),
    "corpus": ("jasper_jax.data.corpus_cli", "build the training corpus"),
    "teachers": ("jasper_jax.data.teachers_cli", "encode, import and check teacher vector stores"),
    "pairs": ("jasper_jax.data.pairs_cli", "build and mine (query, positive, negatives) pair data"),
    "train": ("jasper_jax.train.cli", "run distillation stages from a config"),
    "compile-check": ("jasper_jax.train.compile_check", "compile a paper-scale step from abstract shapes"),
    "eval": ("jasper_jax.eval.cli", "run the offline evaluation tasks"),
    "demo": ("jasper_jax.demo", "the default end-to-end run"),
}


# errors that name a file the user gave (a missing --input, an unreadable folder): one line, as for UserError
_PATH_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jasper-jax", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Dispatch to the sub-command's module; the one place where errors become exit codes."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        parser = build_parser()
        if argv and argv[0] not in ("-h", "--help"):
            parser.print_usage(sys.stderr)
            print(f"jasper-jax: unknown command {argv[0]!r}; choose from {', '.join(COMMANDS)}", file=sys.stderr)
            return EXIT_BAD_INPUT
        parser.print_help()
        return EXIT_OK
    name, rest = argv[0], argv[1:]
    module_name, help_text = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"jasper-jax {name}", description=help_text)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except UserError as error:
        print(f"jasper-jax {name}: {error}", file=sys.stderr, flush=True)
        return error.exit_code
    except _PATH_ERRORS as error:
        print(f"jasper-jax {name}: {error}", file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    raise SystemExit(main())
