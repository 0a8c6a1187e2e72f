"""Value text to JSON: every mapped type, and PostgreSQL's array text form."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kingest.sources.cdc.postgres.types import (
    ArrayParseError,
    TypeDescription,
    TypeMapper,
    parse_array,
)

BUILTIN = TypeMapper()


@pytest.mark.parametrize(
    ("oid", "text", "expected"),
    [
        (21, "-32768", -32768),
        (23, "2147483647", 2147483647),
        (20, "9223372036854775807", 9223372036854775807),
        (1700, "12345678901234567890.123456789", "12345678901234567890.123456789"),
        (1700, "NaN", "NaN"),
        (701, "0.1", 0.1),
        (701, "NaN", "NaN"),
        (700, "-Infinity", "-Infinity"),
        (16, "t", True),
        (16, "f", False),
        (25, 'héllo "q"', 'héllo "q"'),
        (1184, "2024-05-26 10:30:45.123456+00", "2024-05-26T10:30:45.123456+00:00"),
        (1184, "2024-05-26 10:30:45+05:30", "2024-05-26T10:30:45+05:30"),
        (1184, "infinity", "infinity"),
        (1114, "2024-05-26 10:30:45", "2024-05-26T10:30:45"),
        (1082, "2024-02-29", "2024-02-29"),
        (1266, "10:30:45+02", "10:30:45+02:00"),
        (1186, "P1Y2M3DT4H5M6S", "P1Y2M3DT4H5M6S"),
        (114, '{"a": [1, 2.5, null]}', {"a": [1, 2.5, None]}),
        (3802, '[1, "x"]', [1, "x"]),
        (17, "\\x48656c6c6f", "SGVsbG8="),
        (2950, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        (1007, "{1,2,NULL}", [1, 2, None]),
        (1009, '{"a b","c\\"d",NULL,"NULL"}', ["a b", 'c"d', None, "NULL"]),
        (1007, "{{1,2},{3,4}}", [[1, 2], [3, 4]]),
        (1231, "{1.50,NaN}", ["1.50", "NaN"]),
        (1007, "[0:1]={5,6}", [5, 6]),
        (1009, "{}", []),
    ],
)
def test_builtin_types(oid: int, text: str, expected: Any) -> None:
    assert BUILTIN.converter(oid)(text) == expected


def test_unknown_types_are_text_and_catalogue_types_resolve() -> None:
    catalogue = {
        90001: TypeDescription("E", 0, 0),  # an enum
        90002: TypeDescription("N", 0, 23),  # a domain over integer
        90003: TypeDescription("A", 90002, 0),  # an array of that domain
    }
    mapper = TypeMapper(catalogue.get)
    assert mapper.converter(90001)("shipped") == "shipped"
    assert mapper.converter(90002)("42") == 42
    assert mapper.converter(90003)("{1,NULL}") == [1, None]
    assert TypeMapper().converter(90002)("42") == "42"


def _format_array(items: list[str | None]) -> str:
    parts = []
    for item in items:
        if item is None:
            parts.append("NULL")
        else:
            parts.append('"' + item.replace("\\", "\\\\").replace('"', '\\"') + '"')
    return "{" + ",".join(parts) + "}"


@given(st.lists(st.one_of(st.none(), st.text(max_size=12)), max_size=10))
def test_array_round_trip(items: list[str | None]) -> None:
    assert parse_array(_format_array(items)) == items


@given(st.text(max_size=30))
def test_array_garbage_raises_only_array_parse_error(text: str) -> None:
    with contextlib.suppress(ArrayParseError):
        parse_array(text)


@pytest.mark.parametrize("text", ["", "{", "{1,2", '{"a}', "{1,,2}", "1,2", "{1}x", "[1:2]"])
def test_bad_arrays(text: str) -> None:
    with pytest.raises(ArrayParseError):
        parse_array(text)
