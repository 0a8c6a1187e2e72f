"""From pgoutput messages to change events: transactions, row images, keys, streaming."""

from __future__ import annotations

from typing import Any

import pytest

from kingest.sources.cdc.envelope import EnvelopeBuilder
from kingest.sources.cdc.postgres.assembler import ChangeAssembler, Chunk
from kingest.sources.cdc.postgres.protocol import UNCHANGED, ProtocolError, Relation
from kingest.sources.cdc.postgres.types import TypeMapper
from tests import pgoutput as enc

ORDERS = 16390
NOTES = 16400
T0 = 1_716_719_445_000
ORDER_COLUMNS = [("order_id", 23, True), ("status", 25, False), ("total_amount", 1700, False)]


def make(chunk_events: int = 500, **kwargs: Any) -> ChangeAssembler:
    keys = {"orders": ("order_id",), "notes": ()}
    return ChangeAssembler(
        EnvelopeBuilder("postgresql", "pg"),
        "shop",
        TypeMapper(),
        lambda relation: keys.get(relation.name, ()),
        lambda qualified: qualified != "public.ignored",
        chunk_events=chunk_events,
        **kwargs,
    )


def feed(assembler: ChangeAssembler, *messages: bytes) -> list[Chunk]:
    chunks = []
    for lsn, message in enumerate(messages, start=100):
        chunks.extend(assembler.feed(message, lsn))
    return chunks


def events(chunks: list[Chunk]) -> list[dict[str, Any]]:
    return [event for chunk in chunks for event, _ in chunk.events]


def orders(identity: str = "d") -> bytes:
    return enc.relation(ORDERS, "public", "orders", ORDER_COLUMNS, identity)


def test_a_transaction_becomes_one_chunk_with_its_order_and_end() -> None:
    chunks = feed(
        make(),
        orders(),
        enc.begin(500, T0, 7741),
        enc.insert(ORDERS, [b"1", b"pending", b"10.50"]),
        enc.update(ORDERS, [b"1", b"paid", b"10.50"]),
        enc.delete(ORDERS, [b"1", None, None]),
        enc.commit(499, 564, T0),
    )
    assert len(chunks) == 1 and chunks[0].end_lsn == 564
    created, updated, deleted = events(chunks)
    assert [e["op"] for e in (created, updated, deleted)] == ["c", "u", "d"]
    assert created["after"] == {"order_id": 1, "status": "pending", "total_amount": "10.50"}
    assert created["operation"] == "INSERT" and created["change_type"] == "new_record"
    # Default identity: before holds the key only, so a status change cannot be judged.
    assert updated["before"] == {"order_id": 1}
    assert updated["change_type"] == "standard_update"
    assert deleted["before"] == {"order_id": 1} and deleted["after"] is None
    assert [e["transaction"] for e in (created, updated, deleted)] == [
        {"id": "7741", "total_order": 1},
        {"id": "7741", "total_order": 2},
        {"id": "7741", "total_order": 3, "event_count": 3},
    ]
    assert all(e["transaction_id"] == "7741" for e in (created, updated, deleted))
    assert created["source"]["lsn"] == 102 and created["source"]["txId"] == "7741"
    assert created["timestamp"] == "2024-05-26T10:30:45+00:00"
    assert [key for _, key in chunks[0].events] == ["shop.public.orders:[1]"] * 3


def test_full_identity_gives_whole_before_and_critical_updates() -> None:
    chunks = feed(
        make(),
        orders("f"),
        enc.begin(500, T0, 1),
        enc.update(ORDERS, [b"1", b"paid", b"10.50"], [b"1", b"pending", b"10.50"], old_kind="O"),
        enc.commit(499, 564, T0),
    )
    (event,) = events(chunks)
    assert event["before"] == {"order_id": 1, "status": "pending", "total_amount": "10.50"}
    assert event["change_type"] == "critical_update"


def test_unchanged_toast_is_left_out_or_filled_from_a_full_before() -> None:
    notes = enc.relation(NOTES, "public", "notes", [("id", 23, True), ("body", 25, False)])
    chunks = feed(
        make(),
        notes,
        enc.begin(500, T0, 1),
        enc.update(NOTES, [b"5", UNCHANGED]),
        enc.commit(499, 564, T0),
    )
    (event,) = events(chunks)
    assert event["after"] == {"id": 5}
    assert event["unchanged_columns"] == ["body"]
    full = enc.relation(NOTES, "public", "notes", [("id", 23, True), ("body", 25, False)], "f")
    chunks = feed(
        make(),
        full,
        enc.begin(500, T0, 1),
        enc.update(NOTES, [b"5", UNCHANGED], [b"5", b"long text"], old_kind="O"),
        enc.commit(499, 564, T0),
    )
    (event,) = events(chunks)
    assert event["after"] == {"id": 5, "body": "long text"}
    assert "unchanged_columns" not in event


