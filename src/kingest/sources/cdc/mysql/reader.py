"""The binlog reader thread, and the bounded channel that hands its chunks to the event loop.

pymysqlreplication's ``BinLogStreamReader`` blocks on its socket, so it runs in a thread of its
own. The thread decodes each rows event (see :mod:`~kingest.sources.cdc.mysql.decode`), feeds
the :class:`~kingest.sources.cdc.mysql.assembler.TransactionAssembler`, and puts the chunks it
cuts into a :class:`Channel`. When the channel is full the thread waits: the binlog is read no
faster than Kinesis accepts it, and nothing is dropped.

A lost connection is taken again with exponential backoff (and jitter), from the last
transaction boundary the thread read, not the committed one: the transaction in progress is
re-read and the rows events already handled are skipped, so that a reconnection sends nothing
twice. Errors that another attempt cannot fix (a purged binlog, a missing privilege, an event
the source cannot decode safely) end the thread and are raised on the event loop.

The library reconnects by itself on some errors, from a position that may sit inside a
transaction (or, with GTIDs, from where the stream began); the connection class here turns those
errors into :class:`StreamInterrupted` so that only this module decides where to resume.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final

import pymysql
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.event import (
    GtidEvent,
    HeartbeatLogEvent,
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

from kingest.errors import KingestError
from kingest.sources.cdc.envelope import EnvelopeBuilder, TableRef
from kingest.sources.cdc.mysql.assembler import Chunk, TransactionAssembler
from kingest.sources.cdc.mysql.decode import (
    SchemaMismatch,
    TablePlan,
    apply_plan,
    apply_raw,
    binlog_column,
    convert_row,
    plain_value,
    plan_table,
    positional,
)
from kingest.sources.cdc.mysql.errors import (
    CONNECTION_LOST_CODES,
    CaptureError,
    ServerUnreachableError,
    error_code,
    map_error,
)
from kingest.sources.cdc.mysql.filters import TableFilter
from kingest.sources.cdc.mysql.position import BinlogPosition
from kingest.sources.cdc.mysql.schema import (
    SchemaCache,
    TableSchema,
    ddl_tables,
    load_table_schema,
    truncated_table,
)
from kingest.sources.cdc.mysql.server import ConnectionSettings

log = logging.getLogger(__name__)

__all__ = ["BinlogReader", "Channel", "ReaderStopped", "StreamInterrupted", "probe_stream"]

# Events the reader handles; table map events are always read by the library itself.
_EVENTS: Final = [
    RotateEvent,
    GtidEvent,
    MariadbGtidEvent,
    QueryEvent,
    XidEvent,
    XAPrepareEvent,
    WriteRowsEvent,
    UpdateRowsEvent,
    DeleteRowsEvent,
    PartialUpdateRowsEvent,
    HeartbeatLogEvent,
    NotImplementedEvent,
]

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

# Reconnection backoff: doubles from the first delay up to the longest, with jitter.
_FIRST_DELAY_S: Final = 0.5
_LONGEST_DELAY_S: Final = 30.0
# Table maps decoded per table id are forgotten past this many (ids grow with DDL).
_MAX_PREPARED: Final = 10_000


class ReaderStopped(Exception):
    """The reader was asked to stop (raised in the thread to unwind it)."""


class StreamInterrupted(Exception):
    """The binlog connection was lost (or shut down by :meth:`BinlogReader.stop`)."""


class _Connection(pymysql.connections.Connection):
    """A PyMySQL connection whose lost-connection errors are not PyMySQL's.

    pymysqlreplication catches PyMySQL's "server gone" errors and reconnects by itself from a
    position of its own choosing; raising :class:`StreamInterrupted` instead hands the decision
    to the reader. :meth:`interrupt` lets another thread end a blocking read at once.
    """

    def _read_packet(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super()._read_packet(*args, **kwargs)  # type: ignore[no-untyped-call]
        except pymysql.err.OperationalError as exc:
            if error_code(exc) in CONNECTION_LOST_CODES:
                raise StreamInterrupted(str(exc.args[-1])) from exc
            raise

    def interrupt(self) -> None:
        """Shut the socket down, so a read blocked in another thread returns now."""
        sock = getattr(self, "_sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def _new_connection(**kwargs: Any) -> _Connection:
    """A :class:`_Connection` from pymysqlreplication's arguments.

    The library names the database ``db`` (and may name the password ``passwd``), which PyMySQL
    deprecates: they are passed under their current names.
    """
    if "db" in kwargs:
        kwargs.setdefault("database", kwargs.pop("db"))
    if "passwd" in kwargs:
        kwargs.setdefault("password", kwargs.pop("passwd"))
    return _Connection(**kwargs)


class _AdviceFilter(logging.Filter):
    """Drops pymysqlreplication's advice to set binlog_row_metadata=FULL, logged on every
    connection: the source names columns without it and says so once, at start."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "BINLOG_ROW_METADATA" not in record.getMessage()


