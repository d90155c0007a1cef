"""`jasper-jax train --config configs/X.py [--config.key=value ...] [--stages 1,2,3,4]`.

Runs the stages in order under `config.workdir`; the same command after a crash resumes. Multi-host:
start the same command once per host (see launch/); `jax.distributed` is initialised from the
environment or from `--config.distributed.*`.
"""

from __future__ import annotations

import argparse
import logging
import sys

from jasper_jax.errors import UserError

OVERRIDE_PREFIX = "--config."


def _accept_config_overrides(parser: argparse.ArgumentParser) -> None:
    """Let `parser.parse_args` collect `--config.key=value` arguments into `args.config_overrides`.

    The dispatcher calls `parse_args`, which refuses unknown options; overrides are open-ended (any field
    of the config), so they are taken out of the argument list before argparse sees it.
    """
    original = parser.parse_known_args

    def parse_known_args(args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        overrides, rest, i = [], [], 0
        while i < len(args):
            argument = args[i]
            if argument.startswith(OVERRIDE_PREFIX):
                if "=" not in argument and i + 1 < len(args):
                    argument, i = f"{argument}={args[i + 1]}", i + 1
                overrides.append(argument[len("--") :])
            else:
                rest.append(argument)
            i += 1
        namespace, extras = original(rest, namespace)
        namespace.config_overrides = list(getattr(namespace, "config_overrides", []) or []) + overrides
        return namespace, extras

    parser.parse_known_args = parse_known_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="a Python config file with get_config() (configs/*.py)")
    parser.add_argument("--stages", default="", help="comma-separated stage numbers (default: every configured stage)")
    parser.add_argument("--log-level", default="WARNING", help="Python logging level")
    parser.epilog = "Any config field can be set with --config.FIELD=VALUE, e.g. --config.workdir=/tmp/run"
    _accept_config_overrides(parser)


def parse_stages(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--stages {text!r} must be comma-separated numbers, e.g. 1,2,3") from None


def run(args: argparse.Namespace) -> int:
    from jasper_jax.train.config_base import load_config
    from jasper_jax.train.loop import train

    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.WARNING))
    train(load_config(args.config, getattr(args, "config_overrides", [])), parse_stages(args.stages))
    return 0
