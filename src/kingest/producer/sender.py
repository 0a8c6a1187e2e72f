"""The requests in flight: sending PutRecords and applying each answer entry by entry.

The sender loop in :mod:`kingest.producer.core` decides what goes into a request; this module
sends it, then delivers, retries (exactly the failed entries, after the shard's backoff) or
dead-letters each entry, and re-reads the shard map when an aggregate lands on an unexpected
shard.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from kingest.errors import KinesisError
from kingest.partition import ShardMap
from kingest.producer.batch import (
    KinesisEntry,
    Pending,
    encode_put_records,
    encode_put_records_cbor,
    stream_selector,
    stream_selector_cbor,
)
from kingest.producer.outcomes import Outcomes
from kingest.producer.retry import Backoff, is_retriable_code
from kingest.producer.shards import ShardDirectory
from kingest.producer.stats import ProducerStats
from kingest.producer.transport import CBOR_CONTENT_TYPE, CONTENT_TYPE, KinesisTransport
from kingest.record import DlqReason

log = logging.getLogger(__name__)

# How often the shard map may be re-read after a record landed on an unexpected shard.
SHARD_MAP_MIN_REFRESH_S = 1.0


class Sender:
    """Sends PutRecords requests and settles their answers.

    Args:
        stream: stream name or ARN.
        transport: the Kinesis wire.
        directory: the per-shard queues retried records go back to.
        outcomes: ends records as delivered or dead-lettered.
        stats: per-source counters.
        backoff: delays between attempts of a failing shard.
        ttl_ms: records' time-to-live, for messages.
        wake: called when a request ends, so the sender loop looks again.
    """

    def __init__(
        self,
        stream: str,
        transport: KinesisTransport,
        directory: ShardDirectory,
        outcomes: Outcomes,
        stats: ProducerStats,
        backoff: Backoff,
        ttl_ms: int,
        wake: Callable[[], None],
        wire_protocol: str = "cbor",
    ) -> None:
        self.stream = stream
        self.transport = transport
        self.outcomes = outcomes
        self.stats = stats
        self.in_flight = 0
        self._directory = directory
        self._backoff = backoff
        self._ttl_ms = ttl_ms
        self._wake = wake
        if wire_protocol == "cbor":
            self._selector = stream_selector_cbor(stream)
            self._encode = encode_put_records_cbor
            self._content_type = CBOR_CONTENT_TYPE
        else:
            self._selector = stream_selector(stream)
            self._encode = encode_put_records
            self._content_type = CONTENT_TYPE
        self._tasks: set[asyncio.Task[None]] = set()
        self._map_lock = asyncio.Lock()
        self._last_map_refresh = 0.0

    def send(self, entries: list[KinesisEntry]) -> None:
        """Start one PutRecords request on the running loop."""
        self.in_flight += 1
        self._tasks.add(asyncio.create_task(self._send(entries)))

    def cancel_all(self) -> None:
        """Cancel every request in flight; their records go to the dead-letter queue."""
        for task in list(self._tasks):
            task.cancel()

    async def _send(self, entries: list[KinesisEntry]) -> None:
        sent_at = time.time()
        try:
            body = self._encode(self._selector, entries)
            try:
                answer = await self.transport.call_raw("PutRecords", body, self._content_type)
            except KinesisError as exc:
                self.stats.request(ok=False)
                _count_attempt(entries, sent_at)
                if exc.retriable:
                    self._retry(entries, exc.code or "TransportError")
                else:
                    self._dead_letter_entries(
                        entries, DlqReason.NON_RETRYABLE_ERROR, exc.code, str(exc)
                    )
                return
            self.stats.request(ok=True)
            await self._settle(entries, answer, sent_at)
        except asyncio.CancelledError:
            # Only close() past its timeout cancels a send; whether Kinesis stored the records
            # is unknown, so they go to the dead-letter queue (a replay may duplicate them).
            _count_attempt(entries, sent_at)
            self._dead_letter_entries(
                entries, DlqReason.SHUTDOWN, None, "the producer was closed mid-request"
            )
            raise
        except Exception:
            # A bug here must not strand records: they go back for another attempt.
            log.exception("Unexpected error while sending; records will be retried.")
            self._retry([e for e in entries if not e.records[-1].done()], "InternalError")
        finally:
            for entry in entries:
                self._directory.finished(entry.shard_id)
            self.in_flight -= 1
            task = asyncio.current_task()
            if task is not None:
                self._tasks.discard(task)
            self._wake()

    async def _settle(
        self, entries: list[KinesisEntry], answer: dict[str, Any], sent_at: float
    ) -> None:
        """Apply a PutRecords answer entry by entry: deliver, retry or dead-letter each."""
        results = answer.get("Records")
        if not isinstance(results, list) or len(results) != len(entries):
            _count_attempt(entries, sent_at)
            self._retry(entries, "MalformedAnswer")
            return
        now = time.monotonic()
        misplaced: list[tuple[KinesisEntry, str, str]] = []
        failed: dict[str, list[KinesisEntry]] = {}
        final: list[tuple[KinesisEntry, str, str | None]] = []
        sources: dict[str, int] = {}
        sizes: dict[str, int] = {}
        shards: dict[str, tuple[int, int]] = {}
        per_entry: list[int] = []
        delivered_entries = 0
        for entry, result in zip(entries, results, strict=True):
            code = result.get("ErrorCode")
            if code:
                if is_retriable_code(code):
                    failed.setdefault(code, []).append(entry)
                else:
                    final.append((entry, code, result.get("ErrorMessage")))
                continue
            shard_id = str(result.get("ShardId"))
            sequence = str(result.get("SequenceNumber"))
            if entry.aggregated and shard_id != entry.shard_id:
                misplaced.append((entry, shard_id, sequence))
                continue
            self._directory.succeeded(entry.shard_id)
            self.outcomes.deliver(
                entry.records,
                entry.aggregated,
                shard_id,
                sequence,
                sources,
                sizes,
                source=entry.source,
                user_bytes=entry.user_bytes,
                in_order=entry.in_order,
                now=now,
            )
            delivered_entries += 1
            carried = len(entry.records)
            per_entry.append(carried)
            records, size = shards.get(shard_id, (0, 0))
            shards[shard_id] = (
                records + carried,
                size + len(entry.data) + len(entry.partition_key),
            )
        if delivered_entries:
            self.stats.delivered(sources, sizes, delivered_entries, shards)
            self.stats.records_per_kinesis_record.observe_many(per_entry)
        for code, group in failed.items():
            _count_attempt(group, sent_at)
            self._retry(group, code, now)
        for entry, code, message in final:
            _count_attempt([entry], sent_at)
            self.outcomes.dead_letter(entry.records, DlqReason.NON_RETRYABLE_ERROR, code, message)
        if misplaced:
            await self._resolve_misplaced(misplaced)

    async def _resolve_misplaced(self, misplaced: list[tuple[KinesisEntry, str, str]]) -> None:
        """An aggregate landed on another shard than predicted: the shard map is stale.

        Sub-records whose hash lies outside the shard that stored them would be discarded by
        KCL consumers, so they are sent again after the map is re-read; the others are done.
        When the storing shard is unknown even to a fresh map, every sub-record is sent again:
        a duplicate is better than a record no consumer will see.
        """
        await self.refresh_shard_map(force=False)
        if any(self._directory.shard(shard_id) is None for _, shard_id, _ in misplaced):
            await self.refresh_shard_map(force=True)
        directory = self._directory
        resend: list[Pending] = []
        sources: dict[str, int] = {}
        sizes: dict[str, int] = {}
        kept_entries = 0
        for entry, shard_id, sequence in misplaced:
            shard = directory.shard(shard_id)
            kept: list[Pending] = []
            positions: list[int] = []
            for position, record in enumerate(entry.records):
                if shard is not None and shard.owns(record.hash_key):
                    kept.append(record)
                    positions.append(position)
                else:
                    record.attempts += 1
                    resend.append(record)
            if kept:
                self.outcomes.deliver(kept, True, shard_id, sequence, sources, sizes, positions)
                kept_entries += 1
        if kept_entries:
            self.stats.delivered(sources, sizes, kept_entries)
        if resend:
            log.warning(
                "Re-sending records that landed on the wrong shard after resharding.",
                extra={"records": len(resend)},
            )
            retried: dict[str, int] = {}
            for record in resend:
                retried[record.source] = retried.get(record.source, 0) + 1
                directory.buffer_for(record.hash_key).push_retry(record)
            self.stats.retried(retried, "WrongShard")

    def _retry(self, entries: list[KinesisEntry], code: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        sources: Counter[str] = Counter()
        expired: list[Pending] = []
        for entry in entries:
            self._directory.failed(entry.shard_id, now, self._backoff)
            for record in entry.records:
                if record.deadline <= now:
                    expired.append(record)
                    continue
                sources[record.source] += 1
                self._directory.buffer_for(record.hash_key).push_retry(record)
        if sources:
            self.stats.retried(sources, code)
        if expired:
            self.outcomes.dead_letter(
                expired,
                DlqReason.TTL_EXPIRED,
                code,
                f"still failing ({code}) when the record time-to-live ({self._ttl_ms} ms) ran out",
            )

    async def refresh_shard_map(self, *, force: bool) -> None:
        assert self._map_lock is not None
        async with self._map_lock:
            now = time.monotonic()
            if not force and now - self._last_map_refresh < SHARD_MAP_MIN_REFRESH_S:
                return
            shards = await self.transport.list_shards(self.stream)
            self._directory.replace_map(ShardMap.from_list_shards(shards))
            self._last_map_refresh = time.monotonic()

    def _dead_letter_entries(
        self, entries: list[KinesisEntry], reason: DlqReason, code: str | None, message: str
    ) -> None:
        records = [record for entry in entries for record in entry.records]
        self.outcomes.dead_letter(records, reason, code, message)


def _count_attempt(entries: list[KinesisEntry], sent_at: float) -> None:
    """Stamp the records of failed entries with the attempt they just had.

    Delivered records get their attempt count in their result instead, which keeps this
    per-record loop off the success path.
    """
    for entry in entries:
        for record in entry.records:
            record.attempts += 1
            times = record.attempt_times
            record.attempt_times = (sent_at if times is None else times[0], sent_at)


def stream_params(stream: str) -> dict[str, Any]:
    """The request member naming the stream: StreamARN for an ARN, StreamName otherwise."""
    return {"StreamARN": stream} if stream.startswith("arn:") else {"StreamName": stream}
