"""MySQL binlog values to JSON: each column type's converter, and what the library is told.

pymysqlreplication decodes a row's bytes with what the table map event says about a column;
:func:`column_plan` decides, for one column whose name, signedness, character set and members
are known (see :mod:`~kingest.sources.cdc.mysql.rows`), what the library is told and which
converter turns the library's values into faithful JSON. Text always reaches kingest as bytes
(the library's ``binary`` character set) and is decoded here with the column's real character
set.


JSON forms (``null`` stays ``null``):

==========================  ===========================================================
integers, YEAR              numbers (unsigned BIGINT up to 18446744073709551615)
DECIMAL                     a string with every digit: ``"12345678901234567890.0123456789"``
FLOAT, DOUBLE               numbers (FLOAT with the fewest digits that identify its value)
CHAR, VARCHAR, TEXT         strings, decoded with the column's character set
BINARY, VARBINARY, BLOB     base64 strings (BINARY padded with zero bytes to its length)
DATE                        ``"2024-02-29"``
DATETIME                    ``"2024-05-26T10:30:45.123456"`` (no zone: MySQL stores none)
TIMESTAMP                   ``"2024-05-26T10:30:45.678000+00:00"`` (UTC, as the binlog has it)
TIME                        ``"-838:59:59"``, ``"10:30:00.250000"``
JSON                        the JSON value itself
ENUM, SET                   their strings: ``"it's"``, ``"x,z"`` (SET members in definition order)
BIT                         the number the bits spell: ``b'1010'`` is ``10``
GEOMETRY                    base64 of MySQL's internal form (SRID + WKB)
==========================  ===========================================================

Zero dates (``0000-00-00``) and the zero TIMESTAMP have no ISO 8601 form and become ``null``.
"""

from __future__ import annotations

import base64
import datetime as dt
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

import orjson

from kingest.sources.cdc.mysql.charsets import CODECS, LATIN1_ERRORS

__all__ = [
    "COMPATIBLE",
    "STRINGS",
    "BinlogColumn",
    "ColumnPlan",
    "ConversionError",
    "binlog_column",
    "column_plan",
    "json_value",
    "plain_value",
    "time_text",
]

Converter = Callable[[Any], Any]

# Binlog column types (MySQL's enum_field_types, as pymysqlreplication.constants.FIELD_TYPE).
DECIMAL: Final = 0
TINY: Final = 1
SHORT: Final = 2
LONG: Final = 3
FLOAT: Final = 4
DOUBLE: Final = 5
TIMESTAMP: Final = 7
LONGLONG: Final = 8
INT24: Final = 9
DATE: Final = 10
TIME: Final = 11
DATETIME: Final = 12
YEAR: Final = 13
NEWDATE: Final = 14
VARCHAR: Final = 15
BIT: Final = 16
TIMESTAMP2: Final = 17
DATETIME2: Final = 18
TIME2: Final = 19
JSON: Final = 245
NEWDECIMAL: Final = 246
ENUM: Final = 247
SET: Final = 248
BLOB: Final = 252
VAR_STRING: Final = 253
STRING: Final = 254
GEOMETRY: Final = 255

STRINGS: Final = frozenset({VARCHAR, BLOB, VAR_STRING, STRING})
_INTEGERS: Final = frozenset({TINY, SHORT, LONG, LONGLONG, INT24, YEAR})

TYPE_NAMES: Final = {
    DECIMAL: "DECIMAL (old format)",
    TINY: "TINYINT",
    SHORT: "SMALLINT",
    LONG: "INT",
    FLOAT: "FLOAT",
    DOUBLE: "DOUBLE",
    TIMESTAMP: "TIMESTAMP",
    LONGLONG: "BIGINT",
    INT24: "MEDIUMINT",
    DATE: "DATE",
    TIME: "TIME",
    DATETIME: "DATETIME",
    YEAR: "YEAR",
    NEWDATE: "DATE",
    VARCHAR: "VARCHAR",
    BIT: "BIT",
    TIMESTAMP2: "TIMESTAMP",
    DATETIME2: "DATETIME",
    TIME2: "TIME",
    JSON: "JSON",
    NEWDECIMAL: "DECIMAL",
    ENUM: "ENUM",
    SET: "SET",
    BLOB: "BLOB/TEXT",
    VAR_STRING: "VARCHAR",
    STRING: "CHAR/BINARY",
    GEOMETRY: "GEOMETRY",
}

