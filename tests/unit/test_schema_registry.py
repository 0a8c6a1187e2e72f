"""The schema registry: built-in schemas against real records, violations, loading rules."""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kingest.errors import ConfigError
from kingest.schemas.compat import check
from kingest.schemas.registry import (
    BUILTIN_NAMES,
    Schema,
    SchemaLoadError,
    SchemaRegistry,
    Violation,
    format_path,
)
from kingest.sources.cdc.envelope import EnvelopeBuilder, TableRef
from kingest.sources.http.events import parse_body
from kingest.sources.mqtt.readings import QualityRule, TopicTemplate, check_reading
from kingest.sources.mqtt.readings import reading_from_message as reading_of
from kingest.sources.simulate import CdcSimulator, IoTSimulator, WebLogSimulator, parse_combined
from kingest.sources.simulate.drivers import Pacer, post_events, publish_iot
from kingest.sources.weblog.formats import compile_format

WEBLOG_DATA = Path(__file__).parent.parent / "data" / "weblog"
REGISTRY = SchemaRegistry.builtin()
INGESTED = datetime.now(UTC).isoformat(timespec="milliseconds")

SEED_LINE = (
    '192.168.1.1 - - [26/May/2024:10:30:45 +0000] "GET /api/users HTTP/1.1" 200 1234 '
    '"https://example.com" "Mozilla/5.0"'
)
NGINX_TIMED = (
    '$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent '
    '"$http_referer" "$http_user_agent" "$http_x_forwarded_for" rt=$request_time '
    'uct="$upstream_connect_time" uht="$upstream_header_time" urt="$upstream_response_time"'
)
APACHE_TIMES = '%a %{%Y-%m-%d %H:%M:%S %z}t "%r" %>s %B %D %{msec}t "%{X-Forwarded-For}i" %X'


def assert_valid(schema: Schema, record: dict[str, Any]) -> None:
    found = schema.violations(record)
    assert found == [], f"{schema.name} v{schema.version}: {[str(v) for v in found]}\n{record}"
    assert schema.is_valid(record)


def paths(schema: Schema, record: Any) -> list[str]:
    return [violation.path for violation in schema.violations(record)]


# --- web_logs: what the parsers and the file source emit --------------------------------------


def as_file_source(record: dict[str, Any], path: str, offset: int) -> dict[str, Any]:
    """The fields FileSource.run adds to each parsed line (kingest.sources.weblog.source)."""
    record["source"] = "web_logs"
    record["ingestion_timestamp"] = INGESTED
    record["file"] = path
    record["offset"] = offset
    return record


@pytest.mark.parametrize(
    ("sample", "format_name", "log_format"),
    [
        ("apache_combined.log", "combined", None),
        ("apache_common.log", "common", None),
        ("apache_vhost_combined.log", "vhost_combined", None),
        ("nginx_access.log", "nginx", None),
        ("nginx_timed.log", "nginx", NGINX_TIMED),
        ("events.jsonl", "json", None),
    ],
)
def test_every_sample_log_line_fits_web_logs(
    sample: str, format_name: str, log_format: str | None
) -> None:
    schema = REGISTRY.get("web_logs", 1)
    parser = compile_format(format_name, log_format)
    offset = 0
    for line in (WEBLOG_DATA / sample).read_bytes().splitlines(keepends=True):
        assert_valid(schema, parser(line))
        assert_valid(schema, as_file_source(parser(line), str(WEBLOG_DATA / sample), offset))
        offset += len(line)


def test_simulated_and_odd_lines_fit_web_logs() -> None:
    schema = REGISTRY.get("web_logs")
    combined = compile_format("combined")
    for line in WebLogSimulator(seed=7).lines(300):
        assert_valid(schema, as_file_source(combined(line), "/var/log/access.log", 0))
        assert_valid(schema, parse_combined(line))  # the seed's fields, as the seed parsed
    odd = {
        "a 408 without a request": combined(
            '203.0.113.9 - - [26/May/2024:10:30:45 +0000] "-" 408 0 "-" "-"'
        ),
        "TLS bytes on a plain port": combined(
            '203.0.113.9 - - [26/May/2024:10:30:45 +0000] "\\x16\\x03\\x01" 400 0 "-" "-"'
        ),
        "Apache times and %X": compile_format("apache", APACHE_TIMES)(
            '::1 2024-05-26 10:30:45 +0900 "GET / HTTP/1.1" 200 512 1234 1716719445123 '
            '"198.51.100.1" +'
        ),
        "no time, no status": compile_format("nginx", "$remote_addr $request_time $pid")(
            "203.0.113.9 0.004 77"
        ),
    }
    for why, record in odd.items():
        assert record["log_type"] == "web_access", why
        assert_valid(schema, record)
    assert odd["no time, no status"]["timestamp"] is None
    assert odd["a 408 without a request"]["method"] is None


