"""Tests for kingest.producer.aggregate, the KPL aggregation format.

Correctness is checked three independent ways: our own round trip, byte-for-byte agreement with
protobuf's serializer and parser (``aws_kinesis_agg.messages_pb2``), and interoperation with
``aws_kinesis_agg``'s aggregator and deaggregator in both directions.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import sys
from collections import deque
from types import ModuleType
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kingest.errors import AggregationFormatError, KingestError
from kingest.producer import aggregate
from kingest.producer.aggregate import (
    AGGREGATION_OVERHEAD,
    MAGIC,
    Aggregator,
    encode_aggregate,
)
from kingest.producer.deaggregate import UserRecord, deaggregate, is_aggregated

Rec = tuple[str, str | None, bytes]


def _import_aws_kinesis_agg() -> tuple[ModuleType, ModuleType, ModuleType]:
    pytest.importorskip("aws_kinesis_agg")
    # The package puts its own directory on sys.path so messages_pb2 can import config_pb2 as a
    # top-level module; keep that from leaking into the rest of the test session.
    saved = sys.path[:]
    try:
        aggregator = importlib.import_module("aws_kinesis_agg.aggregator")
        deaggregator = importlib.import_module("aws_kinesis_agg.deaggregator")
        messages_pb2 = importlib.import_module("aws_kinesis_agg.messages_pb2")
    finally:
        sys.path[:] = saved
    return aggregator, deaggregator, messages_pb2


aws_aggregator, aws_deaggregator, pb = _import_aws_kinesis_agg()
DecodeError = importlib.import_module("google.protobuf.message").DecodeError

# --- strategies -------------------------------------------------------------------------------

partition_keys = st.text(min_size=1, max_size=256)  # Kinesis: 1..256 Unicode characters
explicit_hash_keys = st.integers(0, 2**128 - 1).map(str)


@st.composite
def record_lists(
    draw: st.DrawFn, min_size: int = 0, max_size: int = 25, max_data: int = 600
) -> list[Rec]:
    """Records drawing keys from small pools, so keys repeat and the tables get deduplicated."""
    pk_pool = draw(st.lists(partition_keys, min_size=1, max_size=6))
    ehk_pool = draw(st.lists(explicit_hash_keys, min_size=1, max_size=3))
    ehk_choice = draw(st.sampled_from(["none", "all", "mixed"]))
    ehks: st.SearchStrategy[str | None] = {
        "none": st.none(),
        "all": st.sampled_from(ehk_pool),
        "mixed": st.none() | st.sampled_from(ehk_pool),
    }[ehk_choice]
    record = st.tuples(st.sampled_from(pk_pool), ehks, st.binary(max_size=max_data))
    return draw(st.lists(record, min_size=min_size, max_size=max_size))


# --- helpers: an independent little protobuf writer and protobuf/aws references ----------------


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def tag(field: int, wire: int) -> bytes:
    return varint(field << 3 | wire)


def vint(field: int, value: int) -> bytes:
    return tag(field, 0) + varint(value)


def ldel(field: int, payload: bytes) -> bytes:
    return tag(field, 2) + varint(len(payload)) + payload


def record(pk_index: int, data: bytes, ehk_index: int | None = None, extra: bytes = b"") -> bytes:
    inner = vint(1, pk_index)
    if ehk_index is not None:
        inner += vint(2, ehk_index)
    return ldel(3, inner + ldel(3, data) + extra)


def wrap(body: bytes) -> bytes:
    """An aggregate with a correct digest around any protobuf body."""
    return MAGIC + body + hashlib.md5(body).digest()


def expected_user_records(records: list[Rec]) -> list[UserRecord]:
    return [UserRecord(pk, ehk, data, i) for i, (pk, ehk, data) in enumerate(records)]


def protobuf_message(records: list[Rec]) -> Any:
    """The same aggregate built with protobuf's classes (keys deduplicated, first-seen order)."""
    message = pb.AggregatedRecord()
    pk_index: dict[str, int] = {}
    ehk_index: dict[str, int] = {}
    for pk, ehk, data in records:
        if pk not in pk_index:
            pk_index[pk] = len(pk_index)
            message.partition_key_table.append(pk)
        entry = message.records.add()
        entry.partition_key_index = pk_index[pk]
        entry.data = data
        if ehk is not None:
            if ehk not in ehk_index:
                ehk_index[ehk] = len(ehk_index)
                message.explicit_hash_key_table.append(ehk)
            entry.explicit_hash_key_index = ehk_index[ehk]
    return message


