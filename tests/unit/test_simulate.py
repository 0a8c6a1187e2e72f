"""Tests of the seed-source simulators and of the partition keys their records get."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

import orjson
import pytest

from kingest.sources.simulate import (
    DEVICE_TYPES,
    SOURCES,
    CdcSimulator,
    IoTSimulator,
    WebLogSimulator,
    change_type,
    parse_combined,
    partition_key_for,
)
from kingest.sources.simulate.weblog import format_log_time, parse_log_time

SEED_LINE = (
    '192.168.1.1 - - [26/May/2024:10:30:45 +0000] "GET /api/users HTTP/1.1" 200 1234 '
    '"https://example.com" "Mozilla/5.0"'
)


# --- determinism -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda seed: WebLogSimulator(seed).lines,
        lambda seed: IoTSimulator(seed).readings,
        lambda seed: CdcSimulator(seed).events,
    ],
    ids=["weblog", "iot", "cdc"],
)
def test_same_seed_same_output_and_chunking_does_not_matter(make: Any) -> None:
    whole = make(7)(300)
    assert whole == make(7)(300)
    assert whole != make(8)(300)
    chunked = make(7)
    pieces = chunked(1) + chunked(120) + chunked(179)
    assert pieces == whole


def test_output_and_keys_do_not_depend_on_the_process() -> None:
    # Python's hash() is salted per process; nothing seeded, and no key, may depend on it.
    code = (
        "import orjson; from kingest.sources.simulate import *; "
        "print(orjson.dumps([WebLogSimulator(3).lines(50), IoTSimulator(3).readings(50), "
        "CdcSimulator(3).events(50), partition_key_for('app_events', {'b': 1, 'a': [1, 2]})]"
        ").decode())"
    )
    runs = [
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": str(salt)},
        ).stdout
        for salt in (1, 2)
    ]
    assert runs[0] == runs[1]
    expected = [
        WebLogSimulator(3).lines(50),
        IoTSimulator(3).readings(50),
        CdcSimulator(3).events(50),
        partition_key_for("app_events", {"a": [1, 2], "b": 1}),
    ]
    assert orjson.loads(runs[0]) == expected


# --- web logs ----------------------------------------------------------------------------------


def test_parse_combined_seed_example() -> None:
    assert parse_combined(SEED_LINE) == {
        "timestamp": "2024-05-26T10:30:45+00:00",
        "ip_address": "192.168.1.1",
        "method": "GET",
        "path": "/api/users",
        "protocol": "HTTP/1.1",
        "status_code": 200,
        "response_size": 1234,
        "referer": "https://example.com",
        "user_agent": "Mozilla/5.0",
        "log_type": "web_access",
    }


def test_parse_combined_dash_size_and_referer_and_offset() -> None:
    line = (
        '2001:db8::7 - bob [01/Jan/2025:00:05:09 -0330] "HEAD /health HTTP/2.0" 304 - "-" '
        '"curl/8.5.0"\n'
    )
    parsed = parse_combined(line)
    assert parsed["ip_address"] == "2001:db8::7"
    assert parsed["response_size"] == 0
    assert parsed["referer"] is None
    assert parsed["timestamp"] == "2025-01-01T00:05:09-03:30"
    assert datetime.fromisoformat(parsed["timestamp"]) == datetime(2025, 1, 1, 3, 35, 9, tzinfo=UTC)


@pytest.mark.parametrize(
    "line",
    [
        "",
        "garbage",
        SEED_LINE.replace("200", "2000", 1),
        SEED_LINE.replace("May", "Foo"),
        SEED_LINE.replace("26/May", "31/Jun"),
        SEED_LINE.replace("+0000", "+0060"),
        SEED_LINE + " trailing",
    ],
)
def test_parse_combined_rejects_what_is_not_combined_format(line: str) -> None:
    with pytest.raises(ValueError):
        parse_combined(line)


def test_log_time_is_locale_free_and_round_trips() -> None:
    moment = datetime(2024, 12, 31, 23, 59, 59, tzinfo=UTC)
    for offset in (timedelta(0), timedelta(hours=9), timedelta(hours=-3, minutes=-30)):
        text = format_log_time(moment, offset)
        parsed = parse_log_time(text)
        assert parsed == moment
        assert parsed.utcoffset() == offset
    assert format_log_time(moment, timedelta(hours=9)) == "01/Jan/2025:08:59:59 +0900"
    assert format_log_time(moment, timedelta(hours=-3, minutes=-30)) == (
        "31/Dec/2024:20:29:59 -0330"
    )


def test_generated_lines_round_trip_through_the_parser() -> None:
    lines = WebLogSimulator(11).lines(3000)
    parsed = [parse_combined(line) for line in lines]
    offsets: Counter[timedelta | None] = Counter()
    versions: Counter[int] = Counter()
    for line, record in zip(lines, parsed, strict=True):
        # Rebuild the line's parts from the parsed fields: nothing was lost or altered.
        stamp = datetime.fromisoformat(record["timestamp"])
        offset = stamp.utcoffset()
        assert offset is not None
        offsets[offset] += 1
        size = str(record["response_size"]) if record["response_size"] else "-"
        request = f'"{record["method"]} {record["path"]} {record["protocol"]}"'
        tail = f'{record["status_code"]} {size} "{record["referer"] or "-"}" '
        assert line.startswith(record["ip_address"] + " - ")
        assert f"[{format_log_time(stamp, offset)}]" in line
        assert line.endswith(f'{request} {tail}"{record["user_agent"]}"')
        versions[ipaddress.ip_address(record["ip_address"]).version] += 1
        assert record["log_type"] == "web_access"
    assert offsets[timedelta(0)] > len(lines) / 3
    assert len(offsets) >= 4, "several servers log in non-UTC offsets"
    assert timedelta(hours=5, minutes=30) in offsets
    assert versions[4] > versions[6] > 0
    statuses = Counter(record["status_code"] for record in parsed)
    assert statuses[200] > len(lines) / 2
    assert {304, 404, 500} <= set(statuses)
    assert any(record["referer"] is None for record in parsed)
    assert any(record["response_size"] == 0 for record in parsed)
    assert len({record["method"] for record in parsed}) >= 4


def test_web_log_time_advances_in_utc() -> None:
    parsed = [parse_combined(line) for line in WebLogSimulator(5).lines(500)]
    moments = [datetime.fromisoformat(record["timestamp"]) for record in parsed]
    assert moments == sorted(moments)
    assert moments[0] >= datetime(2024, 5, 26, 10, 30, 45, tzinfo=UTC)


def test_web_log_clock_overrides_simulated_time() -> None:
    moment = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    for line in WebLogSimulator(1, clock=lambda: moment).lines(50):
        assert datetime.fromisoformat(parse_combined(line)["timestamp"]) == moment


# --- IoT ---------------------------------------------------------------------------------------


def test_iot_readings_shape_and_ranges() -> None:
    simulator = IoTSimulator(2, devices=40)
    readings = simulator.readings(4000)
    fleet = {device_id: (kind, location) for device_id, kind, location in simulator.fleet}
    kinds: Counter[str] = Counter()
    for reading in readings:
        assert set(reading) == {
            "device_id",
            "device_type",
            "value",
            "unit",
            "location",
            "timestamp",
        }
        kind = DEVICE_TYPES[reading["device_type"]]
        kinds[reading["device_type"]] += 1
        assert fleet[reading["device_id"]] == (reading["device_type"], reading["location"])
        assert isinstance(reading["value"], float)
        assert kind.minimum <= reading["value"] <= kind.maximum
        assert reading["unit"] == kind.unit
        stamp = datetime.fromisoformat(reading["timestamp"])
        assert stamp.utcoffset() == timedelta(0)
    assert len(kinds) >= 3
    assert kinds.most_common(1)[0][0] == "temperature"


def test_iot_device_values_move_smoothly() -> None:
    simulator = IoTSimulator(4)
    series = [
        simulator.generate_sensor_reading("sensor_001", "temperature", "building_a_floor_1")
        for _ in range(500)
    ]
    values = [reading["value"] for reading in series]
    assert max(abs(b - a) for a, b in pairwise(values)) < 1.5
    assert 5.0 < sum(values) / len(values) < 40.0


def test_iot_unknown_type_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown device type"):
        IoTSimulator(1).generate_sensor_reading("d1", "flux-capacitor", "lab")


# --- CDC ---------------------------------------------------------------------------------------


def _row_key(event: dict[str, Any]) -> tuple[str, str]:
    return event["table"], orjson.dumps(event["primary_key"]).decode()


def test_cdc_per_row_histories_are_valid() -> None:
    events = CdcSimulator(9).events(5000)
    state: dict[tuple[str, str], dict[str, Any]] = {}
    deleted: set[tuple[str, str]] = set()
    operations: Counter[str] = Counter()
    for event in events:
        key = _row_key(event)
        operations[event["operation"]] += 1
        if event["operation"] == "INSERT":
            assert key not in state and key not in deleted, "keys are never reused"
            assert event["before"] is None
            state[key] = event["after"]
        elif event["operation"] == "UPDATE":
            assert key in state, f"update of a row that does not exist: {key}"
            assert event["before"] == state[key], "before is the row as it was"
            assert event["after"] != event["before"]
            state[key] = event["after"]
        else:
            assert event["operation"] == "DELETE"
            assert key in state, f"delete of a row that does not exist: {key}"
            assert event["before"] == state.pop(key)
            assert event["after"] is None
            deleted.add(key)
    assert all(operations[op] > 100 for op in ("INSERT", "UPDATE", "DELETE"))


def test_cdc_tables_stay_bounded() -> None:
    simulator = CdcSimulator(4, max_rows=40)
    for _ in range(20):
        simulator.events(500)
        # A transaction adds at most two rows to a table.
        assert len(simulator.orders) <= 42
        assert len(simulator.users) <= 42


def test_cdc_orders_belong_to_live_users() -> None:
    live_users: set[int] = set()
    orders_of: defaultdict[int, int] = defaultdict(int)
    for event in CdcSimulator(12).events(5000):
        row = event["after"] or event["before"]
        if event["table"] == "users":
            if event["operation"] == "INSERT":
                live_users.add(row["user_id"])
            elif event["operation"] == "DELETE":
                assert orders_of[row["user_id"]] == 0
                live_users.discard(row["user_id"])
        elif event["operation"] == "INSERT":
            assert row["user_id"] in live_users
            orders_of[row["user_id"]] += 1
        elif event["operation"] == "DELETE":
            orders_of[row["user_id"]] -= 1


def test_cdc_event_shape_and_debezium_subset() -> None:
    events = CdcSimulator(3).events(2000)
    for event in events:
        assert event["database"] == "ecommerce_db"
        assert event["table"] in ("users", "orders")
        op = {"INSERT": "c", "UPDATE": "u", "DELETE": "d"}[event["operation"]]
        assert event["op"] == op
        assert event["source"] == {
            "db": "ecommerce_db",
            "table": event["table"],
            "txId": int(event["transaction_id"]),
        }
        stamp = datetime.fromisoformat(event["timestamp"])
        assert stamp.utcoffset() == timedelta(0)
        assert event["ts_ms"] == int(stamp.timestamp() * 1000)
        assert event["change_type"] == change_type(
            event["operation"], event["before"], event["after"]
        )
        pk_column = "user_id" if event["table"] == "users" else "order_id"
        assert list(event["primary_key"]) == [pk_column]
        assert event["primary_key"][pk_column] == (event["after"] or event["before"])[pk_column]
    assert {event["change_type"] for event in events} == {
        "new_record",
        "record_deletion",
        "critical_update",
        "standard_update",
    }


def test_cdc_transactions_group_events_and_count_up() -> None:
    events = CdcSimulator(21).events(3000)
    by_tx: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for event in events:
        by_tx[event["source"]["txId"]].append(event)
    ids = [event["source"]["txId"] for event in events]
    assert ids == sorted(ids), "transaction ids count up in commit order"
    # Events of one transaction are adjacent and share its commit time.
    assert len(list(dict.fromkeys(ids))) == len(by_tx)
    sizes = Counter(len(group) for group in by_tx.values())
    assert sizes[1] > 0 and sum(n for size, n in sizes.items() if size > 1) > 50
    for group in by_tx.values():
        assert len({event["ts_ms"] for event in group}) == 1
    assert len(by_tx) < len(events)


def test_change_type_matches_the_seed() -> None:
    before = {"order_id": 12345, "status": "pending", "total_amount": 100.0}
    after = {"order_id": 12345, "status": "completed", "total_amount": 100.0}
    assert change_type("UPDATE", before, after) == "critical_update"
    assert change_type("UPDATE", {"username": "a"}, {"username": "b"}) == "standard_update"
    # A critical field on one side only is not a change the seed can see.
    assert change_type("UPDATE", {"email": "a@x"}, {"username": "b"}) == "standard_update"
    assert change_type("UPDATE", None, after) == "standard_update"
    assert change_type("INSERT", None, after) == "new_record"
    assert change_type("DELETE", before, None) == "record_deletion"
    assert change_type("MERGE", before, after) == "unknown"


def test_seed_style_change_event() -> None:
    simulator = CdcSimulator(1)
    event = simulator.create_change_event(
        table_name="orders",
        operation="UPDATE",
        before_data={"order_id": 12345, "status": "pending", "total_amount": 100.0},
        after_data={"order_id": 12345, "status": "completed", "total_amount": 100.0},
    )
    assert event["change_type"] == "critical_update"
    assert event["primary_key"] == {"order_id": 12345}
    assert partition_key_for("database_cdc", event) == "ecommerce_db.orders:12345"
    insert = simulator.create_change_event("orders", "INSERT", {"order_id": 1}, {"order_id": 2})
    assert insert["before"] is None and insert["after"] == {"order_id": 2}
    with pytest.raises(ValueError):
        simulator.create_change_event("orders", "UPSERT")


# --- partition keys ----------------------------------------------------------------------------


def test_cdc_partition_key_is_table_and_primary_key_not_transaction() -> None:
    events = CdcSimulator(5).events(3000)
    keys_by_row: defaultdict[tuple[str, str], set[str]] = defaultdict(set)
    for event in events:
        key = partition_key_for("database_cdc", event)
        table = event["table"]
        pk = next(iter(event["primary_key"].values()))
        assert key == f"ecommerce_db.{table}:{pk}"
        assert event["transaction_id"] not in key
        keys_by_row[_row_key(event)].add(key)
    # Every change of one row shares one key, so they stay on one shard, in order.
    assert all(len(keys) == 1 for keys in keys_by_row.values())
    changes_per_row = Counter(_row_key(event) for event in events)
    assert sum(1 for n in changes_per_row.values() if n > 1) > 50


def test_cdc_partition_key_from_seed_fields_and_composite_keys() -> None:
    delete = {
        "database": "ecommerce_db",
        "table": "users",
        "operation": "DELETE",
        "before": {"user_id": 7, "status": "active"},
        "after": None,
    }
    assert partition_key_for("database_cdc", delete) == "ecommerce_db.users:7"
    composite = {
        "database": "shop",
        "table": "order_lines",
        "primary_key": {"order_id": 5, "line_no": 2},
    }
    assert partition_key_for("database_cdc", composite) == "shop.order_lines:5,2"
    with pytest.raises(ValueError):
        partition_key_for("database_cdc", {"database": "shop", "table": "unknown"})


def test_web_and_iot_partition_keys() -> None:
    record = parse_combined(SEED_LINE)
    assert partition_key_for("web_logs", record) == "192.168.1.1"
    assert partition_key_for("web_logs", {**record, "session_id": "s-42"}) == "s-42"
    reading = IoTSimulator(1).readings(1)[0]
    assert partition_key_for("iot_sensors", reading) == reading["device_id"]
    with pytest.raises(ValueError):
        partition_key_for("web_logs", {"path": "/"})
    with pytest.raises(ValueError):
        partition_key_for("iot_sensors", {"value": 1.0})


def test_other_sources_get_a_stable_digest_key() -> None:
    record = {"b": 1, "a": [1, 2]}
    key = partition_key_for("app_events", record)
    assert key.startswith("app_events:")
    assert key == partition_key_for("app_events", {"a": [1, 2], "b": 1})
    assert key != partition_key_for("app_events", {"a": [1, 2], "b": 2})


def test_long_keys_are_shortened_stably() -> None:
    long_session = "s" * 300
    key = partition_key_for("web_logs", {"session_id": long_session})
    assert len(key) <= 256
    assert key == partition_key_for("web_logs", {"session_id": long_session})
    assert key != partition_key_for("web_logs", {"session_id": long_session + "x"})


def test_sources_constant() -> None:
    assert SOURCES == ("web_logs", "iot_sensors", "database_cdc")


def test_timestamps_keep_offsets_in_json() -> None:
    line = WebLogSimulator(1, clock=lambda: datetime(2024, 5, 26, 1, 0, tzinfo=UTC)).lines(200)
    stamps = {parse_combined(text)["timestamp"] for text in line}
    assert "2024-05-26T10:00:00+09:00" in stamps
    assert "2024-05-26T01:00:00+00:00" in stamps
    assert all(
        datetime.fromisoformat(stamp) == datetime(2024, 5, 26, 1, 0, tzinfo=UTC) for stamp in stamps
    )