def test_the_seeds_own_web_log_record_fits() -> None:
    # The seed's DataValidator example: no log_type, the seed's required five fields.
    seed_test_data = {
        "timestamp": "2024-05-26T10:30:00Z",
        "ip_address": "192.168.1.1",
        "method": "GET",
        "path": "/api/test",
        "status_code": 200,
    }
    assert_valid(REGISTRY.get("web_logs"), seed_test_data)


def test_web_logs_rejects_wrong_types_and_missing_essentials() -> None:
    schema = REGISTRY.get("web_logs")
    good = compile_format("combined")(SEED_LINE)
    broken = {**good, "status_code": "200", "response_size": -5}
    found = schema.violations(broken)
    assert [v.path for v in found] == ["$.response_size", "$.status_code"]
    assert "minimum of 0" in found[0].message and "not of type" in found[1].message
    missing = {key: value for key, value in good.items() if key not in ("timestamp", "path")}
    assert [str(v) for v in schema.violations(missing)] == [
        '$: "timestamp" is a required property',
        '$: "path" is a required property',
    ]
    # A JSON line is passed through as logged, but kingest's own names keep their types.
    assert paths(schema, {"time": "x", "offset": "12", "file": "/a"}) == ["$.offset"]
    assert paths(schema, {"file": "/var/log/a"}) == ["$"], "file and offset go together"
    assert not schema.is_valid([good])


# --- iot_sensors: the MQTT source's readings and the simulator's ------------------------------

TEMPLATE = TopicTemplate("sensors/{device_type}/{device_id}")
RULES = {
    "temperature": QualityRule(min=-40, max=85, units=["°C"]),
    "co2": QualityRule(required=["device_id", "value", "unit"], max=5000),
}


def as_mqtt_source(topic: str, payload: bytes) -> dict[str, Any]:
    """A message as MqttSource._take makes it a record with ``on_violation: flag``."""
    reading = reading_of(topic, payload, TEMPLATE)
    problems = check_reading(reading, RULES)
    if problems:
        reading["quality_violations"] = problems
    reading["source"] = "iot_sensors"
    reading["ingestion_timestamp"] = INGESTED
    return reading


def test_published_simulated_readings_fit_iot_sensors() -> None:
    schema = REGISTRY.get("iot_sensors")
    published: list[tuple[str, bytes]] = []
    count = publish_iot(lambda t, p: published.append((t, p)), Pacer(2000, 0.05), seed=3, tag="t")
    assert count == len(published) == 100
    for topic, payload in published:
        assert_valid(schema, as_mqtt_source(topic, payload))
    for reading in IoTSimulator(seed=4).readings(200):
        assert_valid(schema, reading)
    seed_call = IoTSimulator(seed=5).generate_sensor_reading(
        "sensor_001", "temperature", "building_a_floor_1"
    )
    assert_valid(schema, seed_call)


@pytest.mark.parametrize(
    ("topic", "payload"),
    [
        ("sensors/temperature/sensor_001", b'{"value": 22.5, "unit": "\xc2\xb0C"}'),
        ("sensors/humidity/h7", b"41"),  # a bare number is the value
        ("gateway/up", b'{"device_id": "d9", "value": 1, "device_type": "door"}'),
        ("sensors/co2/c1", b'{"value": 9000, "unit": "ppm"}'),  # flagged: above max
        ("sensors/temperature/t1", b'{"value": "warm"}'),  # flagged: not a number
        ("sensors/co2/c2", b'{"unit": "ppm"}'),  # flagged: no value
        ("sensors/temperature/t2", b'{"value": 20, "unit": null, "timestamp": 1716719445}'),
    ],
)
def test_mqtt_readings_clean_or_flagged_fit_iot_sensors(topic: str, payload: bytes) -> None:
    assert_valid(REGISTRY.get("iot_sensors"), as_mqtt_source(topic, payload))


