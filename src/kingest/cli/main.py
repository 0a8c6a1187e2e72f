"""The ``kingest`` command: parses arguments and hands each subcommand to its module."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from kingest import __version__, logs
from kingest.errors import KingestError
from kingest.logs import LOG_STYLES
from kingest.runtime import tune_for_throughput

# One module per command; each has register(subparsers) -> the parser it added, whose
# `handler` default is a function taking the parsed arguments and returning an exit status.
COMMANDS = (
    "send", "read", "local", "dlq", "bench", "demo", "parse", "run", "tail", "cdc", "mqtt", "http",
    "simulate", "schema", "top",
)  # fmt: skip


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """Build the top-level parser with every subcommand registered (or just ``only``).

    Registering a command imports its module, and some pull in the whole producer stack (about
    a second): a run of one command registers that command alone.
    """
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
    parser.add_argument(
        "--log-style",
        default=os.environ.get("KINGEST_LOG_STYLE", "human"),
        choices=LOG_STYLES,
        help="log lines for people, or JSON objects for log shippers "
        "(default: human, or KINGEST_LOG_STYLE)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        if only is not None and name != only:
            continue
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
    arguments = list(sys.argv[1:] if argv is None else argv)
    command = _command_in(arguments)
    parser = build_parser(only=command if command in COMMANDS else None)
    args = parser.parse_args(arguments)
    logs.configure(args.log_level, args.log_style)
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
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, and keep Python's exit-time flush
        # from failing on the same pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return status


def _command_in(arguments: list[str]) -> str | None:
    """The subcommand named in the arguments, if any (the first word not an option)."""
    words = iter(arguments)
    for word in words:
        if word in ("--log-level", "--log-style"):
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


if __name__ == "__main__":
    sys.exit(main())
