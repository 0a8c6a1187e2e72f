"""Tests of the reader's pure parts: unpacking Kinesis records and the ``--envelope`` format."""

from __future__ import annotations

import asyncio
import base64
import logging
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kingest.errors import KinesisError
from kingest.producer.aggregate import MAGIC, encode_aggregate
from kingest.producer.transport import KinesisTransport
from kingest.read_records import (
    ReadRecord,
    encode_data,
    envelope,
    envelope_line,
    unpack_record,
)
from kingest.reader import iter_stream

SHARD = "shardId-000000000003"
SEQ = "49590338271490256608559692538361571095921575989136588850"


def kinesis_record(data: bytes, key: str = "pk", arrival: Any = 1_700_000_000.25) -> dict[str, Any]:
    record: dict[str, Any] = {
        "SequenceNumber": SEQ,
        "PartitionKey": key,
        "Data": base64.b64encode(data).decode(),
    }
    if arrival is not None:
        record["ApproximateArrivalTimestamp"] = arrival
    return record


def read_record(data: bytes, **fields: Any) -> ReadRecord:
    values: dict[str, Any] = {
        "shard_id": SHARD,
        "sequence_number": SEQ,
        "sub_sequence_number": 0,
        "partition_key": "pk",
        "explicit_hash_key": None,
        "arrival": 1_700_000_000.25,
        "data": data,
    }
    values.update(fields)
    return ReadRecord(**values)


# ------------------------------------------------------------------------------- encode_data


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b'{"a":1,"b":[true,null,"x"]}', ("json", {"a": 1, "b": [True, None, "x"]})),
        (b' { "a" : 1 }\n', ("json", {"a": 1})),  # whitespace is not part of the value
        (b'"quoted"', ("json", "quoted")),
        (b"1.5", ("json", 1.5)),
        (b"1e5", ("json", 100000.0)),
        (b"18446744073709551615", ("json", 2**64 - 1)),
        (b"-9223372036854775808", ("json", -(2**63))),
        (b"plain text", ("text", "plain text")),
        (b"two\nlines", ("text", "two\nlines")),
        (b"", ("text", "")),
        ("caf\u00e9 \u2603".encode(), ("text", "caf\u00e9 \u2603")),
        # JSON that would not say exactly what it says: kept as text.
        (b"18446744073709551616", ("text", "18446744073709551616")),
        (b"0.10000000000000000000001", ("text", "0.10000000000000000000001")),
        (b'{"a":1,"a":2}', ("text", '{"a":1,"a":2}')),
        (b"NaN", ("text", "NaN")),
        (b"[" * 300 + b"]" * 300, ("text", "[" * 300 + "]" * 300)),
        (b"\xff\xfe", ("base64", {"base64": "//4="})),
        (b"\x80abc", ("base64", {"base64": base64.b64encode(b"\x80abc").decode()})),
    ],
)
def test_encode_data(data: bytes, expected: tuple[str, Any]) -> None:
    assert encode_data(data) == expected


@given(st.one_of(st.binary(max_size=64), st.text(max_size=32).map(str.encode)))
def test_encode_data_is_recoverable(data: bytes) -> None:
    encoding, value = encode_data(data)
    if encoding == "json":
        assert orjson.loads(data) == value
    elif encoding == "text":
        assert value.encode("utf-8") == data
    else:
        assert encoding == "base64"
        assert base64.b64decode(value["base64"]) == data
    # Whatever the encoding, the envelope holding it is valid JSON.
    orjson.dumps(value)


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(),
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(st.text(max_size=8), children, max_size=4)
        ),
        max_leaves=20,
    )
)
def test_compact_json_payloads_come_back_as_their_value(value: Any) -> None:
    assert encode_data(orjson.dumps(value)) == ("json", value)


# ---------------------------------------------------------------------------------- envelope


def test_envelope_fields_and_order() -> None:
    env = envelope(read_record(b'{"n":1}', sub_sequence_number=4))
    assert list(env) == [
        "shard_id",
        "sequence_number",
        "sub_sequence_number",
        "partition_key",
        "approximate_arrival_timestamp",
        "data_encoding",
        "data",
    ]
    assert env == {
        "shard_id": SHARD,
        "sequence_number": SEQ,
        "sub_sequence_number": 4,
        "partition_key": "pk",
        "approximate_arrival_timestamp": 1_700_000_000.25,
        "data_encoding": "json",
        "data": {"n": 1},
    }


def test_envelope_explicit_hash_key_only_when_present() -> None:
    assert "explicit_hash_key" not in envelope(read_record(b"x"))
    env = envelope(read_record(b"x", explicit_hash_key="12345"))
    assert env["explicit_hash_key"] == "12345"