def test_iot_sensors_rejects_what_a_clean_reading_cannot_be() -> None:
    schema = REGISTRY.get("iot_sensors")
    reading = as_mqtt_source("sensors/light/l1", b'{"value": 300}')
    assert "quality_violations" not in reading
    assert paths(schema, {**reading, "value": "300"}) == ["$.value"]
    assert paths(schema, {**reading, "value": True}) == ["$.value"]
    found = schema.violations({"value": 1, "unit": 5})
    assert [v.path for v in found] == ["$", "$.unit"]
    assert '"device_id" is a required property' in found[0].message
    flagged = {**reading, "quality_violations": ["ok", 3, 4]}
    assert paths(schema, flagged) == ["$.quality_violations[1]", "$.quality_violations[2]"]
    assert paths(schema, {**reading, "quality_violations": []}) == ["$.quality_violations"]


# --- database_cdc: the envelope of both databases, and the simulator's events -----------------

ORDERS_PG = TableRef("shop", "public", "orders", ("order_id",))
ORDERS_MY = TableRef("shop", None, "orders", ("order_id",))
LOG_TABLE = TableRef("shop", "public", "audit_log", ())


def envelope_events() -> list[dict[str, Any]]:
    """Events as the PostgreSQL and MySQL assemblers and the snapshot build them."""
    pg = EnvelopeBuilder("postgresql", "pg_shop")
    my = EnvelopeBuilder("mysql", "my_shop")
    row = {"order_id": 1, "status": "pending", "total_amount": 10.5, "note": None}
    paid = {**row, "status": "paid"}
    common: dict[str, Any] = {"transaction_id": "7741", "commit_ms": 1_716_719_445_120}
    lsn = {"position": {"lsn": 23_904_632}, **common}
    binlog: dict[str, Any] = {
        "position": {"gtid": None, "file": "binlog.000003", "pos": 4, "server_id": 1}
    }
    events = [
        pg.event(ORDERS_PG, "c", None, row, order=1, **lsn),
        pg.event(ORDERS_PG, "u", row, paid, order=2, extra={"unchanged_columns": ["note"]}, **lsn),
        pg.event(ORDERS_PG, "u", None, paid, order=3, **lsn),  # REPLICA IDENTITY NOTHING
        pg.event(ORDERS_PG, "d", {"order_id": 1}, None, order=4, **lsn),  # key image only
        pg.event(LOG_TABLE, "t", None, None, order=5, **lsn),
        pg.event(ORDERS_PG, "r", None, row, order=1, snapshot="true", **lsn),
        my.event(ORDERS_MY, "c", None, row, order=1, **binlog, **common),
        my.event(ORDERS_MY, "u", row, paid, order=2, **binlog, **common),
        my.event(ORDERS_MY, "d", paid, None, order=3, **binlog, **common),
    ]
    events[-2]["source"]["gtid"] = "3E11FA47-71CA-11E1-9E33-C80AA9429562:23"
    EnvelopeBuilder.mark_last(events[4], 5)
    events[5]["source"]["snapshot"] = "last"
    return events


def test_envelope_events_fit_database_cdc() -> None:
    schema = REGISTRY.get("database_cdc")
    for event in envelope_events():
        assert_valid(schema, event)


def test_simulated_change_events_fit_database_cdc() -> None:
    schema = REGISTRY.get("database_cdc")
    simulator = CdcSimulator(seed=11)
    events = simulator.events(300)
    assert {event["operation"] for event in events} == {"INSERT", "UPDATE", "DELETE"}
    for event in events:
        assert_valid(schema, event)
    seed_example = simulator.create_change_event(
        "orders",
        "UPDATE",
        before_data={"order_id": 12345, "status": "pending", "total_amount": 100.0},
        after_data={"order_id": 12345, "status": "completed", "total_amount": 100.0},
    )
    assert_valid(schema, seed_example)
    assert_valid(schema, simulator.create_change_event("invoices", "DELETE"))


