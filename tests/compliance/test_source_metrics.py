"""One suite over every source: what an operator sees on ``/metrics`` is what really happened.

Each source runs in an agent that serves its metrics and checks its records against the
source's built-in schema, stamping them. The source's own simulator feeds it through its real
input (a log file, the MQTT broker, PostgreSQL and MariaDB tables, HTTP requests); then the
scraped metrics must count every input exactly once (received, parsed, admitted, accepted,
latency observations, shard records), nothing invalid or dead-lettered, an empty buffer, and
the stream must hold exactly those records, each stamped with the schema it passed.
"""

from __future__ import annotations

import contextlib
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from kingest.agent.config import AgentConfig
from kingest.metrics.registry import MetricFamily
from kingest.metrics.scrape import fetch
from kingest.schemas.registry import SchemaRegistry
from kingest.sources.http.source import HttpSource
from kingest.sources.simulate.drivers import (
    Pacer,
    append_weblog,
    post_events,
    prepare_tables,
    publish_iot,
    sim_tables,
    write_cdc,
)
from tests.agents import InProcessAgent
from tests.helpers import read_stream, wait_until
from tests.servers import MQTT_BROKER, POSTGRES_DSN, Publisher, require_mqtt, unique_name

pytestmark = pytest.mark.integration

RATE = 400.0  # inputs per second
DURATION_S = 0.5


@dataclass
class Case:
    """A source under test: its config entry, the schema it is held to, and its driver."""

    schema: str
    source: dict[str, Any]
    # Feeds the running agent; returns how many inputs it produced.
    drive: Callable[[InProcessAgent], int]
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    def kingest_name(self, record: dict[str, Any]) -> str:
        """The kingest source named in a record (CDC keeps it in Debezium's block)."""
        source = record["source"]
        return str(source["name"]) if isinstance(source, dict) else str(source)


def file_case(tmp_path: Path, request: pytest.FixtureRequest) -> Case:
    log = tmp_path / "access.log"
    log.touch()
    return Case(
        schema="web_logs",
        source={
            "type": "file",
            "name": "web_logs",
            "paths": [str(log)],
            "format": "combined",
            "from": "beginning",
        },
        drive=lambda _: append_weblog(log, Pacer(RATE, DURATION_S), seed=1),
    )


def mqtt_case(tmp_path: Path, request: pytest.FixtureRequest) -> Case:
    host, port = require_mqtt()
    prefix = unique_name("kcomp")

    def drive(_: InProcessAgent) -> int:
        publisher = Publisher(host, port)
        try:
            return publish_iot(publisher.publish, Pacer(RATE, DURATION_S), prefix=prefix, seed=1)
        finally:
            publisher.close()

    return Case(
        schema="iot_sensors",
        source={
            "type": "mqtt",
            "name": "iot_sensors",
            "broker": MQTT_BROKER,
            "topics": [f"{prefix}/#"],
            "client_id": f"{prefix}-agent",
            "topic_template": f"{prefix}/{{device_type}}/{{device_id}}",
        },
        drive=drive,
    )


def http_case(tmp_path: Path, request: pytest.FixtureRequest) -> Case:
    def drive(agent: InProcessAgent) -> int:
        source = agent.agent.sources[0][0]
        assert isinstance(source, HttpSource)
        port = source.bound_port

        def post(body: bytes) -> None:
            call = urllib.request.Request(
                f"http://127.0.0.1:{port}/v1/events",
                data=body,
                headers={"Content-Type": "application/x-ndjson"},
            )
            with urllib.request.urlopen(call, timeout=30) as answer:
                assert answer.status == 200

        return post_events(post, Pacer(RATE, DURATION_S), batch=50, seed=1)

    return Case(
        schema="app_events",
        source={"type": "http", "name": "app_events", "listen": "127.0.0.1:0"},
        drive=drive,
    )


def postgres_case(tmp_path: Path, request: pytest.FixtureRequest) -> Case:
    import psycopg2

    admin = request.getfixturevalue("pg_conn")
    name = unique_name("kcomp")
    tables = sim_tables(f"{name}_")
    writer = psycopg2.connect(POSTGRES_DSN)
    prepare_tables(writer, "postgres", tables)  # the publication names them at start

    def cleanup() -> None:
        writer.close()
        with admin.cursor() as cursor:
            wait_until(lambda: not _slot_active(cursor, name), 30, "the slot to be released")
            cursor.execute(
                "select pg_drop_replication_slot(slot_name) from pg_replication_slots "
                "where slot_name = %s",
                (name,),
            )
            cursor.execute(f'drop publication if exists "{name}"')
            for table in tables.values():
                cursor.execute(f'drop table if exists "{table}"')

    return Case(
        schema="database_cdc",
        source={
            "type": "postgres",
            "name": "orders_db",
            "dsn": POSTGRES_DSN,
            "slot": name,
            "publication": name,
            "tables": [f"public.{t}" for t in tables.values()],
        },
        drive=lambda _: write_cdc(
            writer, "postgres", Pacer(RATE, DURATION_S), tables=tables, seed=1, prepare=False
        ),
        cleanups=[cleanup],
    )


