"""PostgreSQL column values, as pgoutput sends them (text), to faithful JSON values.

The replication session runs with ``DateStyle=ISO``, ``TimeZone=UTC``, ``IntervalStyle=
iso_8601``, ``bytea_output=hex`` and ``extra_float_digits=3``, so every value's text form is
fixed and exact. The mapping:

======================================  ===================================================
PostgreSQL                              JSON
======================================  ===================================================
smallint, integer, bigint, oid          number (integer)
numeric                                 string with every digit (``"12.50"``, ``"NaN"``):
                                        a JSON number would be read as a binary float by
                                        most consumers and lose digits
real, double precision                  number; ``"NaN"``, ``"Infinity"``, ``"-Infinity"``
                                        as strings (JSON has none)
boolean                                 true / false
timestamp with time zone                ``"2024-05-26T10:30:45.123456+00:00"``
timestamp                               ``"2024-05-26T10:30:45.123456"`` (no zone: none known)
date, time, timetz                      ISO 8601 text; ``infinity`` stays as written
interval                                ISO 8601 duration (``"P1Y2M3DT4H5M6S"``)
json, jsonb                             the JSON value itself
bytea                                   base64 string
arrays of any of these                  JSON arrays (nested for several dimensions)
text, varchar, uuid, inet, enum, ...    string, as PostgreSQL writes it
======================================  ===================================================
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import orjson

__all__ = [
    "ArrayParseError",
    "TypeDescription",
    "TypeMapper",
    "parse_array",
]

Converter = Callable[[str], Any]


class ArrayParseError(ValueError):
    """An array's text form that PostgreSQL would not write."""


def _int(text: str) -> int:
    return int(text)


def _float(text: str) -> float | str:
    value = float(text)
    if value != value or value in (float("inf"), float("-inf")):
        return text  # NaN, Infinity, -Infinity: JSON has no such numbers
    return value


def _bool(text: str) -> bool:
    return text == "t"


def _text(text: str) -> str:
    return text


def _timestamptz(text: str) -> str:
    # ISO DateStyle: "2024-05-26 10:30:45.123456+00" (or "+05:30", "-03:30:15"); BC dates and
    # infinity are left as written.
    if text.endswith(" BC") or "infinity" in text:
        return text
    date, _, rest = text.partition(" ")
    for index in range(len(rest) - 1, 0, -1):
        if rest[index] in "+-":
            clock, offset = rest[:index], rest[index:]
            if len(offset) == 3:
                offset += ":00"
            return f"{date}T{clock}{offset}"
    return f"{date}T{rest}"


def _timestamp(text: str) -> str:
    if text.endswith(" BC") or "infinity" in text:
        return text
    return text.replace(" ", "T", 1)


def _timetz(text: str) -> str:
    for index in range(len(text) - 1, 0, -1):
        if text[index] in "+-":
            offset = text[index:]
            return text[:index] + (offset + ":00" if len(offset) == 3 else offset)
    return text


def _bytea(text: str) -> str:
    if text.startswith("\\x"):
        return base64.b64encode(bytes.fromhex(text[2:])).decode("ascii")
    raise ValueError("bytea not in hex output format")


def _json(text: str) -> Any:
    return orjson.loads(text)


# Built-in scalar types by OID (pg_type.dat).
_SCALARS: Final[dict[int, Converter]] = {
    16: _bool,
    17: _bytea,
    20: _int,
    21: _int,
    23: _int,
    26: _int,
    114: _json,
    700: _float,
    701: _float,
    1114: _timestamp,
    1184: _timestamptz,
    1266: _timetz,
    3802: _json,
}

# Built-in array types -> their element type (pg_type.dat's typarray), so that the common
# arrays need no catalogue lookup.
_ARRAYS: Final[dict[int, int]] = {
    1000: 16,
    1001: 17,
    1002: 18,
    1003: 19,
    1005: 21,
    1007: 23,
    1009: 25,
    1014: 1042,
    1015: 1043,
    1016: 20,
    1021: 700,
    1022: 701,
    1028: 26,
    1115: 1114,
    1182: 1082,
    1183: 1083,
    1185: 1184,
    1187: 1186,
    1231: 1700,
    1270: 1266,
    199: 114,
    2951: 2950,
    3807: 3802,
    1041: 869,
    651: 650,
    1040: 829,
}


@dataclass(frozen=True, slots=True)
class TypeDescription:
    """What the catalogue says of a type that is not built in (pg_type).

    Args:
        category: ``typcategory`` (``A`` array, ``E`` enum, ...).
        element_oid: the element type of an array, else 0.
        base_oid: the base type of a domain, else 0.
        delimiter: the array element delimiter (``,`` for all but box).
    """

    category: str
    element_oid: int
    base_oid: int
    delimiter: str = ","


