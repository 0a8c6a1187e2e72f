"""The PostgreSQL session of capture: connections with fixed value formats, catalogue queries.

Every connection capture opens, plain or for replication, pins the settings that decide how the
server writes values as text (see :mod:`kingest.sources.cdc.postgres.types`), keeping the DSN's
own ``options`` before them. Connection failures become :class:`~kingest.errors.CaptureError`
with the reason on one line.
"""

from __future__ import annotations

import logging
from typing import Any, Final

import psycopg2
import psycopg2.extensions
import psycopg2.extras
from psycopg2 import sql

from kingest.errors import CaptureError
from kingest.sources.cdc.postgres.position import parse_lsn

log = logging.getLogger(__name__)

__all__ = [
    "SESSION_OPTIONS",
    "close_quietly",
    "connect",
    "execute",
    "fetch_all",
    "fetch_one",
    "fetch_one_or_none",
    "first_line",
    "lsn_of",
    "primary_key_columns",
    "quote_ident",
    "quoted_name",
    "table_identifier",
]

# Fixed text forms for every value the server writes for us (see types.py).
SESSION_OPTIONS: Final = (
    "-c DateStyle=ISO,YMD -c TimeZone=UTC -c IntervalStyle=iso_8601 "
    "-c bytea_output=hex -c extra_float_digits=3"
)


def connect(dsn: str, *, replication: bool) -> Any:
    """A connection (autocommit unless for replication) with the fixed session settings.

    Raises:
        CaptureError: an invalid DSN, a refused or failed connection (one line).
    """
    factory = psycopg2.extras.LogicalReplicationConnection if replication else None
    try:
        parsed = psycopg2.extensions.parse_dsn(dsn)
    except psycopg2.ProgrammingError as exc:
        raise CaptureError(f"invalid PostgreSQL DSN: {first_line(exc)}") from exc
    # The DSN's own options (e.g. logical_decoding_work_mem) are kept; ours come last.
    options = f"{parsed.get('options', '')} {SESSION_OPTIONS}".strip()
    timeout = parsed.get("connect_timeout", "10")
    try:
        connection = psycopg2.connect(
            dsn, connection_factory=factory, options=options, connect_timeout=timeout
        )
    except psycopg2.OperationalError as exc:
        message = first_line(exc)
        if "replication" in message and ("superuser" in message or "role" in message):
            raise CaptureError(
                f"the user may not stream changes: {message} (ALTER ROLE ... REPLICATION)"
            ) from exc
        if "no pg_hba.conf entry for replication" in message:
            raise CaptureError(
                f"pg_hba.conf allows no replication connection for this user: {message}"
            ) from exc
        raise CaptureError(f"cannot connect to PostgreSQL: {message}", retriable=True) from exc
    if not replication:
        connection.autocommit = True
    return connection


def close_quietly(connection: Any) -> None:
    """Close a connection if open; a broken one is no error."""
    if connection is not None and not connection.closed:
        try:
            connection.close()
        except psycopg2.Error:
            log.debug("Closing a broken connection failed.", exc_info=True)


def execute(connection: Any, statement: Any, params: tuple[Any, ...] = ()) -> None:
    """Run one statement."""
    with connection.cursor() as cursor:
        cursor.execute(statement, params)


def fetch_all(connection: Any, statement: str, params: tuple[Any, ...] = ()) -> list[Any]:
    """Every row of a query."""
    with connection.cursor() as cursor:
        cursor.execute(statement, params)
        rows: list[Any] = cursor.fetchall()
        return rows


def fetch_one(connection: Any, statement: str, params: tuple[Any, ...] = ()) -> Any:
    """The first row of a query that has one."""
    rows = fetch_all(connection, statement, params)
    return rows[0]


def fetch_one_or_none(connection: Any, statement: str, params: tuple[Any, ...] = ()) -> Any:
    """The first row of a query, or None."""
    rows = fetch_all(connection, statement, params)
    return rows[0] if rows else None


def primary_key_columns(cursor: Any, relation_oid: int) -> tuple[str, ...]:
    """A table's primary key columns in key order; empty when it has none."""
    cursor.execute(
        "select a.attname from pg_index i "
        "join lateral unnest(i.indkey::int2[]) with ordinality as k(attnum, n) on true "
        "join pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum "
        "where i.indrelid = %s and i.indisprimary order by k.n",
        (relation_oid,),
    )
    return tuple(name for (name,) in cursor.fetchall())


def table_identifier(qualified: str) -> sql.Composable:
    """``schema.table`` (``public`` when no schema is named) as a quoted identifier."""
    schema, _, table = qualified.rpartition(".")
    return sql.SQL("{}.{}").format(sql.Identifier(schema or "public"), sql.Identifier(table))


def quoted_name(schema: str, table: str) -> str:
    """``"schema"."table"``, for a ``regclass`` cast."""
    return f"{quote_ident(schema)}.{quote_ident(table)}"


def quote_ident(name: str) -> str:
    """An identifier in double quotes, for the replication protocol's commands."""
    return '"' + name.replace('"', '""') + '"'


def lsn_of(text: str | None) -> int:
    """An LSN from its text form; 0 for none."""
    return parse_lsn(text) if text else 0


def first_line(exc: BaseException) -> str:
    """The first line of an error's message (psycopg2 adds context lines)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
