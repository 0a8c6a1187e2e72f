"""The change event envelope: fields, change types, stable per-row partition keys."""

from __future__ import annotations

from kingest.sources.cdc.envelope import (
    MAX_KEY_LENGTH,
    EnvelopeBuilder,
    TableRef,
    classify_change,
)

ORDERS = TableRef("shop", "public", "orders", ("order_id",))


def build(**kwargs: object) -> dict[str, object]:
    builder = EnvelopeBuilder("postgresql", "pg_shop", {"public.orders": ["status"]})
    arguments: dict[str, object] = {
        "position": {"lsn": 42},
        "transaction_id": "7",
        "commit_ms": 1_716_719_445_120,
        "order": 1,
    }
    arguments.update(kwargs)
    return builder.event(ORDERS, "u", {"order_id": 1, "status": "a"}, {"order_id": 1,
                         "status": "b"}, **arguments)  # type: ignore[arg-type]  # fmt: skip


def test_event_fields() -> None:
    event = build()
    assert event["op"] == "u" and event["operation"] == "UPDATE"
    assert event["database"] == "shop" and event["table"] == "orders"
    assert event["change_type"] == "critical_update"
    assert event["primary_key"] == {"order_id": 1}
    assert event["timestamp"] == "2024-05-26T10:30:45.120+00:00"
    source = event["source"]
    assert isinstance(source, dict)
    assert source["connector"] == "postgresql" and source["name"] == "pg_shop"
    assert (source["db"], source["schema"], source["table"]) == ("shop", "public", "orders")
    assert (source["lsn"], source["txId"], source["ts_ms"]) == (42, "7", 1_716_719_445_120)
    assert isinstance(event["ingestion_timestamp"], str)


def test_critical_columns_per_table() -> None:
    builder = EnvelopeBuilder("mysql", "my", {"shop.orders": ["note"]})
    table = TableRef("shop", None, "orders", ("id",))
    common = {"position": {"file": "b.1", "pos": 4}, "transaction_id": "t", "commit_ms": 0}
    changed_status = builder.event(
        table, "u", {"id": 1, "status": "a"}, {"id": 1, "status": "b"}, order=1, **common
    )  # type: ignore[arg-type]
    assert changed_status["change_type"] == "standard_update"
    assert "schema" not in changed_status["source"]


def test_classify_change() -> None:
    assert classify_change("INSERT", None, {"a": 1}) == "new_record"
    assert classify_change("READ", None, {"a": 1}) == "new_record"
    assert classify_change("DELETE", {"a": 1}, None) == "record_deletion"
    assert classify_change("UPDATE", {"email": "a"}, {"email": "b"}) == "critical_update"
    assert classify_change("UPDATE", {"id": 1}, {"id": 1, "email": "b"}) == "standard_update"
    assert classify_change("TRUNCATE", None, None) == "table_truncation"


def test_partition_keys_are_per_row_stable_and_bounded() -> None:
    key = EnvelopeBuilder.partition_key(build())
    assert key == "shop.public.orders:[1]"
    assert EnvelopeBuilder.partition_key(build()) == key
    long_table = TableRef("shop", "public", "t" * 300, ("id",))
    event = EnvelopeBuilder("postgresql", "pg").event(
        long_table, "c", None, {"id": 1}, position={}, transaction_id="1", commit_ms=0, order=1
    )
    long_key = EnvelopeBuilder.partition_key(event)
    assert len(long_key) <= MAX_KEY_LENGTH and long_key.startswith("sha256:")
    no_key = TableRef("shop", None, "log", ())
    event = EnvelopeBuilder("mysql", "my").event(
        no_key, "c", None, {"x": 1}, position={}, transaction_id="1", commit_ms=0, order=1
    )
    assert EnvelopeBuilder.partition_key(event) == "shop.log"
