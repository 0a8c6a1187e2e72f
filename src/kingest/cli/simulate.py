"""``kingest simulate weblog|iot|cdc|events``: the seed's data, at a chosen rate, into real inputs.

- ``weblog --file PATH``: combined-format lines appended to a file;
- ``iot --broker HOST:PORT``: readings published to ``sensors/{device_type}/{device_id}``;
- ``cdc --dsn postgresql://...|mysql://...``: a shop's transactions written to real tables
  (``sim_users``, ``sim_orders``: created if missing, emptied first); without ``--dsn`` the
  change events themselves as JSON lines on standard output;
- ``events --url http://HOST:PORT/v1/events``: application events POSTed in NDJSON batches.

Each runs for ``--duration`` seconds (default: until SIGINT or SIGTERM) at ``--rate`` items per
second and prints how many it produced on standard error.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson

from kingest.cli.common import positive_float
from kingest.errors import ConfigError, SourceError
from kingest.sources.simulate.drivers import (
    Pacer,
    append_weblog,
    post_events,
    publish_iot,
    sim_tables,
    write_cdc,
)


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``simulate`` command and its subcommands."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "simulate",
        help="generate the seed's data at a rate into a file, a broker, a database or HTTP",
        description="Drive a simulator into the real input of a source.",
    )
    kinds = parser.add_subparsers(dest="kind", metavar="KIND", required=True)

    def common(sub: argparse.ArgumentParser, rate: float) -> None:
        sub.add_argument("--rate", type=positive_float, default=rate, help=f"per second ({rate:g})")
        sub.add_argument(
            "--duration", type=positive_float, help="seconds to run (default: until stopped)"
        )
        sub.add_argument("--seed", type=int, help="random seed (default: from the system)")
        sub.set_defaults(handler=run)

    weblog = kinds.add_parser("weblog", help="append access log lines to a file")
    weblog.add_argument("--file", required=True, type=Path, help="log file (appended to)")
    common(weblog, 100)
    iot = kinds.add_parser("iot", help="publish sensor readings to an MQTT broker")
    iot.add_argument("--broker", default="127.0.0.1:1883", metavar="HOST:PORT")
    iot.add_argument("--prefix", default="sensors", help="topic prefix (default: sensors)")
    iot.add_argument("--qos", type=int, choices=(0, 1), default=1)
    iot.add_argument("--devices", type=int, default=200, help="fleet size (200)")
    common(iot, 100)
    cdc = kinds.add_parser("cdc", help="write a shop's transactions to PostgreSQL or MariaDB")
    cdc.add_argument("--dsn", help="postgresql://... or mysql://...; none: print events")
    cdc.add_argument("--table-prefix", default="sim_", help="tables' prefix (default: sim_)")
    common(cdc, 20)
    events = kinds.add_parser("events", help="POST application events to the HTTP source")
    events.add_argument("--url", required=True, help="http://HOST:PORT/v1/events")
    events.add_argument("--token-file", metavar="FILE", help="bearer token file")
    events.add_argument("--batch", type=int, default=100, help="events per request (100)")
    common(events, 100)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``kingest simulate KIND``; see the module docstring."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    pacer = Pacer(args.rate, args.duration, stop)
    started = time.monotonic()
    count = _DRIVERS[args.kind](args, pacer)
    elapsed = time.monotonic() - started
    print(
        f"kingest simulate {args.kind}: {count:,} in {elapsed:.1f} s "
        f"({count / max(elapsed, 1e-9):,.0f}/s)",
        file=sys.stderr,
    )
    return 0


def _weblog(args: argparse.Namespace, pacer: Pacer) -> int:
    try:
        return append_weblog(args.file, pacer, seed=args.seed)
    except OSError as exc:
        raise ConfigError(f"cannot write {args.file}: {exc}") from exc


def _iot(args: argparse.Namespace, pacer: Pacer) -> int:
    from paho.mqtt import client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from kingest.sources.mqtt.source import parse_broker

    try:
        host, port = parse_broker(args.broker)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    client.max_inflight_messages_set(1000)  # paho's default of 20 caps QoS 1 at a crawl
    try:
        client.connect(host, port)
    except OSError as exc:
        raise SourceError(f"cannot connect to MQTT broker {args.broker}: {exc}") from exc
    client.loop_start()
    in_flight: list[Any] = []

    def publish(topic: str, payload: bytes) -> None:
        in_flight.append(client.publish(topic, payload, qos=args.qos))
        if len(in_flight) >= 1000:
            for info in in_flight:
                info.wait_for_publish(30)
            in_flight.clear()

    try:
        return publish_iot(publish, pacer, prefix=args.prefix, seed=args.seed,
                           devices=args.devices)  # fmt: skip
    finally:
        for info in in_flight:
            info.wait_for_publish(30)
        client.disconnect()
        client.loop_stop()


def _cdc(args: argparse.Namespace, pacer: Pacer) -> int:
    tables = sim_tables(args.table_prefix)
    if args.dsn is None:
        from kingest.sources.simulate.cdc import CdcSimulator

        simulator = CdcSimulator(args.seed)
        count = 0
        for due in pacer.slices():
            for event in simulator.events(due):
                sys.stdout.buffer.write(orjson.dumps(event) + b"\n")
            sys.stdout.flush()
            count += due
        return count
    if args.dsn.startswith("mysql://"):
        import pymysql

        from kingest.sources.cdc.mysql.server import parse_dsn

        settings = parse_dsn(args.dsn)

        try:
            connection: Any = pymysql.connect(
                **{**settings.pymysql_kwargs(), "autocommit": False, "database": settings.database}
            )
        except pymysql.err.MySQLError as exc:
            raise SourceError(f"cannot connect to MySQL: {exc}") from exc
        dialect = "mysql"
        errors: tuple[type[Exception], ...] = (pymysql.err.MySQLError,)
    else:
        import psycopg2

        try:
            connection = psycopg2.connect(args.dsn)
        except psycopg2.Error as exc:
            raise SourceError(f"cannot connect to PostgreSQL: {str(exc).strip()}") from exc
        dialect = "postgres"
        errors = (psycopg2.Error,)
    try:
        return write_cdc(connection, dialect, pacer, tables=tables, seed=args.seed)
    except errors as exc:
        raise SourceError(f"writing the simulated changes failed: {str(exc).strip()}") from exc
    finally:
        connection.close()


def _events(args: argparse.Namespace, pacer: Pacer) -> int:
    headers = {"Content-Type": "application/x-ndjson"}
    if args.token_file:
        try:
            headers["Authorization"] = f"Bearer {Path(args.token_file).read_text().strip()}"
        except OSError as exc:
            raise ConfigError(f"cannot read --token-file: {exc}") from exc

    def post(body: bytes) -> None:
        request = urllib.request.Request(args.url, data=body, headers=headers, method="POST")
        while True:
            try:
                with urllib.request.urlopen(request, timeout=60) as response:
                    response.read()
                    return
            except urllib.error.HTTPError as exc:
                if exc.code in (429, 503):
                    time.sleep(float(exc.headers.get("Retry-After") or 1))
                    continue
                raise SourceError(
                    f"POST {args.url}: HTTP {exc.code}: {exc.read()[:200]!r}"
                ) from exc
            except urllib.error.URLError as exc:
                raise SourceError(f"POST {args.url}: {exc.reason}") from exc

    return post_events(post, pacer, batch=args.batch, seed=args.seed)


_DRIVERS = {"weblog": _weblog, "iot": _iot, "cdc": _cdc, "events": _events}