class TypeMapper:
    """Converters from text to JSON values, per type OID, built once and cached.

    Args:
        describe: looks a type up in the catalogue (for types that are not built in); None
            treats every unknown type as text.
    """

    def __init__(self, describe: Callable[[int], TypeDescription | None] | None = None) -> None:
        self._describe = describe
        self._cache: dict[int, Converter] = dict(_SCALARS)

    def converter(self, type_oid: int) -> Converter:
        """The function turning a value's text of this type into its JSON value."""
        found = self._cache.get(type_oid)
        if found is None:
            found = self._cache[type_oid] = self._build(type_oid, depth=0)
        return found

    def forget(self, type_oid: int) -> None:
        """Drop a cached converter (the type was redefined)."""
        if type_oid not in _SCALARS:
            self._cache.pop(type_oid, None)

    def _build(self, type_oid: int, depth: int) -> Converter:
        if type_oid in _SCALARS:
            return _SCALARS[type_oid]
        element = _ARRAYS.get(type_oid)
        delimiter = ","
        if element is None and self._describe is not None and depth < 8:
            description = self._describe(type_oid)
            if description is not None:
                if description.base_oid:
                    return self._build(description.base_oid, depth + 1)
                if description.category == "A" and description.element_oid:
                    element = description.element_oid
                    element_description = self._describe(element)
                    if element_description is not None:
                        delimiter = element_description.delimiter
        if element is not None:
            convert_element = self._build(element, depth + 1)
            return _array_converter(convert_element, delimiter)
        return _text


def _array_converter(convert_element: Converter, delimiter: str) -> Converter:
    def convert(text: str) -> Any:
        return _map_nested(parse_array(text, delimiter), convert_element)

    return convert


def _map_nested(values: list[Any], convert: Converter) -> list[Any]:
    return [
        _map_nested(value, convert) if isinstance(value, list) else
        (None if value is None else convert(value))
        for value in values
    ]  # fmt: skip


def parse_array(text: str, delimiter: str = ",") -> list[Any]:
    """Parse PostgreSQL's text form of an array into nested lists of strings and None.

    Handles quoting (``"a b"``), backslash escapes, unquoted ``NULL``, several dimensions and
    the explicit bounds prefix (``[0:1]={1,2}``).

    Raises:
        ArrayParseError: the text is not an array's text form.
    """
    if text.startswith("["):
        equals = text.find("=")
        if equals < 0:
            raise ArrayParseError(f"array bounds without '=': {text[:40]!r}")
        text = text[equals + 1 :]
    parsed, end = _parse_level(text, 0, delimiter)
    if end != len(text):
        raise ArrayParseError(f"unexpected text after the array: {text[end : end + 20]!r}")
    return parsed


def _parse_level(text: str, pos: int, delimiter: str) -> tuple[list[Any], int]:
    if pos >= len(text) or text[pos] != "{":
        raise ArrayParseError(f"array expected at offset {pos}")
    pos += 1
    items: list[Any] = []
    if pos < len(text) and text[pos] == "}":
        return items, pos + 1
    while True:
        if pos >= len(text):
            raise ArrayParseError("array not closed")
        char = text[pos]
        if char == "{":
            nested, pos = _parse_level(text, pos, delimiter)
            items.append(nested)
        elif char == '"':
            pos += 1
            chunk: list[str] = []
            while True:
                if pos >= len(text):
                    raise ArrayParseError("quoted element not closed")
                char = text[pos]
                if char == "\\":
                    if pos + 1 >= len(text):
                        raise ArrayParseError("escape at the end of the array")
                    chunk.append(text[pos + 1])
                    pos += 2
                elif char == '"':
                    pos += 1
                    break
                else:
                    chunk.append(char)
                    pos += 1
            items.append("".join(chunk))
        else:
            start = pos
            while pos < len(text) and text[pos] not in (delimiter, "}"):
                if text[pos] in '{"':
                    raise ArrayParseError(f"unexpected {text[pos]!r} at offset {pos}")
                pos += 1
            word = text[start:pos].strip()
            if not word:
                raise ArrayParseError(f"empty element at offset {start}")
            items.append(None if word.upper() == "NULL" else word)
        if pos >= len(text):
            raise ArrayParseError("array not closed")
        if text[pos] == delimiter:
            pos += 1
            continue
        if text[pos] == "}":
            return items, pos + 1
        raise ArrayParseError(f"unexpected {text[pos]!r} at offset {pos}")
