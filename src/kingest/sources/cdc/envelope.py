"""The change event every CDC source emits: a Debezium-style envelope plus the seed's fields.

One event per changed row::

    {
      "before": {...} | null,          # the row before the change (see below)
      "after": {...} | null,           # the row after it; null for a delete
      "op": "c" | "u" | "d" | "r" | "t",   # create, update, delete, snapshot read, truncate
      "ts_ms": 1716719445123,          # when kingest built the event
      "source": {                      # where the change comes from (Debezium's block)
        "version": "0.1.0", "connector": "postgresql" | "mysql",
        "name": "pg_orders",           # the kingest source's name
        "db": "shop", "schema": "public", "table": "orders",
        "lsn": 23904632,               # PostgreSQL; MySQL gives "gtid", "file", "pos", "server_id"
        "txId": "7741", "ts_ms": 1716719445000,   # transaction id (text), commit time
        "snapshot": "false" | "true" | "last"
      },
      "transaction": {"id": "7741", "total_order": 3, "event_count": 3},
      "timestamp": "2024-05-26T10:30:45+00:00",   # the commit time, ISO 8601
      "database": "shop", "table": "orders", "operation": "INSERT" | "UPDATE" | "DELETE" | ...,
      "transaction_id": "7741", "change_type": "new_record" | ...,
      "primary_key": {"order_id": 50001} | null,
      "ingestion_timestamp": "2024-05-26T10:30:45.410+00:00"
    }

``transaction.total_order`` counts the transaction's events from 1; ``event_count`` appears on
its last event only, so a consumer knows when it has seen the whole transaction.

The kingest source name is ``source.name``, where Debezium keeps its logical server name: the
envelope's ``source`` block takes the top-level ``source`` key that other kingest sources fill
with the plain name.

Partition key: the qualified table name plus the primary key's values, so that every change of
one row lands on one shard, in order. A table without a primary key is keyed by its name alone:
its changes keep their order, at the price of one shard for the whole table.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

import orjson

from kingest import __version__

__all__ = [
    "DEFAULT_CRITICAL_COLUMNS",
    "MAX_KEY_LENGTH",
    "OPERATIONS",
    "EnvelopeBuilder",
    "TableRef",
    "classify_change",
]

# An UPDATE that changes one of these is a critical_update (the seed's list), unless a table
# names its own.
DEFAULT_CRITICAL_COLUMNS: Final = ("status", "email", "total_amount")

# Debezium's op letter -> the seed's operation name.
OPERATIONS: Final = {
    "c": "INSERT",
    "u": "UPDATE",
    "d": "DELETE",
    "r": "READ",
    "t": "TRUNCATE",
}

# Kinesis refuses longer partition keys.
MAX_KEY_LENGTH: Final = 256

Connector = Literal["postgresql", "mysql"]


@dataclass(frozen=True, slots=True)
class TableRef:
    """A captured table as events name it.

    Args:
        database: the database (PostgreSQL) or schema (MySQL: the database) name.
        schema: PostgreSQL's schema; None for MySQL.
        table: the plain table name.
        primary_key: the primary key's columns in key order; empty when the table has none.
    """

    database: str
    schema: str | None
    table: str
    primary_key: tuple[str, ...]

    @property
    def qualified(self) -> str:
        """``schema.table`` (PostgreSQL) or ``database.table`` (MySQL): how filters name it."""
        return f"{self.schema or self.database}.{self.table}"


def classify_change(
    operation: str,
    before: Mapping[str, Any] | None,
    after: Mapping[str, Any] | None,
    critical_columns: Sequence[str] = DEFAULT_CRITICAL_COLUMNS,
) -> str:
    """The seed's ``change_type`` of a change.

    Returns:
        ``new_record`` for an INSERT (or a snapshot read), ``record_deletion`` for a DELETE;
        for an UPDATE ``critical_update`` when a critical column present on both sides changed,
        else ``standard_update``; ``table_truncation`` for a TRUNCATE. A column missing from
        ``before`` (PostgreSQL without REPLICA IDENTITY FULL) cannot be compared, so such an
        update counts as standard.
    """
    if operation in ("INSERT", "READ"):
        return "new_record"
    if operation == "DELETE":
        return "record_deletion"
    if operation == "UPDATE":
        if before and after:
            for column in critical_columns:
                if column in before and column in after and before[column] != after[column]:
                    return "critical_update"
        return "standard_update"
    if operation == "TRUNCATE":
        return "table_truncation"
    return "unknown"


class EnvelopeBuilder:
    """Builds the change events of one CDC source (see the module docstring).

    Args:
        connector: ``postgresql`` or ``mysql``.
        source_name: the kingest source's name.
        critical_columns: per qualified table name (``schema.table`` or ``db.table``), the
            columns whose change makes an update critical; other tables use
            :data:`DEFAULT_CRITICAL_COLUMNS`.
    """

    def __init__(
        self,
        connector: Connector,
        source_name: str,
        critical_columns: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self.connector = connector
        self.source_name = source_name
        self._critical = {name: tuple(cols) for name, cols in (critical_columns or {}).items()}

    def event(
        self,
        table: TableRef,
        op: str,
        before: dict[str, Any] | None,
        after: dict[str, Any] | None,
        *,
        position: Mapping[str, Any],
        transaction_id: str,
        commit_ms: int,
        order: int,
        snapshot: Literal["false", "true", "last"] = "false",
        extra: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """One change event.

        Args:
            table: the table changed.
            op: ``c``, ``u``, ``d``, ``r`` or ``t``.
            before, after: the row images (column -> JSON value), None where there is none.
            position: the connector's place in its log (``{"lsn": ...}`` or
                ``{"gtid": ..., "file": ..., "pos": ...}``), copied into ``source``.
            transaction_id: the database's own transaction id (as text).
            commit_ms: the transaction's commit time, milliseconds since the epoch.
            order: the event's place in its transaction, counted from 1.
            snapshot: Debezium's snapshot marker.
            extra: more top-level fields (e.g. ``unchanged_columns``).
        """
        operation = OPERATIONS[op]
        source: dict[str, Any] = {
            "version": __version__,
            "connector": self.connector,
            "name": self.source_name,
            "db": table.database,
        }
        if table.schema is not None:
            source["schema"] = table.schema
        source["table"] = table.table
        source.update(position)
        source["txId"] = transaction_id
        source["ts_ms"] = commit_ms
        source["snapshot"] = snapshot
        now = datetime.now(UTC)
        event: dict[str, Any] = {
            "before": before,
            "after": after,
            "op": op,
            "ts_ms": int(now.timestamp() * 1000),
            "source": source,
            "transaction": {"id": transaction_id, "total_order": order},
            "timestamp": _iso_from_ms(commit_ms),
            "database": table.database,
            "table": table.table,
            "operation": operation,
            "transaction_id": transaction_id,
            "change_type": classify_change(
                operation,
                before,
                after,
                self._critical.get(table.qualified, DEFAULT_CRITICAL_COLUMNS),
            ),
            "primary_key": primary_key_values(table, before, after),
            "ingestion_timestamp": now.isoformat(timespec="milliseconds"),
        }
        if extra:
            event.update(extra)
        return event

    @staticmethod
    def mark_last(event: dict[str, Any], event_count: int) -> None:
        """Stamp the last event of a transaction with the transaction's event count."""
        event["transaction"]["event_count"] = event_count

    @staticmethod
    def partition_key(event: Mapping[str, Any]) -> str:
        """The event's partition key: qualified table and primary key values.

        Stable across restarts and processes (no salted hashing); a key longer than Kinesis
        allows is replaced by its SHA-256, which keeps it stable and per-row.
        """
        source = event["source"]
        schema = source.get("schema")
        table = ".".join(
            (source["db"], schema, source["table"]) if schema else (source["db"], source["table"])
        )
        key_values = event.get("primary_key")
        key = table
        if key_values:
            key += ":" + orjson.dumps(list(key_values.values())).decode()
        if len(key) > MAX_KEY_LENGTH:
            key = f"sha256:{hashlib.sha256(key.encode()).hexdigest()}"
        return key


def primary_key_values(
    table: TableRef, before: Mapping[str, Any] | None, after: Mapping[str, Any] | None
) -> dict[str, Any] | None:
    """The changed row's primary key (column -> value), or None when the table has none.

    Taken from ``after`` where there is one, so an update that changes the key is keyed by the
    row's new identity; a delete's key comes from ``before``.
    """
    if not table.primary_key:
        return None
    row = after if after is not None else before
    if row is None:
        return None
    if not all(column in row for column in table.primary_key):
        return None
    return {column: row[column] for column in table.primary_key}


def _iso_from_ms(ms: int) -> str:
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.isoformat(timespec="milliseconds" if ms % 1000 else "seconds")
