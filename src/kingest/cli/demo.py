"""``kingest demo``: the specification's integrated collection, for real, every record accounted.

One agent runs the four sources (web logs tailed from a file, IoT readings over MQTT, database
changes captured from PostgreSQL, application events over HTTP) into a stream of the embedded
Kinesis endpoint while simulators feed them (see :mod:`kingest.demo.run`); a live line shows
per-source rates, the buffer, retries and the dead-letter queue. Then the stream is read back
whole and a table says, per source, what was sent, what was read back, and what was lost (0).
Exit status 0 only when nothing was lost or dead-lettered.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Final

import orjson

from kingest.cli.common import add_aws_arguments, positive_float
from kingest.demo.report import build_report, format_report, read_back
from kingest.demo.run import DEFAULT_POSTGRES, DemoRun, run_demo
from kingest.errors import ConfigError
from kingest.local.kinesalite import LocalKinesis
from kingest.producer.transport import KinesisTransport

DEMO_STREAM: Final = "kingest-demo"
DEMO_SHARDS: Final = 4
DEFAULT_DURATION_S: Final = 10.0
DEFAULT_RATE: Final = 1000.0
# Seconds between two live lines when standard error is not a terminal.
_LOG_EVERY_S: Final = 2.0


class _LiveView:
    """The live line: redrawn in place on a terminal, printed every few seconds otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self._last = 0.0
        self._shown = False
        self._lock = threading.Lock()

    def show(self, text: str) -> None:
        with self._lock:
            if self.tty:
                width = shutil.get_terminal_size((120, 24)).columns - 1
                sys.stderr.write("\r" + text[:width] + "\x1b[K")
                self._shown = True
            elif time.monotonic() - self._last >= _LOG_EVERY_S:
                sys.stderr.write(text + "\n")
                self._last = time.monotonic()
            sys.stderr.flush()

    def end(self) -> None:
        with self._lock:
            if self._shown:
                sys.stderr.write("\n")
                sys.stderr.flush()
                self._shown = False


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``demo`` command."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "demo",
        help="run the four sources for real into a stream, then read every record back",
        description=(
            "Start the embedded Kinesis endpoint with a 4-shard stream and one agent with four "
            "sources (web logs tailed from a file, IoT readings over MQTT, changes captured "
            "from PostgreSQL, events over HTTP) fed by simulators; read the stream back and "
            "show per source that every record arrived. A broker or database that is not "
            "there is replaced (a private Mosquitto; simulated changes) and the report says "
            "so. Exit status 0 only when nothing was lost or dead-lettered."
        ),
    )
    parser.add_argument(
        "--duration",
        type=positive_float,
        default=DEFAULT_DURATION_S,
        metavar="SECONDS",
        help=f"how long the simulators produce (default: {DEFAULT_DURATION_S:g})",
    )
    parser.add_argument(
        "--rate",
        type=positive_float,
        default=DEFAULT_RATE,
        metavar="RECORDS_PER_S",
        help=f"records per second over all sources (default: {DEFAULT_RATE:g})",
    )
    parser.add_argument("--seed", type=int, help="seed of the simulators (default: random)")
    parser.add_argument(
        "--postgres", default=DEFAULT_POSTGRES, metavar="DSN",
        help=f"the PostgreSQL to capture when it answers (default: {DEFAULT_POSTGRES})",
    )  # fmt: skip
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object instead of the table"
    )
    parser.add_argument(
        "--metrics-address",
        metavar="HOST:PORT",
        help="serve the agent's /metrics and /health here, to watch it with `kingest top`",
    )
    add_aws_arguments(parser)
    parser.add_argument(
        "--stream",
        help="with --endpoint-url: the existing stream to use (default: the embedded endpoint)",
    )
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run the demo and print its report.

    Returns:
        0 when every record produced was read back and none was dead-lettered, else 1.

    Raises:
        ConfigError: conflicting options, or the embedded endpoint cannot start.
        KingestError: a source or the stream failed.
    """
    if bool(args.endpoint_url) != bool(args.stream):
        raise ConfigError("--endpoint-url and --stream go together (neither: embedded endpoint)")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    view = _LiveView()
    run_id = uuid.uuid4().hex[:10]
    with tempfile.TemporaryDirectory(prefix=f"kingest-demo-{run_id}-") as directory:
        work = Path(directory)
        if args.endpoint_url:
            report = _run_on(args.endpoint_url, args.stream, args, seed, run_id, work, view)
            where = f"stream {args.stream} at {args.endpoint_url}"
        else:
            view.show("starting the embedded Kinesis endpoint...")
            with LocalKinesis(streams={DEMO_STREAM: DEMO_SHARDS}) as local:
                report = _run_on(local.endpoint_url, DEMO_STREAM, args, seed, run_id, work, view)
            where = f"stream {DEMO_STREAM} (embedded endpoint, {DEMO_SHARDS} shards)"
        if report["dlq_dir"] and Path(report["dlq_dir"]).exists():
            kept = Path(tempfile.gettempdir()) / f"kingest-demo-{run_id}-dlq"
            shutil.copytree(report["dlq_dir"], kept)
            report["dlq_dir"] = str(kept)
    if args.json:
        sys.stdout.write(orjson.dumps(report).decode() + "\n")
    else:
        print(format_report(report, where))
    return 0 if report["ok"] else 1


def _run_on(
    endpoint_url: str,
    stream: str,
    args: argparse.Namespace,
    seed: int,
    run_id: str,
    work: Path,
    view: _LiveView,
) -> dict[str, Any]:
    try:
        demo = run_demo(
            endpoint_url, stream, duration_s=args.duration, rate=args.rate, seed=seed,
            run_id=run_id, work=work, show=view.show, postgres_dsn=args.postgres,
            metrics_address=args.metrics_address,
        )  # fmt: skip
    finally:
        view.end()
    view.show("reading the stream back...")
    started = time.monotonic()
    found = asyncio.run(_read_back(endpoint_url, stream, args, demo))
    view.end()
    return build_report(demo, found, time.monotonic() - started)


async def _read_back(
    endpoint_url: str, stream: str, args: argparse.Namespace, demo: DemoRun
) -> Any:
    transport = KinesisTransport(
        endpoint_url=endpoint_url, region=args.region, profile=args.profile
    )
    try:
        return await read_back(transport, stream, demo)
    finally:
        await transport.close()