def reference_decode(body: bytes) -> list[UserRecord] | None:
    """Decode with protobuf, plus the checks a consumer needs; None where we must refuse."""
    message = pb.AggregatedRecord()
    try:
        message.ParseFromString(body)
    except DecodeError:
        return None
    pks = list(message.partition_key_table)
    ehks = list(message.explicit_hash_key_table)
    # upb hands back bytes for a proto2 string that is not UTF-8; we refuse such keys.
    if not all(isinstance(key, str) for key in pks + ehks):
        return None
    out = []
    for i, entry in enumerate(message.records):
        # upb does not enforce proto2 "required"; the KCL (Java protobuf) does, and so do we.
        if not (entry.HasField("partition_key_index") and entry.HasField("data")):
            return None
        if entry.partition_key_index >= len(pks):
            return None
        ehk = None
        if entry.HasField("explicit_hash_key_index"):
            if entry.explicit_hash_key_index >= len(ehks):
                return None
            ehk = ehks[entry.explicit_hash_key_index]
        out.append(UserRecord(pks[entry.partition_key_index], ehk, entry.data, i))
    return out


def assert_decodes_like_protobuf(body: bytes) -> None:
    expected = reference_decode(body)
    if expected is None:
        with pytest.raises(AggregationFormatError):
            deaggregate(wrap(body), "outer")
    else:
        assert deaggregate(wrap(body), "outer") == expected


def lambda_event_record(data: bytes, partition_key: str = "outer") -> dict[str, Any]:
    """A Kinesis record as Lambda delivers it, the shape deaggregate_records expects."""
    return {
        "eventSource": "aws:kinesis",
        "eventID": "shardId-000000000000:1",
        "kinesis": {
            "kinesisSchemaVersion": "1.0",
            "partitionKey": partition_key,
            "sequenceNumber": "49590338271490256608559692538361571095921575989136588898",
            "data": base64.b64encode(data).decode("ascii"),
            "approximateArrivalTimestamp": 1_700_000_000.0,
        },
    }


# --- constants and types ----------------------------------------------------------------------


def test_constants() -> None:
    assert MAGIC == b"\xf3\x89\x9a\xc2"
    assert AGGREGATION_OVERHEAD == 20


def test_error_is_a_permanent_kingest_error() -> None:
    assert issubclass(AggregationFormatError, KingestError)
    assert AggregationFormatError("x").retriable is False


def test_user_record_is_frozen() -> None:
    user_record = UserRecord("pk", None, b"x", 0)
    with pytest.raises(AttributeError):
        user_record.data = b"y"  # type: ignore[misc]


# --- encoding: round trip and exact sizes -----------------------------------------------------


@given(record_lists())
def test_round_trip(records: list[Rec]) -> None:
    blob = encode_aggregate(records)
    assert is_aggregated(blob)
    assert deaggregate(blob, "outer", "1") == expected_user_records(records)


@given(record_lists())
def test_size_and_size_if_added_are_exact(records: list[Rec]) -> None:
    agg = Aggregator()
    assert agg.size == AGGREGATION_OVERHEAD == len(agg.encode())
    for count, rec in enumerate(records, start=1):
        predicted = agg.size_if_added(*rec)
        assert agg.size_if_added(*rec) == predicted  # asking changes nothing
        agg.add(*rec)
        assert agg.size == predicted
        assert len(agg) == count
    assert agg.size == len(agg.encode())


@given(record_lists(), st.integers(AGGREGATION_OVERHEAD, 3000))
def test_add_if_fits_is_size_if_added_then_add(records: list[Rec], max_size: int) -> None:
    agg, reference = Aggregator(), Aggregator()
    for rec in records:
        fits = reference.size_if_added(*rec) <= max_size
        if fits:
            reference.add(*rec)
        assert agg.add_if_fits(*rec, max_size) is fits
        assert agg.size == reference.size <= max_size
        assert len(agg) == len(reference)
    assert agg.encode() == reference.encode()


