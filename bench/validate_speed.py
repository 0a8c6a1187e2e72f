"""Cost of checking a record against its schema: the registry's compiled schemas against the seed.

Workload: for each built-in schema (the latest version), distinct realistic records built by
kingest's own code: Apache combined lines from the web log simulator parsed by ``kingest parse``'s
parser plus the file source's fields; simulated sensor readings published as MQTT payloads and
turned into readings as the MQTT source does; PostgreSQL change events from the envelope builder;
application events from the HTTP simulator's NDJSON bodies parsed as the HTTP source does.

Timed per record, best of ``--repeats`` passes over the records (the first ``--seed-records``
and ``--cached-records`` of them for the two slow columns):

- ``seed validate``: the seed's ``DataValidator``, i.e. ``jsonschema.validate(record, schema)``,
  which checks the schema against its metaschema and builds a validator on every call;
- ``cached jsonschema``: the same library with one validator built beforehand (``is_valid``);
- ``is_valid`` and ``violations`` (on a valid record): :class:`kingest.schemas.registry.Schema`.

The target is ``is_valid`` at least 10x faster than the seed's ``jsonschema.validate()``.
jsonschema is not a kingest dependency: install it to run this (``.venv/bin/pip install
jsonschema``).

Run: .venv/bin/python bench/validate_speed.py [--records N] [--seed-records N]
     [--cached-records N] [--repeats R]
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson

from kingest.schemas.registry import SchemaRegistry
from kingest.sources.cdc.envelope import EnvelopeBuilder, TableRef
from kingest.sources.http.events import parse_body
from kingest.sources.mqtt.readings import TopicTemplate, reading_from_message
from kingest.sources.simulate import CdcSimulator, IoTSimulator, WebLogSimulator
from kingest.sources.weblog.formats import compile_format

INGESTED = datetime(2024, 5, 26, 10, 30, 45, 410_000, tzinfo=UTC).isoformat(timespec="milliseconds")
EVENT_TYPES = ("page_view", "search", "add_to_cart", "purchase", "login")


def web_logs(count: int) -> list[dict[str, Any]]:
    """Parsed combined lines with the fields the file source adds."""
    parser = compile_format("combined")
    records = []
    offset = 0
    for line in WebLogSimulator(seed=2024).lines(count):
        record = parser(line)
        record.update(source="web_logs", ingestion_timestamp=INGESTED, file="/var/log/access.log")
        record["offset"] = offset
        offset += len(line) + 1
        records.append(record)
    return records


def iot_sensors(count: int) -> list[dict[str, Any]]:
    """Simulated readings published as payloads, read back as the MQTT source reads them."""
    template = TopicTemplate("sensors/{device_type}/{device_id}")
    records = []
    for reading in IoTSimulator(seed=2024).readings(count):
        topic = f"sensors/{reading['device_type']}/{reading['device_id']}"
        record = reading_from_message(topic, orjson.dumps(reading), template)
        record.update(source="iot_sensors", ingestion_timestamp=INGESTED)
        records.append(record)
    return records


def database_cdc(count: int) -> list[dict[str, Any]]:
    """The simulated shop's changes, as the PostgreSQL source's envelope builder writes them."""
    builder = EnvelopeBuilder("postgresql", "pg_shop")
    tables = {
        "users": TableRef("ecommerce_db", "public", "users", ("user_id",)),
        "orders": TableRef("ecommerce_db", "public", "orders", ("order_id",)),
    }
    records = []
    for lsn, change in enumerate(CdcSimulator(seed=2024).events(count), start=23_904_632):
        records.append(
            builder.event(
                tables[change["table"]],
                change["op"],
                change["before"],
                change["after"],
                position={"lsn": lsn},
                transaction_id=change["transaction_id"],
                commit_ms=change["ts_ms"],
                order=1,
            )
        )
    return records


def app_events(count: int) -> list[dict[str, Any]]:
    """NDJSON events like the HTTP simulator's, taken as the HTTP source takes them."""
    lines = [
        orjson.dumps(
            {
                "event_id": f"{number:032x}",
                "event_type": EVENT_TYPES[number % len(EVENT_TYPES)],
                "user_id": f"user_{number % 1000:04d}",
                "session_id": f"{number % 997:016x}",
                "timestamp": INGESTED,
                "properties": {"page": f"/products/{number % 500}"},
            }
        )
        for number in range(count)
    ]
    records = []
    for event in parse_body(b"\n".join(lines), "application/x-ndjson"):
        assert isinstance(event, dict)
        event.update(source="app_events", ingestion_timestamp=INGESTED)
        records.append(event)
    return records


BUILDERS: dict[str, Callable[[int], list[dict[str, Any]]]] = {
    "web_logs": web_logs,
    "iot_sensors": iot_sensors,
    "database_cdc": database_cdc,
    "app_events": app_events,
}


def best_us(check: Callable[[Any], object], records: list[dict[str, Any]], repeats: int) -> float:
    """The best pass's time per record, in µs."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for record in records:
            check(record)
        best = min(best, time.perf_counter() - started)
    return best / len(records) * 1e6


def _seed_validate(record: dict[str, Any], schema: dict[str, Any]) -> None:
    """The seed's DataValidator.validate, minus its try/except: jsonschema.validate()."""
    import jsonschema

    jsonschema.validate(record, schema)


def main() -> None:
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    options.add_argument("--records", type=int, default=20_000, help="records per schema")
    options.add_argument(
        "--seed-records", type=int, default=100, help="records for the (slow) seed validate"
    )
    options.add_argument(
        "--cached-records", type=int, default=2_000, help="records for the cached jsonschema"
    )
    options.add_argument("--repeats", type=int, default=5, help="passes of each, best kept")
    args = options.parse_args()
    try:
        import jsonschema
    except ImportError:
        print(
            "this benchmark compares with jsonschema, which kingest does not depend on: "
            ".venv/bin/pip install jsonschema",
            file=sys.stderr,
        )
        sys.exit(2)
    registry = SchemaRegistry.builtin()
    version = importlib.metadata.version("jsonschema")
    print(f"jsonschema {version}; {args.records:,} records per schema")
    print(
        f"{'schema':16} {'seed validate':>14} {'cached jsonschema':>18} {'is_valid':>9} "
        f"{'violations':>11} {'speed-up is_valid':>18} {'speed-up violations':>20}"
    )
    worst = float("inf")
    for name, build in BUILDERS.items():
        schema = registry.get(name)
        document = schema.document
        records = build(args.records)
        invalid = [record for record in records if not schema.is_valid(record)]
        if invalid:
            sys.exit(f"{name}: {len(invalid)} records do not fit: {schema.violations(invalid[0])}")
        cached = jsonschema.validators.validator_for(document)(document)
        seed_records = records[: args.seed_records]
        seed = best_us(
            functools.partial(_seed_validate, schema=document), seed_records, args.repeats
        )
        cached_us = best_us(cached.is_valid, records[: args.cached_records], args.repeats)
        fast = best_us(schema.is_valid, records, args.repeats)
        full = best_us(schema.violations, records, args.repeats)
        worst = min(worst, seed / fast)
        label = f"{name} v{schema.version}"
        print(
            f"{label:16} {seed:>11,.1f} µs {cached_us:>15,.2f} µs {fast:>6,.2f} µs "
            f"{full:>8,.2f} µs {seed / fast:>17,.0f}x {seed / full:>19,.0f}x"
        )
    verdict = "meets" if worst >= 10 else "misses"
    print(f"slowest speed-up of is_valid over the seed: {worst:,.0f}x ({verdict} the 10x target)")


if __name__ == "__main__":
    main()
