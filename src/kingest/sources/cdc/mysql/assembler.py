"""The binlog's transactions, turned into chunks of change events (in the reader thread).

The reader feeds the assembler what it reads, in binlog order: transaction starts (a GTID event,
or BEGIN), rows already decoded, and transaction ends (XID, COMMIT, a DDL statement). The
assembler builds one change event per row, splits an UPDATE that changes the primary key into a
delete of the old key and a create of the new one (as Debezium does, so each key's history stays
on its shard in order), holds back the latest event until it knows whether it is the
transaction's last (which carries ``transaction.event_count``), and cuts chunks of at most
``chunk_events`` events. A transaction's last chunk carries the position after it: the position
to commit once the chunk and everything before it are delivered.

It also tracks the GTID state, so that every position it hands out can resume by GTID, and makes
a reconnection invisible: after :meth:`TransactionAssembler.replay`, the server sends the
transaction in progress again from its start, and the rows events already handled are skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from kingest.sources.cdc.envelope import EnvelopeBuilder, TableRef
from kingest.sources.cdc.mysql.errors import CaptureError
from kingest.sources.cdc.mysql.position import BinlogPosition, MariaDbGtidState, MySqlGtidSet

__all__ = ["Chunk", "Reject", "TransactionAssembler"]

Row = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Reject:
    """A change that cannot be sent as an event: it goes to the dead-letter queue."""

    payload: dict[str, Any]
    message: str


@dataclass(slots=True)
class Chunk:
    """Change events of one transaction, in binlog order, with their partition keys.

    ``end`` is set on a transaction's last chunk (a transaction with nothing captured has one
    empty chunk): the position to commit once these events and all before them are done.
    """

    events: list[tuple[dict[str, Any], str]] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    end: BinlogPosition | None = None

    @property
    def size(self) -> int:
        """Events and rejects held."""
        return len(self.events) + len(self.rejects)


@dataclass(slots=True)
class _Transaction:
    gtid: str | None
    file: str
    start: int  # offset of its first event (GTID or BEGIN)
    commit_ms: int
    chunk: Chunk
    order: int = 0  # events built so far
    rows_events: int = 0  # rows events read since it (re)started, captured or not
    skip: int = 0  # after a reconnection: rows events already handled before it
    resuming: bool = False  # after a reconnection, until the server sends its start again
    explicit: bool = False  # ends with XID/COMMIT (BEGIN seen, or a MariaDB non-standalone GTID)
    held: tuple[dict[str, Any], str] | None = None  # the latest event, until we know if last

    @property
    def id(self) -> str:
        return self.gtid or f"{self.file}:{self.start}"


class TransactionAssembler:
    """Builds the change events of the binlog's transactions (see the module docstring).

    Args:
        builder: the source's envelope builder.
        start: where reading starts (a transaction boundary).
        flavor: ``mysql`` or ``mariadb`` (how GTIDs are written).
        emit: receives each chunk, in order (it may block: backpressure).
        chunk_events: most events per chunk.
        track_gtids: keep the GTID state in the positions handed out. Only when ``start``
            carries the server's whole state at that point (MariaDB always can; MySQL when the
            state came from the server's executed set): a state built from the transactions
            seen since would make a resume by GTID read the binlog again from its beginning.
    """

    def __init__(
        self,
        builder: EnvelopeBuilder,
        start: BinlogPosition,
        flavor: str,
        emit: Callable[[Chunk], None],
        chunk_events: int = 500,
        track_gtids: bool = True,
    ) -> None:
        self._builder = builder
        self._track_gtids = track_gtids
        self._emit = emit
        self._chunk_events = chunk_events
        self._flavor = flavor
        self.position = start
        self._file = start.file
        self._gtids: MariaDbGtidState | MySqlGtidSet | None = None
        self._txn: _Transaction | None = None

    @property
    def in_transaction(self) -> bool:
        """True between a transaction's start and its end."""
        return self._txn is not None

    @property
    def transaction_gtid(self) -> str | None:
        """The GTID of the transaction being read, if any."""
        return self._txn.gtid if self._txn is not None else None

    @property
    def file(self) -> str:
        """The binlog file being read."""
        return self._file

    # ------------------------------------------------------------------ binlog events

    def rotate(self, file: str, pos: int, *, artificial: bool) -> None:
        """The server moved to another binlog file (``artificial``: a connection's first event,
        which only says where reading starts)."""
        self._file = file
        if not artificial and self._txn is None:
            self._advance(BinlogPosition(file, pos, self._gtid_text()))

    def gtid(self, gtid: str, *, event_pos: int, timestamp: int, explicit: bool = False) -> None:
        """A transaction's GTID event: the transaction starts.

        Args:
            gtid: the transaction's GTID.
            event_pos: the event's offset.
            timestamp: the event's time (seconds since the epoch).
            explicit: the transaction ends with an XID or COMMIT event (MariaDB says so in the
                GTID event; MySQL by a BEGIN statement after it). Otherwise its first
                statement ends it (DDL).
        """
        txn = self._open(gtid, event_pos, timestamp)
        txn.explicit = txn.explicit or explicit

    def begin(self, *, event_pos: int, timestamp: int) -> None:
        """A BEGIN statement: the transaction starts, unless its GTID event started it."""
        self._open(None, event_pos, timestamp).explicit = True

    def rows_event(self, *, event_pos: int, timestamp: int) -> bool:
        """Count a rows event of the current transaction.

        Returns:
            False when the event was already handled before a reconnection (skip it).
        """
        txn = self._txn
        if txn is None:
            txn = self._open(None, event_pos, timestamp)
        txn.rows_events += 1
        return txn.rows_events > txn.skip

    def changes(
        self,
        table: TableRef,
        op: str,
        rows: Iterable[tuple[Row | None, Row | None]],
        *,
        event_pos: int,
        server_id: int,
    ) -> None:
        """The rows of one rows event, converted: one event each (two for a key change).

        Args:
            table: the table (with its primary key).
            op: ``c``, ``u`` or ``d``.
            rows: ``(before, after)`` per row.
            event_pos: the rows event's offset in its file.
            server_id: the server that wrote the event.
        """
        txn = self._txn
        assert txn is not None, "rows_event() comes first"
        key = table.primary_key
        for index, (before, after) in enumerate(rows):
            position = {
                "gtid": txn.gtid,
                "file": self._file,
                "pos": event_pos,
                "row": index,
                "server_id": server_id,
            }
            if (
                op == "u"
                and key
                and before is not None
                and after is not None
                and any(before.get(column) != after.get(column) for column in key)
            ):
                # Delete the old key, then create the new one.
                self._push(txn, table, "d", before, None, position)
                self._push(txn, table, "c", None, after, position)
                continue
            self._push(txn, table, op, before, after, position)

    def truncate(self, table: TableRef, *, event_pos: int, server_id: int) -> None:
        """A TRUNCATE statement of a captured table: one ``t`` event, keyed by the table.

        Args:
            table: the table emptied.
            event_pos: the statement's offset in its file.
            server_id: the server that wrote it.
        """
        txn = self._txn
        if txn is None:
            txn = self._open(None, event_pos, 0)
        position = {
            "gtid": txn.gtid,
            "file": self._file,
            "pos": event_pos,
            "row": 0,
            "server_id": server_id,
        }
        self._push(txn, table, "t", None, None, position)

    def forget_rows_event(self) -> None:
        """Un-count the last rows event: handling it failed before it emitted anything (the
        connection was lost), so it is handled again after the reconnection."""
        if self._txn is not None and self._txn.rows_events > 0:
            self._txn.rows_events -= 1

    def reject(self, payload: dict[str, Any], message: str) -> None:
        """A change that cannot be sent: it goes to the dead-letter queue with the transaction."""
        txn = self._txn
        if txn is None:
            self._emit(Chunk(rejects=[Reject(payload, message)]))
            return
        txn.chunk.rejects.append(Reject(payload, message))
        if txn.chunk.size >= self._chunk_events:
            self._emit(txn.chunk)
            txn.chunk = Chunk()

    def commit(self, next_pos: int) -> None:
        """The transaction ended (XID, COMMIT, or a statement that commits by itself).

        Args:
            next_pos: the offset after the ending event: where the next transaction starts.
        """
        txn = self._txn
        if txn is None:
            self._advance(BinlogPosition(self._file, next_pos, self._gtid_text()))
            return
        if txn.gtid is not None and self._track_gtids:
            self._add_gtid(txn.gtid)
        position = BinlogPosition(self._file, next_pos, self._gtid_text())
        chunk = txn.chunk
        if txn.held is not None:
            self._builder.mark_last(txn.held[0], txn.order)
            chunk.events.append(txn.held)
        chunk.end = position
        self._txn = None
        self.position = position
        self._emit(chunk)

    def statement(self, next_pos: int) -> None:
        """A statement logged as text (DDL, GRANT, XA COMMIT, ...).

        It ends the transaction, unless it runs inside one that ends with its own XID or COMMIT
        (MySQL's CREATE TABLE ... SELECT logs the statement and then the rows).

        Args:
            next_pos: the offset after the statement's event.
        """
        if self._txn is not None and self._txn.explicit:
            return
        self.commit(next_pos)

    def replay(self) -> BinlogPosition:
        """Prepare for a new connection: where to resume (the last transaction boundary).

        The transaction in progress, if any, is sent again by the server from its start; the
        rows events already handled are skipped, so that nothing is emitted twice.
        """
        txn = self._txn
        if txn is not None:
            txn.skip = max(txn.skip, txn.rows_events)
            txn.rows_events = 0
            txn.resuming = True
        return self.position

    # ------------------------------------------------------------------ internals

    def _open(self, gtid: str | None, event_pos: int, timestamp: int) -> _Transaction:
        txn = self._txn
        if txn is not None:
            if txn.resuming:
                same = (
                    gtid == txn.gtid
                    if gtid is not None and txn.gtid is not None
                    else (self._file, event_pos) == (txn.file, txn.start)
                )
                if not same:
                    raise CaptureError(
                        f"after reconnecting, the server sent transaction "
                        f"{gtid or f'{self._file}:{event_pos}'} where {txn.id} was expected"
                    )
                txn.resuming = False
                return txn
            if gtid is None:
                return txn  # MySQL's BEGIN after the transaction's GTID event
            # A GTID while a transaction is open: the server ended it without an event for it.
            self.commit(event_pos)
        txn = self._txn = _Transaction(
            gtid=gtid, file=self._file, start=event_pos, commit_ms=timestamp * 1000, chunk=Chunk()
        )
        return txn

    def _push(
        self,
        txn: _Transaction,
        table: TableRef,
        op: str,
        before: Row | None,
        after: Row | None,
        position: dict[str, Any],
    ) -> None:
        txn.order += 1
        event = self._builder.event(
            table,
            op,
            before,
            after,
            position=position,
            transaction_id=txn.id,
            commit_ms=txn.commit_ms,
            order=txn.order,
        )
        held = txn.held
        txn.held = (event, self._builder.partition_key(event))
        if held is not None:
            chunk = txn.chunk
            chunk.events.append(held)
            if chunk.size >= self._chunk_events:
                self._emit(chunk)
                txn.chunk = Chunk()

    def _advance(self, position: BinlogPosition) -> None:
        self.position = position
        self._emit(Chunk(end=position))

    def _add_gtid(self, gtid: str) -> None:
        state = self._gtids
        if state is None:
            start = self.position.gtid or ""
            state = self._gtids = (
                MariaDbGtidState.parse(start)
                if self._flavor == "mariadb"
                else MySqlGtidSet.parse(start)
            )
        state.add(gtid)

    def _gtid_text(self) -> str | None:
        if not self._track_gtids:
            return None
        if self._gtids is None:
            return self.position.gtid
        return str(self._gtids) or None
