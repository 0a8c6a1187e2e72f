"""The PostgreSQL end of capture: checks, publication, slot, snapshot and the replication stream.

psycopg2 blocks, so :meth:`PostgresCapture.stream` runs in a thread of its own and hands
:class:`~kingest.sources.cdc.postgres.assembler.Chunk` objects to the event loop through a
callback that blocks while the loop's queue is full (backpressure reaches the server: an
unread replication stream makes the walsender wait).

What the server is told: the flush LSN confirmed in standby status updates is only ever one
that :meth:`PostgresCapture.confirm` was given, i.e. the end of a transaction whose events are
all delivered or dead-lettered, or, while nothing is in flight, the server's own position from
its keepalive (every change before it was received and acknowledged already). So the slot
never moves past an undelivered change, and a restart resumes from it with nothing lost.
"""

from __future__ import annotations

import fnmatch
import logging
import select
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import psycopg2
import psycopg2.errors
from psycopg2 import sql

from kingest.errors import CaptureError
from kingest.sources.cdc.envelope import EnvelopeBuilder, TableRef
from kingest.sources.cdc.postgres.assembler import ChangeAssembler, Chunk
from kingest.sources.cdc.postgres.connection import (
    close_quietly,
    connect,
    execute,
    fetch_all,
    fetch_one,
    fetch_one_or_none,
    first_line,
    lsn_of,
    primary_key_columns,
    quote_ident,
    quoted_name,
    table_identifier,
)
from kingest.sources.cdc.postgres.position import format_lsn
from kingest.sources.cdc.postgres.protocol import Relation
from kingest.sources.cdc.postgres.types import TypeDescription, TypeMapper

log = logging.getLogger(__name__)

__all__ = ["CaptureSettings", "PostgresCapture", "SnapshotDone", "TableFilter"]

SNAPSHOT_FETCH_ROWS: Final = 2000
# A batch of chunks is handed to the event loop once it holds this many events, or is this old,
# or the server has nothing more to send right now.
BATCH_EVENTS: Final = 500
BATCH_MAX_AGE_S: Final = 0.05
RECONNECT_MAX_DELAY_S: Final = 30.0


class TableFilter:
    """Which ``schema.table`` names are captured: fnmatch patterns to include and exclude.

    No include pattern means every table of the publication.
    """

    def __init__(self, include: Iterable[str] = (), exclude: Iterable[str] = ()) -> None:
        self.include = tuple(include)
        self.exclude = tuple(exclude)

    def __call__(self, qualified: str) -> bool:
        if self.include and not any(fnmatch.fnmatchcase(qualified, p) for p in self.include):
            return False
        return not any(fnmatch.fnmatchcase(qualified, p) for p in self.exclude)

    def exact_tables(self) -> list[str]:
        """Include patterns that name one table each (no wildcard)."""
        return [p for p in self.include if not any(ch in p for ch in "*?[")]


@dataclass(frozen=True, slots=True)
class CaptureSettings:
    """What :class:`PostgresCapture` needs (from the source's config)."""

    dsn: str
    slot: str
    publication: str
    tables: TableFilter
    snapshot: bool
    heartbeat_interval_s: float
    status_interval_s: float
    recreate_dropped_slot: bool
    spool_memory_bytes: int


@dataclass(frozen=True, slots=True)
class SnapshotDone:
    """Every snapshot row was handed over; the snapshot counts as done once they are delivered."""

    lsn: int


@dataclass(slots=True)
class _Prepared:
    database: str
    slot_lsn: int
    snapshot_name: str | None


