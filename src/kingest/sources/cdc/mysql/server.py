"""The server side of the MySQL source: the DSN, the server's settings, and where to start.

Before streaming, the source reads the server's binlog settings once and refuses, with every
problem in one message, a server whose binlog cannot give complete row changes
(:func:`check_server`). It then picks the start position (:func:`resolve_start`): the stored one
(by GTID when the server has GTIDs, else by file and offset), or the server's current position
on the first run.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import pymysql

from kingest.errors import ConfigError
from kingest.sources.cdc.mysql.errors import PositionLostError, error_code
from kingest.sources.cdc.mysql.position import (
    BinlogPosition,
    MariaDbGtidState,
    MySqlGtidSet,
    gtid_flavor,
)

__all__ = [
    "ConnectionSettings",
    "ServerStatus",
    "check_server",
    "inspect_server",
    "mariadb_gtid_at",
    "parse_dsn",
    "resolve_start",
]

Flavor = Literal["mysql", "mariadb"]

DEFAULT_PORT: Final = 3306
ER_PARSE_ERROR: Final = 1064  # MySQL before 8.2 and MariaDB do not know SHOW BINARY LOG STATUS

# Server variables the checks read (SHOW GLOBAL VARIABLES skips those a server lacks).
_VARIABLES: Final = (
    "version",
    "server_id",
    "log_bin",
    "binlog_format",
    "binlog_row_image",
    "binlog_row_metadata",
    "binlog_row_value_options",
    "binlog_transaction_compression",
    "log_bin_compress",
    "gtid_mode",
    "gtid_purged",
)


@dataclass(frozen=True, slots=True)
class ConnectionSettings:
    """Where and as whom to connect (from the DSN). The password never appears in a repr.

    Attributes:
        host: server host name or address.
        port: TCP port.
        user: user name.
        password: password (empty for none).
        database: the DSN's database, or None.
        connect_timeout_s: how long a connection attempt may take.
    """

    host: str
    port: int
    user: str
    password: str = field(repr=False)
    database: str | None
    connect_timeout_s: float = 10.0

    @property
    def address(self) -> str:
        """``host:port`` (``[v6]:port`` for an IPv6 address), for messages."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def redacted(self) -> str:
        """The DSN without its password, for logs."""
        database = f"/{urllib.parse.quote(self.database)}" if self.database else ""
        return f"mysql://{urllib.parse.quote(self.user, safe='')}@{self.address}{database}"

    def pymysql_kwargs(self, *, read_timeout_s: float | None = None) -> dict[str, Any]:
        """Keyword arguments of ``pymysql.connect`` (no database: every query names its own)."""
        kwargs: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.password,
            "charset": "utf8mb4",
            "autocommit": True,
            "connect_timeout": self.connect_timeout_s,
        }
        if read_timeout_s is not None:
            kwargs["read_timeout"] = read_timeout_s
        return kwargs


def parse_dsn(dsn: str, *, connect_timeout_s: float = 10.0) -> ConnectionSettings:
    """Read ``mysql://USER[:PASSWORD]@HOST[:PORT][/DB]`` (``mariadb://`` too).

    User and password may be percent-encoded. Without a password in the DSN, the
    ``MYSQL_PWD`` environment variable is used when set (as the mysql client does), which keeps
    the password out of command lines and config files.

    Raises:
        ValueError: the DSN is not such a URL. The message never contains the password.
    """
    try:
        url = urllib.parse.urlsplit(dsn.strip())
        port = url.port
    except ValueError as exc:
        raise ValueError(f"not a mysql:// URL ({exc})") from None
    if url.scheme not in ("mysql", "mariadb"):
        raise ValueError("the DSN must start with mysql:// (or mariadb://)")
    if not url.hostname:
        raise ValueError("the DSN names no host (mysql://USER[:PASSWORD]@HOST:PORT/DB)")
    if not url.username:
        raise ValueError("the DSN names no user (mysql://USER[:PASSWORD]@HOST:PORT/DB)")
    if url.query or url.fragment:
        raise ValueError("the DSN takes no ?options or #fragment")
    database = urllib.parse.unquote(url.path.lstrip("/")) or None
    if database is not None and "/" in database:
        raise ValueError(f"the DSN's database {database!r} is not a database name")
    password = url.password
    if password is None:
        password = os.environ.get("MYSQL_PWD", "")
    return ConnectionSettings(
        host=url.hostname,
        port=port or DEFAULT_PORT,
        user=urllib.parse.unquote(url.username),
        password=urllib.parse.unquote(password),
        database=database,
        connect_timeout_s=connect_timeout_s,
    )


