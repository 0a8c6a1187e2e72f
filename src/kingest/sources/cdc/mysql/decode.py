"""Binlog rows to JSON: naming columns, and turning each MySQL type into a faithful JSON value.

pymysqlreplication decodes a row's bytes with what the table map event says about the columns.
Without binlog_row_metadata=FULL that is too little: no names, no signedness (an unsigned
BIGINT comes out negative), no character sets (latin1 text fails to decode as UTF-8, binary
data too) and no ENUM/SET members. :func:`plan_table` therefore decides, per table map, each
column's name, signedness, members and JSON converter, from the binlog's own metadata when it
has names and from information_schema otherwise; :func:`apply_plan` hands those decisions to
the library's column objects before their rows are decoded. Text always reaches kingest as
bytes (the library's ``binary`` character set) and is decoded here with the column's real
character set.

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
import codecs
import datetime as dt
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

import orjson

from kingest.sources.cdc.envelope import TableRef
from kingest.sources.cdc.mysql.schema import TableSchema

__all__ = [
    "BinlogColumn",
    "ColumnPlan",
    "ConversionError",
    "SchemaMismatch",
    "TablePlan",
    "apply_plan",
    "apply_raw",
    "binlog_column",
    "convert_row",
    "json_value",
    "plain_value",
    "plan_table",
    "positional",
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

_STRINGS: Final = frozenset({VARCHAR, BLOB, VAR_STRING, STRING})
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
_COMPATIBLE: Final[Mapping[str, frozenset[int]]] = {
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

# MySQL character set -> Python codec. MySQL's latin1 is Windows-1252 with the five bytes that
# code page leaves undefined mapped to the C1 controls; see _LATIN1_ERRORS.
_CODECS: Final = {
    "utf8mb4": "utf-8",
    "utf8mb3": "utf-8",
    "utf8": "utf-8",
    "latin1": "cp1252",
    "ascii": "ascii",
    "ucs2": "utf-16-be",
    "utf16": "utf-16-be",
    "utf16le": "utf-16-le",
    "utf32": "utf-32-be",
    "latin2": "iso8859-2",
    "latin5": "iso8859-9",
    "latin7": "iso8859-13",
    "greek": "iso8859-7",
    "hebrew": "iso8859-8",
    "cp1250": "cp1250",
    "cp1251": "cp1251",
    "cp1256": "cp1256",
    "cp1257": "cp1257",
    "cp850": "cp850",
    "cp852": "cp852",
    "cp866": "cp866",
    "koi8r": "koi8-r",
    "koi8u": "koi8-u",
    "sjis": "shift_jis",
    "cp932": "cp932",
    "ujis": "euc-jp",
    "eucjpms": "euc-jp",
    "gbk": "gbk",
    "gb2312": "gb2312",
    "gb18030": "gb18030",
    "big5": "big5",
    "euckr": "euc-kr",
    "tis620": "tis-620",
    "macroman": "mac-roman",
    "macce": "mac-latin2",
    "hp8": "hp-roman8",
}
_LATIN1_ERRORS: Final = "kingest-mysql-latin1"


def _latin1_undefined(exc: UnicodeError) -> tuple[str, int]:
    if not isinstance(exc, UnicodeDecodeError):
        raise exc
    chunk = exc.object[exc.start : exc.end]
    return "".join(chr(byte) for byte in chunk), exc.end


codecs.register_error(_LATIN1_ERRORS, _latin1_undefined)

_FLOAT32: Final = struct.Struct("<f")
_EPOCH: Final = dt.datetime(1970, 1, 1)


class SchemaMismatch(Exception):
    """The binlog's columns cannot be named with what information_schema says now."""


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


@dataclass(frozen=True, slots=True)
class TablePlan:
    """How the rows of one table map are decoded: the table and each column's plan.

    Attributes:
        table: the table as events name it (with its primary key).
        columns: per column, in binlog order.
        names_from: ``binlog`` (binlog_row_metadata=FULL) or ``information_schema``.
        notes: problems worth one log line (a character set without a Python codec).
    """

    table: TableRef
    columns: tuple[ColumnPlan, ...]
    names_from: str
    notes: tuple[str, ...] = ()


def plan_table(
    database: str, table: str, columns: Sequence[BinlogColumn], schema: TableSchema | None
) -> TablePlan:
    """Decide how to decode the rows of a table map event.

    Args:
        database, table: the table the event names.
        columns: the event's columns, in order.
        schema: the table's definition from information_schema (None when unknown).

    Returns:
        The plan: names and metadata from the binlog when it names the columns
        (binlog_row_metadata=FULL; information_schema adds MariaDB's JSON columns and a primary
        key with a prefix), else from information_schema.

    Raises:
        SchemaMismatch: the binlog does not name the columns and information_schema does not
            describe them as the binlog logged them (another column count or type).
    """
    if columns and all(column.name for column in columns):
        return _plan_from_binlog(database, table, columns, schema)
    return _plan_from_schema(database, table, columns, schema)


