"""The CBOR subset of the Kinesis CBOR protocol: RFC 8949 vectors, round trips, damage."""

from __future__ import annotations

import contextlib
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kingest.producer import cbor
from kingest.producer.batch import (
    KinesisEntry,
    encode_put_records_cbor,
    stream_selector_cbor,
)
from kingest.producer.cbor import CborError

# Examples from RFC 8949, Appendix A.
VECTORS = [
    (0, "00"),
    (23, "17"),
    (24, "1818"),
    (1000, "1903e8"),
    (1000000, "1a000f4240"),
    (18446744073709551615, "1bffffffffffffffff"),
    (-1, "20"),
    (-1000, "3903e7"),
    (b"\x01\x02\x03\x04", "4401020304"),
    ("IETF", "6449455446"),
    ("\u00fc", "62c3bc"),
    ([1, [2, 3], [4, 5]], "8301820203820405"),
    ({"a": 1, "b": [2, 3]}, "a26161016162820203"),
    (False, "f4"),
    (True, "f5"),
    (None, "f6"),
    (1.1, "fb3ff199999999999a"),
]


@pytest.mark.parametrize(("value", "encoded"), VECTORS)
def test_rfc_vectors_encode_and_decode(value: object, encoded: str) -> None:
    assert cbor.encode(value).hex() == encoded
    assert cbor.decode(bytes.fromhex(encoded)) == value


@pytest.mark.parametrize(
    ("encoded", "value"),
    [
        ("5f42010243030405ff", b"\x01\x02\x03\x04\x05"),  # indefinite byte string
        ("7f657374726561646d696e67ff", "streaming"),  # indefinite text string
        ("9f018202039f0405ffff", [1, [2, 3], [4, 5]]),  # indefinite arrays
        ("bf61610161629f0203ffff", {"a": 1, "b": [2, 3]}),  # indefinite map
        ("c11a514b67b0", 1363896240),  # tag 1 (epoch time): the value stands for itself
        ("f93c00", 1.0),  # half precision
        ("fa47c35000", 100000.0),  # single precision
    ],
)
def test_what_aws_writers_produce_is_read(encoded: str, value: object) -> None:
    assert cbor.decode(bytes.fromhex(encoded)) == value


def test_half_precision_infinity_and_nan() -> None:
    assert cbor.decode(bytes.fromhex("f97c00")) == math.inf
    assert math.isnan(cbor.decode(bytes.fromhex("f97e00")))


json_like = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)


@given(json_like)
def test_round_trip(value: object) -> None:
    assert cbor.decode(cbor.encode(value)) == value


@given(st.binary(max_size=64))
def test_garbage_raises_only_cbor_error(data: bytes) -> None:
    with contextlib.suppress(CborError):
        cbor.decode(data)


@pytest.mark.parametrize(
    "encoded",
    ["", "18", "62c3", "8301", "a161", "ff", "1c", "5f01ff", "bf6161", "6180", "00 00"],
)
def test_damage_is_refused(encoded: str) -> None:
    with pytest.raises(CborError):
        cbor.decode(bytes.fromhex(encoded.replace(" ", "")))


def test_put_records_body_matches_the_generic_encoder() -> None:
    entries = [
        KinesisEntry(b"\x00\xffdata", "key-1", None, "shardId-0", [], aggregated=False),
        KinesisEntry(b"x" * 300, "k\u00e9y", "12345", "shardId-1", [], aggregated=True),
    ]
    body = encode_put_records_cbor(stream_selector_cbor("events"), entries)
    assert cbor.decode(body) == {
        "StreamName": "events",
        "Records": [
            {"Data": b"\x00\xffdata", "PartitionKey": "key-1"},
            {"Data": b"x" * 300, "PartitionKey": "k\u00e9y", "ExplicitHashKey": "12345"},
        ],
    }
    arn = "arn:aws:kinesis:eu-west-1:123456789012:stream/events"
    assert cbor.decode(encode_put_records_cbor(stream_selector_cbor(arn), []))["StreamARN"] == arn