# information_schema DATA_TYPE -> the binlog types a column of it is logged as. A data type not
# listed (a newer server's) is not checked.
COMPATIBLE: Final[Mapping[str, frozenset[int]]] = {
    "tinyint": frozenset({TINY}),
    "bool": frozenset({TINY}),
    "boolean": frozenset({TINY}),
    "smallint": frozenset({SHORT}),
    "mediumint": frozenset({INT24}),
    "int": frozenset({LONG}),
    "integer": frozenset({LONG}),
    "bigint": frozenset({LONGLONG}),
    "float": frozenset({FLOAT}),
    "double": frozenset({DOUBLE}),
    "real": frozenset({DOUBLE}),
    "decimal": frozenset({NEWDECIMAL, DECIMAL}),
    "numeric": frozenset({NEWDECIMAL, DECIMAL}),
    "char": frozenset({STRING, VARCHAR, VAR_STRING}),
    "varchar": frozenset({VARCHAR, VAR_STRING, STRING}),
    "binary": frozenset({STRING, VARCHAR, VAR_STRING}),
    "varbinary": frozenset({VARCHAR, VAR_STRING, STRING}),
    "tinytext": frozenset({BLOB}),
    "text": frozenset({BLOB}),
    "mediumtext": frozenset({BLOB}),
    "longtext": frozenset({BLOB}),
    "tinyblob": frozenset({BLOB}),
    "blob": frozenset({BLOB}),
    "mediumblob": frozenset({BLOB}),
    "longblob": frozenset({BLOB}),
    "json": frozenset({JSON, BLOB}),
    "date": frozenset({DATE, NEWDATE}),
    "datetime": frozenset({DATETIME, DATETIME2}),
    "timestamp": frozenset({TIMESTAMP, TIMESTAMP2}),
    "time": frozenset({TIME, TIME2}),
    "year": frozenset({YEAR}),
    "enum": frozenset({ENUM, STRING}),
    "set": frozenset({SET, STRING}),
    "bit": frozenset({BIT}),
    "geometry": frozenset({GEOMETRY}),
    "point": frozenset({GEOMETRY}),
    "linestring": frozenset({GEOMETRY}),
    "polygon": frozenset({GEOMETRY}),
    "multipoint": frozenset({GEOMETRY}),
    "multilinestring": frozenset({GEOMETRY}),
    "multipolygon": frozenset({GEOMETRY}),
    "geometrycollection": frozenset({GEOMETRY}),
    "geomcollection": frozenset({GEOMETRY}),
}

_FLOAT32: Final = struct.Struct("<f")
_EPOCH: Final = dt.datetime(1970, 1, 1)


class ConversionError(Exception):
    """A value that cannot become JSON as its column's type says (e.g. text not in its charset)."""


@dataclass(frozen=True, slots=True)
class BinlogColumn:
    """What a table map event says about one column (read from pymysqlreplication's Column).

    Attributes:
        type: the binlog column type (``FIELD_TYPE``).
        name: the name, with binlog_row_metadata=FULL only.
        unsigned: unsigned, when the binlog carries signedness.
        charset: the MySQL character set, when the binlog carries it (``binary`` for bytes).
        max_length: the byte length of CHAR/BINARY/VARCHAR columns.
        enum_values, set_values: ENUM/SET members, when the binlog carries them.
        primary: part of the primary key, when the binlog says so.
    """

    type: int
    name: str | None = None
    unsigned: bool = False
    charset: str | None = None
    max_length: int | None = None
    enum_values: tuple[str, ...] | None = None
    set_values: tuple[str, ...] | None = None
    primary: bool = False


