"""The binlog reader thread: it reads the stream, hands each event over, and reconnects.

pymysqlreplication's ``BinLogStreamReader`` blocks on its socket, so it runs in a thread of its
own (the stream is opened by :mod:`~kingest.sources.cdc.mysql.stream`). The thread hands each
event to its handler (see :mod:`~kingest.sources.cdc.mysql.dispatch`), which decodes rows events
and feeds the :class:`~kingest.sources.cdc.mysql.assembler.TransactionAssembler`; the chunks the
assembler cuts go into a :class:`~kingest.sources.cdc.mysql.channel.Channel`. When the channel
is full the thread waits: the binlog is read no faster than Kinesis accepts it, and nothing is
dropped.

A lost connection is taken again with exponential backoff (and jitter), from the last
transaction boundary the thread read, not the committed one: the transaction in progress is
re-read and the rows events already handled are skipped, so that a reconnection sends nothing
twice. Errors that another attempt cannot fix (a purged binlog, a missing privilege, an event
the source cannot decode safely) end the thread and are raised on the event loop.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from typing import Any, Final

import pymysql

from kingest.errors import KingestError
from kingest.sources.cdc.envelope import EnvelopeBuilder
from kingest.sources.cdc.mysql.assembler import TransactionAssembler
from kingest.sources.cdc.mysql.channel import Channel, ReaderStopped
from kingest.sources.cdc.mysql.dispatch import EventDispatcher
from kingest.sources.cdc.mysql.errors import (
    CONNECTION_LOST_CODES,
    ServerUnreachableError,
    error_code,
    map_error,
)
from kingest.sources.cdc.mysql.filters import TableFilter
from kingest.sources.cdc.mysql.position import BinlogPosition
from kingest.sources.cdc.mysql.schema import SchemaCache, TableSchema, load_table_schema
from kingest.sources.cdc.mysql.server import ConnectionSettings
from kingest.sources.cdc.mysql.stream import (
    Connection,
    StreamInterrupted,
    new_connection,
    open_stream,
)

log = logging.getLogger(__name__)

__all__ = ["BinlogReader"]

# Reconnection backoff: doubles from the first delay up to the longest, with jitter.
_FIRST_DELAY_S: Final = 0.5
_LONGEST_DELAY_S: Final = 30.0


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
        self._channel = channel
        self._heartbeat_s = heartbeat_s
        self._reconnect_timeout_s = reconnect_timeout_s
        self.assembler = TransactionAssembler(
            builder, start, flavor, channel.put, track_gtids=track_gtids
        )
        self.schemas = SchemaCache(self._load_schema)
        self._dispatcher = EventDispatcher(
            name=name,
            settings=settings,
            tables=tables,
            assembler=self.assembler,
            schemas=self.schemas,
        )
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._connections: list[Connection] = []
        self._schema_conn: Connection | None = None
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
        handlers = self._dispatcher.handlers
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

    def _connect(self, **kwargs: Any) -> Connection:
        if self._stop.is_set():
            raise ReaderStopped
        conn = new_connection(**kwargs)
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
