"""The ``kingest read`` command: prints every user record of a stream, one per line.

Output goes to standard output through its buffered binary writer, flushed after each
GetRecords answer. By default each line is a payload's bytes exactly as they are, followed by a
newline: handy for line-oriented text such as JSON events, but a payload that holds a newline
(or arbitrary binary) cannot be told apart from two records. ``--envelope`` is the safe form:
one compact JSON object per line with the record's metadata and its data as JSON, text or
base64 (see :func:`kingest.read_records.envelope`). A closed pipe (``| head``) ends the read
quietly.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import signal
import sys
from typing import IO, Any

from kingest.cli.common import add_aws_arguments
from kingest.producer.transport import KinesisTransport
from kingest.read_records import envelope_line
from kingest.reader import START_POSITIONS, iter_batches

_EPILOG = """\
output:
  Without --envelope each payload is written as it is, followed by a newline;
  payloads holding newlines or binary data are then ambiguous. --envelope is the
  safe form: one JSON object per line with "shard_id", "sequence_number",
  "sub_sequence_number", "partition_key", "explicit_hash_key" (only when the
  record has one), "approximate_arrival_timestamp" (epoch seconds), and
  "data_encoding" with "data":
    json    data is the payload's JSON value (only when parsing it loses nothing
            but whitespace)
    text    data is the payload, valid UTF-8, as a string
    base64  data is {"base64": "..."} holding the exact bytes
  An aggregated record that fails its checks is printed whole, as base64 with
  "corrupt_aggregate": true, and a warning names its shard and sequence number.

order:
  Each shard's records come in order, and a shard is read only after its parent
  shards, so a partition key's records keep their order across resharding.
"""


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a non-negative number of seconds")
    return value


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``read`` subcommand."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "read",
        help="print the records of a stream, one per line",
        description=(
            "Read every shard of a stream and print each user record (KPL aggregates\n"
            "are unpacked) as one line on standard output. Follows the stream until\n"
            "SIGINT or SIGTERM, or with --until-idle until it has been idle."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--stream", required=True, help="stream name or ARN")
    parser.add_argument(
        "--from",
        dest="start",
        choices=START_POSITIONS,
        default="trim_horizon",
        help="trim_horizon: everything retained (default); latest: only records added from now",
    )
    parser.add_argument(
        "--until-idle",
        dest="until_idle",
        type=_seconds,
        metavar="SECONDS",
        help="exit once every shard is caught up and no record came for this many seconds",
    )
    parser.add_argument(
        "--envelope",
        action="store_true",
        help="print a JSON object with metadata per record (the safe form for any payload)",
    )
    add_aws_arguments(parser)
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Read until idle, until the stream is closed and read, or until SIGINT/SIGTERM.

    Returns:
        0 (also after a signal or when standard output was closed by its reader).

    Raises:
        StreamNotFoundError: the stream does not exist (main prints it, exits 1).
        KinesisError: a call failed for good.
        CredentialsError: no usable region or credentials.
    """
    out: IO[bytes] = sys.stdout.buffer
    try:
        asyncio.run(_read(args, out))
        out.flush()
    except BrokenPipeError:
        _discard_stdout()
    return 0


async def _read(args: argparse.Namespace, out: IO[bytes]) -> None:
    transport = KinesisTransport(
        endpoint_url=args.endpoint_url, region=args.region, profile=args.profile
    )
    try:
        consume = asyncio.create_task(_print_records(args, transport, out))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        signals = (signal.SIGINT, signal.SIGTERM)
        for signum in signals:
            loop.add_signal_handler(signum, stop.set)
        try:
            stopper = asyncio.create_task(stop.wait())
            await asyncio.wait({consume, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if not consume.done():
                consume.cancel()
                # What was printed stays printed; the caller flushes it.
                with contextlib.suppress(asyncio.CancelledError):
                    await consume
            else:
                consume.result()
        finally:
            for signum in signals:
                loop.remove_signal_handler(signum)
    finally:
        await transport.close()


async def _print_records(
    args: argparse.Namespace, transport: KinesisTransport, out: IO[bytes]
) -> None:
    batches = iter_batches(transport, args.stream, start=args.start, until_idle_s=args.until_idle)
    write = out.write
    async with contextlib.aclosing(batches):
        async for batch in batches:
            if args.envelope:
                for record in batch:
                    write(envelope_line(record))
            else:
                for record in batch:
                    write(record.data)
                    write(b"\n")
            # Once per GetRecords answer: a follower sees records as they come, and a fast
            # stream still gets large writes.
            out.flush()


def _discard_stdout() -> None:
    # The reader is gone. Point the descriptor at /dev/null so that the interpreter's own
    # flush of what is still buffered at exit does not fail with a second BrokenPipeError.
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
