"""Binlog values to JSON and column naming plans (no server)."""

from __future__ import annotations

import base64
import datetime as dt
import struct
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kingest.sources.cdc.mysql import decode
from kingest.sources.cdc.mysql.decode import (
    BinlogColumn,
    ConversionError,
    binlog_column,
    bit_value,
    decimal_text,
    float32,
    json_value,
    plain_value,
    time_text,
    timestamp_text,
)
from kingest.sources.cdc.mysql.rows import (
    SchemaMismatch,
    apply_plan,
    apply_raw,
    convert_row,
    plan_table,
    positional,
)
from kingest.sources.cdc.mysql.schema import ColumnInfo, TableSchema

# ------------------------------------------------------------------ single values


@given(st.floats(width=32, allow_nan=False, allow_infinity=False))
def test_float32_keeps_the_stored_value_with_fewest_digits(value: float) -> None:
    shown = float32(value)
    assert struct.unpack("<f", struct.pack("<f", shown))[0] == value
    assert len(repr(shown)) <= len(repr(value))


def test_float32_examples() -> None:
    assert float32(struct.unpack("<f", struct.pack("<f", 1.1))[0]) == 1.1
    assert float32(struct.unpack("<f", struct.pack("<f", -3.4e38))[0]) == -3.4e38
    assert float32(0.0) == 0.0


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (Decimal("12345678901234567890.0123456789"), "12345678901234567890.0123456789"),
        (Decimal("-1.05"), "-1.05"),
        (Decimal("0.0000001"), "0.0000001"),
        (Decimal("123."), "123"),
        (Decimal("1E+3"), "1000"),
        (Decimal("0.00"), "0.00"),
    ],
)
def test_decimals_keep_every_digit_without_exponent(value: Decimal, text: str) -> None:
    assert decimal_text(value) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (dt.timedelta(0), "00:00:00"),
        (dt.timedelta(hours=10, minutes=30, microseconds=250000), "10:30:00.250000"),
        (dt.timedelta(hours=838, minutes=59, seconds=59), "838:59:59"),
        (-dt.timedelta(hours=838, minutes=59, seconds=59), "-838:59:59"),
        (dt.timedelta(days=-35, seconds=3601), "-838:59:59"),
        (-dt.timedelta(microseconds=1), "-00:00:00.000001"),
    ],
)
def test_time_text(value: dt.timedelta, text: str) -> None:
    assert time_text(value) == text


def test_timestamps_are_utc_and_the_zero_timestamp_is_null() -> None:
    moment = dt.datetime(2024, 5, 26, 10, 30, 45, 678000)
    assert timestamp_text(moment) == "2024-05-26T10:30:45.678000+00:00"
    assert timestamp_text(dt.datetime(1970, 1, 1)) is None


def test_bits_are_numbers() -> None:
    assert bit_value("1010000001") == 641
    assert bit_value("1") == 1
    assert bit_value("0" * 64) == 0
    assert bit_value("1" * 64) == (1 << 64) - 1


def test_mysql_binary_json_becomes_json() -> None:
    parsed = {
        b"a": [1, 2.5, b"x", None, True],
        b"b": {b"c": "é".encode()},
        b"d": Decimal("1.10"),
        b"when": dt.datetime(2024, 1, 2, 3, 4, 5),
        b"t": dt.timedelta(hours=1),
    }
    value = json_value(parsed)
    assert orjson.loads(orjson.dumps(value)) == {
        "a": [1, 2.5, "x", None, True],
        "b": {"c": "é"},
        "d": 1.10,
        "when": "2024-01-02T03:04:05",
        "t": "01:00:00",
    }
    assert b'"d":1.10' in orjson.dumps(value)  # the DECIMAL keeps its digits


def test_plain_values_for_dead_letter_payloads() -> None:
    assert plain_value(b"\x00\xff") == "AP8="
    assert plain_value(Decimal("1.50")) == "1.50"
    assert plain_value({"b", "a"}) == ["a", "b"]
    assert plain_value(dt.date(2024, 2, 29)) == "2024-02-29"
    assert plain_value(dt.timedelta(seconds=-1)) == "-00:00:01"
    assert positional({"column_1": 1, "column_2": b"\x01"}) == [1, "AQ=="]


