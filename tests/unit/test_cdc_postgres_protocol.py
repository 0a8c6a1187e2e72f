"""pgoutput decoding: every message type, round trips, and garbage that must not escape."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kingest.sources.cdc.postgres import protocol as p
from kingest.sources.cdc.postgres.position import format_lsn, parse_lsn
from tests import pgoutput as enc

values = st.lists(st.one_of(st.none(), st.binary(max_size=40)), max_size=12)


def test_begin_and_commit() -> None:
    begin = p.decode(enc.begin(0x16B374D848, 1_716_719_445_123, 7741))
    assert begin == p.Begin(final_lsn=0x16B374D848, commit_ms=1_716_719_445_123, xid=7741)
    commit = p.decode(enc.commit(100, 164, 1_716_719_445_000))
    assert commit == p.Commit(commit_lsn=100, end_lsn=164, commit_ms=1_716_719_445_000)


def test_relation_with_key_flags() -> None:
    message = p.decode(
        enc.relation(16390, "public", "orders", [("id", 23, True), ("note", 25, False)], "f")
    )
    assert isinstance(message, p.Relation)
    assert (message.oid, message.namespace, message.name) == (16390, "public", "orders")
    assert message.replica_identity == "f"
    assert [(c.name, c.type_oid, c.is_key) for c in message.columns] == [
        ("id", 23, True),
        ("note", 25, False),
    ]


@given(values)
def test_insert_round_trip(new: list[bytes | None]) -> None:
    assert p.decode(enc.insert(5, new)) == p.Insert(None, 5, tuple(new))


@given(values, st.one_of(st.none(), values), st.sampled_from("KO"))
def test_update_round_trip(
    new: list[bytes | None], old: list[bytes | None] | None, kind: str
) -> None:
    message = p.decode(enc.update(9, new, old, kind))
    assert message == p.Update(
        None, 9, kind if old is not None else None, tuple(old) if old is not None else None,
        tuple(new),
    )  # fmt: skip


def test_unchanged_toast_value_is_not_null() -> None:
    message = p.decode(enc.update(9, [b"1", p.UNCHANGED, None]))
    assert isinstance(message, p.Update)
    assert message.new[1] is p.UNCHANGED
    assert message.new[2] is None


def test_delete_truncate_and_stream_messages() -> None:
    assert p.decode(enc.delete(3, [b"7"], "K")) == p.Delete(None, 3, "K", (b"7",))
    assert p.decode(enc.truncate([3, 4], options=3)) == p.Truncate(None, True, True, (3, 4))
    assert p.decode(enc.stream_start(900)) == p.StreamStart(900, True)
    assert p.decode(enc.stream_stop()) == p.StreamStop()
    assert p.decode(enc.stream_commit(900, 10, 20, 1_716_719_445_000)) == p.StreamCommit(
        900, 10, 20, 1_716_719_445_000
    )
    assert p.decode(enc.stream_abort(900, 901)) == p.StreamAbort(900, 901)


def test_data_messages_in_a_stream_carry_their_xid() -> None:
    message = p.decode(enc.insert(5, [b"x"], xid=901), in_stream=True)
    assert message == p.Insert(901, 5, (b"x",))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"Z",
        b"B\x00\x01",
        enc.insert(5, [b"abc"])[:-1],
        enc.insert(5, [b"abc"]) + b"\x00",
        b"I\x00\x00\x00\x05X",
        b"R\x00\x00\x00\x01public",
        b"U\x00\x00\x00\x01K\x00\x00Q",
    ],
)
def test_malformed_messages_are_protocol_errors(data: bytes) -> None:
    with pytest.raises(p.ProtocolError):
        p.decode(data)


@given(st.binary(max_size=64), st.booleans())
def test_garbage_raises_only_protocol_error(data: bytes, in_stream: bool) -> None:
    with contextlib.suppress(p.ProtocolError):
        p.decode(data, in_stream)


@given(st.integers(min_value=0, max_value=(1 << 64) - 1))
def test_lsn_text_round_trip(lsn: int) -> None:
    assert parse_lsn(format_lsn(lsn)) == lsn


def test_lsn_text_form() -> None:
    assert format_lsn(0x16B374D848) == "16/B374D848"
    assert parse_lsn("0/1D9EAB8") == 0x1D9EAB8
    for bad in ("", "16", "/1", "x/1", "123456789/0"):
        with pytest.raises(ValueError):
            parse_lsn(bad)
