"""What each binlog event does, in the reader thread: it moves the transaction assembler on.

The reader thread (see :mod:`~kingest.sources.cdc.mysql.reader`) hands every event it reads to
the handler :class:`EventDispatcher` keeps for the event's type. Rotations, GTIDs, BEGIN,
XID and COMMIT mark transaction boundaries; a DDL statement forgets the table definitions and
column plans it may have changed, and a TRUNCATE of a captured table becomes a truncate event;
each rows event of a captured table is decoded (see :mod:`~kingest.sources.cdc.mysql.rows`) and
its rows fed to the :class:`~kingest.sources.cdc.mysql.assembler.TransactionAssembler`. A row
that cannot be decoded or converted goes to the dead-letter queue; an event the source cannot
decode safely (compressed events, a tagged GTID, pre-5.1 rows) ends the reader with a
:class:`~kingest.sources.cdc.mysql.errors.CaptureError`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any, Final

from pymysqlreplication.event import (
    GtidEvent,
    MariadbGtidEvent,
    NotImplementedEvent,
    QueryEvent,
    RotateEvent,
    XAPrepareEvent,
    XidEvent,
)
from pymysqlreplication.row_event import (
    DeleteRowsEvent,
    PartialUpdateRowsEvent,
    UpdateRowsEvent,
    WriteRowsEvent,
)

from kingest.sources.cdc.envelope import TableRef
from kingest.sources.cdc.mysql.assembler import TransactionAssembler
from kingest.sources.cdc.mysql.decode import binlog_column, plain_value
from kingest.sources.cdc.mysql.errors import CaptureError
from kingest.sources.cdc.mysql.filters import TableFilter
from kingest.sources.cdc.mysql.rows import (
    SchemaMismatch,
    TablePlan,
    apply_plan,
    apply_raw,
    convert_row,
    plan_table,
    positional,
)
from kingest.sources.cdc.mysql.schema import SchemaCache, ddl_tables, truncated_table
from kingest.sources.cdc.mysql.server import ConnectionSettings

log = logging.getLogger(__name__)

__all__ = ["EventDispatcher"]

# Event types the library does not decode and that carry changes: skipping one would lose rows.
_UNDECODABLE: Final = {
    40: "a compressed transaction (binlog_transaction_compression=ON)",
    42: "a tagged GTID (MySQL 8.3+ GTID tags)",
    165: "a compressed query (log_bin_compress=ON)",
    166: "compressed rows (log_bin_compress=ON)",
    167: "compressed rows (log_bin_compress=ON)",
    168: "compressed rows (log_bin_compress=ON)",
    169: "compressed rows (log_bin_compress=ON)",
    170: "compressed rows (log_bin_compress=ON)",
    171: "compressed rows (log_bin_compress=ON)",
    0x14: "pre-5.1 rows",
    0x15: "pre-5.1 rows",
    0x16: "pre-5.1 rows",
}
_INCIDENT_EVENT: Final = 0x1A
_FL_STANDALONE: Final = 1  # MariaDB GTID event flag: no terminating XID/COMMIT follows

_OPS: Final[dict[type, str]] = {
    WriteRowsEvent: "c",
    UpdateRowsEvent: "u",
    PartialUpdateRowsEvent: "u",
    DeleteRowsEvent: "d",
}

# Statements that open, mark or end a transaction rather than change a table definition.
_TRANSACTION_CONTROL: Final = re.compile(
    r"^\s*(BEGIN|START\s+TRANSACTION|COMMIT|ROLLBACK\s+TO|ROLLBACK|SAVEPOINT|"
    r"RELEASE\s+SAVEPOINT|XA\s+(?:START|BEGIN|END)|XA\s+ROLLBACK)\b",
    re.IGNORECASE,
)

# Table maps decoded per table id are forgotten past this many (ids grow with DDL).
_MAX_PREPARED: Final = 10_000


class EventDispatcher:
    """The handlers of the binlog's events, and the column plans they keep (module docstring).

    Args:
        name: the source's name (logs).
        settings: where the server is (its address, in errors).
        tables: which tables are captured.
        assembler: where boundaries and rows go.
        schemas: table definitions from information_schema, to name columns the binlog does
            not name.

    Attributes:
        handlers: the handler of each event type; events of other types are not handled.
    """

    def __init__(
        self,
        *,
        name: str,
        settings: ConnectionSettings,
        tables: TableFilter,
        assembler: TransactionAssembler,
        schemas: SchemaCache,
    ) -> None:
        self.name = name
        self._settings = settings
        self._tables = tables
        self.assembler = assembler
        self.schemas = schemas
        self._plans: dict[tuple[Any, ...], TablePlan | str] = {}
        self._prepared: dict[int, tuple[Any, TablePlan | str]] = {}
        self._noted: set[str] = set()
        self.handlers: dict[type, Callable[[Any], None]] = {
            RotateEvent: self._on_rotate,
            GtidEvent: self._on_gtid,
            MariadbGtidEvent: self._on_gtid,
            QueryEvent: self._on_query,
            XidEvent: self._on_commit,
            XAPrepareEvent: self._on_commit,
            WriteRowsEvent: self._on_rows,
            UpdateRowsEvent: self._on_rows,
            DeleteRowsEvent: self._on_rows,
            PartialUpdateRowsEvent: self._on_rows,
            NotImplementedEvent: self._on_other,
        }

    def _note_once(self, message: str, **extra: Any) -> None:
        if message not in self._noted:
            self._noted.add(message)
            log.warning(message, extra={"source": self.name, **extra})

    # ------------------------------------------------------------------ events

    def _on_rotate(self, event: Any) -> None:
        artificial = event.timestamp == 0
        if not artificial:
            self._prepared.clear()  # table ids are per server run; a rotation may be a restart
        self.assembler.rotate(event.next_binlog, event.position, artificial=artificial)

    def _on_gtid(self, event: Any) -> None:
        packet = event.packet
        self.assembler.gtid(
            event.gtid,
            event_pos=packet.log_pos - packet.event_size,
            timestamp=event.timestamp,
            # MariaDB flags a GTID "standalone" when one statement (DDL) is the transaction;
            # other MariaDB transactions end with XID/COMMIT without a BEGIN event.
            explicit=isinstance(event, MariadbGtidEvent) and not event.flags & _FL_STANDALONE,
        )

    def _on_commit(self, event: Any) -> None:
        self.assembler.commit(event.packet.log_pos)

    def _on_query(self, event: Any) -> None:
        query: str = event.query
        packet = event.packet
        control = _TRANSACTION_CONTROL.match(query)
        if control is not None:
            word = " ".join(control.group(1).upper().split())
            if word in ("BEGIN", "START TRANSACTION"):
                self.assembler.begin(
                    event_pos=packet.log_pos - packet.event_size, timestamp=event.timestamp
                )
            elif word in ("COMMIT", "ROLLBACK"):
                # A ROLLBACK in the binlog ends a transaction whose non-transactional changes
                # (MyISAM) stayed: they are real and were sent.
                self.assembler.commit(packet.log_pos)
            elif word == "XA ROLLBACK":
                log.warning(
                    "An XA transaction was rolled back after it was prepared; its changes "
                    "were already sent.",
                    extra={"source": self.name, "file": self.assembler.position.file},
                )
                self.assembler.commit(packet.log_pos)
            return
        schema = event.schema
        default_db = schema.decode("utf-8", "replace") if isinstance(schema, bytes) else schema
        emptied = truncated_table(query, default_db or "")
        if emptied is not None and self._tables(*emptied):
            self.assembler.truncate(
                TableRef(emptied[0], None, emptied[1], ()),
                event_pos=packet.log_pos - packet.event_size,
                server_id=packet.server_id,
            )
        names = ddl_tables(query, default_db or "")
        if names is None or names:
            self.schemas.invalidate(names)
            self._plans.clear()
            self._prepared.clear()
        self.assembler.statement(packet.log_pos)

    def _on_other(self, event: Any) -> None:
        kind = event.event_type
        what = _UNDECODABLE.get(kind)
        if what is not None:
            raise CaptureError(
                f"the binlog of MySQL at {self._settings.address} holds {what} at "
                f"{self.assembler.position.file}:{event.packet.log_pos}, which kingest cannot "
                "decode; change the server setting and start again"
            )
        if kind == _INCIDENT_EVENT:
            log.error(
                "The server logged an incident: changes may be missing from its binlog.",
                extra={"source": self.name, "server": self._settings.address},
            )

    def _on_rows(self, event: Any) -> None:
        packet = event.packet
        event_pos = packet.log_pos - packet.event_size
        if not self.assembler.rows_event(event_pos=event_pos, timestamp=event.timestamp):
            return  # handled before the reconnection
        try:
            self._handle_rows(event, event_pos)
        except Exception:
            # Only reading a table definition can fail here, before anything was emitted: the
            # event is handled again after the reconnection.
            self.assembler.forget_rows_event()
            raise

    def _handle_rows(self, event: Any, event_pos: int) -> None:
        packet = event.packet
        assembler = self.assembler
        database, table = event.schema, event.table
        if not self._tables(database, table):
            return
        op = _OPS[type(event)]
        plan = self._plan(event)
        where = {
            "gtid": assembler.transaction_gtid,
            "file": assembler.file,
            "pos": event_pos,
        }
        if isinstance(plan, str):
            self._reject_rows(event, op, where, plan)
            return
        try:
            rows = event.rows
        except Exception as exc:
            self.assembler.reject(
                {"database": database, "table": table, "op": op, "position": where},
                f"cannot decode a binlog rows event of {database}.{table} at "
                f"{where['file']}:{event_pos}: {type(exc).__name__}: {exc}",
            )
            return
        changes: list[tuple[dict[str, Any] | None, dict[str, Any] | None]] = []
        for index, row in enumerate(rows):
            try:
                if op == "c":
                    changes.append((None, convert_row(plan, row["values"], row["none_sources"])))
                elif op == "d":
                    changes.append((convert_row(plan, row["values"], row["none_sources"]), None))
                else:
                    before = convert_row(plan, row["before_values"], row["before_none_sources"])
                    after = convert_row(plan, row["after_values"], row["after_none_sources"])
                    changes.append((before, after))
            except Exception as exc:
                assembler.reject(
                    {
                        "database": database,
                        "table": table,
                        "op": op,
                        "position": {**where, "row": index},
                        "row": {key: plain_value(value) for key, value in _images(row).items()},
                    },
                    f"cannot convert a row of {database}.{table} at {where['file']}:{event_pos}: "
                    f"{exc}",
                )
        if changes:
            assembler.changes(
                plan.table, op, changes, event_pos=event_pos, server_id=packet.server_id
            )

    def _plan(self, event: Any) -> TablePlan | str:
        table_obj = event.table_map[event.table_id]
        prepared = self._prepared.get(event.table_id)
        if prepared is not None and prepared[0] is table_obj:
            return prepared[1]
        columns = table_obj.columns
        database, table = event.schema, event.table
        key = (
            database,
            table,
            tuple(column.type for column in columns),
            tuple(column.name for column in columns),
        )
        plan = self._plans.get(key)
        if plan is None:
            described = [binlog_column(column) for column in columns]
            try:
                plan = plan_table(database, table, described, self.schemas.get(database, table))
            except SchemaMismatch as exc:
                plan = str(exc)
            else:
                for note in plan.notes:
                    self._note_once(
                        "A column's values cannot be decoded as text.",
                        table=f"{database}.{table}",
                        detail=note,
                    )
            self._plans[key] = plan
        if isinstance(plan, TablePlan):
            apply_plan(plan, columns)
        else:
            apply_raw(columns)
        if len(self._prepared) >= _MAX_PREPARED:
            self._prepared.clear()
        self._prepared[event.table_id] = (table_obj, plan)
        return plan

    def _reject_rows(self, event: Any, op: str, where: dict[str, Any], message: str) -> None:
        database, table = event.schema, event.table
        payload: dict[str, Any] = {
            "database": database,
            "table": table,
            "op": op,
            "position": where,
            "column_types": [int(column.type) for column in event.columns],
        }
        try:
            rows = event.rows
        except Exception as exc:
            self.assembler.reject(payload, f"{message} (and the row could not be decoded: {exc})")
            return
        for index, row in enumerate(rows):
            if op == "c":
                images = {"after": positional(row["values"])}
            elif op == "d":
                images = {"before": positional(row["values"])}
            else:
                images = {
                    "before": positional(row["before_values"]),
                    "after": positional(row["after_values"]),
                }
            self.assembler.reject(
                {**payload, "position": {**where, "row": index}, **images}, message
            )


def _images(row: dict[str, Any]) -> dict[str, Any]:
    """The row images of a library row, flattened for a dead-letter payload."""
    if "values" in row:
        return dict(row["values"])
    return {
        **{f"before.{key}": value for key, value in row.get("before_values", {}).items()},
        **{f"after.{key}": value for key, value in row.get("after_values", {}).items()},
    }