# ------------------------------------------------------------------ plans


def column(kind: int, **fields: Any) -> BinlogColumn:
    return BinlogColumn(type=kind, **fields)


SCHEMA = TableSchema(
    "shop",
    "orders",
    (
        ColumnInfo("id", "bigint", unsigned=True),
        ColumnInfo("note", "varchar", charset="latin1"),
        ColumnInfo("raw", "binary"),
        ColumnInfo("doc", "longtext", charset="utf8mb4", is_json=True),
        ColumnInfo("state", "enum", charset="utf8mb4", values=("new", "it's")),
        ColumnInfo("tags", "set", charset="utf8mb4", values=("x", "y", "z")),
    ),
    ("id",),
)
UNNAMED = [
    column(decode.LONGLONG),
    column(decode.VARCHAR, max_length=10),
    column(decode.STRING, max_length=4),
    column(decode.BLOB),
    column(decode.ENUM),
    column(decode.SET),
]


def test_plan_from_information_schema_names_and_converts() -> None:
    plan = plan_table("shop", "orders", UNNAMED, SCHEMA)
    assert plan.names_from == "information_schema"
    assert plan.table.primary_key == ("id",)
    assert plan.table.qualified == "shop.orders"
    assert [c.name for c in plan.columns] == ["id", "note", "raw", "doc", "state", "tags"]
    assert plan.columns[0].unsigned
    assert [c.raw for c in plan.columns] == [False, True, True, True, False, False]
    assert plan.columns[4].enum_values == ("new", "it's")
    assert plan.columns[5].set_values == ("x", "y", "z")
    row = convert_row(
        plan,
        {
            "id": 18446744073709551615,
            "note": b"caf\xe9 \x81",  # latin1, with a byte Windows-1252 leaves undefined
            "raw": b"\x01\x02",
            "doc": b'{"a": [1, {"b": null}]}',
            "state": "it's",
            "tags": {"z", "x"},
        },
        {},
    )
    assert row == {
        "id": 18446744073709551615,
        "note": "café \x81",
        "raw": base64.b64encode(b"\x01\x02\x00\x00").decode(),  # BINARY(4) padded back
        "doc": {"a": [1, {"b": None}]},
        "state": "it's",
        "tags": "x,z",
    }


def test_empty_values_arrive_as_text_and_stay_empty() -> None:
    # Python decodes b"" with any codec name, so the library hands "" over for empty values.
    plan = plan_table("shop", "orders", UNNAMED, SCHEMA)
    row = convert_row(
        plan, {"id": 1, "note": "", "raw": "", "doc": "", "state": "", "tags": set()}, {}
    )
    assert row == {"id": 1, "note": "", "raw": "AAAAAA==", "doc": "", "state": "", "tags": ""}


def test_nulls_and_the_empty_set() -> None:
    plan = plan_table("shop", "orders", UNNAMED, SCHEMA)
    values = dict.fromkeys(["id", "note", "raw", "doc", "state", "tags"])
    assert convert_row(plan, values, {"tags": "empty set"})["tags"] == ""
    assert convert_row(plan, values, {"tags": "null"}) == values


def test_invalid_json_text_stays_text_and_bad_text_is_an_error() -> None:
    plan = plan_table("shop", "orders", UNNAMED, SCHEMA)
    row = dict.fromkeys(["id", "note", "raw", "doc", "state", "tags"])
    assert convert_row(plan, {**row, "doc": b"{not json"}, {})["doc"] == "{not json"
    utf8 = plan_table(
        "shop",
        "t",
        [column(decode.VARCHAR)],
        TableSchema("shop", "t", (ColumnInfo("v", "varchar", charset="utf8mb4"),), ()),
    )
    with pytest.raises(ConversionError, match="column v: not valid utf8mb4"):
        convert_row(utf8, {"v": b"\xff\xfe"}, {})