def binlog_column(column: Any) -> BinlogColumn:
    """Read a pymysqlreplication ``Column`` (after the library applied the binlog's metadata)."""
    collation = getattr(column, "collation_name", None)
    charset = None
    if collation:
        charset = "binary" if collation == "binary" else str(collation).split("_", 1)[0]
    enum_values = getattr(column, "enum_values", None)
    set_values = getattr(column, "set_values", None)
    return BinlogColumn(
        type=int(column.type),
        name=getattr(column, "name", None) or None,
        unsigned=bool(getattr(column, "unsigned", False)),
        charset=charset,
        max_length=getattr(column, "max_length", None),
        # The library puts the invalid-value member "" first.
        enum_values=tuple(enum_values[1:]) if enum_values else None,
        set_values=tuple(set_values) if set_values else None,
        primary=bool(getattr(column, "is_primary", False)),
    )


@dataclass(frozen=True, slots=True)
class ColumnPlan:
    """How one column is decoded and converted.

    Attributes:
        name: the column name.
        unsigned: decode integers as unsigned.
        raw: have the library hand over bytes (text is decoded by ``convert``).
        enum_values, set_values: members the library needs to decode ENUM/SET.
        is_set: a SET column (an empty set arrives as null and becomes ``""``).
        convert: the library's value -> the JSON value (never called with None).
    """

    name: str
    unsigned: bool
    raw: bool
    enum_values: tuple[str, ...] | None
    set_values: tuple[str, ...] | None
    is_set: bool
    convert: Converter


def column_plan(
    column: BinlogColumn,
    name: str,
    unsigned: bool,
    charset: str | None,
    values: tuple[str, ...] | None,
    is_json: bool,
    notes: list[str],
) -> ColumnPlan:
    """How one column is decoded and converted, once its name and metadata are decided.

    Args:
        column: what the table map event says about the column.
        name, unsigned, charset, values: the column's name, signedness, character set and
            ENUM/SET members, from the binlog or information_schema.
        is_json: the column holds JSON (MySQL's JSON type, or MariaDB's JSON text).
        notes: where a problem worth one log line is added.

    Returns:
        The column's plan.
    """
    kind = column.type
    raw = kind in STRINGS
    convert: Converter
    if kind in _INTEGERS:
        convert = _identity
    elif kind == FLOAT:
        convert = float32
    elif kind == DOUBLE:
        convert = _identity
    elif kind == NEWDECIMAL:
        convert = decimal_text
    elif raw:
        convert = _string_converter(column, name, charset, is_json, notes)
    elif kind == JSON:
        convert = json_value
    elif kind in (DATE, NEWDATE, DATETIME, DATETIME2):
        convert = _iso
    elif kind in (TIMESTAMP, TIMESTAMP2):
        convert = timestamp_text
    elif kind in (TIME, TIME2):
        convert = time_text
    elif kind == ENUM:
        convert = _identity
    elif kind == SET:
        convert = _set_converter(values or ())
    elif kind == BIT:
        convert = bit_value
    elif kind == GEOMETRY:
        convert = _base64_value
    else:
        # The library cannot decode it either; its rows event goes to the dead-letter queue.
        convert = plain_value
    return ColumnPlan(
        name=name,
        unsigned=unsigned,
        raw=raw,
        enum_values=values if kind == ENUM else None,
        set_values=values if kind == SET else None,
        is_set=kind == SET,
        convert=convert,
    )


def _string_converter(
    column: BinlogColumn, name: str, charset: str | None, is_json: bool, notes: list[str]
) -> Converter:
    if charset is None or charset == "binary":
        if column.type == STRING and column.max_length:
            # The binlog drops BINARY(n)'s trailing zero bytes; the column's value has them.
            length = column.max_length
            return lambda value: base64_text(_raw(value).ljust(length, b"\0"))
        return _base64_value
    codec = CODECS.get(charset.lower())
    if codec is None:
        notes.append(
            f"column {name} uses character set {charset}, which has no Python codec; its "
            "values are sent as base64"
        )
        return _base64_value
    errors = LATIN1_ERRORS if codec == "cp1252" else "strict"

    def text(value: Any) -> Any:
        if isinstance(value, str):
            return value
        try:
            return bytes(value).decode(codec, errors)
        except UnicodeDecodeError as exc:
            raise ConversionError(
                f"column {name}: not valid {charset} text ({exc.reason})"
            ) from None

    if not is_json:
        return text

    def json_text(value: Any) -> Any:
        decoded = text(value)
        try:
            return orjson.loads(decoded)
        except orjson.JSONDecodeError:
            return decoded  # a JSON column holding invalid JSON keeps its text

    return json_text


