"""The ``kingest demo`` command: the seed's three sources end to end, every record accounted for.

This module's one job is the specification's ``run_integrated_data_collection()`` done right and
checked: simulated web log lines (parsed), IoT sensor readings and database change events go
through one :class:`~kingest.producer.producer.Producer` into a stream, the stream is read back
whole (aggregates unpacked), and each record sent is matched to the record read by the unique
``event_id`` it carries. The report says, per source, how many were sent, read back, lost and
dead-lettered, and the exit status is 0 only when nothing was lost or dead-lettered.

Fixed against the seed: CDC events are keyed by table and primary key (one row's changes stay
on one shard, and the producer runs with ``strict_order`` so they are stored in the order they
were made) instead of by transaction id; no key uses Python's salted ``hash()``;
web log timestamps keep the log's own UTC offset; ``ingestion_timestamp`` is UTC with its
offset instead of a naive local-looking time. The enrichment adds ``source`` (the source name,
as the seed does) and ``ingestion_timestamp``; where a record already has a ``source`` of its own
(the Debezium-style block of a change event) that block is kept as ``origin`` instead of being
overwritten, as the seed's ``{**data, 'source': ...}`` would.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import random
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import orjson

from kingest.cli.common import add_aws_arguments, positive_float, positive_int
from kingest.errors import ConfigError
from kingest.local.kinesalite import LocalKinesis
from kingest.producer.producer import Producer
from kingest.producer.transport import KinesisTransport
from kingest.reader import iter_batches
from kingest.record import RecordFuture
from kingest.sources.simulate import (
    SOURCES,
    CdcSimulator,
    IoTSimulator,
    WebLogSimulator,
    parse_combined,
    partition_key_for,
)

log = logging.getLogger(__name__)

DEFAULT_RECORDS: Final = 30_000
DEMO_STREAM: Final = "kingest-demo"
DEMO_SHARDS: Final = 4
# The seed's run_integrated_data_collection() sends 100 web log lines, 300 sensor readings
# (3 devices, 100 rounds) and 50 change events: 2 : 6 : 1.
MIX: Final = {"web_logs": 2, "iot_sensors": 6, "database_cdc": 1}
# How long the stream must stay quiet, every shard caught up, before the read-back ends.
READ_IDLE_S: Final = 1.0
_CHUNK: Final = 64  # records a simulator makes per call
_TICK_S: Final = 0.25  # progress line refresh


# --- records -----------------------------------------------------------------------------------


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def enrich(payload: dict[str, Any], source: str, event_id: str) -> dict[str, Any]:
    """Add the demo's metadata to a record: ``event_id``, ``source``, ``ingestion_timestamp``.

    Args:
        payload: the source's record; not changed.
        source: the source name (``web_logs``, ...).
        event_id: the record's unique id, by which the read-back finds it.

    Returns:
        A new dict: ``event_id`` first, then the payload's fields, then ``source`` and
        ``ingestion_timestamp`` (ISO 8601, UTC). A ``source`` field the payload already had is
        kept as ``origin``.
    """
    record = {"event_id": event_id, **payload}
    own_source = record.pop("source", None)
    if own_source is not None:
        record["origin"] = own_source
    record["source"] = source
    record["ingestion_timestamp"] = _now_iso()
    return record


class RecordMix:
    """The three sources' records interleaved in the seed's proportions (2 : 6 : 1).

    A smooth weighted round-robin picks the source, so any stretch of nine records holds two
    web log records, six readings and one change event.

    Args:
        seed: seed of every simulator.
        clock: time source of the records' own timestamps.
    """

    def __init__(self, seed: int, clock: Callable[[], datetime]) -> None:
        web = WebLogSimulator(seed, clock=clock)
        iot = IoTSimulator(seed + 1, clock=clock)
        cdc = CdcSimulator(seed + 2, clock=clock)
        self._makers: dict[str, Callable[[], list[dict[str, Any]]]] = {
            # The web log source is lines, parsed as the seed's WebLogParser does.
            "web_logs": lambda: [parse_combined(line) for line in web.lines(_CHUNK)],
            "iot_sensors": lambda: iot.readings(_CHUNK),
            "database_cdc": lambda: cdc.events(_CHUNK),
        }
        self._ready: dict[str, deque[dict[str, Any]]] = {name: deque() for name in MIX}
        self._current = dict.fromkeys(MIX, 0)
        self._total_weight = sum(MIX.values())

    def next(self) -> tuple[str, dict[str, Any]]:
        """The next record and the name of its source."""
        for name, weight in MIX.items():
            self._current[name] += weight
        source = max(self._current, key=lambda name: self._current[name])
        self._current[source] -= self._total_weight
        ready = self._ready[source]
        if not ready:
            ready.extend(self._makers[source]())
        return source, ready.popleft()


# --- progress ----------------------------------------------------------------------------------


class _Status:
    """A one-line status on standard error, redrawn in place; silent unless it is a terminal."""

    def __init__(self) -> None:
        self.enabled = sys.stderr.isatty()
        self._shown = False
        self._lock = threading.Lock()

    def show(self, text: str) -> None:
        if not self.enabled:
            return
        width = shutil.get_terminal_size((120, 24)).columns - 1
        with self._lock:
            sys.stderr.write("\r" + text[:width] + "\x1b[K")
            sys.stderr.flush()
            self._shown = True

    def end(self) -> None:
        """Leave the last status on its own line."""
        with self._lock:
            if self._shown:
                sys.stderr.write("\n")
                sys.stderr.flush()
                self._shown = False


class _Ticker:
    """Redraws the status from ``render()`` every quarter second on a thread of its own."""

    def __init__(self, status: _Status, render: Callable[[], str]) -> None:
        self._status = status
        self._render = render
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kingest-demo-progress", daemon=True)

    def __enter__(self) -> _Ticker:
        if self._status.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._status.show(self._render())

    def _run(self) -> None:
        while not self._stop.wait(_TICK_S):
            self._status.show(self._render())


def _send_status(producer: Producer, generated: Callable[[], int], target: str) -> str:
    stats = producer.stats()
    config = producer.config
    by_source = stats["by_source"]
    sent = "  ".join(f"{name} {by_source.get(name, {}).get('sent', 0):,}" for name in SOURCES)
    fill = max(
        stats["queue_size"] / config.max_buffer_records,
        stats["buffered_bytes"] / config.max_buffer_bytes,
    )
    return (
        f"sending {generated():,}{target} | sent: {sent} | buffer {fill:.0%} | "
        f"retries {stats['total_retried']:,} | DLQ {stats['total_failed']:,}"
    )


# --- sending -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Plan:
    """How much to send and how fast.

    Attributes:
        records: how many records; None when ``duration_s`` bounds the run instead.
        duration_s: how long to generate; None when ``records`` bounds the run.
        rate: records per second; None sends as fast as the producer takes them.
    """

    records: int | None
    duration_s: float | None
    rate: float | None


@dataclass(slots=True)
class _Sent:
    """What was handed to the producer, per source, with each record's future."""

    futures: dict[str, list[tuple[str, RecordFuture]]] = field(
        default_factory=lambda: {name: [] for name in SOURCES}
    )
    count: int = 0


