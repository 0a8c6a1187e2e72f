"""The ``kingest`` command: parses arguments and hands each subcommand to its module."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from kingest import __version__
from kingest.errors import KingestError
from kingest.runtime import tune_for_throughput

# One module per command; each has register(subparsers) -> the parser it added, whose
# `handler` default is a function taking the parsed arguments and returning an exit status.
COMMANDS = ("send", "read", "local", "dlq", "bench", "demo", "parse", "run", "tail")


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="kingest",
        description="Collect events from many sources and deliver them into Amazon Kinesis.",
    )
    parser.add_argument("--version", action="version", version=f"kingest {__version__}")
    parser.add_argument(
        "--log-level",
        default="WARNING",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="log level on standard error (default: WARNING)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"kingest.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"kingest.cli.{name}":
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``kingest`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    tune_for_throughput()
    try:
        status: int = handler(args)
    except KingestError as exc:
        print(f"kingest {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"kingest {args.command}: interrupted", file=sys.stderr)
        return 130
    return status


if __name__ == "__main__":
    sys.exit(main())