def _raw(value: Any) -> bytes:
    # Python decodes b"" with any codec name without looking it up, so the library's "binary"
    # character set turns an empty value into "" rather than b"".
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    return bytes(value)


def _base64_value(value: Any) -> str:
    return base64_text(_raw(value))


def _identity(value: Any) -> Any:
    return value


def _iso(value: Any) -> str:
    text: str = value.isoformat()
    return text


def float32(value: float) -> float:
    """A FLOAT column's value with the fewest digits that identify it (``1.1``, not
    ``1.100000023841858``): MySQL stores 32-bit floats, Python reads them as doubles."""
    for digits in range(1, 10):
        candidate = float(f"{value:.{digits}g}")
        try:
            if _FLOAT32.unpack(_FLOAT32.pack(candidate))[0] == value:
                return candidate
        except OverflowError:
            continue  # rounded past FLOAT's largest value (3.4028235e38)
    return value


def decimal_text(value: Decimal) -> str:
    """A DECIMAL as a plain-notation string with every digit (never an exponent)."""
    return format(value, "f")


def base64_text(value: bytes) -> str:
    """Bytes as standard base64."""
    return base64.b64encode(value).decode("ascii")


def timestamp_text(value: dt.datetime) -> str | None:
    """A TIMESTAMP (UTC in the binlog) as ISO 8601 with ``+00:00``; the zero TIMESTAMP is None."""
    if value == _EPOCH:
        return None  # TIMESTAMP starts at 00:00:01 UTC: second 0 is '0000-00-00 00:00:00'
    return value.isoformat() + "+00:00"


def time_text(value: dt.timedelta) -> str:
    """A TIME as MySQL writes it: ``[-]HH:MM:SS[.ffffff]``, hours beyond 24 allowed."""
    micros = (value.days * 86_400 + value.seconds) * 1_000_000 + value.microseconds
    sign = "-" if micros < 0 else ""
    seconds, fraction = divmod(abs(micros), 1_000_000)
    minutes, second = divmod(seconds, 60)
    hours, minute = divmod(minutes, 60)
    text = f"{sign}{hours:02d}:{minute:02d}:{second:02d}"
    return f"{text}.{fraction:06d}" if fraction else text


def bit_value(value: str) -> int:
    """A BIT column (the library gives its bits as text) as the number they spell."""
    return int(value, 2) if value else 0


def _set_converter(members: tuple[str, ...]) -> Converter:
    def convert(value: Any) -> str:
        return ",".join(member for member in members if member in value)

    return convert


def json_value(value: Any) -> Any:
    """A value of MySQL's binary JSON (as the library parses it) as a JSON value.

    Keys and strings come as UTF-8 bytes; DECIMAL members stay exact numbers; dates and times
    (MySQL JSON can hold them) become their ISO 8601 text.
    """
    if isinstance(value, dict):
        return {_json_key(key): json_value(item) for key, item in value.items()}
    if isinstance(value, list):
        return [json_value(item) for item in value]
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, Decimal):
        return orjson.Fragment(decimal_text(value))
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return time_text(value)
    return value


def _json_key(key: Any) -> str:
    if isinstance(key, bytes | bytearray):
        return bytes(key).decode("utf-8", "replace")
    return str(key)


def plain_value(value: Any) -> Any:
    """Any decoded value as JSON without knowing its column (for dead-letter payloads)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, bytes | bytearray):
        return base64_text(bytes(value))
    if isinstance(value, Decimal):
        return decimal_text(value)
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return time_text(value)
    if isinstance(value, set | frozenset):
        return sorted(plain_value(item) for item in value)
    if isinstance(value, dict | list):
        return json_value(value)
    return str(value)