def _send(producer: Producer, plan: Plan, mix: RecordMix, run_id: str, sent: _Sent) -> None:
    """Generate and put records until the plan is done; ``sent`` fills in as they go."""
    start = time.monotonic()
    deadline = start + plan.duration_s if plan.duration_s is not None else math.inf
    limit = plan.records if plan.records is not None else math.inf
    if plan.rate is not None and plan.duration_s is not None:
        limit = min(limit, math.ceil(plan.rate * plan.duration_s))
    while sent.count < limit:
        now = time.monotonic()
        if now >= deadline:
            break
        if plan.rate is not None:
            lag = start + sent.count / plan.rate - now
            if lag > 0.001:
                time.sleep(lag)
        source, payload = mix.next()
        event_id = f"{run_id}-{sent.count:09d}"
        key = partition_key_for(source, payload)
        future = producer.put(enrich(payload, source, event_id), key, source=source)
        sent.futures[source].append((event_id, future))
        sent.count += 1


# --- reading back ------------------------------------------------------------------------------


@dataclass(slots=True)
class _ReadBack:
    """What the read-back found of this run's records."""

    ids: set[str] = field(default_factory=set)
    duplicates: Counter[str] = field(default_factory=Counter)
    wrong_keys: int = 0
    cdc_out_of_order: int = 0
    other_records: int = 0
    corrupt: int = 0
    total: int = 0


