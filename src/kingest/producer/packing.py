"""Packing PutRecords requests: the next Kinesis records of each shard, within the limits.

Records of one shard are aggregated (KPL format) into Kinesis records of at most the record
size limit; a request takes at most one Kinesis record per shard per round, shards in fair
rotation, until the request's record or byte limit.
"""

from __future__ import annotations

from operator import attrgetter

from kingest.config import ProducerConfig
from kingest.producer.aggregate import Aggregator
from kingest.producer.batch import KinesisEntry, Pending
from kingest.producer.shards import ShardBuffer, ShardDirectory

_size_of = attrgetter("size")
_source_of = attrgetter("source")


class RequestPacker:
    """Builds the entries of the next PutRecords request from the shard buffers.

    Args:
        directory: the shard buffers.
        config: the producer's settings.

    Attributes:
        aggregation: pack records into KPL aggregates (False on AUTO-distribution streams).
        max_record_bytes: the largest Kinesis record, once the stream's limits are known.
    """

    def __init__(self, directory: ShardDirectory, config: ProducerConfig) -> None:
        self._directory = directory
        self._config = config
        self._aggregator = Aggregator()
        self.aggregation = config.aggregation
        self.max_record_bytes = config.max_record_bytes or 0

    def build(self, now: float) -> list[KinesisEntry] | None:
        """The entries of one request, or None when no shard may send now."""
        config = self._config
        max_entries = config.max_request_records
        max_bytes = config.max_request_bytes
        strict = config.strict_order
        entries: list[KinesisEntry] = []
        taken: set[str] = set()
        request_bytes = 0
        progress = True
        while progress and len(entries) < max_entries and request_bytes < max_bytes:
            progress = False
            for buffer in self._directory.sendable(now, strict, taken):
                entry = self._take_entry(buffer, max_bytes - request_bytes)
                if entry is None:
                    continue
                entries.append(entry)
                request_bytes += entry.size
                buffer.started(entry.size, now)
                taken.add(buffer.shard_id)
                progress = True
                if len(entries) >= max_entries or request_bytes >= max_bytes:
                    break
        if not entries:
            return None
        self._directory.rotate()
        return entries

    def _take_entry(self, buffer: ShardBuffer, room: int) -> KinesisEntry | None:
        """Pack the next Kinesis record of one shard, no larger than ``room``."""
        head = buffer.peek()
        if head is None or head.size > room:
            return None
        if not self.aggregation:
            return KinesisEntry.plain(buffer.pop(), buffer.shard_id)
        # The aggregate's own partition key (the first record's) counts against the limit.
        limit = min(self.max_record_bytes, room) - (head.size - len(head.data))
        aggregator = self._aggregator
        aggregator.clear()
        records: list[Pending] = []
        in_order = not buffer.retries
        if in_order or not aggregator.fill(buffer.retries, records, limit):
            aggregator.fill(buffer.queue, records, limit)
        taken_bytes = sum(map(_size_of, records))
        directory = self._directory
        first_source = head.source
        if len(directory.sources) == 1:
            source: str | None = first_source
        else:
            same_source = all(map(first_source.__eq__, map(_source_of, records)))
            source = first_source if same_source else None
        directory.queued -= len(records)
        directory.queued_bytes -= taken_bytes
        if not records:
            # Too big to aggregate even alone; it fits plain (checked at admission).
            return KinesisEntry.plain(buffer.pop(), buffer.shard_id)
        if len(records) == 1:
            return KinesisEntry.plain(records[0], buffer.shard_id)
        return KinesisEntry.aggregate(
            records, aggregator, buffer.shard_id, source, taken_bytes, in_order
        )
