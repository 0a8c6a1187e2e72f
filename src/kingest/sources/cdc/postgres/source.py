"""The PostgreSQL CDC source: every committed change of the captured tables, in order.

Changes arrive over logical replication with the built-in ``pgoutput`` plugin, which managed
services (RDS, Cloud SQL, Azure) allow without extensions. The source creates its publication
and replication slot when they are missing, optionally reads the tables first (``snapshot``:
``op: "r"`` events consistent with the slot's start), then streams. Each change becomes one
record (see :mod:`kingest.sources.cdc.envelope`), keyed by table and primary key.

Position: the slot itself. Its confirmed flush LSN advances only past transactions whose every
event is accepted by Kinesis or in the dead-letter queue, so a restart, even after a crash,
resumes with nothing lost (changes in flight at the crash come again). The checkpoint store
keeps a copy, so that a slot dropped while the agent was away is reported, not silently
replaced::

    {"slot": "kingest", "database": "shop", "lsn": 97500059720, "lsn_text": "16/B374D848",
     "snapshot_done": true}

Example (in ``kingest.yaml``)::

    sources:
      - type: postgres
        name: shop_cdc
        dsn: postgresql://kingest@db.internal:5432/shop
        slot: kingest_shop
        publication: kingest_shop
        tables: [public.orders, public.users]
        snapshot: true
        critical_columns:
          public.orders: [status, total_amount]
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import ConfigDict, Field, SecretStr

from kingest.checkpoint import CheckpointStore
from kingest.record import DlqReason
from kingest.schemas.validate import SchemaField
from kingest.sources.base import Source, SourceContext
from kingest.sources.cdc.envelope import EnvelopeBuilder
from kingest.sources.cdc.postgres.assembler import Chunk
from kingest.sources.cdc.postgres.capture import (
    CaptureSettings,
    PostgresCapture,
    SnapshotDone,
    TableFilter,
)
from kingest.sources.cdc.postgres.position import format_lsn

log = logging.getLogger(__name__)

__all__ = ["PostgresSource", "PostgresSourceConfig"]

# Batches of chunks waiting for the event loop (a batch: about 500 events, or a snapshot's
# 2,000 rows).
_QUEUE_BATCHES = 8
_SLOT_LANE = "slot"
_SNAPSHOT_LANE = "snapshot"


class PostgresSourceConfig(SchemaField):
    """A ``type: postgres`` source: logical replication from one PostgreSQL database."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["postgres"] = Field(description="PostgreSQL logical replication (pgoutput).")
    name: str = Field(
        "postgres_cdc",
        min_length=1,
        description="Source name: `source.name` of its events, statistics and checkpoints.",
    )
    dsn: SecretStr = Field(
        description=(
            "libpq connection string or URI, e.g. postgresql://user@host:5432/db. The user "
            "needs the REPLICATION attribute and ownership of the tables (to publish them)."
        )
    )
    slot: str = Field("kingest", min_length=1, description="Replication slot, created if missing.")
    publication: str = Field(
        "kingest",
        min_length=1,
        description=(
            "Publication, created if missing: for the listed tables, or for all tables when "
            "`tables` has patterns or is empty (that needs a superuser)."
        ),
    )
    tables: list[str] = Field(
        default_factory=list,
        description="Tables to capture, as schema.table (fnmatch patterns allowed); empty: all.",
    )
    exclude_tables: list[str] = Field(
        default_factory=list, description="Tables never captured (schema.table patterns)."
    )
    snapshot: bool = Field(
        False,
        description=(
            "Read the tables when the slot is created (events with op 'r'), consistent with "
            "where streaming starts."
        ),
    )
    critical_columns: dict[str, list[str]] = Field(
        default_factory=dict,
        description=(
            "Per schema.table, the columns whose change makes an update a critical_update "
            "(default: status, email, total_amount). Needs REPLICA IDENTITY FULL to see the "
            "old values."
        ),
    )
    heartbeat_interval_s: float = Field(
        10.0,
        gt=0,
        description=(
            "How often, with nothing in flight, the server's position is confirmed so that an "
            "idle database does not hold WAL back."
        ),
    )
    status_interval_s: float = Field(
        10.0,
        ge=1,  # psycopg2's lower bound
        description="Interval of standby status updates (keepalive) to the server.",
    )
    recreate_dropped_slot: bool = Field(
        False,
        description=(
            "When the slot this source used is gone, create a new one (accepting the lost "
            "changes) instead of stopping with an error."
        ),
    )
    spool_memory_mib: int = Field(
        32,
        ge=1,
        description=(
            "Memory for a large transaction streamed before its commit; the rest goes to a "
            "temporary file until it commits."
        ),
    )
    stream: str | None = Field(None, description="Stream of this source (default: the agent's).")

    def build(self, store: CheckpointStore) -> PostgresSource:
        """The running source for this config."""
        return PostgresSource(self, store)


