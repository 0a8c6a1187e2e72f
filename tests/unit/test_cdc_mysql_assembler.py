"""Change events built from decoded binlog rows: transactions, keys, positions (no server)."""

from __future__ import annotations

from typing import Any

import pytest

from kingest.sources.cdc.envelope import EnvelopeBuilder, TableRef
from kingest.sources.cdc.mysql.assembler import Chunk, TransactionAssembler
from kingest.sources.cdc.mysql.errors import CaptureError
from kingest.sources.cdc.mysql.position import BinlogPosition

ORDERS = TableRef("shop", None, "orders", ("id",))
LOG = TableRef("shop", None, "log", ())
UUID = "3e11fa47-71ca-11e1-9e33-c80aa9429562"


def make(
    start: BinlogPosition | None = None, flavor: str = "mariadb", chunk_events: int = 500
) -> tuple[TransactionAssembler, list[Chunk]]:
    chunks: list[Chunk] = []
    builder = EnvelopeBuilder("mysql", "shop_cdc", {"shop.orders": ["status"]})
    assembler = TransactionAssembler(
        builder,
        start or BinlogPosition("mysql-bin.000001", 328, "0-1-10"),
        flavor,
        chunks.append,
        chunk_events=chunk_events,
    )
    return assembler, chunks


def events(chunks: list[Chunk]) -> list[dict[str, Any]]:
    return [event for chunk in chunks for event, _ in chunk.events]


def rows(
    assembler: TransactionAssembler,
    table: TableRef,
    op: str,
    images: list[tuple[dict[str, Any] | None, dict[str, Any] | None]],
    pos: int = 500,
) -> None:
    assert assembler.rows_event(event_pos=pos, timestamp=1716719445)
    assembler.changes(table, op, images, event_pos=pos, server_id=1)


def test_a_mariadb_transaction_becomes_events_with_its_position() -> None:
    assembler, chunks = make()
    assembler.gtid("0-1-11", event_pos=400, timestamp=1716719445, explicit=True)
    rows(assembler, ORDERS, "c", [(None, {"id": 1, "status": "new"})])
    rows(assembler, ORDERS, "u", [({"id": 1, "status": "new"}, {"id": 1, "status": "paid"})])
    rows(assembler, ORDERS, "d", [({"id": 1, "status": "paid"}, None)], pos=700)
    assert not chunks  # nothing leaves before the transaction ends
    assembler.commit(800)
    assert len(chunks) == 1
    end = BinlogPosition("mysql-bin.000001", 800, "0-1-11")
    assert chunks[0].end == end == assembler.position
    built = events(chunks)
    assert [e["op"] for e in built] == ["c", "u", "d"]
    assert [e["operation"] for e in built] == ["INSERT", "UPDATE", "DELETE"]
    assert [e["change_type"] for e in built] == [
        "new_record",
        "critical_update",
        "record_deletion",
    ]
    assert [e["transaction"]["total_order"] for e in built] == [1, 2, 3]
    assert "event_count" not in built[0]["transaction"]
    assert built[-1]["transaction"]["event_count"] == 3
    first = built[0]
    assert first["database"] == "shop" and first["table"] == "orders"
    assert first["primary_key"] == {"id": 1}
    assert first["transaction_id"] == "0-1-11"
    assert first["timestamp"] == "2024-05-26T10:30:45+00:00"
    assert first["source"]["connector"] == "mysql"
    assert first["source"]["name"] == "shop_cdc"
    assert {k: first["source"][k] for k in ("gtid", "file", "pos", "row", "server_id")} == {
        "gtid": "0-1-11",
        "file": "mysql-bin.000001",
        "pos": 500,
        "row": 0,
        "server_id": 1,
    }
    assert "schema" not in first["source"]
    assert built[2]["source"]["pos"] == 700
    assert [key for _, key in chunks[0].events] == ["shop.orders:[1]"] * 3


def test_a_primary_key_change_is_a_delete_then_a_create() -> None:
    assembler, chunks = make()
    assembler.gtid("0-1-11", event_pos=400, timestamp=0, explicit=True)
    rows(assembler, ORDERS, "u", [({"id": 2, "status": "a"}, {"id": 3, "status": "a"})])
    assembler.commit(800)
    built = events(chunks)
    assert [(e["op"], e["before"], e["after"]) for e in built] == [
        ("d", {"id": 2, "status": "a"}, None),
        ("c", None, {"id": 3, "status": "a"}),
    ]
    assert [key for _, key in chunks[0].events] == ["shop.orders:[2]", "shop.orders:[3]"]
    assert built[1]["transaction"]["event_count"] == 2