@given(record_lists())
def test_encoding_is_protobufs_canonical_serialization(records: list[Rec]) -> None:
    # Same bytes as protobuf's serializer: deduplicated tables in first-seen order, field order,
    # and no explicit_hash_key_index at all for a record without an explicit hash key.
    blob = encode_aggregate(records)
    assert blob[:4] == MAGIC
    assert blob[4:-16] == protobuf_message(records).SerializeToString()
    assert blob[-16:] == hashlib.md5(blob[4:-16]).digest()


@given(record_lists(min_size=1))
def test_tables_hold_each_key_once(records: list[Rec]) -> None:
    message = pb.AggregatedRecord()
    message.ParseFromString(encode_aggregate(records)[4:-16])
    pks = list(message.partition_key_table)
    ehks = list(message.explicit_hash_key_table)
    assert pks == list(dict.fromkeys(pk for pk, _, _ in records))
    assert ehks == list(dict.fromkeys(ehk for _, ehk, _ in records if ehk is not None))
    for entry, (_, ehk, _) in zip(message.records, records, strict=True):
        assert entry.HasField("explicit_hash_key_index") is (ehk is not None)


@pytest.mark.parametrize(
    "length", [0, 1, 127, 128, 129, 16_383, 16_384, 16_385, 2**21 - 1, 2**21, 2**21 + 7]
)
def test_varint_boundaries_in_data_lengths(length: int) -> None:
    # Data and record lengths cross the 1-, 2- and 3-byte varint boundaries (and the prefix cache).
    records: list[Rec] = [("k", None, b"\x01" * length), ("k", "7", b"\x02" * length)]
    agg = Aggregator()
    for rec in records:
        predicted = agg.size_if_added(*rec)
        agg.add(*rec)
        assert agg.size == predicted
    blob = agg.encode()
    assert len(blob) == agg.size
    assert blob[4:-16] == protobuf_message(records).SerializeToString()
    assert deaggregate(blob, "outer") == expected_user_records(records)


def test_many_distinct_keys_cross_index_varint_boundaries() -> None:
    # Indexes 127/128 and 16383/16384 change the index field's width (and leave the index cache).
    records: list[Rec] = [
        (f"key-{i}", str(i) if i % 3 == 0 else None, i.to_bytes(3, "big")) for i in range(16_500)
    ]
    agg = Aggregator()
    for i, rec in enumerate(records):
        if i in (127, 128, 129, 16_383, 16_384, 16_385):
            assert agg.size_if_added(*rec) == len(encode_aggregate([*records[:i], rec]))
        agg.add(*rec)
    blob = agg.encode()
    assert len(blob) == agg.size
    assert blob[4:-16] == protobuf_message(records).SerializeToString()
    assert deaggregate(blob, "outer") == expected_user_records(records)


@pytest.mark.parametrize(
    "key",
    [
        "a" * 127,
        "a" * 128,
        "é" * 63 + "a",  # 127 bytes of UTF-8
        "é" * 64,  # 128 bytes
        "\U0001f600" * 256,  # 256 characters, 1,024 bytes
        "\x00",
    ],
)
def test_key_lengths_are_counted_in_utf8_bytes(key: str) -> None:
    agg = Aggregator()
    for ehk in (None, key):  # the same length rules serve the explicit hash key table
        predicted = agg.size_if_added(key, ehk, b"data")
        agg.add(key, ehk, b"data")
        assert agg.size == predicted == len(agg.encode())
    assert [r.partition_key for r in deaggregate(agg.encode(), "outer")] == [key, key]


def test_clear_forgets_everything() -> None:
    records: list[Rec] = [("a", None, b"1"), ("b", "5", b"2"), ("a", "5", b"3")]
    agg = Aggregator()
    for rec in records:
        agg.add(*rec)
    agg.clear()
    assert len(agg) == 0
    assert agg.size == AGGREGATION_OVERHEAD
    assert agg.encode() == encode_aggregate([])
    # Reused after clear(), it encodes exactly like a fresh one (indexes restart at 0).
    for rec in reversed(records):
        agg.add(*rec)
    assert agg.encode() == encode_aggregate(list(reversed(records)))


