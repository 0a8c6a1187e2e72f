"""Decoding of pgoutput messages, PostgreSQL's built-in logical replication output.

The message formats are PostgreSQL's "Logical Replication Message Formats"
(https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html), protocol
versions 1 and 2. Version 2 adds the streaming of large in-progress transactions: between a
Stream Start and a Stream Stop, every data message carries the (sub)transaction's xid, and the
transaction ends, possibly many chunks later, with a Stream Commit or a Stream Abort.

:func:`decode` is pure: bytes in, a message object out; a malformed message raises
:class:`ProtocolError` and nothing else.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

__all__ = [
    "Begin",
    "Column",
    "Commit",
    "Delete",
    "Insert",
    "LogicalMessage",
    "Message",
    "Origin",
    "ProtocolError",
    "Relation",
    "StreamAbort",
    "StreamCommit",
    "StreamStart",
    "StreamStop",
    "Truncate",
    "TupleValue",
    "TypeInfo",
    "Update",
    "decode",
    "pg_time_to_ms",
]

# PostgreSQL timestamps count microseconds from 2000-01-01 UTC.
_PG_EPOCH_MS: Final = int(datetime(2000, 1, 1, tzinfo=UTC).timestamp() * 1000)

# A column value of a tuple: None for NULL, UNCHANGED for a TOASTed value the change did not
# touch (pgoutput does not send it), else the value's text (or binary) bytes.
UNCHANGED: Final = b"\x00unchanged-toast"
TupleValue = bytes | None


class ProtocolError(ValueError):
    """A pgoutput message that does not follow the protocol."""


@dataclass(frozen=True, slots=True)
class Column:
    """A column of a relation as pgoutput describes it."""

    name: str
    type_oid: int
    type_modifier: int
    is_key: bool


@dataclass(frozen=True, slots=True)
class Begin:
    """A transaction starts. ``final_lsn`` is its commit record's LSN."""

    final_lsn: int
    commit_ms: int
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    """A transaction ends; ``end_lsn`` is where the next one begins (what a client confirms)."""

    commit_lsn: int
    end_lsn: int
    commit_ms: int


@dataclass(frozen=True, slots=True)
class Origin:
    """The transaction came from another node (replication origins)."""

    lsn: int
    name: str


@dataclass(frozen=True, slots=True)
class Relation:
    """A table's description, sent before the first change to it in a session and after DDL."""

    xid: int | None
    oid: int
    namespace: str
    name: str
    replica_identity: str  # d(efault), n(othing), f(ull), i(ndex)
    columns: tuple[Column, ...]


@dataclass(frozen=True, slots=True)
class TypeInfo:
    """A non-built-in type's name."""

    xid: int | None
    oid: int
    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class Insert:
    """A row inserted."""

    xid: int | None
    relation_oid: int
    new: tuple[TupleValue, ...]


@dataclass(frozen=True, slots=True)
class Update:
    """A row updated. ``old`` is the old key ('K') or the whole old row ('O'), when sent."""

    xid: int | None
    relation_oid: int
    old_kind: str | None
    old: tuple[TupleValue, ...] | None
    new: tuple[TupleValue, ...]


@dataclass(frozen=True, slots=True)
class Delete:
    """A row deleted: its key ('K') or the whole row ('O', REPLICA IDENTITY FULL)."""

    xid: int | None
    relation_oid: int
    old_kind: str
    old: tuple[TupleValue, ...]


@dataclass(frozen=True, slots=True)
class Truncate:
    """Tables truncated together."""

    xid: int | None
    cascade: bool
    restart_identity: bool
    relation_oids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class LogicalMessage:
    """A message written with pg_logical_emit_message()."""

    xid: int | None
    transactional: bool
    lsn: int
    prefix: str
    content: bytes


@dataclass(frozen=True, slots=True)
class StreamStart:
    """A chunk of an in-progress transaction begins."""

    xid: int
    first_segment: bool


@dataclass(frozen=True, slots=True)
class StreamStop:
    """The current chunk of an in-progress transaction ends."""


@dataclass(frozen=True, slots=True)
class StreamCommit:
    """A streamed transaction committed."""

    xid: int
    commit_lsn: int
    end_lsn: int
    commit_ms: int


@dataclass(frozen=True, slots=True)
class StreamAbort:
    """A streamed (sub)transaction rolled back; ``subxid == xid`` for the whole transaction."""

    xid: int
    subxid: int


Message = (
    Begin
    | Commit
    | Origin
    | Relation
    | TypeInfo
    | Insert
    | Update
    | Delete
    | Truncate
    | LogicalMessage
    | StreamStart
    | StreamStop
    | StreamCommit
    | StreamAbort
)