def test_database_cdc_rejects_inconsistent_and_mistyped_events() -> None:
    schema = REGISTRY.get("database_cdc")
    event = envelope_events()[0]
    assert paths(schema, {**event, "op": "x"}) == ["$.op"]
    assert [str(v) for v in schema.violations({**event, "operation": "DELETE"})] == [
        '$.operation: "INSERT" was expected'
    ]
    deleted = {**event, "op": "d", "operation": "DELETE"}  # a delete with an after image
    assert paths(schema, deleted) == ["$.after"]
    source = {**event["source"], "lsn": "0/16B3748", "db": None}
    transaction = {"id": 7741, "total_order": 0}
    assert paths(schema, {**event, "source": source, "transaction": transaction}) == [
        "$.source.db",
        "$.source.lsn",
        "$.transaction.id",
        "$.transaction.total_order",
    ]
    without = {key: value for key, value in event.items() if key not in ("op", "before")}
    assert [str(v) for v in schema.violations(without)] == [
        '$: "before" is a required property',
        '$: "op" is a required property',
    ]


# --- app_events: the HTTP source's events -----------------------------------------------------


def as_http_source(body: bytes, content_type: str) -> list[dict[str, Any]]:
    """The events of one request as HttpSource._take makes them records."""
    records = []
    for event in parse_body(body, content_type):
        assert isinstance(event, dict)
        own = event.pop("source", None)
        if own is not None:
            event["origin"] = own
        event["source"] = "app_events"
        event["ingestion_timestamp"] = INGESTED
        records.append(event)
    return records


def test_posted_simulated_events_fit_app_events() -> None:
    bodies: list[bytes] = []
    assert post_events(bodies.append, Pacer(2000, 0.05), batch=25, seed=2) == 100
    events = [event for body in bodies for event in as_http_source(body, "application/x-ndjson")]
    assert len(events) == 100
    for version in REGISTRY.versions("app_events"):
        for event in events:
            assert_valid(REGISTRY.get("app_events", version), event)
    by_hand = as_http_source(
        b'[{"event_type": "login", "source": {"app": "ios"}}, {"event_type": "x", "n": [1]}]',
        "application/json",
    )
    assert by_hand[0]["origin"] == {"app": "ios"}
    for event in by_hand:
        assert_valid(REGISTRY.get("app_events", 1), event)


def test_app_events_rejects_events_without_a_type() -> None:
    schema = REGISTRY.get("app_events", 1)
    found = schema.violations({"properties": [], "event_type": ""})
    assert [v.path for v in found] == ["$.event_type", "$.properties"]
    assert "shorter" in found[0].message and "not of type" in found[1].message
    assert paths(schema, {"user_id": "u1"}) == ["$"]


def test_app_events_v2_is_a_backward_compatible_evolution() -> None:
    v1, v2 = REGISTRY.get("app_events", 1), REGISTRY.get("app_events", 2)
    assert REGISTRY.get("app_events") is v2, "the latest by default"
    assert check(v1.document, v2.document, "backward") == []
    assert check(v1.document, v2.document, "forward"), "v1 cannot read every v2 event"
    epoch_ms = {"event_type": "purchase", "user_id": 42, "timestamp": 1_716_719_445_123}
    assert v2.is_valid(epoch_ms) and not v1.is_valid(epoch_ms)


def test_compat_reads_every_builtin_schema() -> None:
    for name in REGISTRY.names():
        for version in REGISTRY.versions(name):
            document = REGISTRY.get(name, version).document
            assert check(document, document, "full") == []


# --- violations: every one, with its path, sorted ----------------------------------------------

NESTED = {
    "type": "object",
    "properties": {
        "after": {"type": "object", "properties": {"id": {"type": "integer"}}},
        "tags": {"type": "array", "items": {"type": "string"}},
        "content-type": {"type": "string"},
    },
}


def test_violation_paths_name_keys_and_indices() -> None:
    schema = SchemaRegistry().add("nested", 1, NESTED)
    record = {
        "tags": ["a", 1, *"bcdefghi", 2],
        "after": {"id": "x"},
        "content-type": 3,
    }
    assert [str(v) for v in schema.violations(record)] == [
        '$.after.id: "x" is not of type "integer"',
        "$['content-type']: 3 is not of type \"string\"",
        '$.tags[1]: 1 is not of type "string"',
        '$.tags[10]: 2 is not of type "string"',
    ]
    assert schema.violations({"after": {"id": 1}}) == []
    assert str(Violation("$.status", "bad")) == "$.status: bad"
    assert format_path([]) == "$"
    assert format_path(["it's", 0, "a\\b"]) == "$['it\\'s'][0]['a\\\\b']"


