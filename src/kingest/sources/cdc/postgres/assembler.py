"""From pgoutput messages to change events, transaction by transaction.

The assembler keeps what the protocol makes a client remember (the relations described so far,
the open transaction, the chunks of streamed in-progress transactions) and turns each committed
change into one event of :mod:`kingest.sources.cdc.envelope`. It hands them out in
:class:`Chunk` objects: a transaction's events in order, the last chunk of a transaction
carrying its end LSN, which may be confirmed to the server once every event before it is
delivered.

Row images, by the table's REPLICA IDENTITY (PostgreSQL sends no more than that):

- ``DEFAULT`` (the primary key) or ``USING INDEX``: ``before`` holds the key columns only;
- ``FULL``: ``before`` holds every column, and an update's unchanged TOASTed values are filled
  into ``after`` from it;
- ``NOTHING``: no ``before`` for updates and deletes.

A TOASTed value an update did not touch is not sent by the server: without REPLICA IDENTITY
FULL it is left out of ``after`` and its column listed in the event's ``unchanged_columns``, so
that it is never mistaken for NULL.

An update that changes the primary key becomes a delete of the old key and a create of the new
one, so that each key's history stays whole and in order on its own shard.

Large transactions the server streams before they commit are spooled (in memory, then in a
temporary file past ``spool_memory_bytes``) and turned into events only at their Stream Commit;
a Stream Abort discards them, so a rolled-back transaction never appears.
"""

from __future__ import annotations

import logging
import struct
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any, Final

from kingest.sources.cdc.envelope import EnvelopeBuilder, TableRef
from kingest.sources.cdc.postgres.protocol import (
    UNCHANGED,
    Begin,
    Commit,
    Delete,
    Insert,
    LogicalMessage,
    Origin,
    ProtocolError,
    Relation,
    StreamAbort,
    StreamCommit,
    StreamStart,
    StreamStop,
    Truncate,
    TupleValue,
    TypeInfo,
    Update,
    decode,
)
from kingest.sources.cdc.postgres.types import Converter, TypeMapper

log = logging.getLogger(__name__)

__all__ = ["ChangeAssembler", "Chunk", "Reject"]

DEFAULT_CHUNK_EVENTS: Final = 500
DEFAULT_SPOOL_MEMORY_BYTES: Final = 32 << 20
_SPOOL_HEADER: Final = struct.Struct(">IQI")  # subxid, lsn, length


@dataclass(slots=True)
class Reject:
    """A change that cannot become an event (a value that does not convert), for the DLQ."""

    payload: dict[str, Any]
    message: str


@dataclass(slots=True)
class Chunk:
    """Events of one transaction, in commit order, with their partition keys.

    ``end_lsn`` is set on a transaction's last chunk: the position to confirm once these
    events and every one before them are delivered.
    """

    events: list[tuple[dict[str, Any], str]] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    end_lsn: int | None = None


@dataclass(slots=True)
class _Table:
    relation: Relation
    ref: TableRef
    converters: tuple[Converter, ...]
    included: bool
    key_positions: tuple[int, ...]  # columns of the replica identity (what 'K' tuples hold)


@dataclass(slots=True)
class _Transaction:
    xid: int
    commit_ms: int
    order: int = 0
    chunk: Chunk = field(default_factory=Chunk)
    held: tuple[dict[str, Any], str] | None = None  # the latest event, until we know if last


class _Spool:
    """A streamed transaction's raw messages, kept until it commits or aborts."""

    def __init__(self, memory_bytes: int) -> None:
        # Closed by close(), when the transaction commits or aborts.
        self.file: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=memory_bytes)  # noqa: SIM115
        self.aborted: set[int] = set()

    def add(self, subxid: int, lsn: int, data: bytes) -> None:
        self.file.write(_SPOOL_HEADER.pack(subxid, lsn, len(data)))
        self.file.write(data)

    def replay(self) -> Iterator[tuple[int, bytes]]:
        """(lsn, message) of every change not rolled back, in order."""
        self.file.seek(0)
        read = self.file.read
        while True:
            header = read(_SPOOL_HEADER.size)
            if not header:
                return
            subxid, lsn, length = _SPOOL_HEADER.unpack(header)
            data = read(length)
            if subxid not in self.aborted:
                yield lsn, data

    def close(self) -> None:
        self.file.close()