logging.getLogger("pymysqlreplication").addFilter(_AdviceFilter())


def open_stream(
    settings: ConnectionSettings,
    server_id: int,
    position: BinlogPosition,
    *,
    by_gtid: bool,
    mariadb: bool,
    blocking: bool,
    heartbeat_s: float,
    connect: Callable[..., Any],
) -> BinLogStreamReader:
    """A ``BinLogStreamReader`` starting at ``position`` (nothing is sent before its first read).

    Args:
        settings: where and as whom to connect.
        server_id: the replica server_id to register with.
        position: where to start.
        by_gtid: ask by the position's GTID state rather than its file and offset.
        mariadb: the server is MariaDB (its GTID protocol differs).
        blocking: wait for new events at the end of the binlog (else stop there).
        heartbeat_s: ask the server for a heartbeat event after this long without events.
        connect: makes the PyMySQL connections (``pymysql.connect``'s arguments).

    Returns:
        The reader; it connects on its first ``fetchone()``.
    """
    # A read waits up to three heartbeats: longer without even a heartbeat means a dead link.
    read_timeout = max(3 * heartbeat_s, 10.0)
    kwargs: dict[str, Any] = {
        "connection_settings": settings.pymysql_kwargs(read_timeout_s=read_timeout),
        "server_id": server_id,
        "blocking": blocking,
        "resume_stream": True,
        "only_events": _EVENTS,
        "filter_non_implemented_events": False,
        "slave_heartbeat": heartbeat_s,
        "pymysql_wrapper": connect,
        "enable_logging": False,
    }
    if by_gtid and position.gtid:
        kwargs["auto_position"] = position.gtid
        kwargs["is_mariadb"] = mariadb
    else:
        # Binlog dump by file and offset works on both servers (pymysqlreplication's MariaDB
        # mode always asks by GTID).
        kwargs["log_file"] = position.file
        kwargs["log_pos"] = position.pos
    return BinLogStreamReader(**kwargs)


def probe_stream(
    settings: ConnectionSettings,
    server_id: int,
    position: BinlogPosition,
    *,
    by_gtid: bool,
    mariadb: bool,
) -> None:
    """Ask the server for its binlog from ``position`` and read the first event, to learn now
    (not in the reader thread) whether the user may read the binlog and the position exists.

    Raises:
        KingestError: the server refused (see :func:`~kingest.sources.cdc.mysql.errors.map_error`).
    """
    stream = open_stream(
        settings,
        server_id,
        position,
        by_gtid=by_gtid,
        mariadb=mariadb,
        blocking=False,
        heartbeat_s=settings.connect_timeout_s,
        connect=_new_connection,
    )
    try:
        stream.fetchone()
    except StreamInterrupted as exc:
        raise ServerUnreachableError(
            f"lost the connection to MySQL at {settings.address} while opening the binlog: {exc}"
        ) from exc
    except (pymysql.err.MySQLError, OSError) as exc:
        raise map_error(exc, settings.address, settings.user, "read the binlog") from exc
    finally:
        with contextlib.suppress(Exception):
            stream.close()


