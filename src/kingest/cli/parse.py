"""``kingest parse``: turn web access-log lines into JSON lines.

One compact JSON object per accepted line goes to standard output, in input order. Each rejected
line goes to standard error as ``line N: reason`` (``FILE:N: reason`` with several inputs), and a
one-line summary ends the run. Exit status: 0 when every line was accepted, 1 when some were
rejected, 2 for unusable arguments or an unreadable file.

The command streams: standard input is read as it arrives and each chunk's output is written
(in one piece) before the next chunk is read, so memory stays constant and a slow producer's
lines come out promptly.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from typing import IO, Any

import orjson

from kingest.cli.common import check_inputs, open_inputs
from kingest.errors import ConfigError
from kingest.sources.weblog.formats import FORMAT_NAMES, LineParser, ParseError, compile_format

# Bytes asked of each read: large enough that a file is parsed in few system calls, and a
# pipe's read returns whatever has arrived, so small writes still come through at once.
READ_CHUNK_BYTES = 256 * 1024


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``parse`` command.

    Args:
        subparsers: the top-level parser's subparsers action.

    Returns:
        The command's parser (its ``handler`` default is :func:`run`).
    """
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "parse",
        help="parse web access logs (Apache, Nginx, JSON lines) into JSON lines",
        description=(
            "Parse access-log lines into one JSON object per line on stdout. Rejected lines\n"
            "are reported on stderr with their line number and reason. Exit status 0 when\n"
            "every line was accepted, 1 when some were rejected, 2 on bad arguments or an\n"
            "unreadable file."
        ),
        epilog=(
            "examples:\n"
            "  kingest parse --format combined access.log\n"
            "  kingest parse --format nginx --log-format "
            "'$remote_addr [$time_local] \"$request\" $status $request_time' access.log\n"
            "  tail -F access.log | kingest parse --log-format '%h %l %u %t \"%r\" %>s %b %D'"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "inputs", nargs="*", metavar="FILE", help="log files; - or none is standard input"
    )
    parser.add_argument(
        "--format",
        metavar="NAME",
        help=(
            f"one of {', '.join(FORMAT_NAMES)}; with --log-format, apache or nginx names the "
            "syntax of the format string"
        ),
    )
    parser.add_argument(
        "--log-format",
        metavar="STRING",
        help=(
            "an Apache LogFormat or Nginx log_format string; without --format, $variables "
            "mean nginx and %%directives mean apache"
        ),
    )
    parser.set_defaults(handler=run)
    return parser


def _error(message: str) -> int:
    sys.stderr.write(f"kingest parse: error: {message}\n")
    sys.stderr.flush()
    return 2


def _chunks(name: str, handle: IO[bytes]) -> Iterator[list[bytes]]:
    """Complete lines (without their ``\\n``) in batches, as they become available.

    Raises:
        ConfigError: reading failed (an I/O error, a directory given as stdin, ...).
    """
    read = getattr(handle, "read1", handle.read)
    tail = b""
    while True:
        try:
            data = read(READ_CHUNK_BYTES)
        except OSError as exc:
            raise ConfigError(f"cannot read {name}: {exc.strerror or exc}") from exc
        if not data:
            break
        lines = data.split(b"\n")
        if tail:
            lines[0] = tail + lines[0]
        tail = lines.pop()
        if lines:
            yield lines
    if tail:
        yield [tail]


class _Counts:
    def __init__(self) -> None:
        self.accepted = 0
        self.rejected = 0


def _parse_input(
    parser: LineParser,
    name: str,
    handle: IO[bytes],
    prefix: str,
    out: IO[bytes],
    counts: _Counts,
) -> None:
    dumps = orjson.dumps
    newline = orjson.OPT_APPEND_NEWLINE
    number = 0
    for lines in _chunks(name, handle):
        records: list[bytes] = []
        append = records.append
        problems: list[str] = []
        for line in lines:
            number += 1
            try:
                append(dumps(parser(line), option=newline))
            except ParseError as exc:
                problems.append(f"{prefix}{number}: {exc}\n")
        counts.accepted += len(records)
        counts.rejected += len(problems)
        if records:
            out.write(b"".join(records))
            out.flush()
        if problems:
            sys.stderr.write("".join(problems))
            sys.stderr.flush()


def run(args: argparse.Namespace) -> int:
    """Run ``kingest parse``; see the module docstring.

    Args:
        args: the parsed command line (``inputs``, ``format``, ``log_format``).

    Returns:
        The exit status: 0, 1 or 2.
    """
    if args.format is None and args.log_format is None:
        return _error(f"give --format (one of {', '.join(FORMAT_NAMES)}) or --log-format")
    try:
        parser = compile_format(args.format or "auto", args.log_format)
    except ConfigError as exc:
        return _error(str(exc))
    problem = check_inputs(args.inputs)
    if problem:
        return _error(problem)
    several = len(args.inputs) > 1
    out = sys.stdout.buffer
    counts = _Counts()
    try:
        for name, handle in open_inputs(args.inputs):
            prefix = f"{name}:" if several else "line "
            _parse_input(parser, name, handle, prefix, out, counts)
    except BrokenPipeError:
        # The reader went away (| head): stop quietly, and keep the interpreter's final flush
        # of stdout from failing again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 1
    except ConfigError as exc:
        return _error(str(exc))
    except OSError as exc:
        return _error(f"cannot write the output: {exc.strerror or exc}")
    sys.stderr.write(
        f"kingest parse: {counts.accepted} lines accepted, {counts.rejected} rejected\n"
    )
    return 1 if counts.rejected else 0