async def _read_back(
    transport: KinesisTransport, stream: str, run_id: str, status: _Status
) -> _ReadBack:
    found = _ReadBack()
    prefix = run_id + "-"
    last_cdc: dict[str, int] = {}
    batches = iter_batches(transport, stream, until_idle_s=READ_IDLE_S)
    async with contextlib.aclosing(batches):
        async for batch in batches:
            for record in batch:
                found.total += 1
                if record.corrupt:
                    found.corrupt += 1
                    continue
                try:
                    obj = orjson.loads(record.data)
                except orjson.JSONDecodeError:
                    found.other_records += 1
                    continue
                event_id = obj.get("event_id") if isinstance(obj, dict) else None
                if not isinstance(event_id, str) or not event_id.startswith(prefix):
                    found.other_records += 1  # an earlier run's, or another producer's
                    continue
                source = str(obj.get("source"))
                if event_id in found.ids:
                    found.duplicates[source] += 1
                    continue
                found.ids.add(event_id)
                try:
                    expected_key = partition_key_for(source, obj)
                except ValueError:
                    expected_key = None
                if record.partition_key != expected_key:
                    found.wrong_keys += 1
                if source == "database_cdc":
                    # One row's changes share a key, hence a shard: they must come back in the
                    # order they were made (the event ids count up in that order).
                    number = int(event_id[len(prefix) :])
                    if number < last_cdc.get(record.partition_key, -1):
                        found.cdc_out_of_order += 1
                    last_cdc[record.partition_key] = number
            status.show(f"reading back: {found.total:,} records")
    return found


# --- report ------------------------------------------------------------------------------------


def _report(
    sent: _Sent,
    found: _ReadBack,
    stats: dict[str, Any],
    *,
    send_s: float,
    read_s: float,
    meta: dict[str, Any],
) -> dict[str, Any]:
    sources: dict[str, dict[str, Any]] = {}
    totals = Counter[str]()
    for name in SOURCES:
        delivered = dead = lost = read = 0
        for event_id, future in sent.futures[name]:
            if future.result(0).delivered:
                delivered += 1
                if event_id in found.ids:
                    read += 1
                else:
                    lost += 1
            else:
                dead += 1
        row = {
            "generated": len(sent.futures[name]),
            "sent": delivered,
            "read_back": read,
            "lost": lost,
            "dead_lettered": dead,
            "duplicates": found.duplicates[name],
        }
        totals.update(row)
        sources[name] = {**row, "throughput_per_s": delivered / send_s if send_s > 0 else 0.0}
    total = {**totals, "throughput_per_s": totals["sent"] / send_s if send_s > 0 else 0.0}
    kinesis_records = int(stats["kinesis_records"])
    return {
        **meta,
        "send_seconds": round(send_s, 3),
        "read_seconds": round(read_s, 3),
        "sources": sources,
        "total": total,
        "lost": total["lost"],
        "dead_lettered": total["dead_lettered"],
        "kinesis_records": kinesis_records,
        "requests": int(stats["requests"]),
        "aggregation_ratio": round(total["sent"] / kinesis_records, 2) if kinesis_records else 0,
        "retried": int(stats["total_retried"]),
        "wrong_partition_keys": found.wrong_keys,
        "cdc_out_of_order": found.cdc_out_of_order,
        "other_records_in_stream": found.other_records,
        "corrupt_records_in_stream": found.corrupt,
        "ok": total["lost"] == 0 and total["dead_lettered"] == 0,
    }


