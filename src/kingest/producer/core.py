"""The producer's engine, shared by the sync and async façades.

Records enter through :meth:`ProducerCore.offer` from any thread; everything after that runs
on one asyncio loop: the sender drains admitted records into per-shard queues, packs them into
PutRecords requests (aggregated per shard), keeps many requests in flight, retries exactly the
failed entries with backoff, and hands every record to
:class:`~kingest.producer.outcomes.Outcomes` to end it as delivered or dead-lettered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from typing import Any

import orjson

from kingest.config import ProducerConfig
from kingest.dlq import DeadLetterQueue
from kingest.errors import (
    BufferFullError,
    ProducerClosedError,
)
from kingest.partition import ShardMap, _hash_cache, hash_key_of
from kingest.producer.batch import (
    KinesisEntry,
    Pending,
    compressor,
    make_pending,
    serialize,
    too_large,
)
from kingest.producer.buffer import BufferGate
from kingest.producer.limits import PARTITION_KEY_MAX_CHARS, ShardRateLimiter, StreamInfo
from kingest.producer.outcomes import DeliveryMark, Outcomes
from kingest.producer.packing import RequestPacker
from kingest.producer.retry import Backoff
from kingest.producer.sender import Sender, stream_params
from kingest.producer.shards import ShardDirectory
from kingest.producer.stats import ProducerStats
from kingest.producer.transport import KinesisTransport
from kingest.record import PENDING, DlqReason, RecordFuture

log = logging.getLogger(__name__)

_dumps = orjson.dumps


def _tight(data: bytes) -> bytes:
    return memoryview(data).tobytes()


_monotonic = time.monotonic

DEFAULT_SOURCE = "default"


class ProducerCore:
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
        self.stats = ProducerStats()
        self.gate = BufferGate(config.max_buffer_records, config.max_buffer_bytes)
        self.outcomes = Outcomes(stream, dlq, self.stats, self.gate)
        self.info: StreamInfo | None = None
        self._ttl_s = config.record_ttl_ms / 1000
        self._compression = compressor(config.compression)
        self._linger_s = config.linger_ms / 1000
        # Admitted records, appended by the gate under its lock (see BufferGate).
        self._inbound: deque[Pending] = self.gate.inbound
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
        self._inbound_bytes = 0

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

    # ------------------------------------------------------------------ admission

    def offer(
        self,
        payload: Any,
        partition_key: Any,
        explicit_hash_key: Any,
        source: str | None,
    ) -> tuple[Pending, bool]:
        """Prepare one put() call's record and admit it if there is room: the put path.

        The usual record (a valid ASCII key, no explicit hash key) is handled inline: each
        Python call per record is a measurable share of the CPU. Others take :meth:`prepare`
        and :meth:`try_admit`, which this mirrors.

        Returns:
            The record, and whether it is settled: admitted, or already done (rejected or
            dropped). False means it waits for buffer room (:meth:`admit_blocking` /
            :meth:`admit_async`).

        Raises:
            ProducerClosedError: the producer is closed.
            TypeError: the payload cannot be serialised as JSON.
        """
        kind = type(payload)
        if kind is dict:
            data = _tight(_dumps(payload))  # see serialize()
        elif kind is bytes:
            data = payload
        else:
            data = serialize(payload)
        if (
            self._closed
            or self._compression is not None
            or explicit_hash_key is not None
            or type(partition_key) is not str
            or not 0 < len(partition_key) <= PARTITION_KEY_MAX_CHARS
            or not partition_key.isascii()
        ):
            pending = self.prepare(payload, partition_key, explicit_hash_key, source)
            return pending, self.try_admit(pending)
        size = len(data) + len(partition_key)
        hash_key = _hash_cache.get(partition_key)
        if hash_key is None:
            hash_key = hash_key_of(partition_key)
        pending = Pending(
            data,
            partition_key,
            None,
            hash_key,
            source or DEFAULT_SOURCE,
            size,
            _monotonic() + self._ttl_s,
            True,  # held: set before the gate's lock publishes it to the sender
        )
        if size > self._packer.max_record_bytes:
            pending.held = False  # it never takes buffer room
            reason, message = too_large(size, self._packer.max_record_bytes)
            self.outcomes.dead_letter([pending], reason, None, message)
            return pending, True
        gate = self.gate
        # BufferGate.try_acquire, inlined. acquire()/release() rather than `with`: a third of
        # the cost, and nothing between them can raise.
        gate.lock.acquire()
        admitted = (
            not gate.closed
            and gate.records < gate.max_records
            and (gate.records == 0 or gate.bytes + size <= gate.max_bytes)
        )
        if admitted:
            gate.records += 1
            gate.bytes += size
            gate.inbound.append(pending)
        gate.lock.release()
        if not admitted:
            pending.held = False
            if gate.closed:
                raise ProducerClosedError("the producer is closed")
            return pending, self._buffer_full(pending)
        self._inbound_bytes += size
        if not self._wake_requested and (
            self._sender_idle
            or self._inbound_bytes >= self._wake_bytes
            or len(self._inbound) >= self._wake_records
        ):
            self._wake()
        return pending, True

    def prepare(
        self,
        payload: Any,
        partition_key: str | None,
        explicit_hash_key: str | None,
        source: str | None,
    ) -> Pending:
        """Turn a put() call into a pending record; rejected records come back already done.

        Raises:
            ProducerClosedError: the producer is closed.
            TypeError: the payload cannot be serialised as JSON.
        """
        if self._closed:
            raise ProducerClosedError("the producer is closed")
        pending, problem = make_pending(
            payload,
            partition_key,
            explicit_hash_key,
            source or DEFAULT_SOURCE,
            time.monotonic() + self._ttl_s,
            self._packer.max_record_bytes,
            self._compression,
        )
        if problem is not None:
            self.outcomes.dead_letter([pending], problem[0], None, problem[1])
        return pending

    def reject(
        self,
        payload: Any,
        reason: DlqReason,
        message: str,
        source: str | None,
        partition_key: str | None,
    ) -> RecordFuture:
        """Dead-letter a record that never reached the producer (e.g. it failed to parse)."""
        data = serialize(payload)
        key = partition_key or ""
        pending = Pending(
            data, key, None, 0, source or DEFAULT_SOURCE, len(data) + len(key.encode()), 0.0
        )
        self.outcomes.dead_letter([pending], reason, None, message)
        return pending

    def try_admit(self, pending: Pending) -> bool:
        """Admit a prepared record if there is room, or apply ``drop_newest``.

        Returns:
            False only when there is no room and the policy is ``block``: the caller waits
            (:meth:`admit_blocking` / :meth:`admit_async`). True when the record is admitted,
            or already done (rejected in prepare(), or dropped to the dead-letter queue).
        """
        if pending._result is not PENDING:
            return True  # rejected in prepare(): already dead-lettered
        pending.held = True
        if self.gate.try_acquire(pending.size, pending):
            self._admitted(pending.size)
            return True
        pending.held = False
        return self._buffer_full(pending)

    def _buffer_full(self, pending: Pending) -> bool:
        """Apply ``drop_newest`` to a record that found no room; False under ``block``."""
        if self.config.on_buffer_full == "drop_newest":
            self.outcomes.dead_letter(
                [pending], DlqReason.BUFFER_FULL, None, "the producer's buffer was full"
            )
            return True
        return False

    def admit_blocking(self, pending: Pending, timeout: float | None) -> RecordFuture:
        """Admit from a thread, waiting for room under the ``block`` policy.

        Raises:
            BufferFullError: no room within ``timeout``, or called on the sender's own thread.
        """
        if self.try_admit(pending):
            return pending
        if threading.get_ident() == self._loop_thread:
            raise BufferFullError(
                "the buffer is full and put() was called on the producer's own thread "
                "(from a callback), where waiting would deadlock"
            )
        self._wake()
        pending.held = True
        if not self.gate.acquire(pending.size, timeout, pending):
            pending.held = False
            raise BufferFullError(f"no room in the producer's buffer within {timeout} s")
        self._admitted(pending.size)
        return pending

    async def admit_async(self, pending: Pending, timeout: float | None) -> RecordFuture:
        """Admit from a coroutine, awaiting room under the ``block`` policy.

        Raises:
            BufferFullError: no room within ``timeout``.
        """
        if self.try_admit(pending):
            return pending
        self._wake()
        pending.held = True
        if not await self.gate.acquire_async(pending.size, timeout, pending):
            pending.held = False
            raise BufferFullError(f"no room in the producer's buffer within {timeout} s")
        self._admitted(pending.size)
        return pending

    def _admitted(self, size: int) -> None:
        """Wake the sender when the record just admitted makes it worth it."""
        self._inbound_bytes += size
        if not self._wake_requested and (
            self._sender_idle
            or self._inbound_bytes >= self._wake_bytes
            or len(self._inbound) >= self._wake_records
        ):
            self._wake()

    def _wake(self) -> None:
        if self._wake_requested or self._loop is None or self._wake_event is None:
            return
        self._wake_requested = True
        if threading.get_ident() == self._loop_thread:
            self._wake_event.set()
        else:
            # The loop may be gone: close() ended after the record was admitted, and its last
            # drain took the record, so there is nobody left to wake.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._wake_event.set)

    # ------------------------------------------------------------------ sender loop

    def _new_limiter(self) -> ShardRateLimiter | None:
        if not self.config.rate_limit:
            return None
        return ShardRateLimiter(self.config.shard_bytes_per_s, self.config.shard_records_per_s)

    async def _run(self) -> None:
        assert self._wake_event is not None
        while True:
            self._wake_requested = False
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
            if self._inbound:
                continue
            try:
                async with asyncio.timeout(delay):
                    await self._wake_event.wait()
            except TimeoutError:
                pass

    def _drain_inbound(self) -> None:
        """Move admitted records into the queue of the shard their hash key maps to."""
        if not self._inbound:
            return
        generation = self._generation
        count, received = self._directory.take_inbound(self._inbound, generation)
        self._inbound_bytes = 0
        self.outcomes.undone[generation] += count
        self.stats.received(received)

    def _has_work(self) -> bool:
        return bool(self._inbound) or self._directory.has_records()

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