def test_key_encoding_cache_is_bounded_and_harmless(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aggregate, "_KEY_CACHE_LIMIT", 3)
    agg = Aggregator()
    for round_ in range(4):
        agg.clear()
        records: list[Rec] = [(f"k{(i * 7 + round_) % 10}", None, bytes([i])) for i in range(20)]
        for rec in records:
            agg.add_if_fits(*rec, 10_000)
        assert len(agg._pk_entry_cache) <= 3
        assert agg.encode() == encode_aggregate(records)
        assert deaggregate(agg.encode(), "outer") == expected_user_records(records)


def test_encode_leaves_the_aggregator_unchanged() -> None:
    agg = Aggregator()
    agg.add("a", None, b"x")
    first = agg.encode()
    assert agg.encode() == first
    agg.add("b", None, b"y")
    assert agg.encode() == encode_aggregate([("a", None, b"x"), ("b", None, b"y")])


def test_empty_aggregate() -> None:
    blob = Aggregator().encode()
    assert blob == MAGIC + hashlib.md5(b"").digest()
    assert is_aggregated(blob)
    assert deaggregate(blob, "outer") == []


def test_bytes_like_data_is_accepted_as_bytes() -> None:
    # Typed as bytes (the hot path does not promise more), but bytes-likes are copied, not lost.
    ba: Any = bytearray(b"ba")
    mv: Any = memoryview(b"mv")
    agg = Aggregator()
    agg.add("a", None, ba)
    agg.add("a", None, mv)
    assert agg.size_if_added("a", None, mv) == agg.size_if_added("a", None, b"ab")
    assert agg.add_if_fits("a", None, cast(Any, bytearray(b"fit")), 1000)
    decoded = deaggregate(agg.encode(), "outer")
    assert [r.data for r in decoded] == [b"ba", b"mv", b"fit"]
    assert all(type(r.data) is bytes for r in decoded)


BAD_INPUTS: list[tuple[Any, Any, Any, type[Exception]]] = [
    (b"bytes-key", None, b"x", TypeError),
    (1, None, b"x", TypeError),
    ("new-key", b"5", b"x", TypeError),
    ("known", 5, b"x", TypeError),
    ("known", None, "text is not bytes", TypeError),
    ("known", None, None, TypeError),
    ("\ud800", None, b"x", UnicodeEncodeError),  # a lone surrogate cannot be UTF-8
    ("new-key", "\udc00", b"x", UnicodeEncodeError),  # new pk, bad ehk: the pk must not stay
    ("\ud800", "6", b"x", UnicodeEncodeError),  # new ehk, bad pk: the ehk must not stay
]


@pytest.mark.parametrize(("pk", "ehk", "data", "error"), BAD_INPUTS)
def test_bad_input_raises_and_leaves_no_trace(
    pk: Any, ehk: Any, data: Any, error: type[Exception]
) -> None:
    agg = Aggregator()
    agg.add("known", "5", b"first")
    before = (agg.size, len(agg), agg.encode())
    with pytest.raises(error):
        agg.size_if_added(pk, ehk, data)
    with pytest.raises(error):
        agg.add(pk, ehk, data)
    with pytest.raises(error):
        agg.add_if_fits(pk, ehk, data, 10_000)
    assert (agg.size, len(agg), agg.encode()) == before
    agg.add("other", "6", b"second")  # still usable, and the tables are consistent
    assert deaggregate(agg.encode(), "outer") == [
        UserRecord("known", "5", b"first", 0),
        UserRecord("other", "6", b"second", 1),
    ]