def test_plan_from_binlog_metadata_uses_the_binlog_names() -> None:
    named = [
        column(decode.LONG, name="id", unsigned=True, primary=True),
        column(decode.VARCHAR, name="title", charset="utf8mb4"),
        column(decode.BLOB, name="doc", charset="utf8mb4"),
        column(decode.BLOB, name="picture", charset="binary"),
        column(decode.ENUM, name="state", charset="utf8mb4", enum_values=("a", "b")),
    ]
    schema = TableSchema(
        "shop",
        "items",
        (ColumnInfo("doc", "longtext", charset="utf8mb4", is_json=True),),
        ("other",),
    )
    plan = plan_table("shop", "items", named, schema)
    assert plan.names_from == "binlog"
    assert plan.table.primary_key == ("id",)
    row = convert_row(
        plan,
        {"id": 4294967295, "title": "é".encode(), "doc": b"[1]", "picture": b"\x00", "state": "b"},
        {},
    )
    assert row == {"id": 4294967295, "title": "é", "doc": [1], "picture": "AA==", "state": "b"}


def test_binlog_names_take_a_prefixed_primary_key_from_information_schema() -> None:
    named = [column(decode.BLOB, name="k", charset="utf8mb4"), column(decode.LONG, name="v")]
    schema = TableSchema("d", "t", (ColumnInfo("k", "text"), ColumnInfo("v", "int")), ("k",))
    assert plan_table("d", "t", named, schema).table.primary_key == ("k",)
    assert plan_table("d", "t", named, None).table.primary_key == ()


def test_an_unknown_character_set_is_sent_as_base64_with_a_note() -> None:
    named = [column(decode.VARCHAR, name="v", charset="armscii8")]
    plan = plan_table("d", "t", named, None)
    assert plan.notes and "armscii8" in plan.notes[0]
    assert convert_row(plan, {"v": b"\xa1"}, {}) == {"v": "oQ=="}


def test_mismatches_are_reported_not_guessed() -> None:
    with pytest.raises(SchemaMismatch, match="has 5 columns, but information_schema now lists 6"):
        plan_table("shop", "orders", UNNAMED[:5], SCHEMA)
    swapped = [UNNAMED[1], UNNAMED[0], *UNNAMED[2:]]
    with pytest.raises(SchemaMismatch, match=r"column 1 of shop\.orders is VARCHAR in the binlog"):
        plan_table("shop", "orders", swapped, SCHEMA)
    with pytest.raises(SchemaMismatch, match="does not describe the table"):
        plan_table("shop", "orders", UNNAMED, None)


def test_apply_plan_sets_what_the_library_decodes_with() -> None:
    plan = plan_table("shop", "orders", UNNAMED, SCHEMA)
    library = [
        SimpleNamespace(type=c.type, name=None, unsigned=False, character_set_name=None)
        for c in UNNAMED
    ]
    apply_plan(plan, library)
    assert [c.name for c in library] == ["id", "note", "raw", "doc", "state", "tags"]
    assert library[0].unsigned is True
    assert library[1].character_set_name == "binary"
    assert library[4].enum_values == ["", "new", "it's"]
    assert library[5].set_values == ["x", "y", "z"]
    raw = [SimpleNamespace(type=c.type, name=None, character_set_name=None) for c in UNNAMED]
    apply_raw(raw)
    assert raw[0].name == "column_1" and raw[1].character_set_name == "binary"


def test_binlog_column_reads_the_library_column() -> None:
    library = SimpleNamespace(
        type=decode.ENUM,
        name="state",
        unsigned=False,
        collation_name="utf8mb4_general_ci",
        enum_values=["", "a", "b"],
        set_values=None,
        is_primary=False,
    )
    assert binlog_column(library) == BinlogColumn(
        type=decode.ENUM, name="state", charset="utf8mb4", enum_values=("a", "b")
    )
    binary = SimpleNamespace(type=decode.STRING, name=None, collation_name="binary", max_length=4)
    assert binlog_column(binary) == BinlogColumn(type=decode.STRING, charset="binary", max_length=4)
