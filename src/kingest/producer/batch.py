"""Records in the producer, PutRecords entries made of them, and the request body.

A :class:`Pending` is one user record from ``put()`` until it is done. A
:class:`KinesisEntry` is one entry of a PutRecords request: either one pending record sent
plain, or several aggregated (KPL format) into one Kinesis record bound for one shard.
"""

from __future__ import annotations

import base64
import gzip
from collections.abc import Callable
from typing import Any

import orjson

from kingest.partition import (
    default_partition_key,
    hash_key_of,
    parse_explicit_hash_key,
    partition_key_problem,
)
from kingest.producer.aggregate import Aggregator
from kingest.producer.cbor import head as cbor_head
from kingest.producer.limits import PARTITION_KEY_MAX_CHARS
from kingest.record import PENDING, Delivery, DlqReason, RecordFuture, RecordResult

_b64encode = base64.b64encode
_dumps = orjson.dumps


class Pending(RecordFuture):
    """One user record held by the producer; it is also the future put() returns."""

    __slots__ = (
        "attempt_times",
        "attempts",
        "data",
        "deadline",
        "explicit_hash_key",
        "generation",
        "hash_key",
        "held",
        "partition_key",
        "size",
        "source",
    )

    def __init__(
        self,
        data: bytes,
        partition_key: str,
        explicit_hash_key: str | None,
        hash_key: int,
        source: str,
        size: int,
        deadline: float,
        held: bool = False,
    ) -> None:
        # RecordFuture's fields, set here rather than through a second __init__ call.
        self._result = PENDING
        self._callbacks = None
        self._event = None
        self.data = data
        self.partition_key = partition_key
        self.explicit_hash_key = explicit_hash_key
        self.hash_key = hash_key
        self.source = source
        # Kinesis counts data plus partition key against the record and request limits.
        self.size = size
        self.deadline = deadline
        self.attempts = 0
        # (first, last) time a request carrying it failed; None until one does.
        self.attempt_times: tuple[float, float] | None = None
        # True once the record took room in the producer's buffer (it was admitted); it gives
        # the room back when it is done, its one change from pending. Such a record also gets
        # a flush generation when it is drained into a shard queue.
        self.held = held
        self.generation = 0

    def _final(self) -> RecordResult:
        # A delivered record's attempts are its failed ones plus the one that succeeded; set
        # here, when a result is first asked for, rather than for every record delivered.
        if isinstance(self._result, Delivery):
            self._attempts = self.attempts + 1
        return RecordFuture._final(self)


class KinesisEntry:
    """One PutRecords entry and the user records it carries."""

    __slots__ = (
        "aggregated",
        "data",
        "explicit_hash_key",
        "in_order",
        "partition_key",
        "records",
        "shard_id",
        "source",
        "user_bytes",
    )

    def __init__(
        self,
        data: bytes,
        partition_key: str,
        explicit_hash_key: str | None,
        shard_id: str,
        records: list[Pending],
        aggregated: bool,
        source: str | None = None,
        user_bytes: int = 0,
        in_order: bool = False,
    ) -> None:
        self.data = data
        self.partition_key = partition_key
        self.explicit_hash_key = explicit_hash_key
        self.shard_id = shard_id
        self.records = records
        self.aggregated = aggregated
        # The one source of every record carried, or None when they are mixed (or unknown);
        # with it, statistics are counted once per entry instead of once per record.
        self.source = source
        # Sum of the carried records' sizes, meaningful when ``source`` is set.
        self.user_bytes = user_bytes
        # The records are in the order they were admitted (see Outcomes.deliver).
        self.in_order = in_order

    @property
    def size(self) -> int:
        """Bytes Kinesis counts for this entry (data + partition key)."""
        return len(self.data) + len(self.partition_key.encode())

    @classmethod
    def plain(cls, record: Pending, shard_id: str) -> KinesisEntry:
        """An entry carrying one record as it is."""
        return cls(
            record.data,
            record.partition_key,
            record.explicit_hash_key,
            shard_id,
            [record],
            aggregated=False,
            source=record.source,
            user_bytes=record.size,
            in_order=True,
        )

    @classmethod
    def aggregate(
        cls,
        records: list[Pending],
        aggregator: Aggregator,
        shard_id: str,
        source: str | None = None,
        user_bytes: int = 0,
        in_order: bool = False,
    ) -> KinesisEntry:
        """An entry carrying ``records`` (already added to ``aggregator``) as one KPL record.

        The Kinesis record takes the first record's partition key, and its explicit hash key
        when it has one, so it lands on the shard every record in it was grouped for.
        ``source``, ``user_bytes`` and ``in_order`` are as in :class:`KinesisEntry`.
        """
        first = records[0]
        return cls(
            aggregator.encode(),
            first.partition_key,
            first.explicit_hash_key,
            shard_id,
            records,
            aggregated=True,
            source=source,
            user_bytes=user_bytes,
            in_order=in_order,
        )


def stream_selector(stream: str) -> bytes:
    """The JSON member naming the stream: StreamARN for an ARN, StreamName otherwise."""
    member = "StreamARN" if stream.startswith("arn:") else "StreamName"
    return b'"' + member.encode() + b'":' + _dumps(stream)


def stream_selector_cbor(stream: str) -> bytes:
    """The CBOR map member naming the stream (see :func:`stream_selector`)."""
    member = b"StreamARN" if stream.startswith("arn:") else b"StreamName"
    name = stream.encode()
    return cbor_head(3, len(member)) + member + cbor_head(3, len(name)) + name