# --- interoperation with aws_kinesis_agg ------------------------------------------------------


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(record_lists(min_size=1))
def test_aws_deaggregator_reads_our_aggregates(records: list[Rec]) -> None:
    out = aws_deaggregator.deaggregate_records([lambda_event_record(encode_aggregate(records))])
    assert len(out) == len(records)
    ehk_table = [ehk for _, ehk, _ in records if ehk is not None]
    for i, (user, (pk, ehk, data)) in enumerate(zip(out, records, strict=True)):
        kinesis = user["kinesis"]
        assert kinesis["aggregated"] is True
        assert kinesis["subSequenceNumber"] == i
        assert kinesis["partitionKey"] == pk
        assert base64.b64decode(kinesis["data"]) == data
        # aws_kinesis_agg reads an absent explicit_hash_key_index as index 0 whenever the table
        # is not empty (it never checks HasField), so a record without a key gets the first one.
        if ehk is not None:
            assert kinesis["explicitHashKey"] == ehk
        else:
            assert kinesis["explicitHashKey"] == (ehk_table[0] if ehk_table else None)


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(record_lists(min_size=1))
def test_we_read_aws_aggregator_output(records: list[Rec]) -> None:
    agg = aws_aggregator.RecordAggregator()
    for pk, ehk, data in records:
        assert agg.add_user_record(pk, data, ehk) is None  # never full at these sizes
    outer_pk, outer_ehk, blob = agg.clear_and_get().get_contents()
    assert outer_pk == records[0][0]
    assert is_aggregated(blob)
    assert deaggregate(blob, outer_pk, outer_ehk) == expected_user_records(records)


def test_aws_deaggregator_passes_our_plain_records_through() -> None:
    out = aws_deaggregator.deaggregate_records([lambda_event_record(b"plain", "pk")])
    assert base64.b64decode(out[0]["kinesis"]["data"]) == b"plain"
    assert deaggregate(b"plain", "pk") == [UserRecord("pk", None, b"plain", 0)]


# --- decoding: plain records, damage, and the protobuf wire rules ------------------------------


@given(
    st.binary().filter(lambda b: not b.startswith(MAGIC)),
    partition_keys,
    st.none() | explicit_hash_keys,
)
def test_plain_records_pass_through(data: bytes, pk: str, ehk: str | None) -> None:
    assert not is_aggregated(data)
    assert deaggregate(data, pk, ehk) == [UserRecord(pk, ehk, data, 0)]


def test_partial_magic_is_plain() -> None:
    assert deaggregate(MAGIC[:3], "pk") == [UserRecord("pk", None, MAGIC[:3], 0)]


@pytest.mark.parametrize("extra", range(16))
def test_magic_but_too_short_is_refused(extra: int) -> None:
    data = MAGIC + b"\x00" * extra
    assert not is_aggregated(data)
    with pytest.raises(AggregationFormatError, match="only"):
        deaggregate(data, "pk")


def test_md5_mismatch_is_refused() -> None:
    blob = encode_aggregate([("a", None, b"hello"), ("b", "1", b"world")])
    for position in (4, 10, len(blob) - 17, len(blob) - 16, len(blob) - 1):
        damaged = bytearray(blob)
        damaged[position] ^= 0x01
        assert not is_aggregated(bytes(damaged))
        with pytest.raises(AggregationFormatError, match="MD5"):
            deaggregate(bytes(damaged), "outer")
    with pytest.raises(AggregationFormatError, match="MD5"):
        deaggregate(blob[:-1], "outer")  # truncated


@given(st.binary(max_size=200))
def test_garbage_after_the_magic_only_raises_format_errors(garbage: bytes) -> None:
    try:
        result = deaggregate(MAGIC + garbage, "outer")
    except AggregationFormatError:
        return
    # Only a garbage tail that happens to end in the MD5 of the rest gets here.
    assert is_aggregated(MAGIC + garbage)
    assert all(isinstance(r, UserRecord) for r in result)


@given(st.binary(max_size=200))
def test_garbage_body_with_a_valid_digest_decodes_like_protobuf(body: bytes) -> None:
    assert_decodes_like_protobuf(body)