def test_records_that_are_not_plain_json() -> None:
    schema = SchemaRegistry().add("nested", 1, NESTED)

    class Text(str):
        pass

    # Judged as the producer's orjson would send them.
    assert schema.is_valid({"tags": [Text("a")], "after": {"id": 1}})
    assert schema.is_valid({"tags": (Text("a"), "b")})
    moment = datetime(2024, 5, 26, tzinfo=UTC)
    assert schema.is_valid({"tags": [moment]})
    assert paths(schema, {"tags": [Text("a")], "after": {"id": Text("x")}}) == ["$.after.id"]
    for garbage in ({"tags": {1, 2}}, {1: "a"}, b"bytes", object(), {"tags": [math.nan]}):
        assert schema.is_valid(garbage) is False
    [violation] = schema.violations({"tags": {1, 2}})
    assert violation.path == "$" and "not a JSON value" in violation.message
    deep: list[Any] = []
    for _ in range(2000):
        deep = [deep]
    assert schema.is_valid({"tags": deep}) is False
    assert paths(schema, {"tags": deep}) == ["$"]


# --- the registry ---------------------------------------------------------------------------


def test_builtin_registry() -> None:
    registry = SchemaRegistry.builtin()
    assert registry.names() == sorted(BUILTIN_NAMES)
    assert registry.versions("app_events") == [1, 2]
    web_logs = registry.get("web_logs")
    assert (web_logs.name, web_logs.version, web_logs.id) == ("web_logs", 1, "web_logs/v1")
    assert web_logs.document["type"] == "object"
    assert registry.get("app_events", 1).version == 1
    registry.add("web_logs", 2, {"type": "object"})
    assert registry.get("web_logs").version == 2
    assert SchemaRegistry.builtin().versions("web_logs") == [1], "each registry is its own"
    assert issubclass(SchemaLoadError, ConfigError)


def test_missing_names_and_versions_say_what_there_is() -> None:
    known = "known: app_events (v1, v2); database_cdc (v1); iot_sensors (v1); web_logs (v1)"
    with pytest.raises(SchemaLoadError, match=re.escape(f"no schema named 'web_log'; {known}")):
        REGISTRY.get("web_log")
    with pytest.raises(SchemaLoadError, match="schema app_events has no version 3; it has v1, v2"):
        REGISTRY.get("app_events", 3)
    with pytest.raises(SchemaLoadError, match="the registry holds none"):
        SchemaRegistry().versions("web_logs")


def test_add_refuses_duplicates_and_documents_that_are_not_schemas() -> None:
    registry = SchemaRegistry()
    first = registry.add("orders", 1, {"type": "object", "$id": "urn:shop:orders:1"})
    assert first.id == "urn:shop:orders:1"
    with pytest.raises(SchemaLoadError, match="orders v1 is already in the registry"):
        registry.add("orders", 1, {"type": "object"})
    assert registry.get("orders") is first
    refused = {
        "a type that is no type": ({"type": 5}, "at \\$.type in the schema"),
        "properties not an object": ({"properties": 3}, 'is not of type "object"'),
        "a broken reference": ({"$ref": "#/$defs/nope"}, "does not exist"),
        "a remote reference": ({"$ref": "https://example.com/s.json"}, "Retrieval is disabled"),
        "an unknown metaschema": ({"$schema": "https://example.com/meta"}, "Unknown meta-schema"),
        "a bad pattern": ({"pattern": "("}, "regex"),
        "not JSON": ({"enum": [{1, 2}]}, "not JSON"),
    }
    for why, (document, message) in refused.items():
        with pytest.raises(SchemaLoadError, match=message):
            registry.add("bad", 1, document)
            pytest.fail(why)
    for name, version in (("", 1), ("a.b", 1), ("ok", 0), ("ok", True), ("ok", "1")):
        with pytest.raises(SchemaLoadError, match="must be"):
            registry.add(name, version, {})  # type: ignore[arg-type]
    with pytest.raises(SchemaLoadError, match="must be a JSON object, not list"):
        registry.add("bad", 1, [])  # type: ignore[arg-type]
    assert registry.names() == ["orders"]