def pg_time_to_ms(pg_us: int) -> int:
    """Milliseconds since the Unix epoch of a PostgreSQL timestamp (µs since 2000-01-01)."""
    return _PG_EPOCH_MS + pg_us // 1000


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 1  # past the message type byte

    def _take(self, size: int) -> bytes:
        end = self.pos + size
        if end > len(self.data):
            raise ProtocolError(f"message ends {end - len(self.data)} byte(s) early")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def int8(self) -> int:
        value: int = self._take(1)[0]
        return value

    def int16(self) -> int:
        value: int = struct.unpack(">h", self._take(2))[0]
        return value

    def int32(self) -> int:
        value: int = struct.unpack(">i", self._take(4))[0]
        return value

    def uint32(self) -> int:
        value: int = struct.unpack(">I", self._take(4))[0]
        return value

    def int64(self) -> int:
        value: int = struct.unpack(">q", self._take(8))[0]
        return value

    def uint64(self) -> int:
        value: int = struct.unpack(">Q", self._take(8))[0]
        return value

    def byte(self) -> str:
        return chr(self.int8())

    def string(self) -> str:
        end = self.data.find(b"\x00", self.pos)
        if end < 0:
            raise ProtocolError("string without its terminating zero byte")
        raw = self.data[self.pos : end]
        self.pos = end + 1
        return raw.decode("utf-8", errors="replace")

    def tuple_data(self) -> tuple[TupleValue, ...]:
        count = self.int16()
        if count < 0:
            raise ProtocolError(f"negative column count {count}")
        values: list[TupleValue] = []
        for _ in range(count):
            kind = self.byte()
            if kind == "n":
                values.append(None)
            elif kind == "u":
                values.append(UNCHANGED)
            elif kind in ("t", "b"):
                length = self.int32()
                if length < 0:
                    raise ProtocolError(f"negative value length {length}")
                values.append(self._take(length))
            else:
                raise ProtocolError(f"unknown tuple value kind {kind!r}")
        return tuple(values)

    def done(self) -> None:
        if self.pos != len(self.data):
            raise ProtocolError(f"{len(self.data) - self.pos} unexpected trailing byte(s)")


def decode(data: bytes, in_stream: bool = False) -> Message:
    """Decode one pgoutput message.

    Args:
        data: the message (the payload of one XLogData).
        in_stream: True between a Stream Start and its Stream Stop, where data messages carry
            their transaction's xid.

    Raises:
        ProtocolError: the message is malformed or of an unknown type.
    """
    if not data:
        raise ProtocolError("empty message")
    reader = _Reader(data)
    kind = chr(data[0])
    message: Message
    try:
        message = _decode(kind, reader, in_stream)
    except (struct.error, IndexError) as exc:  # defensive: _take checks lengths already
        raise ProtocolError(f"malformed {kind!r} message: {exc}") from exc
    reader.done()
    return message


def _decode(kind: str, r: _Reader, in_stream: bool) -> Message:
    if kind == "B":
        return Begin(final_lsn=r.uint64(), commit_ms=pg_time_to_ms(r.int64()), xid=r.uint32())
    if kind == "C":
        r.int8()  # flags, unused
        return Commit(commit_lsn=r.uint64(), end_lsn=r.uint64(), commit_ms=pg_time_to_ms(r.int64()))
    if kind == "O":
        return Origin(lsn=r.uint64(), name=r.string())
    if kind == "S":
        return StreamStart(xid=r.uint32(), first_segment=r.int8() == 1)
    if kind == "E":
        return StreamStop()
    if kind == "c":
        committed_xid = r.uint32()
        r.int8()  # flags, unused
        return StreamCommit(
            xid=committed_xid,
            commit_lsn=r.uint64(),
            end_lsn=r.uint64(),
            commit_ms=pg_time_to_ms(r.int64()),
        )
    if kind == "A":
        top_xid, subxid = r.uint32(), r.uint32()
        # PostgreSQL 16 adds the abort's LSN and time when streaming in parallel; not requested.
        r.pos = len(r.data)
        return StreamAbort(xid=top_xid, subxid=subxid)
    xid = r.uint32() if in_stream else None
    if kind == "R":
        oid, namespace, name = r.uint32(), r.string(), r.string()
        identity = r.byte()
        count = r.int16()
        if count < 0:
            raise ProtocolError(f"negative column count {count}")
        columns = []
        for _ in range(count):
            flags = r.int8()
            columns.append(
                Column(
                    name=r.string(),
                    type_oid=r.uint32(),
                    type_modifier=r.int32(),
                    is_key=bool(flags & 1),
                )
            )
        return Relation(xid, oid, namespace, name, identity, tuple(columns))
    if kind == "Y":
        return TypeInfo(xid, oid=r.uint32(), namespace=r.string(), name=r.string())
    if kind == "I":
        oid = r.uint32()
        if r.byte() != "N":
            raise ProtocolError("insert without its new tuple")
        return Insert(xid, oid, r.tuple_data())
    if kind == "U":
        oid = r.uint32()
        marker = r.byte()
        old_kind: str | None = None
        old = None
        if marker in ("K", "O"):
            old_kind, old = marker, r.tuple_data()
            marker = r.byte()
        if marker != "N":
            raise ProtocolError(f"update without its new tuple (found {marker!r})")
        return Update(xid, oid, old_kind, old, r.tuple_data())
    if kind == "D":
        oid = r.uint32()
        marker = r.byte()
        if marker not in ("K", "O"):
            raise ProtocolError(f"delete without its old tuple (found {marker!r})")
        return Delete(xid, oid, marker, r.tuple_data())
    if kind == "T":
        count = r.int32()
        if count < 0:
            raise ProtocolError(f"negative relation count {count}")
        options = r.int8()
        oids = tuple(r.uint32() for _ in range(count))
        return Truncate(xid, bool(options & 1), bool(options & 2), oids)
    if kind == "M":
        flags = r.int8()
        lsn, prefix = r.uint64(), r.string()
        length = r.int32()
        if length < 0:
            raise ProtocolError(f"negative content length {length}")
        return LogicalMessage(xid, bool(flags & 1), lsn, prefix, r._take(length))
    raise ProtocolError(f"unknown message type {kind!r}")