_CBOR_RECORDS = cbor_head(3, 7) + b"Records"
_CBOR_DATA = cbor_head(3, 4) + b"Data"
_CBOR_PARTITION_KEY = cbor_head(3, 12) + b"PartitionKey"
_CBOR_HASH_KEY = cbor_head(3, 15) + b"ExplicitHashKey"


def encode_put_records_cbor(selector: bytes, entries: list[KinesisEntry]) -> bytes:
    """The CBOR body of a PutRecords request: record data travels as raw bytes."""
    parts = [b"\xa2", selector, _CBOR_RECORDS, cbor_head(4, len(entries))]
    append = parts.append
    for entry in entries:
        append(b"\xa2" if entry.explicit_hash_key is None else b"\xa3")
        append(_CBOR_DATA)
        append(cbor_head(2, len(entry.data)))
        append(entry.data)
        key = entry.partition_key.encode()
        append(_CBOR_PARTITION_KEY)
        append(cbor_head(3, len(key)))
        append(key)
        if entry.explicit_hash_key is not None:
            hash_key = entry.explicit_hash_key.encode()
            append(_CBOR_HASH_KEY)
            append(cbor_head(3, len(hash_key)))
            append(hash_key)
    return b"".join(parts)


def encode_put_records(selector: bytes, entries: list[KinesisEntry]) -> bytes:
    """The JSON body of a PutRecords request, built without an intermediate dict."""
    parts = [b"{", selector, b',"Records":[']
    for index, entry in enumerate(entries):
        if index:
            parts.append(b",")
        parts.append(b'{"Data":"')
        parts.append(_b64encode(entry.data))
        parts.append(b'","PartitionKey":')
        parts.append(_dumps(entry.partition_key))
        if entry.explicit_hash_key is not None:
            parts.append(b',"ExplicitHashKey":"')
            parts.append(entry.explicit_hash_key.encode())
            parts.append(b'"')
        parts.append(b"}")
    parts.append(b"]}")
    return b"".join(parts)


def serialize(payload: Any) -> bytes:
    """A record's data: bytes as they are, str as UTF-8, anything else as compact JSON.

    Raises:
        TypeError: the payload cannot be serialised as JSON.
    """
    kind = type(payload)
    if kind is bytes:
        return payload  # type: ignore[no-any-return]
    if kind is not dict:
        if isinstance(payload, (bytearray, memoryview)):
            return bytes(payload)
        if isinstance(payload, str):
            return payload.encode()
    # orjson's result may sit in a 4 KiB allocation whatever its length; a tight copy keeps
    # buffered records at their real size (and is cheaper in the end than the page faults
    # of the larger heap).
    return memoryview(orjson.dumps(payload)).tobytes()


def compressor(method: str) -> Callable[[bytes], bytes] | None:
    """The function compressing each record's data, or None for ``"none"``."""
    if method == "gzip":
        return lambda data: gzip.compress(data, compresslevel=6, mtime=0)
    if method == "zstd":
        import zstandard  # type: ignore[import-not-found]

        compress: Callable[[bytes], bytes] = zstandard.ZstdCompressor().compress
        return compress
    return None


def make_pending(
    payload: Any,
    partition_key: Any,
    explicit_hash_key: Any,
    source: str,
    deadline: float,
    max_record_bytes: int,
    compress: Callable[[bytes], bytes] | None,
) -> tuple[Pending, tuple[DlqReason, str] | None]:
    """Build the pending record of one put() call, and why it can never be sent, if so.

    Returns:
        The record, and None or (reason, message) when it must go to the dead-letter queue.

    Raises:
        TypeError: the payload cannot be serialised as JSON.
    """
    data = payload if type(payload) is bytes else serialize(payload)
    if compress is not None:
        data = compress(data)
    if partition_key is None:
        partition_key = default_partition_key(data)
    # The common case first: a valid ASCII key and no explicit hash key.
    if (
        explicit_hash_key is None
        and type(partition_key) is str
        and 0 < len(partition_key) <= PARTITION_KEY_MAX_CHARS
        and partition_key.isascii()
    ):
        size = len(data) + len(partition_key)
        pending = Pending(
            data, partition_key, None, hash_key_of(partition_key), source, size, deadline
        )
        if size > max_record_bytes:
            return pending, too_large(size, max_record_bytes)
        return pending, None
    if isinstance(partition_key, str):
        problem = partition_key_problem(partition_key)
        key_text = partition_key
    else:
        problem = f"partition key must be a string, not {type(partition_key).__name__}"
        key_text = str(partition_key)
    try:
        key_bytes = len(key_text.encode())
    except UnicodeEncodeError:
        key_text = key_text.encode(errors="backslashreplace").decode()
        key_bytes = len(key_text.encode())
        problem = problem or "partition key is not valid Unicode (lone surrogates)"
    hash_key = 0
    if problem is None and explicit_hash_key is not None:
        try:
            hash_key = parse_explicit_hash_key(explicit_hash_key)
        except (ValueError, AttributeError, TypeError) as exc:
            problem = f"explicit hash key: {exc}"
    elif problem is None:
        hash_key = hash_key_of(key_text)
    size = len(data) + key_bytes
    ehk = explicit_hash_key if isinstance(explicit_hash_key, str) else None
    pending = Pending(data, key_text, ehk, hash_key, source, size, deadline)
    if problem is not None:
        return pending, (DlqReason.INVALID_PARTITION_KEY, problem)
    if size > max_record_bytes:
        return pending, too_large(size, max_record_bytes)
    return pending, None


def too_large(size: int, max_record_bytes: int) -> tuple[DlqReason, str]:
    """The dead-letter reason, code and message of a record over the size limit."""
    return (
        DlqReason.RECORD_TOO_LARGE,
        f"record is {size} bytes (data + partition key); "
        f"the stream takes at most {max_record_bytes}",
    )