def test_a_table_without_primary_key_is_keyed_by_its_name() -> None:
    assembler, chunks = make()
    assembler.gtid("0-1-11", event_pos=400, timestamp=0, explicit=True)
    rows(assembler, LOG, "u", [({"a": 1}, {"a": 2})])
    assembler.commit(800)
    assert chunks[0].events[0][1] == "shop.log"
    assert chunks[0].events[0][0]["op"] == "u"
    assert chunks[0].events[0][0]["primary_key"] is None


def test_large_transactions_are_cut_into_chunks_and_the_last_one_ends_them() -> None:
    assembler, chunks = make(chunk_events=4)
    assembler.gtid("0-1-11", event_pos=400, timestamp=0, explicit=True)
    rows(assembler, ORDERS, "c", [(None, {"id": i}) for i in range(10)])
    assembler.reject({"why": "test"}, "rejected")
    assembler.commit(900)
    assert [chunk.size for chunk in chunks] == [4, 4, 3]
    assert [chunk.end for chunk in chunks[:-1]] == [None, None]
    assert chunks[-1].end is not None
    assert chunks[-1].rejects[0].message == "rejected"
    assert [e["after"]["id"] for e in events(chunks)] == list(range(10))
    assert events(chunks)[-1]["transaction"]["event_count"] == 10


def test_transactions_without_captured_rows_still_move_the_position() -> None:
    assembler, chunks = make()
    assembler.gtid("0-1-11", event_pos=400, timestamp=0, explicit=True)
    assert assembler.rows_event(event_pos=450, timestamp=0)  # a table not captured
    assembler.commit(600)
    assembler.gtid("0-1-12", event_pos=600, timestamp=0)
    assembler.statement(700)  # DDL: its own transaction
    assert [(c.size, c.end) for c in chunks] == [
        (0, BinlogPosition("mysql-bin.000001", 600, "0-1-11")),
        (0, BinlogPosition("mysql-bin.000001", 700, "0-1-12")),
    ]


def test_a_statement_inside_an_explicit_transaction_does_not_end_it() -> None:
    # MySQL's CREATE TABLE ... SELECT: GTID, BEGIN, the statement, rows, XID.
    start = BinlogPosition("binlog.000002", 4, f"{UUID}:1-5")
    assembler, chunks = make(start, flavor="mysql")
    assembler.gtid(f"{UUID}:6", event_pos=100, timestamp=0)
    assembler.begin(event_pos=180, timestamp=0)
    assembler.statement(300)
    assert not chunks and assembler.in_transaction
    rows(assembler, ORDERS, "c", [(None, {"id": 1})])
    assembler.commit(400)
    assert chunks[-1].end == BinlogPosition("binlog.000002", 400, f"{UUID}:1-6")
    assert events(chunks)[0]["source"]["gtid"] == f"{UUID}:6"


def test_mysql_without_gtids_names_transactions_by_file_and_offset() -> None:
    assembler, chunks = make(BinlogPosition("binlog.000002", 4), flavor="mysql")
    assembler.begin(event_pos=120, timestamp=0)
    rows(assembler, ORDERS, "c", [(None, {"id": 1})])
    assembler.commit(400)
    built = events(chunks)
    assert built[0]["transaction_id"] == "binlog.000002:120"
    assert built[0]["source"]["gtid"] is None
    assert chunks[-1].end == BinlogPosition("binlog.000002", 400, None)


def test_gtid_state_starts_from_the_start_position() -> None:
    assembler, _ = make(BinlogPosition("mysql-bin.000001", 4, "0-1-10,1-2-3"))
    assembler.gtid("1-2-4", event_pos=4, timestamp=0)
    assembler.statement(100)
    assert assembler.position.gtid == "0-1-10,1-2-4"
    empty, _ = make(BinlogPosition("mysql-bin.000001", 4, None))
    empty.gtid("0-1-1", event_pos=4, timestamp=0)
    empty.statement(100)
    assert empty.position.gtid == "0-1-1"


