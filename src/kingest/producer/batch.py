"""Records in the producer, PutRecords entries made of them, and the request body.

A :class:`Pending` is one user record from ``put()`` until it is done. A
:class:`KinesisEntry` is one entry of a PutRecords request: either one pending record sent
plain, or several aggregated (KPL format) into one Kinesis record bound for one shard.
"""

from __future__ import annotations

import base64

import orjson

from kingest.producer.aggregate import Aggregator
from kingest.record import PENDING, RecordFuture

_b64encode = base64.b64encode
_dumps = orjson.dumps


class Pending(RecordFuture):
    """One user record held by the producer; it is also the future put() returns."""

    __slots__ = (
        "attempts",
        "data",
        "deadline",
        "explicit_hash_key",
        "first_attempt_at",
        "generation",
        "hash_key",
        "held",
        "last_attempt_at",
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
        self.first_attempt_at: float | None = None
        self.last_attempt_at: float | None = None
        # True while the record holds room in the producer's buffer; such a record also gets
        # a flush generation when it is drained into a shard queue.
        self.held = False
        self.generation = 0


class KinesisEntry:
    """One PutRecords entry and the user records it carries."""

    __slots__ = ("aggregated", "data", "explicit_hash_key", "partition_key", "records", "shard_id")

    def __init__(
        self,
        data: bytes,
        partition_key: str,
        explicit_hash_key: str | None,
        shard_id: str,
        records: list[Pending],
        aggregated: bool,
    ) -> None:
        self.data = data
        self.partition_key = partition_key
        self.explicit_hash_key = explicit_hash_key
        self.shard_id = shard_id
        self.records = records
        self.aggregated = aggregated

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
        )

    @classmethod
    def aggregate(
        cls, records: list[Pending], aggregator: Aggregator, shard_id: str
    ) -> KinesisEntry:
        """An entry carrying ``records`` (already added to ``aggregator``) as one KPL record.

        The Kinesis record takes the first record's partition key, and its explicit hash key
        when it has one, so it lands on the shard every record in it was grouped for.
        """
        first = records[0]
        return cls(
            aggregator.encode(),
            first.partition_key,
            first.explicit_hash_key,
            shard_id,
            records,
            aggregated=True,
        )


def stream_selector(stream: str) -> bytes:
    """The JSON member naming the stream: StreamARN for an ARN, StreamName otherwise."""
    member = "StreamARN" if stream.startswith("arn:") else "StreamName"
    return b'"' + member.encode() + b'":' + _dumps(stream)


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
