"""``kingest send``: ship NDJSON (or raw) lines from files or standard input, once.

Each line is one record. The command streams (constant memory, standard input read as it
arrives), shows progress on a terminal, and ends with one JSON line of figures on stdout. It
exits 0 only when every record was accepted by Kinesis.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from typing import IO, Any

import orjson

from kingest.cli.common import (
    add_aws_arguments,
    add_producer_arguments,
    check_inputs,
    open_inputs,
    producer_settings,
)
from kingest.keys import KeyTemplate
from kingest.producer.producer import Producer
from kingest.record import DlqReason


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``send`` command."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "send",
        help="send NDJSON lines (or raw lines) to a stream and wait until all are acknowledged",
        description=(
            "Send each line of the inputs as one record, then print one JSON line of figures. "
            "Exit status 0 only when every record was accepted; records that could not be "
            "sent are in the dead-letter directory."
        ),
    )
    parser.add_argument("inputs", nargs="*", metavar="FILE", help="input files; - is stdin")
    parser.add_argument("--stream", required=True, help="stream name or ARN")
    keys = parser.add_mutually_exclusive_group()
    keys.add_argument(
        "--partition-key-field",
        metavar="PATH",
        help="take each record's partition key from this field (dotted path, e.g. user.id)",
    )
    keys.add_argument(
        "--partition-key",
        metavar="TEMPLATE",
        help="partition key template: a constant, or fields in braces, e.g. '{table}:{id}'",
    )
    parser.add_argument(
        "--raw", action="store_true", help="send lines as they are (no JSON parsing)"
    )
    parser.add_argument("--source", default="send", help="source name in statistics and DLQ")
    parser.add_argument(
        "--progress",
        choices=("auto", "always", "never"),
        default="auto",
        help="progress line on stderr (auto: when stderr is a terminal)",
    )
    add_producer_arguments(parser)
    add_aws_arguments(parser)
    parser.set_defaults(handler=run)
    return parser


class Progress:
    """A progress line on stderr, redrawn at most a few times a second from a thread."""

    def __init__(self, producer: Producer, enabled: bool) -> None:
        self.producer = producer
        self.enabled = enabled
        self.lines = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="kingest-progress", daemon=True)
        self._started = time.monotonic()

    def __enter__(self) -> Progress:
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self._stop.set()
            self._thread.join()
            self._draw()
            sys.stderr.write("\n")
            sys.stderr.flush()

    def _loop(self) -> None:
        while not self._stop.wait(0.25):
            self._draw()

    def _draw(self) -> None:
        stats = self.producer.stats()
        elapsed = max(time.monotonic() - self._started, 1e-9)
        sys.stderr.write(
            f"\r{self.lines:,} read, {stats['total_sent']:,} accepted, "
            f"{stats['total_failed']:,} dead-lettered, {stats['total_retried']:,} retried, "
            f"{stats['total_sent'] / elapsed:,.0f} records/s   "
        )
        sys.stderr.flush()


def run(args: argparse.Namespace) -> int:
    """Run ``kingest send``; see the module docstring."""
    if args.raw and args.partition_key_field:
        print(
            "kingest send: error: --partition-key-field needs JSON input, not --raw",
            file=sys.stderr,
        )
        return 2
    extractor = KeyTemplate(args.partition_key_field, args.partition_key)
    if args.raw and extractor.needs_fields:
        print(
            "kingest send: error: a --partition-key template with fields needs JSON input, "
            "not --raw",
            file=sys.stderr,
        )
        return 2
    problem = check_inputs(args.inputs)
    if problem:
        print(f"kingest send: error: {problem}", file=sys.stderr)
        return 2
    settings = producer_settings(args)
    started = time.monotonic()
    producer = Producer(
        args.stream,
        endpoint_url=args.endpoint_url,
        region=args.region,
        profile=args.profile,
        **settings,
    )
    show = args.progress == "always" or (args.progress == "auto" and sys.stderr.isatty())
    source = args.source
    records = 0
    try:
        with Progress(producer, show) as progress:
            for name, handle in open_inputs(args.inputs):
                records += _send_lines(
                    producer, name, handle, args.raw, extractor, source, progress
                )
    finally:
        producer.close()
    elapsed = time.monotonic() - started
    stats = producer.stats()
    accepted = stats["total_sent"]
    dead = stats["total_failed"]
    summary = {
        "records": records,
        "accepted": accepted,
        "dead_lettered": dead,
        "kinesis_records": stats["kinesis_records"],
        "requests": stats["requests"],
        "retried_records": stats["total_retried"],
        "elapsed_s": round(elapsed, 3),
        "records_per_s": round(accepted / elapsed, 1) if elapsed > 0 else 0.0,
    }
    sys.stdout.write(orjson.dumps(summary).decode() + "\n")
    sys.stdout.flush()
    if accepted == records and dead == 0:
        return 0
    directory = producer.dlq.directory
    print(
        f"kingest send: {dead:,} of {records:,} records were not accepted; they are in "
        f"{directory} (see: kingest dlq list --dir {directory})",
        file=sys.stderr,
    )
    return 1


def _send_lines(
    producer: Producer,
    name: str,
    handle: IO[bytes],
    raw: bool,
    extractor: KeyTemplate,
    source: str,
    progress: Progress,
) -> int:
    """Send every non-blank line of one input; return how many records it held."""
    put = producer.put
    constant_key = extractor.constant
    needs_parse = not raw
    needs_fields = extractor.needs_fields
    loads = orjson.loads
    count = 0
    for number, line in enumerate(handle, start=1):
        line = line.rstrip(b"\r\n")
        if not line.strip():
            continue
        count += 1
        progress.lines += 1
        if needs_parse:
            try:
                document = loads(line)
            except orjson.JSONDecodeError as exc:
                producer.reject(
                    line,
                    DlqReason.INVALID_INPUT,
                    f"{name}:{number}: not JSON ({exc})",
                    source=source,
                )
                continue
            if needs_fields:
                try:
                    key = extractor.key(document)
                except KeyError as exc:
                    producer.reject(
                        line,
                        DlqReason.INVALID_PARTITION_KEY,
                        f"{name}:{number}: {exc.args[0]}",
                        source=source,
                    )
                    continue
                put(line, key, None, source)
                continue
        put(line, constant_key, None, source)
    return count