@dataclass(frozen=True, slots=True)
class ServerStatus:
    """What the source needs to know about a server before reading its binlog.

    Attributes:
        flavor: ``mysql`` or ``mariadb``.
        version: the server's version string.
        server_id: the server's own server_id.
        variables: the global variables of interest, lower-cased names to values.
        current: the server's current binlog position with its GTID state, or None when the
            binary log is off.
        binlog_files: the binlog files the server still has, name -> size in bytes.
    """

    flavor: Flavor
    version: str
    server_id: int
    variables: Mapping[str, str]
    current: BinlogPosition | None
    binlog_files: Mapping[str, int]

    @property
    def gtid_resumable(self) -> bool:
        """True when a replica can resume by GTID: MariaDB always, MySQL with gtid_mode=ON."""
        if self.flavor == "mariadb":
            return True
        return self.variables.get("gtid_mode", "").upper() == "ON"

    @property
    def row_metadata_full(self) -> bool:
        """True when table map events carry column names (binlog_row_metadata=FULL)."""
        return self.variables.get("binlog_row_metadata", "").upper() == "FULL"


def inspect_server(conn: pymysql.connections.Connection[Any]) -> ServerStatus:
    """Read the server's binlog settings and current position.

    Raises:
        pymysql.err.MySQLError: a query failed (the caller maps it with
            :func:`~kingest.sources.cdc.mysql.errors.map_error`; a missing REPLICATION CLIENT
            shows here as error 1227).
    """
    with conn.cursor() as cur:
        placeholders = ", ".join(["%s"] * len(_VARIABLES))
        cur.execute(f"SHOW GLOBAL VARIABLES WHERE Variable_name IN ({placeholders})", _VARIABLES)
        variables = {str(name).lower(): str(value) for name, value in cur.fetchall()}
        version = variables.get("version", "")
        flavor: Flavor = "mariadb" if "mariadb" in version.lower() else "mysql"
        row = _binlog_status(cur)
        current: BinlogPosition | None = None
        files: dict[str, int] = {}
        if row is not None:
            file, pos = str(row[0]), int(row[1])
            gtid: str | None = None
            if flavor == "mariadb":
                gtid = mariadb_gtid_at(cur, file, pos)
            elif variables.get("gtid_mode", "").upper() == "ON" and len(row) > 4:
                gtid = "".join(str(row[4] or "").split())
            current = BinlogPosition(file, pos, gtid or None)
            cur.execute("SHOW BINARY LOGS")
            files = {str(log[0]): int(log[1]) for log in cur.fetchall()}
    return ServerStatus(
        flavor=flavor,
        version=version,
        server_id=int(variables.get("server_id", "0") or 0),
        variables=variables,
        current=current,
        binlog_files=files,
    )


def mariadb_gtid_at(cur: Any, file: str, pos: int) -> str | None:
    """MariaDB's GTID state at a binlog position (``BINLOG_GTID_POS``), None when empty.

    Args:
        cur: a PyMySQL cursor.
        file, pos: the position.

    Raises:
        pymysql.err.MySQLError: the query failed.
    """
    cur.execute("SELECT BINLOG_GTID_POS(%s, %s)", (file, pos))
    found = cur.fetchone()
    return str(found[0]) if found and found[0] else None


def _binlog_status(cur: Any) -> tuple[Any, ...] | None:
    # MySQL 8.4 dropped SHOW MASTER STATUS for SHOW BINARY LOG STATUS (8.2+); MariaDB and
    # older MySQL know only the former.
    try:
        cur.execute("SHOW BINARY LOG STATUS")
    except pymysql.err.ProgrammingError as exc:
        if error_code(exc) != ER_PARSE_ERROR:
            raise
        cur.execute("SHOW MASTER STATUS")
    row = cur.fetchone()
    return tuple(row) if row else None