def test_a_primary_key_change_is_a_delete_then_a_create() -> None:
    chunks = feed(
        make(),
        orders(),
        enc.begin(500, T0, 1),
        enc.update(ORDERS, [b"2", b"paid", b"3.00"], [b"1", None, None], old_kind="K"),
        enc.commit(499, 564, T0),
    )
    deleted, created = events(chunks)
    assert (deleted["op"], deleted["before"], deleted["primary_key"]) == (
        "d",
        {"order_id": 1},
        {"order_id": 1},
    )
    assert (created["op"], created["primary_key"]) == ("c", {"order_id": 2})
    keys = [key for _, key in chunks[0].events]
    assert keys == ["shop.public.orders:[1]", "shop.public.orders:[2]"]


def test_tables_without_a_key_are_keyed_by_table_and_filters_apply() -> None:
    notes = enc.relation(NOTES, "public", "notes", [("id", 23, False), ("body", 25, False)], "n")
    ignored = enc.relation(16500, "public", "ignored", [("id", 23, True)])
    chunks = feed(
        make(),
        notes,
        ignored,
        enc.begin(500, T0, 1),
        enc.insert(16500, [b"1"]),
        enc.insert(NOTES, [b"1", b"x"]),
        enc.update(NOTES, [b"1", b"y"]),
        enc.truncate([NOTES, 16500]),
        enc.commit(499, 564, T0),
    )
    inserted, updated, truncated = events(chunks)
    assert inserted["primary_key"] is None
    assert updated["before"] is None  # REPLICA IDENTITY NOTHING
    assert truncated["op"] == "t" and truncated["operation"] == "TRUNCATE"
    assert {key for _, key in chunks[0].events} == {"shop.public.notes"}


def test_long_transactions_are_chunked_and_only_the_last_chunk_commits() -> None:
    messages = [orders(), enc.begin(500, T0, 1)]
    messages += [enc.insert(ORDERS, [str(i).encode(), b"s", b"1"]) for i in range(7)]
    messages.append(enc.commit(499, 564, T0))
    chunks = feed(make(chunk_events=3), *messages)
    assert [len(c.events) for c in chunks] == [3, 3, 1]
    assert [c.end_lsn for c in chunks] == [None, None, 564]
    assert events(chunks)[-1]["transaction"]["event_count"] == 7


def test_streamed_transactions_wait_for_their_commit_and_aborts_vanish() -> None:
    assembler = make(spool_memory_bytes=64)  # tiny: the spool goes to a file
    chunks = feed(
        assembler,
        orders(),
        enc.stream_start(900),
        enc.insert(ORDERS, [b"1", b"a", b"1"], xid=900),
        enc.insert(ORDERS, [b"2", b"b", b"1"], xid=901),  # a subtransaction
        enc.insert(ORDERS, [b"3", b"c", b"1"], xid=902),  # another one
        enc.stream_stop(),
        enc.stream_start(800),
        enc.insert(ORDERS, [b"9", b"z", b"1"], xid=800),
        enc.stream_stop(),
        enc.stream_abort(900, 901),  # ROLLBACK TO SAVEPOINT
        enc.stream_start(900, first=False),
        enc.insert(ORDERS, [b"4", b"d", b"1"], xid=900),
        enc.stream_stop(),
        enc.stream_abort(800, 800),  # the whole transaction
    )
    assert chunks == [] and assembler.in_transaction
    chunks = assembler.feed(enc.stream_commit(900, 700, 764, T0), 200)
    assert [e["after"]["order_id"] for e in events(chunks)] == [1, 3, 4]
    assert chunks[-1].end_lsn == 764
    assert all(e["transaction_id"] == "900" for e in events(chunks))
    assert not assembler.in_transaction


def test_a_value_that_does_not_convert_is_rejected_not_guessed() -> None:
    chunks = feed(
        make(),
        orders(),
        enc.begin(500, T0, 1),
        enc.insert(ORDERS, [b"not-a-number", b"s", b"1"]),
        enc.insert(ORDERS, [b"2", b"s", b"1"]),
        enc.commit(499, 564, T0),
    )
    assert [e["after"]["order_id"] for e in events(chunks)] == [2]
    (reject,) = chunks[0].rejects
    assert "does not convert" in reject.message and reject.payload["transaction_id"] == "1"


@pytest.mark.parametrize(
    "messages",
    [
        [enc.commit(1, 2, T0)],
        [enc.begin(1, T0, 1), enc.begin(2, T0, 2)],
        [enc.begin(1, T0, 1), enc.insert(12345, [b"1"])],
        [enc.insert(ORDERS, [b"1", b"s", b"1"])],
    ],
)
def test_out_of_place_messages_are_protocol_errors(messages: list[bytes]) -> None:
    assembler = make()
    assembler.feed(orders(), 1)
    with pytest.raises(ProtocolError):
        feed(assembler, *messages)


def test_relation_messages_refresh_the_primary_key() -> None:
    seen: list[Relation] = []

    def key_of(relation: Relation) -> tuple[str, ...]:
        seen.append(relation)
        return ("order_id",)

    assembler = ChangeAssembler(
        EnvelopeBuilder("postgresql", "pg"), "shop", TypeMapper(), key_of, lambda _: True
    )
    assembler.feed(orders(), 1)
    assembler.feed(orders(), 2)
    assert len(seen) == 2