class PostgresSource(Source):
    """Streams the changes of one database (see the module docstring)."""

    reads_in_thread = True

    def __init__(self, config: PostgresSourceConfig, store: CheckpointStore) -> None:
        super().__init__(config.name)
        self.config = config
        self._store = store
        self.capture = PostgresCapture(
            CaptureSettings(
                dsn=config.dsn.get_secret_value(),
                slot=config.slot,
                publication=config.publication,
                tables=TableFilter(config.tables, config.exclude_tables),
                snapshot=config.snapshot,
                heartbeat_interval_s=config.heartbeat_interval_s,
                status_interval_s=config.status_interval_s,
                recreate_dropped_slot=config.recreate_dropped_slot,
                spool_memory_bytes=config.spool_memory_mib << 20,
            ),
            EnvelopeBuilder("postgresql", config.name, config.critical_columns),
        )
        self._snapshot_done = True
        self._stored: dict[str, Any] | None = None

    async def start(self) -> None:
        """Check the server and set up the publication and slot (errors stop the agent)."""
        stored = self._store.load(self.name).get(_SLOT_LANE)
        if stored is not None and stored.get("slot") != self.config.slot:
            stored = None  # another slot's record: this one starts afresh
        self._stored = stored
        loop = asyncio.get_running_loop()
        try:
            snapshot_due = await loop.run_in_executor(None, self.capture.prepare, stored)
        except BaseException:
            self.capture.close()
            raise
        self._snapshot_done = not snapshot_due
        # Recorded straight away, so that a slot dropped from now on is noticed at restart.
        self._save(self.capture.confirmed_lsn)

    async def run(self, ctx: SourceContext, stop: asyncio.Event) -> None:
        """Stream changes until ``stop`` is set, handing each event to ``ctx``."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[list[Chunk | SnapshotDone] | BaseException] = asyncio.Queue(
            _QUEUE_BATCHES
        )
        thread_stop = threading.Event()

        def emit(batch: list[Chunk | SnapshotDone]) -> bool:
            future = asyncio.run_coroutine_threadsafe(queue.put(batch), loop)
            while not thread_stop.is_set():
                with contextlib.suppress(TimeoutError):
                    future.result(timeout=0.2)
                    return True
            future.cancel()
            return False

        def capture() -> None:
            try:
                self.capture.stream(emit, thread_stop)
            except BaseException as exc:  # handed to the loop, which stops the agent
                if not thread_stop.is_set():
                    asyncio.run_coroutine_threadsafe(queue.put(exc), loop)

        thread = threading.Thread(target=capture, name=f"kingest-{self.name}", daemon=True)
        thread.start()
        stop_waiter = asyncio.create_task(stop.wait())
        try:
            while True:
                getter = asyncio.create_task(queue.get())
                done, _ = await asyncio.wait(
                    {getter, stop_waiter}, return_when=asyncio.FIRST_COMPLETED
                )
                if getter not in done:
                    getter.cancel()
                    break
                item = getter.result()
                if isinstance(item, BaseException):
                    raise item
                await self._hand_over(ctx, item)
        finally:
            stop_waiter.cancel()
            thread_stop.set()
            await loop.run_in_executor(None, thread.join)

    async def _hand_over(self, ctx: SourceContext, batch: list[Chunk | SnapshotDone]) -> None:
        producer = ctx.producer
        name = self.name
        stats = ctx.stats
        end_lsn: int | None = None
        snapshot_done: SnapshotDone | None = None
        for item in batch:
            if isinstance(item, SnapshotDone):
                snapshot_done = item
                continue
            stats.received += len(item.events) + len(item.rejects)
            stats.read_changes(item.events)
            events = ctx.validate(item.events)
            stats.parsed += len(events)
            await producer.put_many(events, name)
            for reject in item.rejects:
                ctx.reject(reject.payload, DlqReason.INVALID_INPUT, reject.message)
            if item.end_lsn is not None:
                end_lsn = item.end_lsn
        if end_lsn is None and snapshot_done is None:
            return
        # One mark covers the batch: its last transaction end is safe once all of it is.
        mark = producer.mark()
        if end_lsn is not None:
            ctx.acks.add(_SLOT_LANE, end_lsn, mark)
        if snapshot_done is not None:
            ctx.acks.add(_SNAPSHOT_LANE, snapshot_done.lsn, mark)

    def commit(self, positions: Mapping[str, Any]) -> None:
        """Confirm the delivered LSN to the server and note it in the checkpoint store."""
        if _SNAPSHOT_LANE in positions:
            self._snapshot_done = True
        lsn = positions.get(_SLOT_LANE)
        if lsn is not None:
            try:
                self.capture.confirm(int(lsn))
            except Exception as exc:
                # The slot keeps the older position; the changes after it come again.
                log.warning(
                    "Cannot confirm the position to the server now.",
                    extra={"source": self.name, "error": str(exc).strip()},
                )
        if lsn is not None or _SNAPSHOT_LANE in positions:
            self._save(self.capture.confirmed_lsn)

    def _save(self, lsn: int) -> None:
        self._store.save(
            self.name,
            {
                _SLOT_LANE: {
                    "slot": self.config.slot,
                    "database": self.capture.database,
                    "lsn": lsn,
                    "lsn_text": format_lsn(lsn),
                    "snapshot_done": self._snapshot_done,
                }
            },
        )

    def close(self) -> None:
        """Close the connections (after the last confirmation)."""
        self.capture.close()

    def status(self) -> dict[str, Any]:
        """The slot and the LSN confirmed to the server."""
        return {
            "slot": self.config.slot,
            "confirmed_lsn": format_lsn(self.capture.confirmed_lsn),
            "snapshot_done": self._snapshot_done,
        }
