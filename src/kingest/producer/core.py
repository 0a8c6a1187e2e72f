"""The producer's engine, shared by the sync and async façades.

Records enter through :meth:`ProducerCore.offer` from any thread (the admission half, in
:mod:`kingest.producer.admission`); everything after that runs on one asyncio loop, here: the
sender drains admitted records into per-shard queues, packs them into PutRecords requests
(aggregated per shard), keeps many requests in flight, retries exactly the failed entries with
backoff, and hands every record to :class:`~kingest.producer.outcomes.Outcomes` to end it as
delivered or dead-lettered.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

from kingest.config import ProducerConfig
from kingest.dlq import DeadLetterQueue
from kingest.partition import ShardMap
from kingest.producer.admission import Admission
from kingest.producer.batch import (
    KinesisEntry,
    compressor,
)
from kingest.producer.buffer import BufferGate
from kingest.producer.limits import ShardRateLimiter, StreamInfo
from kingest.producer.outcomes import DeliveryMark, Outcomes
from kingest.producer.packing import RequestPacker
from kingest.producer.retry import Backoff
from kingest.producer.sender import Sender, stream_params
from kingest.producer.shards import ShardDirectory
from kingest.producer.stats import ProducerStats
from kingest.producer.transport import KinesisTransport
from kingest.record import DlqReason

log = logging.getLogger(__name__)


class ProducerCore(Admission):
    """Buffers, batches and sends records for one stream. Not used directly: see Producer.

    Args:
        stream: stream name or ARN.
        config: producer settings.
        transport: the Kinesis wire.
        dlq: where records that cannot be delivered go.
    """

    def __init__(
        self,
        stream: str,
        config: ProducerConfig,
        transport: KinesisTransport,
        dlq: DeadLetterQueue,
    ) -> None:
        self.stream = stream
        self.config = config
        self.transport = transport
        self.dlq = dlq
        self.stats = ProducerStats(config.record_ttl_ms / 1000)
        self.gate = BufferGate(config.max_buffer_records, config.max_buffer_bytes)
        self.outcomes = Outcomes(stream, dlq, self.stats, self.gate)
        self.info: StreamInfo | None = None
        self._ttl_s = config.record_ttl_ms / 1000
        self._compression = compressor(config.compression)
        self._linger_s = config.linger_ms / 1000
        self._directory = ShardDirectory(ShardMap([]), self._new_limiter)
        self.sender = Sender(
            stream,
            transport,
            self._directory,
            self.outcomes,
            self.stats,
            Backoff(config.retry_base_ms / 1000, config.retry_max_ms / 1000),
            config.record_ttl_ms,
            self._wake,
            config.wire_protocol,
        )
        self._packer = RequestPacker(self._directory, config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._wake_event: asyncio.Event | None = None
        self._wake_requested = False
        self._sender_idle = True
        self._sender: asyncio.Task[None] | None = None
        self._closed = False
        self._stopping = False
        self._flush_waiters = 0
        self._generation = 0
        threshold_bytes = min(config.max_request_bytes, config.max_buffer_bytes // 8)
        self._wake_bytes = max(threshold_bytes, 1)
        self._wake_records = (
            max(config.max_buffer_records // 8, 1)
            if config.aggregation
            else min(config.max_request_records, max(config.max_buffer_records // 8, 1))
        )
        # Admitted records wake the sender once their weight (bytes, plus a share of the byte
        # threshold per record, so either threshold counts) reaches _wake_at: 0 while the
        # sender is idle, the byte threshold while it works, never once a wake is requested.
        self._record_weight = max(self._wake_bytes // self._wake_records, 1)
        self._inbound_weight = 0
        self._wake_at: float = 0
        self._key_hashes: dict[str, int] = {}
        self._record_limit = 0  # known once started: until then every record takes prepare()

    @property
    def aggregation(self) -> bool:
        """True when records are aggregated (off on streams that distribute records)."""
        return self._packer.aggregation

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Read the stream's limits and shard map, then start the sender on this loop.

        Raises:
            StreamNotFoundError: the stream does not exist.
            KinesisError: the stream cannot be described (access, endpoint unreachable...).
        """
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._wake_event = asyncio.Event()
        self.outcomes.done_event = asyncio.Event()
        params = stream_params(self.stream)
        summary = await self.transport.call("DescribeStreamSummary", params)
        self.info = StreamInfo.from_summary(self.stream, summary)
        packer = self._packer
        if not packer.max_record_bytes:
            packer.max_record_bytes = min(self.info.max_record_bytes, self.config.max_request_bytes)
        self._record_limit = packer.max_record_bytes
        if self.info.auto_distribution and packer.aggregation:
            log.info(
                "Aggregation is off: the stream distributes records itself.",
                extra={"stream": self.stream},
            )
            packer.aggregation = False
        await self.sender.refresh_shard_map(force=True)
        self._sender = asyncio.create_task(self._run(), name="kingest-sender")
        self._sender.add_done_callback(self._sender_ended)

    def _sender_ended(self, task: asyncio.Task[None]) -> None:
        """If the sender died, no record may stay pending: every one goes to the DLQ."""
        if task.cancelled() or task.exception() is None:
            return
        log.error(
            "The sender failed; every record still held goes to the dead-letter queue.",
            exc_info=task.exception(),
        )
        self._closed = True
        self.gate.close()
        self._drain_inbound()
        waiting = self._directory.pop_all()
        if waiting:
            self.outcomes.dead_letter(
                waiting, DlqReason.INTERNAL_ERROR, None, f"the producer failed: {task.exception()}"
            )
        self.sender.cancel_all()
        if self.outcomes.done_event is not None:
            self.outcomes.done_event.set()

    async def close(self, timeout: float | None = None) -> None:
        """Stop taking records, deliver or dead-letter every one, and release resources.

        Args:
            timeout: seconds to wait for delivery; what is left then is dead-lettered with
                reason ``shutdown``. None waits as long as the records' time-to-live.
        """
        if self._stopping:
            return
        self._closed = True
        # After this no record is admitted; those admitted before are in the inbound queue,
        # which flush() drains.
        self.gate.close()
        try:
            await asyncio.wait_for(self.flush(), timeout)
        except TimeoutError:
            log.warning(
                "Close timed out; dead-lettering what is left.",
                extra={"stream": self.stream, "timeout_s": timeout},
            )
            self._abandon_all()
        finally:
            self._stopping = True
            self._wake()
            sender = self._sender
            if sender is not None and not sender.done():
                await asyncio.wait([sender])
            await self.transport.close()
            self.dlq.close()

    async def flush(self) -> None:
        """Wait until every record admitted before this call is delivered or dead-lettered."""
        done = self.outcomes.done_event
        undone = self.outcomes.undone
        assert done is not None
        self._drain_inbound()
        target = self._generation
        self._generation += 1
        self._flush_waiters += 1
        try:
            self._wake()
            while any(n for g, n in undone.items() if g <= target):
                done.clear()
                self._check_sender()
                await done.wait()
        finally:
            self._flush_waiters -= 1
        for generation in [g for g in undone if g <= target and not undone[g]]:
            del undone[generation]

    def mark(self) -> DeliveryMark:
        """A mark that is done once every record admitted before this call is done.

        The cheap way for a source to know when a batch's positions may be committed: one
        check per batch instead of one future per record. Call it on the producer's loop.
        """
        self._drain_inbound()
        undone = self.outcomes.undone
        target = self._generation
        self._generation += 1
        # Finished generations are only ever looked up, never added to: forget them.
        for generation in [g for g, n in undone.items() if not n and g < target]:
            del undone[generation]
        return DeliveryMark(undone, target)

    def _check_sender(self) -> None:
        if self._sender is not None and self._sender.done() and not self._sender.cancelled():
            exc = self._sender.exception()
            if exc is not None:
                raise exc

    # ------------------------------------------------------------------ sender loop

    def _new_limiter(self) -> ShardRateLimiter | None:
        if not self.config.rate_limit:
            return None
        return ShardRateLimiter(self.config.shard_bytes_per_s, self.config.shard_records_per_s)

    async def _run(self) -> None:
        assert self._wake_event is not None
        while True:
            self._wake_requested = False
            self._rearm()
            self._wake_event.clear()
            self._drain_inbound()
            now = time.monotonic()
            self._expire(now)
            self.outcomes.retry_backlog()
            while self.sender.in_flight < self.config.max_in_flight_requests:
                entries = self._build_request(now)
                if entries is None:
                    break
                self.sender.send(entries)
            if self._stopping and not self.sender.in_flight and not self._has_work():
                return
            delay = self._next_wakeup(now)
            self._sender_idle = delay is None and not self._has_work()
            # Before the inbound queue is looked at: a record admitted after that look then
            # finds the sender idle and wakes it.
            self._rearm()
            if self.gate.inbound:
                continue
            try:
                async with asyncio.timeout(delay):
                    await self._wake_event.wait()
            except TimeoutError:
                pass

    def _drain_inbound(self) -> None:
        """Move admitted records into the queue of the shard their hash key maps to."""
        if not self.gate.inbound:
            return
        generation = self._generation
        count, received = self._directory.take_inbound(self.gate.take_inbound(), generation)
        self._inbound_weight = 0
        self.outcomes.undone[generation] += count
        self.stats.received(received)

    def _has_work(self) -> bool:
        return bool(self.gate.inbound) or self._directory.has_records()

    def _should_send(self, now: float) -> bool:
        directory = self._directory
        if not directory.has_records():
            return False
        if self._flush_waiters or self._closed or self.gate.fill >= 0.5:
            return True
        if directory.queued_bytes >= self._wake_bytes or directory.queued >= self._wake_records:
            return True
        oldest = directory.oldest_deadline()
        if oldest is not None and now >= oldest - self._ttl_s + self._linger_s:
            return True
        return directory.retry_due(now)

    def _next_wakeup(self, now: float) -> float | None:
        """Seconds until something becomes sendable or expires; None when nothing waits."""
        directory = self._directory
        if not directory.has_records():
            return None
        times = directory.blocked_until(now)
        # A linger already over means the records wait for a request in flight to end, and
        # its end wakes the sender: waking on a timer meanwhile would only spin.
        oldest = directory.oldest_deadline()
        if oldest is not None and oldest - self._ttl_s + self._linger_s > now:
            times.append(oldest - self._ttl_s + self._linger_s)
        deadline = directory.earliest_deadline()
        if deadline is not None:
            times.append(deadline)
        if not times:
            return None
        return max(min(times) - now, 0.001)

    def _build_request(self, now: float) -> list[KinesisEntry] | None:
        if not self._should_send(now):
            return None
        return self._packer.build(now)

    def _expire(self, now: float) -> None:
        expired = self._directory.pop_expired(now)
        if expired:
            self.outcomes.dead_letter(
                expired,
                DlqReason.TTL_EXPIRED,
                None,
                f"not accepted within the record time-to-live ({self.config.record_ttl_ms} ms)",
            )

    # ------------------------------------------------------------------ endings

    def _abandon_all(self) -> None:
        """Dead-letter every record not yet done (close() ran out of time)."""
        self._drain_inbound()
        waiting = self._directory.pop_all()
        if waiting:
            self.outcomes.dead_letter(
                waiting, DlqReason.SHUTDOWN, None, "the producer was closed before delivery"
            )
        self.sender.cancel_all()

    def snapshot(self) -> dict[str, Any]:
        """Statistics: the seed's get_stats() fields and more."""
        return self.stats.snapshot(self.gate.records, self.gate.bytes)