def _plan_from_binlog(
    database: str, table: str, columns: Sequence[BinlogColumn], schema: TableSchema | None
) -> TablePlan:
    plans = []
    notes: list[str] = []
    for column in columns:
        name = column.name
        assert name is not None
        info = schema.column(name) if schema is not None else None
        charset = column.charset or (info.charset if info is not None else None)
        values = column.enum_values or column.set_values
        if values is None and info is not None:
            values = info.values
        is_json = column.type == JSON or (info is not None and info.is_json)
        plans.append(_column_plan(column, name, column.unsigned, charset, values, is_json, notes))
    names = [plan.name for plan in plans]
    primary_key = tuple(column.name for column in columns if column.primary and column.name)
    if not primary_key and schema is not None and all(k in names for k in schema.primary_key):
        primary_key = schema.primary_key
    return TablePlan(
        TableRef(database, None, table, primary_key), tuple(plans), "binlog", tuple(notes)
    )


def _plan_from_schema(
    database: str, table: str, columns: Sequence[BinlogColumn], schema: TableSchema | None
) -> TablePlan:
    qualified = f"{database}.{table}"
    if schema is None:
        raise SchemaMismatch(
            f"the binlog does not name the columns of {qualified} (binlog_row_metadata is not "
            "FULL) and information_schema does not describe the table (dropped since, or not "
            "visible to the user)"
        )
    if len(schema.columns) != len(columns):
        raise SchemaMismatch(
            f"a binlog row of {qualified} has {len(columns)} columns, but information_schema "
            f"now lists {len(schema.columns)}: the table changed after the row was logged. "
            "With binlog_row_metadata=FULL the binlog names every row's columns itself"
        )
    plans = []
    notes: list[str] = []
    for index, (column, info) in enumerate(zip(columns, schema.columns, strict=True)):
        allowed = _COMPATIBLE.get(info.data_type)
        if allowed is not None and column.type not in allowed:
            raise SchemaMismatch(
                f"column {index + 1} of {qualified} is {TYPE_NAMES.get(column.type, column.type)}"
                f" in the binlog, but information_schema now says {info.name} "
                f"{info.data_type}: the table changed after the row was logged. With "
                "binlog_row_metadata=FULL the binlog names every row's columns itself"
            )
        charset = info.charset if info.charset else "binary"
        plans.append(
            _column_plan(
                column, info.name, info.unsigned, charset, info.values, info.is_json, notes
            )
        )
    return TablePlan(
        TableRef(database, None, table, schema.primary_key),
        tuple(plans),
        "information_schema",
        tuple(notes),
    )


def _column_plan(
    column: BinlogColumn,
    name: str,
    unsigned: bool,
    charset: str | None,
    values: tuple[str, ...] | None,
    is_json: bool,
    notes: list[str],
) -> ColumnPlan:
    kind = column.type
    raw = kind in _STRINGS
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
    codec = _CODECS.get(charset.lower())
    if codec is None:
        notes.append(
            f"column {name} uses character set {charset}, which has no Python codec; its "
            "values are sent as base64"
        )
        return _base64_value
    errors = _LATIN1_ERRORS if codec == "cp1252" else "strict"

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


def convert_row(
    plan: TablePlan, values: Mapping[str, Any], none_sources: Mapping[str, str]
) -> dict[str, Any]:
    """One decoded row (column -> library value) as column -> JSON value.

    Args:
        plan: the table's plan (whose names the library used as keys).
        values: the library's row.
        none_sources: the library's reasons for null values (an empty SET says ``empty set``).

    Raises:
        ConversionError: a value does not fit its column's type.
    """
    row: dict[str, Any] = {}
    for column in plan.columns:
        name = column.name
        value = values.get(name)
        if value is None:
            row[name] = "" if column.is_set and none_sources.get(name) == "empty set" else None
        else:
            row[name] = column.convert(value)
    return row


def apply_plan(plan: TablePlan, columns: Sequence[Any]) -> None:
    """Give pymysqlreplication's column objects the plan's names and metadata (before decoding).

    The library decodes unsigned integers, ENUM and SET members, and (for the ``binary``
    character set) hands text over as bytes, from these attributes.
    """
    for column, decided in zip(columns, plan.columns, strict=True):
        column.name = decided.name
        column.unsigned = decided.unsigned
        if decided.raw:
            column.character_set_name = "binary"
        if decided.enum_values is not None:
            column.enum_values = ["", *decided.enum_values]
        if decided.set_values is not None:
            column.set_values = list(decided.set_values)


def apply_raw(columns: Sequence[Any]) -> None:
    """Prepare unnamed columns to decode without a plan (for a dead-letter payload): positional
    names, and text as bytes so that nothing fails to decode."""
    for index, column in enumerate(columns):
        column.name = f"column_{index + 1}"
        if int(column.type) in _STRINGS:
            column.character_set_name = "binary"


def positional(values: Mapping[str, Any]) -> list[Any]:
    """A row decoded by :func:`apply_raw` as a list of JSON values, in column order."""
    return [plain_value(value) for value in values.values()]