def check_server(status: ServerStatus, replica_server_id: int) -> list[str]:
    """Every reason this server's binlog cannot feed row-level change data capture.

    Args:
        status: what :func:`inspect_server` read.
        replica_server_id: the server_id the source connects with.

    Returns:
        One sentence per problem, saying what to change; empty when the server is fine.
    """
    variables = status.variables
    problems: list[str] = []
    log_bin = variables.get("log_bin", "").upper()
    if log_bin not in ("ON", "1") or status.current is None:
        problems.append(
            "the binary log is off (log_bin=OFF): start the server with log_bin, "
            "binlog_format=ROW and binlog_row_image=FULL"
        )
    binlog_format = variables.get("binlog_format", "").upper()
    if binlog_format != "ROW":
        problems.append(
            f"binlog_format is {binlog_format or 'unknown'}, and only ROW logs every changed "
            "row: SET GLOBAL binlog_format=ROW (and in the server's config file)"
        )
    row_image = variables.get("binlog_row_image", "").upper()
    if row_image != "FULL":
        problems.append(
            f"binlog_row_image is {row_image or 'unknown'}, so updates and deletes lack whole "
            "rows: SET GLOBAL binlog_row_image=FULL (and in the server's config file)"
        )
    if "PARTIAL_JSON" in variables.get("binlog_row_value_options", "").upper():
        problems.append(
            "binlog_row_value_options=PARTIAL_JSON logs JSON updates as diffs, not values: "
            "SET GLOBAL binlog_row_value_options=''"
        )
    if variables.get("binlog_transaction_compression", "").upper() in ("ON", "1"):
        problems.append(
            "binlog_transaction_compression is ON and compressed transactions cannot be "
            "decoded: SET GLOBAL binlog_transaction_compression=OFF"
        )
    if variables.get("log_bin_compress", "").upper() in ("ON", "1"):
        problems.append(
            "log_bin_compress is ON and compressed binlog events cannot be decoded: "
            "SET GLOBAL log_bin_compress=OFF"
        )
    if status.server_id and replica_server_id == status.server_id:
        problems.append(
            f"server_id {replica_server_id} is the server's own; choose another for kingest"
        )
    return problems


def resolve_start(
    status: ServerStatus, stored: BinlogPosition | None
) -> tuple[BinlogPosition, bool]:
    """Where to start reading, and whether to ask the server by GTID.

    Args:
        status: the server, as :func:`inspect_server` read it (its binlog is on).
        stored: the committed position, or None on the first run.

    Returns:
        ``(position, by_gtid)``: the stored position (by GTID when it has a GTID state and the
        server resumes by GTID), or the server's current position when nothing is stored.

    Raises:
        PositionLostError: the stored file is not among the server's binlogs any more, the
            offset is past its end, or (MySQL) GTIDs the source has not read were purged.
        ConfigError: the stored GTID state was written for the other kind of server.
    """
    current = status.current
    assert current is not None, "check_server refuses a server whose binlog is off"
    if stored is None:
        return current, False
    where = f"the stored position {stored}"
    if stored.gtid and status.gtid_resumable:
        if gtid_flavor(stored.gtid) != status.flavor:
            raise ConfigError(
                f"{where} was written for a {gtid_flavor(stored.gtid)} server, but this one is "
                f"{status.flavor}: remove the source's checkpoint to start afresh"
            )
        if status.flavor == "mysql":
            purged_text = status.variables.get("gtid_purged", "")
            purged = MySqlGtidSet.parse(purged_text)
            if not MySqlGtidSet.parse(stored.gtid).contains(purged):
                raise PositionLostError(
                    f"{where} needs transactions the server has purged (gtid_purged is "
                    f"{purged_text}); the changes since are lost to this source. Remove the "
                    "source's checkpoint to start again from the current position"
                )
        else:
            MariaDbGtidState.parse(stored.gtid)
        return stored, True
    size = status.binlog_files.get(stored.file)
    if size is None:
        oldest = min(status.binlog_files, default="none")
        raise PositionLostError(
            f"{where} is in binlog file {stored.file}, which the server no longer has "
            f"(oldest: {oldest}); the changes since are lost to this source. Remove the "
            "source's checkpoint to start again from the current position"
        )
    if stored.pos > size:
        raise PositionLostError(
            f"{where} is past the end of {stored.file} ({size} bytes): the binlog was reset "
            "or this is another server. Remove the source's checkpoint to start again from "
            "the current position"
        )
    return stored, False
