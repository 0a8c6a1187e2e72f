"""Encoders of pgoutput messages, for tests: the server's side of kingest's decoder."""

from __future__ import annotations

import struct
from collections.abc import Sequence

from kingest.sources.cdc.postgres.protocol import UNCHANGED

PG_EPOCH_MS = 946_684_800_000


def _string(text: str) -> bytes:
    return text.encode() + b"\x00"


def _xid(xid: int | None) -> bytes:
    return b"" if xid is None else struct.pack(">I", xid)


def tuple_data(values: Sequence[bytes | None]) -> bytes:
    out = [struct.pack(">h", len(values))]
    for value in values:
        if value is None:
            out.append(b"n")
        elif value is UNCHANGED:
            out.append(b"u")
        else:
            out.append(b"t" + struct.pack(">i", len(value)) + value)
    return b"".join(out)


def begin(final_lsn: int, commit_ms: int, xid: int) -> bytes:
    return b"B" + struct.pack(">QqI", final_lsn, (commit_ms - PG_EPOCH_MS) * 1000, xid)


def commit(commit_lsn: int, end_lsn: int, commit_ms: int) -> bytes:
    return b"C\x00" + struct.pack(">QQq", commit_lsn, end_lsn, (commit_ms - PG_EPOCH_MS) * 1000)


def relation(
    oid: int,
    namespace: str,
    name: str,
    columns: Sequence[tuple[str, int, bool]],
    identity: str = "d",
    xid: int | None = None,
) -> bytes:
    out = [b"R", _xid(xid), struct.pack(">I", oid), _string(namespace), _string(name)]
    out.append(identity.encode() + struct.pack(">h", len(columns)))
    for column, type_oid, is_key in columns:
        out.append(bytes([1 if is_key else 0]) + _string(column) + struct.pack(">Ii", type_oid, -1))
    return b"".join(out)


def insert(oid: int, new: Sequence[bytes | None], xid: int | None = None) -> bytes:
    return b"I" + _xid(xid) + struct.pack(">I", oid) + b"N" + tuple_data(new)


def update(
    oid: int,
    new: Sequence[bytes | None],
    old: Sequence[bytes | None] | None = None,
    old_kind: str = "K",
    xid: int | None = None,
) -> bytes:
    head = b"U" + _xid(xid) + struct.pack(">I", oid)
    if old is not None:
        head += old_kind.encode() + tuple_data(old)
    return head + b"N" + tuple_data(new)


def delete(
    oid: int, old: Sequence[bytes | None], old_kind: str = "K", xid: int | None = None
) -> bytes:
    return b"D" + _xid(xid) + struct.pack(">I", oid) + old_kind.encode() + tuple_data(old)


def truncate(oids: Sequence[int], options: int = 0, xid: int | None = None) -> bytes:
    return (
        b"T" + _xid(xid) + struct.pack(">iB", len(oids), options)
        + b"".join(struct.pack(">I", oid) for oid in oids)
    )  # fmt: skip


def stream_start(xid: int, first: bool = True) -> bytes:
    return b"S" + struct.pack(">IB", xid, 1 if first else 0)


def stream_stop() -> bytes:
    return b"E"


def stream_commit(xid: int, commit_lsn: int, end_lsn: int, commit_ms: int) -> bytes:
    return b"c" + struct.pack(
        ">IBQQq", xid, 0, commit_lsn, end_lsn, (commit_ms - PG_EPOCH_MS) * 1000
    )


def stream_abort(xid: int, subxid: int) -> bytes:
    return b"A" + struct.pack(">II", xid, subxid)
