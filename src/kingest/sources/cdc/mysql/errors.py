"""What stops the MySQL source, and the one place where PyMySQL's errors become kingest's.

::

    KingestError
    ├── ConfigError
    │   ├── ServerSetupError     the server cannot be captured as set up (log_bin, format, image)
    │   └── PrivilegeError       the user lacks a privilege, or cannot log in
    ├── ServerUnreachableError   no connection to the server (retriable)
    ├── PositionLostError        the stored position is no longer in the server's binlog
    └── CaptureError             the binlog holds something the source cannot follow

Each message is one line that names the server and says what to do.
"""

from __future__ import annotations

from typing import Final

import pymysql

from kingest.errors import ConfigError, KingestError

__all__ = [
    "CONNECTION_LOST_CODES",
    "CaptureError",
    "PositionLostError",
    "PrivilegeError",
    "ServerSetupError",
    "ServerUnreachableError",
    "error_code",
    "map_error",
]

# MySQL client and server error numbers (https://dev.mysql.com/doc/mysql-errors/8.0/en/).
ER_ACCESS_DENIED: Final = 1045  # wrong user or password
ER_DBACCESS_DENIED: Final = 1044  # no access to the DSN's database
ER_BAD_DB: Final = 1049  # the DSN's database does not exist
ER_SPECIFIC_ACCESS_DENIED: Final = 1227  # a missing global privilege (REPLICATION ...)
ER_MASTER_FATAL_READING_BINLOG: Final = 1236  # purged binlog, impossible position, lost GTID
ER_ACCESS_DENIED_NO_PASSWORD: Final = 1698  # unix_socket/auth plugin refused the user

# Errors after which the same request may succeed on a new connection.
CONNECTION_LOST_CODES: Final = frozenset(
    {
        1053,  # ER_SERVER_SHUTDOWN
        1152,  # ER_ABORTING_CONNECTION
        1927,  # ER_CONNECTION_KILLED (MariaDB)
        2002,  # CR_CONNECTION_ERROR (socket)
        2003,  # CR_CONN_HOST_ERROR
        2006,  # CR_SERVER_GONE_ERROR
        2013,  # CR_SERVER_LOST (also a read timeout)
        2055,  # CR_SERVER_LOST_EXTENDED
    }
)

_GRANT_HINT = "GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO the user"


class ServerSetupError(ConfigError):
    """The server's settings do not allow row-level change data capture."""


class PrivilegeError(ConfigError):
    """The user cannot log in, or lacks REPLICATION SLAVE / REPLICATION CLIENT."""


class ServerUnreachableError(KingestError):
    """No connection to the server (refused, timed out, lost and not regained)."""

    retriable = True


class PositionLostError(KingestError):
    """The stored position is not in the server's binlog any more (purged, or another server)."""


class CaptureError(KingestError):
    """The binlog holds an event the source cannot follow without losing changes."""


def error_code(exc: BaseException) -> int | None:
    """The MySQL error number of a PyMySQL error, or None."""
    if isinstance(exc, pymysql.err.MySQLError) and exc.args and isinstance(exc.args[0], int):
        return exc.args[0]
    return None


def _message(exc: BaseException) -> str:
    if isinstance(exc, pymysql.err.MySQLError) and len(exc.args) >= 2:
        return str(exc.args[1]).strip()
    return str(exc).strip() or type(exc).__name__


def map_error(exc: BaseException, server: str, user: str, doing: str) -> KingestError:
    """Translate a PyMySQL error (or socket error) into the kingest error that explains it.

    Args:
        exc: what PyMySQL raised.
        server: ``host:port``, for the message.
        user: the user name, for the message.
        doing: what failed, e.g. ``read the binlog position`` (for the message).

    Returns:
        The error to raise ``from exc``.
    """
    code = error_code(exc)
    text = _message(exc)
    where = f"MySQL at {server}"
    if code in (ER_ACCESS_DENIED, ER_ACCESS_DENIED_NO_PASSWORD, ER_DBACCESS_DENIED):
        return PrivilegeError(f"{where}: access denied for user {user!r}: {text}")
    if code == ER_BAD_DB:
        return ConfigError(f"{where}: {text}")
    if code == ER_SPECIFIC_ACCESS_DENIED:
        if "REPLICATION SLAVE" in text.upper() or "REPLICATION REPLICA" in text.upper():
            missing = "REPLICATION SLAVE (needed to read the binlog)"
        else:
            missing = "REPLICATION CLIENT (BINLOG MONITOR on MariaDB; needed to read the position)"
        return PrivilegeError(
            f"{where}: user {user!r} lacks {missing}, so kingest cannot {doing}: "
            f"{_GRANT_HINT} ({text})"
        )
    if code == ER_MASTER_FATAL_READING_BINLOG:
        return PositionLostError(
            f"{where} cannot {doing} from the requested position: {text}. The binlog it needs "
            "is gone (purged, or another server); the changes since are lost to this source. "
            "Remove the source's checkpoint to start again from the current position"
        )
    if code in CONNECTION_LOST_CODES or (code is None and isinstance(exc, OSError)):
        return ServerUnreachableError(f"cannot reach {where} to {doing}: {text}")
    return CaptureError(f"{where}: cannot {doing}: {text}")