def format_report(report: dict[str, Any]) -> str:
    """The report as the per-source table and a one-line verdict."""
    header = ("source", "sent", "read back", "lost", "dead-lettered", "throughput (records/s)")
    rows = [
        (
            name,
            f"{row['sent']:,}",
            f"{row['read_back']:,}",
            f"{row['lost']:,}",
            f"{row['dead_lettered']:,}",
            f"{row['throughput_per_s']:,.0f}",
        )
        for name, row in [*report["sources"].items(), ("total", report["total"])]
    ]
    widths = [max(len(line[i]) for line in (header, *rows)) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True))
        return " | ".join((first, *rest))

    separator = "-+-".join("-" * width for width in widths)
    where = (
        f"embedded endpoint, {report['shards']} shards"
        if report["embedded"]
        else report["endpoint_url"]
    )
    out = [
        f"kingest demo: stream {report['stream']} ({where}), seed {report['seed']}, "
        f"sent in {report['send_seconds']:.1f} s, read back in {report['read_seconds']:.1f} s",
        "",
        line(header),
        separator,
        *(line(row) for row in rows[:-1]),
        separator,
        line(rows[-1]),
        "",
    ]
    total = report["total"]
    carried = (
        f"{report['kinesis_records']:,} Kinesis records in {report['requests']:,} requests, "
        f"aggregation ratio {report['aggregation_ratio']:.1f}"
    )
    if report["lost"] == 0:
        out.append(
            f"0 lost: every one of {total['sent']:,} records was read back from the stream "
            f"({carried})"
        )
    else:
        out.append(
            f"{report['lost']:,} lost: {total['read_back']:,} of {total['sent']:,} records "
            f"were read back from the stream ({carried})"
        )
    if report["dead_lettered"]:
        out.append(
            f"{report['dead_lettered']:,} dead-lettered: see {report['dlq_dir']} "
            f"(kingest dlq can show and replay them)"
        )
    if total["duplicates"]:
        out.append(
            f"{total['duplicates']:,} read more than once (a retried request can store a "
            "record twice; consumers deduplicate by event_id)"
        )
    if report["wrong_partition_keys"]:
        out.append(f"{report['wrong_partition_keys']:,} records had an unexpected partition key")
    cdc = report["sources"]["database_cdc"]["read_back"]
    if cdc:
        if report["cdc_out_of_order"]:
            out.append(f"{report['cdc_out_of_order']:,} change events came back out of row order")
        else:
            out.append(
                f"CDC: all {cdc:,} change events came back in commit order per row "
                "(partition key = table + primary key)"
            )
    return "\n".join(out)


# --- command -----------------------------------------------------------------------------------


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``demo`` subcommand."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "demo",
        help="send simulated web logs, sensor readings and DB changes, then read them all back",
        description=(
            "Start the embedded Kinesis endpoint with a 4-shard stream, send simulated web "
            "access logs, IoT sensor readings and database change events (2 : 6 : 1, as in the "
            "specification) through one producer, read the stream back and show, per source, "
            "that every record arrived. With --endpoint-url and --stream, an existing stream "
            "is used instead of the embedded endpoint. Exit status 0 only when nothing was lost "
            "or dead-lettered."
        ),
    )
    parser.add_argument(
        "--records",
        type=positive_int,
        help=f"how many records to send (default: {DEFAULT_RECORDS})",
    )
    parser.add_argument(
        "--duration",
        type=positive_float,
        metavar="SECONDS",
        help="generate for this long instead of a number of records",
    )
    parser.add_argument(
        "--rate",
        type=positive_float,
        metavar="RECORDS_PER_S",
        help="generate at this rate (default: as fast as the producer takes them)",
    )
    parser.add_argument(
        "--seed", type=int, help="seed of the simulated data (default: a random one)"
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object instead of the table"
    )
    add_aws_arguments(parser)
    parser.add_argument(
        "--stream",
        help="with --endpoint-url: the existing stream to use (default: the embedded endpoint)",
    )
    parser.set_defaults(handler=run)
    return parser