def test_envelope_without_arrival_is_null() -> None:
    assert envelope(read_record(b"x", arrival=None))["approximate_arrival_timestamp"] is None


def test_envelope_of_corrupt_aggregate_is_base64_and_flagged() -> None:
    # Valid UTF-8 and even valid JSON inside would still be shown as base64.
    raw = MAGIC + b'{"looks": "like json"}'
    env = envelope(read_record(raw, corrupt=True))
    assert env["data_encoding"] == "base64"
    assert base64.b64decode(env["data"]["base64"]) == raw
    assert env["corrupt_aggregate"] is True
    assert "corrupt_aggregate" not in envelope(read_record(b"x"))


def test_envelope_line_is_one_line_of_json() -> None:
    line = envelope_line(read_record(b"a\nb\r\nc"))
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    assert orjson.loads(line)["data"] == "a\nb\r\nc"


# ------------------------------------------------------------------------------ unpack_record


def test_unpack_plain_record() -> None:
    (record,) = unpack_record(SHARD, kinesis_record(b"hello", "k1"))
    assert record == ReadRecord(SHARD, SEQ, 0, "k1", None, 1_700_000_000.25, b"hello", False)


def test_unpack_aggregated_record() -> None:
    data = encode_aggregate([("a", None, b"one"), ("b", "42", b"two"), ("a", None, b"")])
    records = unpack_record(SHARD, kinesis_record(data, "outer", arrival=1_700_000_001))
    assert [
        (r.partition_key, r.explicit_hash_key, r.data, r.sub_sequence_number) for r in records
    ] == [
        ("a", None, b"one", 0),
        ("b", "42", b"two", 1),
        ("a", None, b"", 2),
    ]
    assert all(r.sequence_number == SEQ and r.shard_id == SHARD for r in records)
    assert all(r.arrival == 1_700_000_001.0 and not r.corrupt for r in records)


def test_unpack_empty_aggregate_yields_nothing() -> None:
    assert unpack_record(SHARD, kinesis_record(encode_aggregate([]))) == []


def test_unpack_without_arrival() -> None:
    (record,) = unpack_record(SHARD, kinesis_record(b"x", arrival=None))
    assert record.arrival is None


@pytest.mark.parametrize(
    "damage",
    [
        lambda good: good[:-1] + bytes([good[-1] ^ 1]),  # digest mismatch
        lambda good: MAGIC + b"\x00\x01",  # too short to hold a digest
    ],
    ids=["bad-md5", "truncated"],
)
def test_unpack_corrupt_aggregate(damage: Any, caplog: pytest.LogCaptureFixture) -> None:
    secret = b"secret-payload-never-logged"
    raw = damage(encode_aggregate([("a", None, secret)]))
    with caplog.at_level(logging.WARNING, logger="kingest.read_records"):
        (record,) = unpack_record(SHARD, kinesis_record(raw, "outer"))
    assert record.corrupt
    assert record.data == raw
    assert (record.partition_key, record.sub_sequence_number) == ("outer", 0)
    (log_record,) = caplog.records
    message = log_record.getMessage()
    assert SHARD in message and SEQ in message
    assert message[0].isupper() and message.endswith(".")
    assert "secret" not in message


@pytest.mark.parametrize(
    "record",
    [
        {"PartitionKey": "k", "Data": "eA=="},
        {"SequenceNumber": SEQ, "Data": "eA=="},
        {"SequenceNumber": SEQ, "PartitionKey": "k"},
        {"SequenceNumber": SEQ, "PartitionKey": "k", "Data": "not base64!"},
    ],
    ids=["no-sequence", "no-key", "no-data", "bad-base64"],
)
def test_unpack_malformed_answer(record: dict[str, Any]) -> None:
    with pytest.raises(KinesisError) as info:
        unpack_record(SHARD, record)
    assert info.value.code == "MalformedAnswer"
    assert not info.value.retriable


# ------------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    "options",
    [{"start": "middle"}, {"until_idle_s": -1.0}, {"poll_interval_s": float("nan")}],
    ids=["start", "until-idle", "poll-interval"],
)
def test_iter_stream_rejects_bad_arguments(options: dict[str, Any]) -> None:
    async def first() -> None:
        # Port 9 (discard) is never contacted: the arguments are checked first.
        transport = KinesisTransport(endpoint_url="http://127.0.0.1:9")
        try:
            with pytest.raises(ValueError):
                await anext(iter_stream(transport, "s", **options))
        finally:
            await transport.close()

    asyncio.run(first())