def test_a_partial_gtid_state_is_never_handed_out() -> None:
    # MySQL resumed by file and offset: the executed set at the start is unknown.
    chunks: list[Chunk] = []
    assembler = TransactionAssembler(
        EnvelopeBuilder("mysql", "s"),
        BinlogPosition("binlog.000002", 4),
        "mysql",
        chunks.append,
        track_gtids=False,
    )
    assembler.gtid(f"{UUID}:7", event_pos=4, timestamp=0)
    assembler.begin(event_pos=80, timestamp=0)
    rows(assembler, ORDERS, "c", [(None, {"id": 1})])
    assembler.commit(300)
    assert chunks[-1].end == BinlogPosition("binlog.000002", 300, None)
    assert events(chunks)[0]["source"]["gtid"] == f"{UUID}:7"


def test_rotation_moves_the_file_and_between_transactions_the_position() -> None:
    assembler, chunks = make()
    assembler.rotate("mysql-bin.000001", 328, artificial=True)
    assert not chunks
    assembler.rotate("mysql-bin.000002", 4, artificial=False)
    assert chunks[-1].end == BinlogPosition("mysql-bin.000002", 4, "0-1-10")
    assembler.gtid("0-1-11", event_pos=256, timestamp=0, explicit=True)
    rows(assembler, ORDERS, "c", [(None, {"id": 1})])
    assembler.commit(400)
    assert events(chunks)[0]["source"]["file"] == "mysql-bin.000002"


def test_a_reconnection_mid_transaction_sends_nothing_twice() -> None:
    assembler, chunks = make(chunk_events=2)
    assembler.gtid("0-1-11", event_pos=400, timestamp=0, explicit=True)
    rows(assembler, ORDERS, "c", [(None, {"id": 1}), (None, {"id": 2})], pos=450)
    rows(assembler, ORDERS, "c", [(None, {"id": 3})], pos=500)
    resume = assembler.replay()
    assert resume == BinlogPosition("mysql-bin.000001", 328, "0-1-10")
    # The server sends the transaction again from its start.
    assembler.rotate("mysql-bin.000001", 328, artificial=True)
    assembler.gtid("0-1-11", event_pos=400, timestamp=0, explicit=True)
    assert not assembler.rows_event(event_pos=450, timestamp=0)
    resume = assembler.replay()  # and the connection drops once more
    assembler.gtid("0-1-11", event_pos=400, timestamp=0, explicit=True)
    assert not assembler.rows_event(event_pos=450, timestamp=0)
    assert not assembler.rows_event(event_pos=500, timestamp=0)
    rows(assembler, ORDERS, "c", [(None, {"id": 4})], pos=550)
    assembler.commit(600)
    built = events(chunks)
    assert [e["after"]["id"] for e in built] == [1, 2, 3, 4]
    assert [e["transaction"]["total_order"] for e in built] == [1, 2, 3, 4]
    assert built[-1]["transaction"]["event_count"] == 4


def test_a_reconnection_to_another_transaction_is_an_error() -> None:
    assembler, _ = make()
    assembler.gtid("0-1-11", event_pos=400, timestamp=0, explicit=True)
    assembler.replay()
    with pytest.raises(CaptureError, match="0-1-12 where 0-1-11 was expected"):
        assembler.gtid("0-1-12", event_pos=400, timestamp=0, explicit=True)


def test_a_truncate_is_one_event_keyed_by_the_table() -> None:
    assembler, chunks = make()
    assembler.gtid("0-1-11", event_pos=400, timestamp=0)
    assembler.truncate(ORDERS, event_pos=450, server_id=1)
    assembler.statement(500)
    (event,) = events(chunks)
    assert (event["op"], event["operation"], event["change_type"]) == (
        "t",
        "TRUNCATE",
        "table_truncation",
    )
    assert event["before"] is None and event["after"] is None
    assert chunks[0].events[0][1] == "shop.orders"
    assert event["transaction"]["event_count"] == 1


def test_a_rows_event_that_failed_is_handled_again_after_reconnecting() -> None:
    assembler, _ = make()
    assembler.gtid("0-1-11", event_pos=400, timestamp=0, explicit=True)
    assert assembler.rows_event(event_pos=450, timestamp=0)
    assembler.forget_rows_event()  # reading the table definition failed: connection lost
    assembler.replay()
    assembler.gtid("0-1-11", event_pos=400, timestamp=0, explicit=True)
    assert assembler.rows_event(event_pos=450, timestamp=0)


def test_rejects_outside_a_transaction_are_handed_over_at_once() -> None:
    assembler, chunks = make()
    assembler.reject({"a": 1}, "bad")
    assert chunks[0].rejects[0].payload == {"a": 1} and chunks[0].end is None