class Channel:
    """Chunks from the reader thread to the event loop, bounded in events.

    :meth:`put` (thread) waits while the channel holds ``capacity`` events or more;
    :meth:`get` (loop) takes everything held at once. A chunk that only moves the position
    forward is merged into the previous chunk when that one ends a transaction, so a stream of
    transactions on tables not captured takes no room.

    Args:
        loop: the event loop that calls :meth:`get`.
        capacity: events held before :meth:`put` waits.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, capacity: int) -> None:
        self._loop = loop
        self._capacity = capacity
        self._cond = threading.Condition()
        self._chunks: deque[Chunk] = deque()
        self._held = 0
        self._error: BaseException | None = None
        self._closed = False
        self._waiting = False
        self._ready = asyncio.Event()

    def put(self, chunk: Chunk) -> None:
        """Hand a chunk over, waiting while the channel is full (reader thread).

        Raises:
            ReaderStopped: the channel was closed.
        """
        with self._cond:
            while self._held >= self._capacity and not self._closed:
                self._cond.wait()
            if self._closed:
                raise ReaderStopped
            chunks = self._chunks
            if not chunk.size and chunk.end is not None and chunks and chunks[-1].end is not None:
                chunks[-1].end = chunk.end
                return
            chunks.append(chunk)
            self._held += max(chunk.size, 1)
            wake = self._waiting
            self._waiting = False
        if wake:
            self._wake()

    def fail(self, error: BaseException) -> None:
        """Hand the reader's fatal error over; :meth:`get` raises it after the chunks held."""
        with self._cond:
            self._error = error
            self._waiting = False
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            self._loop.call_soon_threadsafe(self._ready.set)

    async def get(self, timeout_s: float | None = None) -> list[Chunk]:
        """Every chunk held, waiting up to ``timeout_s`` for one (event loop).

        Returns:
            The chunks in order; empty after the timeout or once closed.

        Raises:
            BaseException: the reader's fatal error, once the chunks before it are taken.
        """
        while True:
            with self._cond:
                if self._chunks:
                    chunks = list(self._chunks)
                    self._chunks.clear()
                    self._held = 0
                    self._cond.notify_all()
                    return chunks
                if self._error is not None:
                    raise self._error
                if self._closed:
                    return []
                self._waiting = True
                self._ready.clear()
            try:
                async with asyncio.timeout(timeout_s):
                    await self._ready.wait()
            except TimeoutError:
                return []

    def close(self) -> None:
        """Refuse further chunks and release a waiting reader and a waiting :meth:`get`."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._ready.set()


class BinlogReader:
    """Reads the binlog in its own thread and feeds a :class:`Channel` (module docstring).

    Args:
        name: the source's name (thread name, logs).
        settings: where and as whom to connect.
        server_id: the replica server_id.
        flavor: ``mysql`` or ``mariadb``.
        start: where to start (a transaction boundary).
        gtid_resumable: the server resumes replicas by GTID.
        by_gtid: ask for ``start`` by its GTID state.
        track_gtids: ``start`` carries the server's whole GTID state (see
            :class:`~kingest.sources.cdc.mysql.assembler.TransactionAssembler`).
        tables: which tables are captured.
        builder: the source's envelope builder.
        channel: where chunks go.
        heartbeat_s: server heartbeat period.
        reconnect_timeout_s: how long to keep trying after the connection is lost.
    """

    def __init__(
        self,
        *,
        name: str,
        settings: ConnectionSettings,
        server_id: int,
        flavor: str,
        start: BinlogPosition,
        gtid_resumable: bool,
        by_gtid: bool,
        track_gtids: bool,
        tables: TableFilter,
        builder: EnvelopeBuilder,
        channel: Channel,
        heartbeat_s: float,
        reconnect_timeout_s: float,
    ) -> None:
        self.name = name
        self._settings = settings
        self._server_id = server_id
        self._flavor = flavor
        self._start = start
        self._gtid_resumable = gtid_resumable
        self._by_gtid = by_gtid
        self._tables = tables
        self._channel = channel
        self._heartbeat_s = heartbeat_s
        self._reconnect_timeout_s = reconnect_timeout_s
        self.assembler = TransactionAssembler(
            builder, start, flavor, channel.put, track_gtids=track_gtids
        )
        self.schemas = SchemaCache(self._load_schema)
        self._plans: dict[tuple[Any, ...], TablePlan | str] = {}
        self._prepared: dict[int, tuple[Any, TablePlan | str]] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._connections: list[_Connection] = []
        self._schema_conn: _Connection | None = None
        self._noted: set[str] = set()
        self._handlers: dict[type, Callable[[Any], None]] = {
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
        self.reconnections = 0
        self._healthy = False  # the current connection delivered an event
        self._thread = threading.Thread(target=self._run, name=f"kingest-{name}", daemon=True)

    # ------------------------------------------------------------------ control (any thread)

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to end, interrupting a blocking read."""
        self._stop.set()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            conn.interrupt()

    def join(self, timeout_s: float | None = None) -> bool:
        """Wait for the thread to end; True when it did."""
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    @property
    def position(self) -> BinlogPosition:
        """The last transaction boundary read."""
        return self.assembler.position

    # ------------------------------------------------------------------ thread

    def _run(self) -> None:
        try:
            self._read()
        except ReaderStopped:
            pass
        except BaseException as exc:  # handed to the event loop, which stops the source
            if not self._stop.is_set():
                self._channel.fail(exc)
        finally:
            self._close_connections()

    def _read(self) -> None:
        position, by_gtid = self._start, self._by_gtid
        lost_since: float | None = None
        delay = _FIRST_DELAY_S
        while not self._stop.is_set():
            self._healthy = False
            try:
                self._stream(position, by_gtid)
                return
            except Exception as exc:
                if self._stop.is_set():
                    return
                if not _is_connection_loss(exc):
                    if isinstance(exc, KingestError):
                        raise
                    if isinstance(exc, pymysql.err.MySQLError):
                        raise map_error(
                            exc, self._settings.address, self._settings.user, "read the binlog"
                        ) from exc
                    raise
                now = time.monotonic()
                if self._healthy or lost_since is None:
                    lost_since = now
                    delay = _FIRST_DELAY_S
                if now - lost_since > self._reconnect_timeout_s:
                    raise ServerUnreachableError(
                        f"lost the binlog connection to MySQL at {self._settings.address} and "
                        f"could not get it back within {self._reconnect_timeout_s:g}s: {exc}"
                    ) from exc
                log.warning(
                    "The binlog connection was lost; reconnecting.",
                    extra={
                        "source": self.name,
                        "server": self._settings.address,
                        "error": str(exc).strip() or type(exc).__name__,
                        "retry_in_s": round(delay, 2),
                    },
                )
                if self._stop.wait(delay * random.uniform(0.5, 1.0)):
                    return
                delay = min(delay * 2, _LONGEST_DELAY_S)
                self._close_connections()
                position = self.assembler.replay()
                by_gtid = self._gtid_resumable and position.gtid is not None
                self.reconnections += 1

    def _stream(self, position: BinlogPosition, by_gtid: bool) -> None:
        stream = open_stream(
            self._settings,
            self._server_id,
            position,
            by_gtid=by_gtid,
            mariadb=self._flavor == "mariadb",
            blocking=True,
            heartbeat_s=self._heartbeat_s,
            connect=self._connect,
        )
        handlers = self._handlers
        stop = self._stop
        try:
            while not stop.is_set():
                event = stream.fetchone()
                if event is None:
                    raise StreamInterrupted("the server ended the binlog stream")
                self._healthy = True
                handler = handlers.get(type(event))
                if handler is not None:
                    handler(event)
        finally:
            with contextlib.suppress(Exception):
                stream.close()

    def _connect(self, **kwargs: Any) -> _Connection:
        if self._stop.is_set():
            raise ReaderStopped
        conn = _new_connection(**kwargs)
        with self._lock:
            self._connections.append(conn)
        if self._stop.is_set():
            conn.interrupt()
        return conn

    def _close_connections(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, []
        self._schema_conn = None
        for conn in connections:
            with contextlib.suppress(Exception):
                conn.close()

    def _load_schema(self, database: str, table: str) -> TableSchema | None:
        conn = self._schema_conn
        if conn is None or not conn.open:
            conn = self._schema_conn = self._connect(
                **self._settings.pymysql_kwargs(read_timeout_s=max(3 * self._heartbeat_s, 10.0))
            )
        with conn.cursor() as cursor:
            return load_table_schema(cursor, database, table, mariadb=self._flavor == "mariadb")

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


def _is_connection_loss(exc: BaseException) -> bool:
    """True for errors after which a new connection may work (walks the cause chain)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, StreamInterrupted | pymysql.err.InterfaceError):
            return True
        if isinstance(current, KingestError):
            return current.retriable
        code = error_code(current)
        if code is not None:
            return code in CONNECTION_LOST_CODES
        if isinstance(current, OSError | EOFError):
            return True
        current = current.__cause__
    return False