@st.composite
def mutated_bodies(draw: st.DrawFn) -> bytes:
    """A valid aggregate body with a few bytes replaced, inserted or deleted."""
    body = bytearray(
        encode_aggregate(draw(record_lists(min_size=1, max_size=6, max_data=24)))[4:-16]
    )
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(body)))
        kind = draw(st.sampled_from(["replace", "insert", "delete"]))
        if kind == "replace" and at < len(body):
            body[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            body[at:at] = draw(st.binary(min_size=1, max_size=4))
        else:
            del body[at : at + draw(st.integers(1, 4))]
    return bytes(body)


@settings(max_examples=300)
@given(mutated_bodies())
def test_damaged_bodies_with_a_valid_digest_decode_like_protobuf(body: bytes) -> None:
    assert_decodes_like_protobuf(body)


def test_tags_written_by_protobuf_are_skipped() -> None:
    message = protobuf_message([("a", None, b"x"), ("b", "9", b"y")])
    message.records[0].tags.add(key="env", value="prod")
    message.records[1].tags.add(key="only-key")
    message.records[1].tags.add(key="k\u00e9", value="")
    blob = wrap(message.SerializeToString())
    assert deaggregate(blob, "outer") == [
        UserRecord("a", None, b"x", 0),
        UserRecord("b", "9", b"y", 1),
    ]


NON_CANONICAL_RECORDS_TAG = b"\x9a\x80\x00"  # tag 0x1A (field 3, length-delimited) in 3 bytes


def test_unknown_fields_and_any_field_order_are_accepted() -> None:
    third = vint(1, 0) + ldel(3, b"third")
    # Group 13 holding a varint and group 14, which holds a length-delimited field.
    groups = tag(13, 3) + vint(1, 1) + tag(14, 3) + ldel(2, b"in") + tag(14, 4) + tag(13, 4)
    unknown = b"".join(
        [
            vint(9, 2**63),  # varint
            tag(10, 1) + b"\x00" * 8,  # fixed64
            tag(11, 5) + b"\x00" * 4,  # fixed32
            ldel(12, b"opaque"),  # length-delimited
            groups,
        ]
    )
    body = (
        record(1, b"first", 0, extra=unknown + ldel(4, ldel(1, b"tag-key")))
        + unknown
        + ldel(2, b"42")  # tables after the records that use them
        + ldel(1, b"pk-0")
        + ldel(1, b"pk-1")
        + record(0, b"second", extra=tag(1, 5) + b"\x00" * 4)  # field 1 as fixed32: unknown
        + NON_CANONICAL_RECORDS_TAG
        + varint(len(third))
        + third
    )
    expected = [
        UserRecord("pk-1", "42", b"first", 0),
        UserRecord("pk-0", None, b"second", 1),
        UserRecord("pk-0", None, b"third", 2),  # reached through a non-canonical 3-byte tag
    ]
    assert reference_decode(body) == expected
    assert deaggregate(wrap(body), "outer") == expected


def test_a_repeated_singular_field_keeps_its_last_value() -> None:
    body = (
        ldel(1, b"a")
        + ldel(1, b"b")
        + ldel(3, vint(1, 0) + ldel(3, b"x") + vint(1, 1) + ldel(3, b"y"))
    )
    assert reference_decode(body) == [UserRecord("b", None, b"y", 0)]
    assert deaggregate(wrap(body), "outer") == [UserRecord("b", None, b"y", 0)]


PK = ldel(1, b"pk")
MALFORMED: list[tuple[str, bytes, str]] = [
    ("truncated tag varint", b"\x8a", "truncated varint"),
    ("truncated length", PK + b"\x1a", "truncated varint"),
    ("length past the end", PK + b"\x1a\x05\x08\x00", "claims 5 bytes"),
    ("length past the record", PK + ldel(3, b"\x08\x00\x1a\x09abc"), "claims 9 bytes"),
    (
        "varint over 10 bytes",
        PK + ldel(3, b"\x08" + b"\xff" * 10 + b"\x01" + ldel(3, b"")),
        "10 bytes",
    ),
    ("tag over 5 bytes", b"\x8a\x80\x80\x80\x80\x00\x00", "tag too large"),
    ("tag over 32 bits", b"\x80\x80\x80\x80\x20", "tag too large"),
    ("length over 5 bytes", b"\x0a\x81\x80\x80\x80\x80\x00a", "longer than 5 bytes"),
    ("field number 0", b"\x00\x00", "field number 0"),
    ("field number 0 in a record", PK + ldel(3, b"\x02\x00"), "field number 0"),
    ("wire type 6", b"\x0e", "wire type 6"),
    ("wire type 7", PK + ldel(3, b"\x0f"), "wire type 7"),
    ("end group without a start", b"\x0c", "wire type 4"),
    ("unterminated group", b"\x0b\x08\x01", "unterminated group"),
    ("mismatched group end", b"\x0b\x14", "mismatched"),
    ("truncated fixed64", b"\x09\x00\x00", "truncated fixed"),
    ("truncated fixed32", b"\x0d\x00", "truncated fixed"),
    ("bad wire structure in a tag", PK + record(0, b"x", extra=ldel(4, b"\x0a\x05ab")), "claims 5"),
    ("missing partition_key_index", PK + ldel(3, ldel(3, b"x")), "no partition_key_index"),
    ("missing data", PK + ldel(3, vint(1, 0)), "no data"),
    ("partition key index out of range", PK + record(1, b"x"), "partition key 1"),
    ("explicit hash key index out of range", PK + record(0, b"x", 0), "explicit hash key 0"),
    ("partition key not UTF-8", ldel(1, b"\xff") + record(0, b"x"), "not valid UTF-8"),
    ("explicit hash key not UTF-8", PK + ldel(2, b"\xc3") + record(0, b"x", 0), "not valid UTF-8"),
]


@pytest.mark.parametrize(
    ("body", "message"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
def test_malformed_bodies_are_refused(body: bytes, message: str) -> None:
    assert reference_decode(body) is None  # protobuf (plus a consumer's checks) refuses it too
    blob = wrap(body)
    assert is_aggregated(blob)  # the digest is fine; the damage is inside
    with pytest.raises(AggregationFormatError, match=message):
        deaggregate(blob, "outer")


class _Queued:
    __slots__ = ("data", "explicit_hash_key", "partition_key")

    def __init__(self, partition_key: str, explicit_hash_key: str | None, data: bytes) -> None:
        self.partition_key = partition_key
        self.explicit_hash_key = explicit_hash_key
        self.data = data


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "ключ", "k" * 300]),
            st.one_of(st.none(), st.sampled_from(["1", "340282366920938463463374607431768211455"])),
            st.binary(max_size=400),
        ),
        max_size=40,
    ),
    st.integers(min_value=AGGREGATION_OVERHEAD, max_value=4000),
)
def test_fill_takes_what_add_if_fits_takes(records: list[Rec], max_size: int) -> None:
    """fill() is add_if_fits() in a loop: same records taken, same bytes."""
    expected = Aggregator()
    count = 0
    for partition_key, explicit_hash_key, data in records:
        if not expected.add_if_fits(partition_key, explicit_hash_key, data, max_size):
            break
        count += 1
    queue = deque(_Queued(*record) for record in records)
    taken: list[_Queued] = []
    aggregator = Aggregator()
    stopped = aggregator.fill(queue, taken, max_size)
    assert len(taken) == count
    assert stopped == (count < len(records))
    assert len(queue) == len(records) - count
    assert aggregator.encode() == expected.encode()
    assert aggregator.size == expected.size