def _plan(args: argparse.Namespace) -> Plan:
    if args.records is not None and args.duration is not None:
        raise ConfigError("--records and --duration exclude each other")
    if args.duration is not None:
        return Plan(None, args.duration, args.rate)
    return Plan(args.records or DEFAULT_RECORDS, None, args.rate)


def run(args: argparse.Namespace) -> int:
    """Run the demo and print its report.

    Returns:
        0 when every record sent was read back and none was dead-lettered, else 1.

    Raises:
        ConfigError: conflicting options, or the embedded endpoint cannot start (main prints
            it and exits 1).
        KinesisError: the stream cannot be written or read.
    """
    plan = _plan(args)
    if bool(args.endpoint_url) != bool(args.stream):
        raise ConfigError("--endpoint-url and --stream go together (neither: embedded endpoint)")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    status = _Status()
    if args.endpoint_url:
        report = _run_on(args.endpoint_url, args.stream, args, plan, seed, status)
    else:
        status.show("starting the embedded Kinesis endpoint...")
        with LocalKinesis(streams={DEMO_STREAM: DEMO_SHARDS}) as local:
            report = _run_on(local.endpoint_url, DEMO_STREAM, args, plan, seed, status)
            report["embedded"] = True
            report["shards"] = DEMO_SHARDS
    if args.json:
        sys.stdout.write(orjson.dumps(report).decode() + "\n")
    else:
        print(format_report(report))
    return 0 if report["ok"] else 1


def _run_on(
    endpoint_url: str,
    stream: str,
    args: argparse.Namespace,
    plan: Plan,
    seed: int,
    status: _Status,
) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:12]
    dlq_dir = Path(tempfile.gettempdir()) / f"kingest-demo-{run_id}" / "dlq"
    mix = RecordMix(seed, clock=lambda: datetime.now(UTC))
    producer = Producer(
        stream,
        endpoint_url=endpoint_url,
        region=args.region,
        profile=args.profile,
        dlq_dir=str(dlq_dir),
        # One row's change events must be stored in the order they were made. Without strict
        # order, two requests in flight to one shard may be stored in either order (retries
        # or not), which would put an UPDATE before its INSERT now and then.
        strict_order=True,
    )
    sent = _Sent()
    target = f"/{plan.records:,}" if plan.records is not None else ""
    finished = False
    try:
        started = time.monotonic()
        with _Ticker(status, lambda: _send_status(producer, lambda: sent.count, target)):
            _send(producer, plan, mix, run_id, sent)
            producer.flush()
        send_s = time.monotonic() - started
        producer.close()
        finished = True
    finally:
        if not finished:
            # Interrupted or failed: give what is in flight a moment, dead-letter the rest.
            producer.close(timeout=2.0)
            status.end()
    stats = producer.stats()
    log.info("Sent %d records in %.2fs; reading the stream back.", sent.count, send_s)
    status.end()
    status.show("reading back...")
    started = time.monotonic()
    found = asyncio.run(_read_back_with_transport(endpoint_url, stream, args, run_id, status))
    read_s = time.monotonic() - started
    status.end()
    meta = {
        "stream": stream,
        "endpoint_url": endpoint_url,
        "embedded": False,
        "shards": None,
        "seed": seed,
        "run_id": run_id,
        "dlq_dir": str(dlq_dir) if dlq_dir.exists() else None,
    }
    return _report(sent, found, stats, send_s=send_s, read_s=read_s, meta=meta)


async def _read_back_with_transport(
    endpoint_url: str, stream: str, args: argparse.Namespace, run_id: str, status: _Status
) -> _ReadBack:
    transport = KinesisTransport(
        endpoint_url=endpoint_url, region=args.region, profile=args.profile
    )
    try:
        return await _read_back(transport, stream, run_id, status)
    finally:
        await transport.close()
