"""The MySQL/MariaDB CDC source: every committed row change of the captured tables, in order.

Changes come from the server's row-based binlog, read as a replica would
(``COM_BINLOG_DUMP``) by pymysqlreplication in a thread of its own (see
:mod:`~kingest.sources.cdc.mysql.reader`). Each changed row becomes one change event (see
:mod:`kingest.sources.cdc.envelope`) with ``database`` the database and ``table`` the plain table
name, keyed by table and primary key (a table without one is keyed by its name). Only committed
transactions reach the binlog, so a rolled-back one never appears.

Position: a transaction boundary of the binlog (see
:class:`~kingest.sources.cdc.mysql.position.BinlogPosition`), committed to the checkpoint store
once every change before it is accepted by Kinesis or in the dead-letter queue. A restart
resumes there, by GTID when the server has GTIDs, else by file and offset; the first run starts
at the server's current position, stored at once so that changes made while the agent is down
are not skipped::

    {"file": "mysql-bin.000003", "pos": 4567, "gtid": "0-1-42"}

The server must have log_bin on, binlog_format=ROW and binlog_row_image=FULL, and the user
REPLICATION SLAVE and REPLICATION CLIENT (BINLOG MONITOR on MariaDB) plus SELECT on the tables;
the source checks all of it at start. With binlog_row_metadata=FULL the binlog names every
row's columns itself; without it, the names come from information_schema (see
:mod:`~kingest.sources.cdc.mysql.schema`).

Example (in ``kingest.yaml``)::

    sources:
      - type: mysql
        name: shop_cdc
        dsn: mysql://kingest@db.internal:3306/shop
        server_id: 5401
        tables: [shop.orders, shop.users]
        critical_columns:
          shop.orders: [status, total_amount]
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import zlib
from collections.abc import Mapping
from typing import Any, Final, Literal

import pymysql
from pydantic import ConfigDict, Field, SecretStr, field_validator

from kingest.checkpoint import CheckpointStore
from kingest.errors import ConfigError
from kingest.record import DlqReason
from kingest.schemas.validate import SchemaField
from kingest.sources.base import Source, SourceContext
from kingest.sources.cdc.envelope import EnvelopeBuilder
from kingest.sources.cdc.mysql.assembler import Chunk
from kingest.sources.cdc.mysql.channel import Channel
from kingest.sources.cdc.mysql.errors import CaptureError, ServerSetupError, map_error
from kingest.sources.cdc.mysql.filters import TableFilter, check_pattern
from kingest.sources.cdc.mysql.position import BinlogPosition
from kingest.sources.cdc.mysql.reader import BinlogReader
from kingest.sources.cdc.mysql.server import (
    ConnectionSettings,
    ServerStatus,
    check_server,
    inspect_server,
    mariadb_gtid_at,
    parse_dsn,
    resolve_start,
)
from kingest.sources.cdc.mysql.stream import probe_stream

log = logging.getLogger(__name__)

__all__ = ["MySqlSource", "MySqlSourceConfig", "default_server_id"]

# The source's one lane: the binlog is a single sequence; its key in the checkpoint store.
LANE: Final = "binlog"
# How long a stopping source waits for the reader thread (it is interrupted, so this is slack).
_JOIN_TIMEOUT_S: Final = 10.0


def default_server_id(name: str) -> int:
    """The replica server_id used when the config sets none, derived from the source name.

    Replicas of one server need distinct server_ids. A stable one lets a restarted agent take its
    former connection's place (the server drops the older one); two agents reading one server
    with the same source name must set ``server_id`` themselves.
    """
    return 0x6B000000 + zlib.crc32(name.encode()) % 0x01000000


class MySqlSourceConfig(SchemaField):
    """A ``type: mysql`` source: the row binlog of a MySQL or MariaDB server."""

    # The DSN may hold a password: validation errors must not echo their input.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    type: Literal["mysql"] = Field(description="MySQL/MariaDB row-based binlog capture.")
    name: str = Field(
        "mysql_cdc",
        min_length=1,
        description="Source name: `source.name` of its events, statistics and checkpoints.",
    )
    dsn: SecretStr = Field(
        description=(
            "mysql://USER[:PASSWORD]@HOST[:PORT][/DB] (percent-encode special characters; "
            "without a password, MYSQL_PWD is used). The user needs REPLICATION SLAVE, "
            "REPLICATION CLIENT and SELECT on the captured tables."
        )
    )
    server_id: int | None = Field(
        None,
        ge=1,
        le=(1 << 32) - 1,
        description=(
            "Replica server_id to register with, unique among the server's replicas "
            "(default: derived from the source name)."
        ),
    )
    tables: list[str] = Field(
        default_factory=list,
        description=(
            "Tables to capture, as database.table (fnmatch patterns allowed); empty: every "
            "table of the DSN's database, or of every database when the DSN names none."
        ),
    )
    exclude_tables: list[str] = Field(
        default_factory=list, description="Tables never captured (database.table patterns)."
    )
    critical_columns: dict[str, list[str]] = Field(
        default_factory=dict,
        description=(
            "Per database.table, the columns whose change makes an update a critical_update "
            "(default: status, email, total_amount)."
        ),
    )
    heartbeat_interval_s: float = Field(
        5.0,
        gt=0,
        le=4_294_967,
        description=(
            "The server sends a heartbeat after this long without binlog events; three missed "
            "ones mean a dead connection, which is then taken again."
        ),
    )
    connect_timeout_s: float = Field(
        10.0, gt=0, description="How long connecting to the server may take."
    )
    reconnect_timeout_s: float = Field(
        300.0,
        ge=0,
        description=(
            "How long to keep reconnecting after the connection is lost before the source "
            "fails (and the agent stops with an error)."
        ),
    )
    max_queue_events: int = Field(
        10_000,
        ge=1,
        description=(
            "Change events read ahead of the producer; when that many wait, reading the "
            "binlog pauses."
        ),
    )
    stream: str | None = Field(None, description="Stream of this source (default: the agent's).")

    @field_validator("dsn")
    @classmethod
    def _valid_dsn(cls, dsn: SecretStr) -> SecretStr:
        parse_dsn(dsn.get_secret_value())
        return dsn

    @field_validator("tables", "exclude_tables")
    @classmethod
    def _valid_patterns(cls, patterns: list[str]) -> list[str]:
        return [check_pattern(pattern) for pattern in patterns]

    @field_validator("critical_columns")
    @classmethod
    def _valid_critical(cls, columns: dict[str, list[str]]) -> dict[str, list[str]]:
        for table in columns:
            check_pattern(table)
        return columns

    def connection_settings(self) -> ConnectionSettings:
        """Where and as whom to connect (from ``dsn``)."""
        return parse_dsn(self.dsn.get_secret_value(), connect_timeout_s=self.connect_timeout_s)

    def replica_server_id(self) -> int:
        """``server_id``, or the default derived from the name."""
        return self.server_id if self.server_id is not None else default_server_id(self.name)

    def table_filter(self) -> TableFilter:
        """The tables captured (``tables`` defaults to the DSN's database)."""
        include = list(self.tables)
        if not include:
            database = self.connection_settings().database
            if database:
                include = [f"{database}.*"]
        return TableFilter(include, self.exclude_tables)

    def build(self, store: CheckpointStore) -> MySqlSource:
        """The source for this config (it connects in :meth:`MySqlSource.start`)."""
        return MySqlSource(self, store)


class MySqlSource(Source):
    """Streams the row changes of one server's binlog (see the module docstring)."""

    reads_in_thread = True

    def __init__(self, config: MySqlSourceConfig, store: CheckpointStore) -> None:
        super().__init__(config.name)
        self.config = config
        self._store = store
        self._settings = config.connection_settings()
        self._server_id = config.replica_server_id()
        self._tables = config.table_filter()
        self._builder = EnvelopeBuilder("mysql", config.name, config.critical_columns)
        self.server: ServerStatus | None = None
        self._start: BinlogPosition | None = None
        self._by_gtid = False
        self._track_gtids = False
        self._reader: BinlogReader | None = None
        self._committed: BinlogPosition | None = None

    async def start(self) -> None:
        """Check the server, pick the start position and try reading the binlog there.

        Raises:
            ServerSetupError: log_bin off, binlog_format not ROW, binlog_row_image not FULL,
                compressed binlogs, or a server_id clash.
            PrivilegeError: the user cannot log in or lacks REPLICATION SLAVE / CLIENT.
            ServerUnreachableError: the server cannot be reached.
            PositionLostError: the stored position is no longer in the server's binlog.
            ConfigError: the stored position cannot be used.
        """
        await asyncio.get_running_loop().run_in_executor(None, self._prepare)

    def _prepare(self) -> None:
        settings = self._settings
        stored = self._load_stored()
        try:
            conn = pymysql.connect(**settings.pymysql_kwargs(read_timeout_s=30.0))
        except (pymysql.err.MySQLError, OSError) as exc:
            raise map_error(exc, settings.address, settings.user, "connect") from exc
        try:
            try:
                status = inspect_server(conn)
            except (pymysql.err.MySQLError, OSError) as exc:
                raise map_error(
                    exc, settings.address, settings.user, "read the binlog position"
                ) from exc
            problems = check_server(status, self._server_id)
            if problems:
                raise ServerSetupError(
                    f"MySQL at {settings.address} cannot be captured: {'; '.join(problems)}"
                )
            try:
                start, by_gtid = resolve_start(status, stored)
            except ValueError as exc:  # a GTID set this version cannot read (tagged GTIDs)
                raise CaptureError(f"MySQL at {settings.address}: {exc}") from exc
            if stored is not None and status.flavor == "mariadb" and start.gtid is None:
                # A position stored before the server had GTIDs: its state at that point lets
                # the positions handed out from now on resume by GTID.
                try:
                    with conn.cursor() as cur:
                        gtid = mariadb_gtid_at(cur, start.file, start.pos)
                except (pymysql.err.MySQLError, OSError) as exc:
                    raise map_error(
                        exc, settings.address, settings.user, "read the GTID state"
                    ) from exc
                start = BinlogPosition(start.file, start.pos, gtid)
            # MySQL knows its whole executed GTID set only for the current position.
            track_gtids = status.flavor == "mariadb" or (
                status.gtid_resumable and (stored is None or stored.gtid is not None)
            )
            probe_stream(
                settings,
                self._server_id,
                start,
                by_gtid=by_gtid,
                mariadb=status.flavor == "mariadb",
            )
            self._note_missing_tables(conn)
        finally:
            with contextlib.suppress(Exception):
                conn.close()
        self.server = status
        self._start = start
        self._by_gtid = by_gtid
        self._track_gtids = track_gtids
        if stored is None:
            # Recorded straight away: a restart before the first change must not move to the
            # server's position of that later moment and skip what happened meanwhile.
            self._save(start)
        log.info(
            "The MySQL source starts reading the binlog.",
            extra={
                "source": self.name,
                "server": settings.redacted,
                "version": status.version,
                "position": str(start),
                "resumed": stored is not None,
                "by_gtid": by_gtid,
                "server_id": self._server_id,
            },
        )
        if not status.row_metadata_full:
            log.info(
                "The binlog does not name columns (binlog_row_metadata is not FULL); names "
                "come from information_schema, and rows logged before a later ALTER TABLE "
                "that does not match go to the dead-letter queue.",
                extra={"source": self.name, "server": settings.redacted},
            )

    def _load_stored(self) -> BinlogPosition | None:
        value = self._store.load(self.name).get(LANE)
        if value is None:
            return None
        try:
            return BinlogPosition.from_json(value)
        except ValueError as exc:
            raise ConfigError(
                f"the checkpoint of source {self.name!r} is not a binlog position ({exc}); "
                "remove it to start from the server's current position"
            ) from exc

    def _note_missing_tables(self, conn: pymysql.connections.Connection[Any]) -> None:
        exact = self._tables.exact_tables()
        if not exact:
            return
        missing = []
        try:
            with conn.cursor() as cur:
                for database, table in exact:
                    cur.execute(
                        "SELECT 1 FROM information_schema.TABLES "
                        "WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s",
                        (database, table),
                    )
                    if cur.fetchone() is None:
                        missing.append(f"{database}.{table}")
        except pymysql.err.MySQLError:
            return  # only advice: the capture does not depend on it
        for name in missing:
            log.warning(
                "A table to capture does not exist or is not visible to the user; its changes "
                "are captured once it appears.",
                extra={"source": self.name, "table": name},
            )

    async def run(self, ctx: SourceContext, stop: asyncio.Event) -> None:
        """Stream changes until ``stop`` is set, handing each event to ``ctx``.

        Raises:
            KingestError: the reader thread failed for good (purged binlog, lost server, an
                event it cannot decode safely).
        """
        if self._start is None or self.server is None:
            await self.start()
        assert self._start is not None and self.server is not None
        loop = asyncio.get_running_loop()
        channel = Channel(loop, self.config.max_queue_events)
        reader = self._reader = BinlogReader(
            name=self.name,
            settings=self._settings,
            server_id=self._server_id,
            flavor=self.server.flavor,
            start=self._start,
            gtid_resumable=self.server.gtid_resumable,
            by_gtid=self._by_gtid,
            track_gtids=self._track_gtids,
            tables=self._tables,
            builder=self._builder,
            channel=channel,
            heartbeat_s=self.config.heartbeat_interval_s,
            reconnect_timeout_s=self.config.reconnect_timeout_s,
        )

        async def stop_reader() -> None:
            await stop.wait()
            reader.stop()
            channel.close()

        stopper = asyncio.create_task(stop_reader(), name=f"kingest-{self.name}-stop")
        reader.start()
        try:
            while True:
                chunks = await channel.get()
                if not chunks:
                    break  # stopped
                await self._hand_over(ctx, chunks)
        finally:
            stopper.cancel()
            reader.stop()
            channel.close()
            if not await loop.run_in_executor(None, reader.join, _JOIN_TIMEOUT_S):
                log.warning(
                    "The binlog reader thread did not stop in time; it ends with the process.",
                    extra={"source": self.name},
                )

    async def _hand_over(self, ctx: SourceContext, chunks: list[Chunk]) -> None:
        producer = ctx.producer
        stats = ctx.stats
        name = self.name
        end: BinlogPosition | None = None
        for chunk in chunks:
            if chunk.size:
                stats.received += chunk.size
                stats.read_changes(chunk.events)
                events = ctx.validate(chunk.events)
                stats.parsed += len(events)
                await producer.put_many(events, name)
                for reject in chunk.rejects:
                    ctx.reject(reject.payload, DlqReason.INVALID_INPUT, reject.message)
            if chunk.end is not None:
                end = chunk.end
        if end is not None:
            # One mark covers everything put so far, including chunks of a transaction that
            # began in an earlier batch.
            ctx.acks.add(LANE, end, producer.mark())

    def commit(self, positions: Mapping[str, Any]) -> None:
        """Store the binlog position every change before which is delivered or dead-lettered."""
        position = positions.get(LANE)
        if isinstance(position, BinlogPosition):
            self._save(position)

    def _save(self, position: BinlogPosition) -> None:
        self._store.save(self.name, {LANE: position.to_json()})
        self._committed = position

    def close(self) -> None:
        """Make sure the reader thread is asked to end (``run`` normally did)."""
        if self._reader is not None:
            self._reader.stop()

    def status(self) -> dict[str, Any]:
        """The server, the committed position and the position read."""
        reader = self._reader
        return {
            "server": self._settings.redacted,
            "server_id": self._server_id,
            "committed": str(self._committed) if self._committed else None,
            "read": str(reader.position) if reader is not None else None,
            "reconnections": reader.reconnections if reader is not None else 0,
        }