@pytest.mark.parametrize(
    ("sizes", "keys"),
    [
        ([20_000, 5, 70_000, 300], 4),  # lengths past the memoized prefixes
        ([3] * 20_000, 20_000),  # key indexes past the memoized index fields
        ([1, 200, 2000, 5000], 2),  # the prefix table grown several times on the way
    ],
)
def test_fill_matches_add_if_fits_past_its_tables(sizes: list[int], keys: int) -> None:
    records = [(f"key-{i % keys}", None, bytes([i % 256]) * size) for i, size in enumerate(sizes)]
    for max_size in (1 << 20, 60_000):
        expected = Aggregator()
        count = 0
        for partition_key, explicit_hash_key, data in records:
            if not expected.add_if_fits(partition_key, explicit_hash_key, data, max_size):
                break
            count += 1
        queue = deque(_Queued(*record) for record in records)
        taken: list[_Queued] = []
        aggregator = Aggregator()
        aggregator.fill(queue, taken, max_size)
        assert len(taken) == count
        assert len(queue) == len(records) - count
        assert aggregator.encode() == expected.encode()


def test_fill_takes_the_records_before_a_refused_key() -> None:
    queue = deque(_Queued(key, None, b"x") for key in ["a", "b", b"bytes", "c"])  # type: ignore[arg-type]
    taken: list[_Queued] = []
    aggregator = Aggregator()
    with pytest.raises(TypeError):
        aggregator.fill(queue, taken, 1 << 20)
    assert [record.partition_key for record in taken] == ["a", "b"]
    assert len(queue) == 2 and len(aggregator) == 2
