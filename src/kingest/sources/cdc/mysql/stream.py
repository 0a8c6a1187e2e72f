"""The binlog stream's session: a replica's connection to the binlog, opened at a position.

:func:`open_stream` asks the server for its binlog from a position, by GTID state or by file
and offset (``COM_BINLOG_DUMP``), through pymysqlreplication's ``BinLogStreamReader``;
:func:`probe_stream` does so once at start, so that a missing privilege or a purged position is
reported before the reader thread starts.

The library reconnects by itself on some errors, from a position that may sit inside a
transaction (or, with GTIDs, from where the stream began); the connection class here turns those
errors into :class:`StreamInterrupted` so that only the reader (see
:mod:`~kingest.sources.cdc.mysql.reader`) decides where to resume.
"""

from __future__ import annotations

import contextlib
import logging
import socket
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

from kingest.sources.cdc.mysql.errors import (
    CONNECTION_LOST_CODES,
    ServerUnreachableError,
    error_code,
    map_error,
)
from kingest.sources.cdc.mysql.position import BinlogPosition
from kingest.sources.cdc.mysql.server import ConnectionSettings

__all__ = ["Connection", "StreamInterrupted", "new_connection", "open_stream", "probe_stream"]

# Events the reader handles (see :mod:`~kingest.sources.cdc.mysql.dispatch`); table map events
# are always read by the library itself.
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


class StreamInterrupted(Exception):
    """The binlog connection was lost (or shut down by
    :meth:`~kingest.sources.cdc.mysql.reader.BinlogReader.stop`)."""


class Connection(pymysql.connections.Connection):
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


def new_connection(**kwargs: Any) -> Connection:
    """A :class:`Connection` from pymysqlreplication's arguments.

    The library names the database ``db`` (and may name the password ``passwd``), which PyMySQL
    deprecates: they are passed under their current names.
    """
    if "db" in kwargs:
        kwargs.setdefault("database", kwargs.pop("db"))
    if "passwd" in kwargs:
        kwargs.setdefault("password", kwargs.pop("passwd"))
    return Connection(**kwargs)


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
        connect=new_connection,
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