def test_document_is_a_copy_compiled_once() -> None:
    document: dict[str, Any] = {"type": "object", "required": ["a"]}
    schema = SchemaRegistry().add("copy", 1, document)
    document["required"].append("b")
    assert schema.document == {"type": "object", "required": ["a"]}
    assert schema.is_valid({"a": 1})


def test_draft_7_documents_keep_their_draft() -> None:
    document = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "properties": {"n": {"type": "integer"}},
        "dependencies": {"a": ["b"]},
    }
    schema = SchemaRegistry().add("old", 1, document)
    assert paths(schema, {"n": "x", "a": 1}) == ["$", "$.n"]


def write(path: Path, content: Any) -> Path:
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def test_load_file_name_rules(tmp_path: Path) -> None:
    registry = SchemaRegistry()
    schema = registry.load_file(write(tmp_path / "orders.v3.json", {"type": "object"}))
    assert (schema.name, schema.version) == ("orders", 3)
    keyed = {"type": "object", "x-kingest-name": "users", "x-kingest-version": 2}
    schema = registry.load_file(str(write(tmp_path / "users-latest.json", keyed)))
    assert (schema.name, schema.version) == ("users", 2)
    agreeing = {**keyed, "x-kingest-version": 5}
    assert registry.load_file(write(tmp_path / "users.v5.json", agreeing)).version == 5
    refused = {
        "plain.json": ({"type": "object"}, "name the file <name>.v<N>.json or give the document"),
        "half.json": ({"x-kingest-name": "half"}, "both 'x-kingest-name'"),
        "orders.v4.json": ({"x-kingest-name": "users"}, "named for schema orders but"),
        "orders.v5.json": ({"x-kingest-version": 6}, "named for version 5 but"),
        "orders.v0.json": ({}, "must be an integer from 1"),
        "bad-version.json": ({"x-kingest-name": "b", "x-kingest-version": "1"}, "integer from 1"),
        "orders.v3.json": ({"type": "object"}, "orders v3 is already in the registry"),
        "broken.v1.json": ("{not json", "not valid JSON"),
        "array.v1.json": ("[]", "must be a JSON object, not a list"),
        "type.v1.json": ({"type": 5}, "not a usable JSON Schema"),
        "orders.v6.txt": ("{}", "ends in .json, .yaml or .yml"),
    }
    other = tmp_path / "other"
    other.mkdir()
    for file_name, (content, message) in refused.items():
        path = write(other / file_name, content)
        with pytest.raises(SchemaLoadError, match=message) as caught:
            registry.load_file(path)
        assert str(path) in str(caught.value)
    with pytest.raises(SchemaLoadError, match="cannot read"):
        registry.load_file(tmp_path / "missing.v1.json")
    assert registry.names() == ["orders", "users"]


def test_yaml_files(tmp_path: Path) -> None:
    registry = SchemaRegistry()
    schema = registry.load_file(
        write(
            tmp_path / "readings.v1.yaml",
            "type: object\nrequired: [device_id]\nproperties:\n  device_id: {type: string}\n",
        )
    )
    assert schema.document["required"] == ["device_id"]
    assert paths(schema, {"device_id": 1}) == ["$.device_id"]
    keyed = "x-kingest-name: r2\nx-kingest-version: 1\ntype: object\n"
    assert registry.load_file(write(tmp_path / "anything.yml", keyed)).name == "r2"
    for name, content, message in [
        ("bad.v1.yaml", "type: [object\n", "not valid YAML"),
        ("empty.v1.yaml", "", "not empty"),
        ("keys.v1.yaml", "properties:\n  1: {type: string}\n", "not JSON"),
    ]:
        with pytest.raises(SchemaLoadError, match=message):
            registry.load_file(write(tmp_path / name, content))