class PostgresCapture:
    """One source's connections to PostgreSQL and its replication stream.

    Args:
        settings: what to capture and how.
        builder: builds the change events.
    """

    def __init__(self, settings: CaptureSettings, builder: EnvelopeBuilder) -> None:
        self.settings = settings
        self.builder = builder
        self.database = ""
        self._catalog: Any = None  # a plain connection for catalogue lookups
        self._replication: Any = None
        self._cursor: Any = None
        self._lock = threading.Lock()  # one thread at a time on the replication connection
        self._prepared: _Prepared | None = None
        self._confirmed = 0
        self._sent = 0
        self._last_end = 0  # end LSN of the last transaction handed over
        self._primary_keys: dict[int, tuple[str, ...]] = {}

    # --- set-up (called once, in a worker thread) ---------------------------------------------

    def prepare(self, stored: dict[str, Any] | None) -> bool:
        """Check the server, create the publication and slot if missing.

        Args:
            stored: what the checkpoint store holds of this slot (to tell a slot never created
                from one that was dropped), or None.

        Returns:
            True when a snapshot is to be taken before streaming.

        Raises:
            CaptureError: the server cannot be captured (unreachable, wal_level, privileges,
                a dropped slot); the message says what to do.
        """
        settings = self.settings
        self._catalog = connect(settings.dsn, replication=False)
        database, wal_level, user = fetch_one(
            self._catalog, "select current_database(), current_setting('wal_level'), current_user"
        )
        self.database = database
        if wal_level != "logical":
            raise CaptureError(
                f"PostgreSQL has wal_level={wal_level}; logical decoding needs wal_level=logical "
                "(ALTER SYSTEM SET wal_level = logical, then restart the server)"
            )
        (may_replicate,) = fetch_one(
            self._catalog,
            "select rolreplication or rolsuper from pg_roles where rolname = current_user",
        )
        if not may_replicate:
            raise CaptureError(
                f"user {user} may not stream changes: it lacks the REPLICATION attribute "
                f"(ALTER ROLE {user} REPLICATION)"
            )
        self._ensure_publication(user)
        self._replication = connect(settings.dsn, replication=True)
        slot = fetch_one_or_none(
            self._catalog,
            "select plugin, database, confirmed_flush_lsn::text from pg_replication_slots "
            "where slot_name = %s",
            (settings.slot,),
        )
        snapshot_done = bool(stored and stored.get("snapshot_done"))
        if slot is not None and settings.snapshot and stored is not None and not snapshot_done:
            # A snapshot was started and cut short: it is taken again from a new slot.
            log.warning(
                "The last snapshot did not finish; the slot is recreated and the snapshot "
                "taken again.",
                extra={"slot": settings.slot},
            )
            execute(self._catalog, "select pg_drop_replication_slot(%s)", (settings.slot,))
            slot = None
        elif slot is None and stored is not None and not settings.recreate_dropped_slot:
            raise CaptureError(
                f"replication slot {settings.slot!r} was dropped: the changes after LSN "
                f"{format_lsn(int(stored.get('lsn', 0)))} are lost to it. Take a new snapshot "
                "(--snapshot) or accept the gap with --recreate-slot"
            )
        if slot is not None:
            plugin, slot_database, confirmed = slot
            if plugin != "pgoutput" or slot_database != database:
                raise CaptureError(
                    f"replication slot {settings.slot!r} is for plugin {plugin} on database "
                    f"{slot_database}, not pgoutput on {database}: choose another --slot"
                )
            self._prepared = _Prepared(database, lsn_of(confirmed), None)
            self._confirmed = self._prepared.slot_lsn
            return False
        take_snapshot = settings.snapshot and not (stored is not None and snapshot_done)
        lsn, snapshot_name = self._create_slot(export=take_snapshot)
        self._prepared = _Prepared(database, lsn, snapshot_name)
        self._confirmed = lsn
        log.info(
            "Created the replication slot.",
            extra={"slot": settings.slot, "lsn": format_lsn(lsn), "snapshot": take_snapshot},
        )
        return take_snapshot

    def _ensure_publication(self, user: str) -> None:
        settings = self.settings
        exists = fetch_one_or_none(
            self._catalog,
            "select 1 from pg_publication where pubname = %s",
            (settings.publication,),
        )
        wanted = settings.tables.exact_tables()
        try:
            if exists is None:
                if wanted and len(wanted) == len(settings.tables.include):
                    tables = sql.SQL(", ").join(table_identifier(name) for name in wanted)
                    statement = sql.SQL("create publication {} for table {}").format(
                        sql.Identifier(settings.publication), tables
                    )
                else:
                    statement = sql.SQL("create publication {} for all tables").format(
                        sql.Identifier(settings.publication)
                    )
                execute(self._catalog, statement)
                log.info("Created the publication.", extra={"publication": settings.publication})
                return
            rows = fetch_all(
                self._catalog,
                "select puballtables from pg_publication where pubname = %s",
                (settings.publication,),
            )
            if rows and rows[0][0]:
                return
            present = {
                f"{schema}.{table}"
                for schema, table in fetch_all(
                    self._catalog,
                    "select schemaname, tablename from pg_publication_tables where pubname = %s",
                    (settings.publication,),
                )
            }
            for name in wanted:
                if name not in present:
                    execute(
                        self._catalog,
                        sql.SQL("alter publication {} add table {}").format(
                            sql.Identifier(settings.publication), table_identifier(name)
                        ),
                    )
        except psycopg2.errors.InsufficientPrivilege as exc:
            raise CaptureError(
                f"user {user} may not create or change publication {settings.publication!r}: "
                f"{first_line(exc)} (that needs CREATE on the database and ownership of the "
                "tables, or superuser for all tables; or create the publication beforehand)"
            ) from exc
        except psycopg2.errors.UndefinedTable as exc:
            raise CaptureError(f"a --table does not exist: {first_line(exc)}") from exc

    def _create_slot(self, export: bool) -> tuple[int, str | None]:
        settings = self.settings
        snapshot = "EXPORT_SNAPSHOT" if export else "NOEXPORT_SNAPSHOT"
        cursor = self._replication.cursor()
        try:
            cursor.execute(
                f"CREATE_REPLICATION_SLOT {quote_ident(settings.slot)} LOGICAL pgoutput {snapshot}"
            )
            _name, consistent_point, snapshot_name, _plugin = cursor.fetchone()
        except psycopg2.Error as exc:
            raise CaptureError(
                f"cannot create replication slot {settings.slot!r}: {first_line(exc)}"
            ) from exc
        return lsn_of(consistent_point), snapshot_name if export else None

    # --- the stream (runs in the capture thread) ----------------------------------------------

    def stream(
        self, emit: Callable[[list[Chunk | SnapshotDone]], bool], stop: threading.Event
    ) -> None:
        """Take the snapshot if one is due, then stream changes until ``stop`` is set.

        Args:
            emit: hands chunks to the event loop, a batch at a time; blocks while its queue
                is full; returns False once the loop stopped taking them.
            stop: ends the stream (the connection stays open for :meth:`confirm`).

        Raises:
            CaptureError: the slot is gone, or the server refuses the stream.
        """
        prepared = self._prepared
        assert prepared is not None, "prepare() first"
        if prepared.snapshot_name is not None:
            if not self._snapshot(prepared, emit, stop):
                return
            prepared.snapshot_name = None
        delay = 1.0
        while not stop.is_set():
            try:
                self._stream_once(emit, stop)
                return
            except psycopg2.OperationalError as exc:
                if stop.is_set():
                    return
                log.warning(
                    "The replication connection was lost; reconnecting.",
                    extra={"error": first_line(exc), "retry_in_s": delay},
                )
            if stop.wait(delay):
                return
            delay = min(delay * 2, RECONNECT_MAX_DELAY_S)
            try:
                with self._lock:
                    close_quietly(self._replication)
                    self._replication = connect(self.settings.dsn, replication=True)
                    close_quietly(self._catalog)
                    self._catalog = connect(self.settings.dsn, replication=False)
            except CaptureError as exc:
                log.warning("Cannot reconnect yet.", extra={"error": str(exc)})

    def _stream_once(
        self, emit: Callable[[list[Chunk | SnapshotDone]], bool], stop: threading.Event
    ) -> None:
        settings = self.settings
        assembler = ChangeAssembler(
            self.builder,
            self.database,
            TypeMapper(self._describe_type),
            self._primary_key_of,
            settings.tables,
            spool_memory_bytes=settings.spool_memory_bytes,
        )
        options = {"proto_version": "1", "publication_names": settings.publication}
        if self._replication.server_version >= 140000:
            options.update(proto_version="2", streaming="on")
        with self._lock:
            cursor = self._cursor = self._replication.cursor()
            try:
                cursor.start_replication(
                    slot_name=settings.slot,
                    decode=False,
                    options=options,
                    status_interval=settings.status_interval_s,
                )
            except psycopg2.errors.UndefinedObject as exc:
                raise CaptureError(
                    f"replication slot {settings.slot!r} does not exist (was it dropped?): "
                    f"{first_line(exc)}"
                ) from exc
            except psycopg2.errors.ObjectInUse as exc:
                raise CaptureError(
                    f"replication slot {settings.slot!r} is in use by another process: "
                    f"{first_line(exc)}"
                ) from exc
        log.info("Streaming changes.", extra={"slot": settings.slot, **options})
        last_heartbeat = time.monotonic()
        # Chunks go to the loop in batches: one hand-over per transaction would cost more
        # than the transaction's own work at a few thousand one-row transactions a second.
        batch: list[Chunk | SnapshotDone] = []
        batch_events = 0
        batch_started = 0.0
        try:
            while not stop.is_set():
                with self._lock:
                    message = cursor.read_message()
                if message is None:
                    if batch:
                        if not emit(batch):
                            return
                        batch, batch_events = [], 0
                    now = time.monotonic()
                    if now - last_heartbeat >= settings.heartbeat_interval_s:
                        last_heartbeat = now
                        self._advance_when_idle(assembler, cursor)
                    select.select([cursor], [], [], 0.2)
                    continue
                for chunk in assembler.feed(message.payload, message.data_start):
                    if chunk.end_lsn is not None:
                        self._last_end = chunk.end_lsn
                    if not batch:
                        batch_started = time.monotonic()
                    batch.append(chunk)
                    batch_events += len(chunk.events)
                if batch and (
                    batch_events >= BATCH_EVENTS
                    or time.monotonic() - batch_started >= BATCH_MAX_AGE_S
                ):
                    if not emit(batch):
                        return
                    batch, batch_events = [], 0
        finally:
            assembler.close()

    def _advance_when_idle(self, assembler: ChangeAssembler, cursor: Any) -> None:
        """With nothing in flight, confirm the server's position so the slot keeps up.

        An idle database (or one whose changes are all outside the publication) would hold
        the slot, and so the server's WAL, back forever otherwise. The cursor's ``wal_end``
        is the last position the server reported, and every change before it has been
        received: when all of those are acknowledged, it is safe to confirm.
        """
        if assembler.in_transaction or self._confirmed < self._last_end:
            return
        server_end = int(cursor.wal_end or 0)
        if server_end > self._confirmed:
            self.confirm(server_end)

    def _snapshot(
        self,
        prepared: _Prepared,
        emit: Callable[[list[Chunk | SnapshotDone]], bool],
        stop: threading.Event,
    ) -> bool:
        """Read every captured table as of the slot's start; False when stopped midway."""
        connection = connect(self.settings.dsn, replication=False)
        connection.autocommit = False
        try:
            cursor = connection.cursor()
            cursor.execute("begin isolation level repeatable read read only")
            cursor.execute("set transaction snapshot %s", (prepared.snapshot_name,))
            cursor.execute(
                "select schemaname, tablename from pg_publication_tables where pubname = %s "
                "order by 1, 2",
                (self.settings.publication,),
            )
            tables = [(s, t) for s, t in cursor.fetchall() if self.settings.tables(f"{s}.{t}")]
            cursor.execute("select txid_snapshot_xmin(txid_current_snapshot())")
            (xmin,) = cursor.fetchone()
            types = TypeMapper(self._describe_type)
            now_ms = int(datetime.now(UTC).timestamp() * 1000)
            order = 0
            chunk = Chunk()
            held: tuple[dict[str, Any], str] | None = None
            for schema, table in tables:
                ref, columns, converters = self._snapshot_table(cursor, schema, table, types)
                select_list = sql.SQL(", ").join(
                    sql.SQL("{}::text").format(sql.Identifier(name)) for name in columns
                )
                rows = connection.cursor(name=f"kingest_snapshot_{order}")
                rows.itersize = SNAPSHOT_FETCH_ROWS
                rows.execute(
                    sql.SQL("select {} from {}.{}").format(
                        select_list, sql.Identifier(schema), sql.Identifier(table)
                    )
                )
                for values in rows:
                    if stop.is_set():
                        return False
                    after = {
                        name: None if value is None else convert(value)
                        for name, convert, value in zip(columns, converters, values, strict=True)
                    }
                    order += 1
                    event = self.builder.event(
                        ref,
                        "r",
                        None,
                        after,
                        position={"lsn": prepared.slot_lsn},
                        transaction_id=str(xmin),
                        commit_ms=now_ms,
                        order=order,
                        snapshot="true",
                    )
                    if held is not None:
                        chunk.events.append(held)
                        if len(chunk.events) >= SNAPSHOT_FETCH_ROWS:
                            if not emit([chunk]):
                                return False
                            chunk = Chunk()
                    held = (event, self.builder.partition_key(event))
                rows.close()
            if held is not None:
                held[0]["source"]["snapshot"] = "last"
                self.builder.mark_last(held[0], order)
                chunk.events.append(held)
            if chunk.events and not emit([chunk]):
                return False
            log.info("The snapshot is read.", extra={"tables": len(tables), "rows": order})
            return emit([SnapshotDone(prepared.slot_lsn)])
        finally:
            close_quietly(connection)

    def _snapshot_table(
        self, cursor: Any, schema: str, table: str, types: TypeMapper
    ) -> tuple[TableRef, list[str], list[Callable[[str], Any]]]:
        cursor.execute(
            "select a.attname, a.atttypid from pg_attribute a "
            "where a.attrelid = %s::regclass and a.attnum > 0 and not a.attisdropped "
            "order by a.attnum",
            (quoted_name(schema, table),),
        )
        described = cursor.fetchall()
        columns = [name for name, _ in described]
        converters = [types.converter(oid) for _, oid in described]
        cursor.execute("select %s::regclass::oid", (quoted_name(schema, table),))
        (oid,) = cursor.fetchone()
        key = primary_key_columns(cursor, oid)
        return TableRef(self.database, schema, table, key), columns, converters

    # --- called from the event loop -----------------------------------------------------------

    def confirm(self, lsn: int) -> None:
        """Tell the server every change before ``lsn`` is safe (thread-safe, never backwards).

        Raises:
            psycopg2.Error: the connection is broken (the position is confirmed after the
                next connection instead).
        """
        with self._lock:
            if lsn <= self._confirmed:
                return
            self._confirmed = lsn
            cursor = self._cursor
            if cursor is not None and not self._replication.closed:
                cursor.send_feedback(flush_lsn=lsn, force=True)
                self._sent = lsn

    @property
    def confirmed_lsn(self) -> int:
        """The highest LSN confirmed to the server."""
        return self._confirmed

    def close(self) -> None:
        """Close both connections."""
        with self._lock:
            close_quietly(self._replication)
            close_quietly(self._catalog)
            self._cursor = None

    # --- catalogue lookups (capture thread) ---------------------------------------------------

    def _primary_key_of(self, relation: Relation) -> tuple[str, ...]:
        # Asked again on every Relation message, which the server sends after DDL.
        key = primary_key_columns(self._catalog.cursor(), relation.oid)
        if not key and relation.replica_identity == "i":
            key = tuple(column.name for column in relation.columns if column.is_key)
        return key

    def _describe_type(self, type_oid: int) -> TypeDescription | None:
        row = fetch_one_or_none(
            self._catalog,
            "select typcategory, typelem, typbasetype, typdelim from pg_type where oid = %s",
            (type_oid,),
        )
        if row is None:
            return None
        category, element, base, delimiter = row
        return TypeDescription(str(category), int(element), int(base), str(delimiter))