class ChangeAssembler:
    """Turns the pgoutput message stream into chunks of change events.

    Args:
        builder: builds each event's envelope.
        database: the database's name (``database`` and ``source.db``).
        types: converters from value text to JSON.
        primary_key_of: the primary key columns of a relation (looked up in the catalogue);
            empty when it has none.
        included: whether changes of ``schema.table`` are captured.
        chunk_events: events per chunk at most.
        spool_memory_bytes: how much of a streamed transaction is kept in memory before the
            rest goes to a temporary file.
    """

    def __init__(
        self,
        builder: EnvelopeBuilder,
        database: str,
        types: TypeMapper,
        primary_key_of: Callable[[Relation], tuple[str, ...]],
        included: Callable[[str], bool],
        *,
        chunk_events: int = DEFAULT_CHUNK_EVENTS,
        spool_memory_bytes: int = DEFAULT_SPOOL_MEMORY_BYTES,
    ) -> None:
        self.builder = builder
        self.database = database
        self.types = types
        self._primary_key_of = primary_key_of
        self._included = included
        self._chunk_events = chunk_events
        self._spool_memory_bytes = spool_memory_bytes
        self._tables: dict[int, _Table] = {}
        self._tx: _Transaction | None = None
        self._streaming_xid: int | None = None
        self._spools: dict[int, _Spool] = {}

    @property
    def in_transaction(self) -> bool:
        """True between a Begin and its Commit, or while a streamed transaction is open."""
        return self._tx is not None or bool(self._spools)

    def feed(self, data: bytes, lsn: int) -> list[Chunk]:
        """Take one pgoutput message (the payload of an XLogData at ``lsn``).

        Returns:
            The chunks that became complete (often none).

        Raises:
            ProtocolError: the message is malformed or out of place.
        """
        in_stream = self._streaming_xid is not None
        message = decode(data, in_stream)
        if in_stream and not isinstance(message, StreamStop | StreamStart):
            xid = getattr(message, "xid", None)
            if isinstance(message, Relation | TypeInfo):
                self._describe(message)
            if xid is None:
                raise ProtocolError(f"{type(message).__name__} inside a stream without an xid")
            assert self._streaming_xid is not None
            self._spools[self._streaming_xid].add(xid, lsn, data)
            return []
        return self._handle(message, lsn)

    def close(self) -> None:
        """Drop spooled transactions (their temporary files)."""
        for spool in self._spools.values():
            spool.close()
        self._spools.clear()

    # --- messages ---------------------------------------------------------------------------

    def _handle(self, message: Any, lsn: int) -> list[Chunk]:
        if isinstance(message, Begin):
            if self._tx is not None:
                raise ProtocolError("Begin inside an open transaction")
            self._tx = _Transaction(message.xid, message.commit_ms)
            return []
        if isinstance(message, Commit):
            open_tx = self._tx
            if open_tx is None:
                raise ProtocolError("Commit without a Begin")
            self._tx = None
            return self._finish(open_tx, message.end_lsn)
        if isinstance(message, Relation | TypeInfo):
            self._describe(message)
            return []
        if isinstance(message, Insert | Update | Delete | Truncate):
            tx = self._tx
            if tx is None:
                raise ProtocolError(f"{type(message).__name__} outside a transaction")
            return self._change(tx, message, lsn)
        if isinstance(message, StreamStart):
            self._streaming_xid = message.xid
            if message.xid not in self._spools:
                self._spools[message.xid] = _Spool(self._spool_memory_bytes)
            return []
        if isinstance(message, StreamStop):
            self._streaming_xid = None
            return []
        if isinstance(message, StreamAbort):
            spool = self._spools.get(message.xid)
            if spool is not None:
                if message.subxid == message.xid:
                    spool.close()
                    del self._spools[message.xid]
                else:
                    spool.aborted.add(message.subxid)
            return []
        if isinstance(message, StreamCommit):
            return self._replay(message)
        if isinstance(message, Origin | LogicalMessage):
            return []  # neither changes a row
        raise ProtocolError(f"unexpected message {type(message).__name__}")

    def _describe(self, message: Relation | TypeInfo) -> None:
        if isinstance(message, TypeInfo):
            self.types.forget(message.oid)
            return
        qualified = f"{message.namespace}.{message.name}"
        ref = TableRef(
            database=self.database,
            schema=message.namespace,
            table=message.name,
            primary_key=self._primary_key_of(message),
        )
        key_positions = tuple(i for i, column in enumerate(message.columns) if column.is_key)
        self._tables[message.oid] = _Table(
            relation=message,
            ref=ref,
            converters=tuple(self.types.converter(c.type_oid) for c in message.columns),
            included=self._included(qualified),
            key_positions=key_positions,
        )

    def _replay(self, commit: StreamCommit) -> list[Chunk]:
        spool = self._spools.pop(commit.xid, None)
        tx = _Transaction(commit.xid, commit.commit_ms)
        chunks: list[Chunk] = []
        if spool is not None:
            try:
                for lsn, data in spool.replay():
                    message = decode(data, in_stream=True)
                    if isinstance(message, Relation | TypeInfo):
                        self._describe(message)
                    elif isinstance(message, Insert | Update | Delete | Truncate):
                        chunks.extend(self._change(tx, message, lsn))
            finally:
                spool.close()
        chunks.extend(self._finish(tx, commit.end_lsn))
        return chunks

    def _finish(self, tx: _Transaction, end_lsn: int) -> list[Chunk]:
        chunk = tx.chunk
        if tx.held is not None:
            self.builder.mark_last(tx.held[0], tx.order)
            chunk.events.append(tx.held)
            tx.held = None
        chunk.end_lsn = end_lsn
        return [chunk]

    # --- changes ----------------------------------------------------------------------------

    def _change(
        self, tx: _Transaction, message: Insert | Update | Delete | Truncate, lsn: int
    ) -> list[Chunk]:
        if isinstance(message, Truncate):
            for oid in message.relation_oids:
                table = self._table(oid)
                if table.included:
                    self._emit(tx, table, "t", None, None, lsn, None)
            return self._spill(tx)
        table = self._table(message.relation_oid)
        if not table.included:
            return []
        try:
            if isinstance(message, Insert):
                self._emit(tx, table, "c", None, self._row(table, message.new), lsn, None)
            elif isinstance(message, Delete):
                before = self._image(table, message.old_kind, message.old)
                self._emit(tx, table, "d", before, None, lsn, None)
            else:
                self._update(tx, table, message, lsn)
        except (ValueError, TypeError) as exc:
            tx.chunk.rejects.append(
                Reject(
                    {
                        "table": table.ref.qualified,
                        "lsn": lsn,
                        "transaction_id": str(tx.xid),
                        "change": type(message).__name__,
                    },
                    f"{table.ref.qualified} at LSN {lsn}: a value does not convert: {exc}",
                )
            )
        return self._spill(tx)

    def _update(self, tx: _Transaction, table: _Table, message: Update, lsn: int) -> None:
        after = self._row(table, message.new)
        unchanged = [name for name, value in after.items() if value is UNCHANGED]
        if message.old is not None and message.old_kind is not None:
            before = self._image(table, message.old_kind, message.old)
        elif table.relation.replica_identity == "n":
            before = None
        else:
            # The key did not change, so the server sent no old key: it is the new row's.
            before = {table.relation.columns[i].name: after[table.relation.columns[i].name]
                      for i in table.key_positions}  # fmt: skip
        for name in unchanged:
            if before is not None and name in before and before[name] is not UNCHANGED:
                after[name] = before[name]
            else:
                del after[name]
        missing = [name for name in unchanged if name not in after]
        extra = {"unchanged_columns": missing} if missing else None
        key = table.ref.primary_key
        if (
            key
            and before is not None
            and all(column in before for column in key)
            and any(before[column] != after.get(column) for column in key)
        ):
            self._emit(tx, table, "d", before, None, lsn, None)
            self._emit(tx, table, "c", None, after, lsn, extra)
            return
        self._emit(tx, table, "u", before, after, lsn, extra)

    def _table(self, oid: int) -> _Table:
        table = self._tables.get(oid)
        if table is None:
            raise ProtocolError(f"change to relation {oid} before its Relation message")
        return table

    def _row(self, table: _Table, values: tuple[TupleValue, ...]) -> dict[str, Any]:
        columns = table.relation.columns
        if len(values) != len(columns):
            raise ProtocolError(
                f"{table.ref.qualified}: {len(values)} values for {len(columns)} columns"
            )
        row: dict[str, Any] = {}
        for column, convert, value in zip(columns, table.converters, values, strict=True):
            if value is None:
                row[column.name] = None
            elif value is UNCHANGED:
                row[column.name] = UNCHANGED
            else:
                row[column.name] = convert(value.decode("utf-8"))
        return row

    def _image(
        self, table: _Table, kind: str, values: tuple[TupleValue, ...]
    ) -> dict[str, Any] | None:
        row = self._row(table, values)
        if kind == "K":
            names = [table.relation.columns[i].name for i in table.key_positions]
            return {name: row[name] for name in names}
        return row

    def _emit(
        self,
        tx: _Transaction,
        table: _Table,
        op: str,
        before: dict[str, Any] | None,
        after: dict[str, Any] | None,
        lsn: int,
        extra: dict[str, Any] | None,
    ) -> None:
        tx.order += 1
        event = self.builder.event(
            table.ref,
            op,
            before,
            after,
            position={"lsn": lsn},
            transaction_id=str(tx.xid),
            commit_ms=tx.commit_ms,
            order=tx.order,
            extra=extra,
        )
        if tx.held is not None:
            tx.chunk.events.append(tx.held)
        tx.held = (event, self.builder.partition_key(event))

    def _spill(self, tx: _Transaction) -> list[Chunk]:
        """A full chunk of a long transaction goes out before the transaction ends."""
        if len(tx.chunk.events) < self._chunk_events:
            return []
        full, tx.chunk = tx.chunk, Chunk()
        return [full]