def test_load_dir_is_all_or_nothing(tmp_path: Path) -> None:
    write(tmp_path / "a.v1.json", {"type": "object"})
    write(tmp_path / "a.v2.yaml", "type: object\n")
    write(tmp_path / "b.v1.yml", "type: array\n")
    write(tmp_path / "README.md", "not a schema")
    (tmp_path / "nested").mkdir()
    write(tmp_path / "nested" / "c.v1.json", {})
    registry = SchemaRegistry()
    loaded = registry.load_dir(tmp_path)
    assert [(s.name, s.version) for s in loaded] == [("a", 1), ("a", 2), ("b", 1)]
    assert registry.names() == ["a", "b"]

    broken = tmp_path / "broken"
    broken.mkdir()
    write(broken / "a.v1.json", {"type": "object"})
    write(broken / "c.v1.json", {"type": 5})
    write(broken / "d.v1.json", "{")
    write(broken / "twice.json", {"x-kingest-name": "a", "x-kingest-version": 1})
    fresh = SchemaRegistry()
    with pytest.raises(SchemaLoadError, match="no schema loaded, 3 problems") as caught:
        fresh.load_dir(broken)
    message = str(caught.value)
    assert "c.v1.json" in message and "d.v1.json" in message
    assert "schema a v1 is also in" in message
    assert fresh.names() == []
    with pytest.raises(SchemaLoadError, match="already in the registry"):
        registry.load_dir(tmp_path)
    with pytest.raises(SchemaLoadError, match="cannot list"):
        registry.load_dir(tmp_path / "nowhere")


# --- properties --------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8),
                                                                      children, max_size=4),
    max_leaves=20,
)  # fmt: skip
SCHEMAS = [REGISTRY.get(name, version) for name in REGISTRY.names()
           for version in REGISTRY.versions(name)]  # fmt: skip
KNOWN_FIELDS = sorted(
    {key for schema in SCHEMAS for key in schema.document.get("properties", {})}
    | {"log_type", "op", "operation", "quality_violations"}
)
VALID = {
    "web_logs": compile_format("combined")(SEED_LINE),
    "iot_sensors": IoTSimulator(seed=1).readings(1)[0],
    "database_cdc": envelope_events()[1],
    "app_events": {"event_type": "page_view", "user_id": "u1", "properties": {"page": "/"}},
}
# Values that steer records into the schemas' branches (flagged, web_access, each op).
steering = st.sampled_from(["web_access", "c", "u", "d", "r", "t", "INSERT", "UPDATE", ["x"]])
mutations = st.dictionaries(
    st.sampled_from(KNOWN_FIELDS) | st.text(max_size=6), json_values | steering, max_size=6
)


@settings(max_examples=300, deadline=None)
@given(index=st.integers(0, len(SCHEMAS) - 1), value=json_values)
def test_is_valid_agrees_with_violations_on_any_json(index: int, value: Any) -> None:
    schema = SCHEMAS[index]
    valid = schema.is_valid(value)
    found = schema.violations(value)
    assert type(valid) is bool
    assert valid == (found == [])
    assert all(v.path.startswith("$") and v.message for v in found)
    # The engine's own two answers agree: no invalid record without a listed violation.
    assert Violation("$", "does not fit the schema") not in found


@settings(max_examples=400, deadline=None)
@given(index=st.integers(0, len(SCHEMAS) - 1), changes=mutations)
def test_is_valid_agrees_with_violations_on_near_valid_records(
    index: int, changes: dict[str, Any]
) -> None:
    schema = SCHEMAS[index]
    record = {**VALID[schema.name], **changes}
    found = schema.violations(record)
    assert schema.is_valid(record) == (found == [])
    assert all(v.path.startswith("$") and v.message for v in found)
    assert Violation("$", "does not fit the schema") not in found


@settings(max_examples=200, deadline=None)
@given(
    index=st.integers(0, len(SCHEMAS) - 1),
    garbage=st.recursive(
        st.none() | st.binary(max_size=4) | st.floats() | st.text(max_size=4)
        | st.integers(-(2**80), 2**80) | st.just(math.inf) | st.builds(object),
        lambda children: st.lists(children, max_size=3) | st.tuples(children)
        | st.frozensets(st.integers(), max_size=2)
        | st.dictionaries(st.integers() | st.text(max_size=3), children, max_size=3),
        max_leaves=10,
    ),
)  # fmt: skip
def test_garbage_never_raises(index: int, garbage: Any) -> None:
    schema = SCHEMAS[index]
    assert type(schema.is_valid(garbage)) is bool
    assert isinstance(schema.violations(garbage), list)