def _slot_active(cursor: Any, slot: str) -> bool:
    cursor.execute("select active from pg_replication_slots where slot_name = %s", (slot,))
    row = cursor.fetchone()
    return bool(row and row[0])


def mysql_case(tmp_path: Path, request: pytest.FixtureRequest) -> Case:
    import pymysql

    admin = request.getfixturevalue("mysql_conn")
    tables = sim_tables(f"{unique_name('kcomp')}_")
    writer = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="",
                             database="test", autocommit=False)  # fmt: skip
    prepare_tables(writer, "mysql", tables)

    def cleanup() -> None:
        writer.close()
        with admin.cursor() as cursor:
            for table in tables.values():
                cursor.execute(f"drop table if exists `{table}`")

    return Case(
        schema="database_cdc",
        source={
            "type": "mysql",
            "name": "shop_binlog",
            "dsn": "mysql://root@127.0.0.1:3306/test",
            "tables": [f"test.{t}" for t in tables.values()],
        },
        drive=lambda _: write_cdc(
            writer, "mysql", Pacer(RATE, DURATION_S), tables=tables, seed=1, prepare=False
        ),
        cleanups=[cleanup],
    )


CASES = {
    "file": file_case,
    "mqtt": mqtt_case,
    "http": http_case,
    "postgres": postgres_case,
    "mysql": mysql_case,
}


@pytest.fixture(params=sorted(CASES))
def case(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Case]:
    made = CASES[request.param](tmp_path, request)
    try:
        yield made
    finally:
        for cleanup in made.cleanups:
            cleanup()


def value(families: dict[str, MetricFamily], name: str, **labels: str) -> float:
    family = families.get(name)
    assert family is not None, f"{name} is not on /metrics"
    return family.value(**labels)


def test_metrics_count_every_input_once_and_the_stream_holds_them(
    case: Case, endpoint_url: str, stream_factory: Callable[..., str], tmp_path: Path
) -> None:
    stream = stream_factory(shards=2)
    name = case.source["name"]
    config = AgentConfig.model_validate(
        {
            "stream": stream,
            "checkpoint_path": str(tmp_path / "checkpoints.db"),
            "commit_interval_ms": 100,
            "producer": {"linger_ms": 20, "dlq_dir": str(tmp_path / "dlq")},
            "metrics": {"address": "127.0.0.1:0"},
            "sources": [{**case.source, "schema": {"name": case.schema, "stamp": True}}],
        }
    )
    agent = InProcessAgent(config, endpoint_url)
    try:
        assert agent.agent.metrics_server is not None
        url = f"http://127.0.0.1:{agent.agent.metrics_server.port}/metrics"

        def scrape() -> dict[str, MetricFamily]:
            return {family.name: family for family in fetch(url)}

        produced = case.drive(agent)
        assert produced > 0

        def settled() -> bool:
            families = scrape()
            accepted = value(families, "kingest_producer_accepted_records_total", source=name)
            buffered = value(families, "kingest_producer_buffered_records")
            return accepted >= produced and buffered == 0

        wait_until(settled, 60, f"{produced} records accepted")
        families = scrape()
    finally:
        with contextlib.suppress(AssertionError):
            agent.stop()

    for metric in (
        "kingest_source_received_records_total",
        "kingest_source_parsed_records_total",
        "kingest_producer_put_records_total",
        "kingest_producer_accepted_records_total",
        "kingest_source_delivery_latency_seconds_count",
    ):
        family = families[metric.removesuffix("_count")]
        counted = sum(
            s.value for s in family.samples if s.name == metric and s.label("source") == name
        )
        assert counted == produced, f"{metric}: {counted}, {produced} produced"
    assert value(families, "kingest_source_invalid_records_total", source=name) == 0
    assert value(families, "kingest_dlq_records_total", source=name) == 0
    assert value(families, "kingest_producer_shard_records_total", stream=stream) == produced
    ack = families["kingest_producer_ack_latency_seconds"]
    assert [s.value for s in ack.samples if s.name.endswith("_count")] == [produced]

    records = [orjson.loads(r.data) for r in read_stream(endpoint_url, stream)]
    assert len(records) == produced
    version = SchemaRegistry.builtin().get(case.schema).version
    assert {r["schema_id"] for r in records} == {f"{case.schema}/v{version}"}
    assert {case.kingest_name(r) for r in records} == {name}
