"""Binlog rows to JSON objects: naming a table map's columns, and converting its rows.

pymysqlreplication decodes a row's bytes with what the table map event says about the columns.
Without binlog_row_metadata=FULL that is too little: no names, no signedness (an unsigned
BIGINT comes out negative), no character sets (latin1 text fails to decode as UTF-8, binary
data too) and no ENUM/SET members. :func:`plan_table` therefore decides, per table map, each
column's name, signedness, members and JSON converter (see
:mod:`~kingest.sources.cdc.mysql.decode`), from the binlog's own metadata when it has names and
from information_schema otherwise; :func:`apply_plan` hands those decisions to the library's
column objects before their rows are decoded, and :func:`convert_row` turns each decoded row
into JSON values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kingest.sources.cdc.envelope import TableRef
from kingest.sources.cdc.mysql.decode import (
    COMPATIBLE,
    JSON,
    STRINGS,
    TYPE_NAMES,
    BinlogColumn,
    ColumnPlan,
    column_plan,
    plain_value,
)
from kingest.sources.cdc.mysql.schema import TableSchema

__all__ = [
    "SchemaMismatch",
    "TablePlan",
    "apply_plan",
    "apply_raw",
    "convert_row",
    "plan_table",
    "positional",
]


class SchemaMismatch(Exception):
    """The binlog's columns cannot be named with what information_schema says now."""


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
        plans.append(column_plan(column, name, column.unsigned, charset, values, is_json, notes))
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
        allowed = COMPATIBLE.get(info.data_type)
        if allowed is not None and column.type not in allowed:
            raise SchemaMismatch(
                f"column {index + 1} of {qualified} is {TYPE_NAMES.get(column.type, column.type)}"
                f" in the binlog, but information_schema now says {info.name} "
                f"{info.data_type}: the table changed after the row was logged. With "
                "binlog_row_metadata=FULL the binlog names every row's columns itself"
            )
        charset = info.charset if info.charset else "binary"
        plans.append(
            column_plan(column, info.name, info.unsigned, charset, info.values, info.is_json, notes)
        )
    return TablePlan(
        TableRef(database, None, table, schema.primary_key),
        tuple(plans),
        "information_schema",
        tuple(notes),
    )


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
        if int(column.type) in STRINGS:
            column.character_set_name = "binary"


def positional(values: Mapping[str, Any]) -> list[Any]:
    """A row decoded by :func:`apply_raw` as a list of JSON values, in column order."""
    return [plain_value(value) for value in values.values()]
