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
from collections.abc import Sequence
from itertools import islice
from typing import Any

import orjson

from kingest.config import ProducerConfig
from kingest.dlq import DeadLetterQueue
from kingest.errors import (
    BufferFullError,
    ProducerClosedError,
)
from kingest.partition import ShardMap, computed_hash_key
from kingest.producer.batch import (
    KinesisEntry,
    Pending,
    compressor,
    make_pending,
    serialize,
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
_join = b"".join
_monotonic = time.monotonic

DEFAULT_SOURCE = "default"
_NEVER = float("inf")
# Partition keys whose hash offer() remembers; past this many it forgets them all.
_KNOWN_KEYS_MAX = 65_536


class NoRoom(Exception):
    """Raised by :meth:`ProducerCore.offer` when a record waits for buffer room.

    Attributes:
        pending: the record, not admitted; the caller waits for room for it.
    """

    def __init__(self, pending: Pending) -> None:
        super().__init__()
        self.pending = pending


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

    # ------------------------------------------------------------------ admission

    def offer(
        self,
        payload: Any,
        partition_key: Any,
        explicit_hash_key: Any,
        source: str | None,
    ) -> Pending:
        """Prepare one put() call's record and admit it if there is room: the put path.

        The usual record (a known partition key, no explicit hash key) is handled inline: each
        Python step per record is a measurable share of the CPU. Others take :meth:`prepare`
        and :meth:`try_admit`, which this mirrors.

        Returns:
            The record, settled: admitted, or already done (rejected or dropped).

        Raises:
            NoRoom: no buffer room under the ``block`` policy; the caller waits for it with
                the record the exception carries (:meth:`admit_blocking` / :meth:`admit_async`).
            ProducerClosedError: the producer is closed.
            TypeError: the payload cannot be serialised as JSON.
        """
        kind = type(payload)
        if kind is dict:
            data = _join((_dumps(payload), b""))  # a tight copy: see serialize()
        elif kind is bytes:
            data = payload
        else:
            data = serialize(payload)
        try:
            hash_key = self._key_hashes.get(partition_key)
        except TypeError:  # unhashable: certainly not a usable key
            hash_key = None
        if hash_key is None or explicit_hash_key is not None:
            hash_key = self._learn_key(partition_key, explicit_hash_key)
            if hash_key is None:
                return self._offer_other(payload, partition_key, explicit_hash_key, source)
        size = len(data) + len(partition_key)
        if size > self._record_limit:
            return self._offer_other(payload, partition_key, explicit_hash_key, source)
        # held: set before the gate's lock publishes it to the sender.
        pending = Pending(
            data,
            partition_key,
            None,
            hash_key,
            source or DEFAULT_SOURCE,
            size,
            _monotonic() + self._ttl_s,
            True,
        )
        gate = self.gate
        # BufferGate.try_acquire, inlined. acquire()/release() rather than `with`: a third of
        # the cost, and nothing between them can raise.
        gate.lock.acquire()
        if (
            not gate.closed
            and gate.records < gate.max_records
            and gate.bytes + size <= gate.max_bytes
        ):
            gate.records += 1
            gate.bytes += size
            gate.inbound.append(pending)
            gate.lock.release()
        else:
            # Full, closed, or a record over the byte budget that only an empty buffer takes.
            gate.lock.release()
            pending.held = False
            if not self.try_admit(pending):
                raise NoRoom(pending)
            return pending
        # Appended before the threshold is read: see _run() for why no wake can be missed.
        weight = self._inbound_weight + size + self._record_weight
        self._inbound_weight = weight
        if weight >= self._wake_at:
            self._wake()
        return pending

    def offer_many(self, records: Sequence[tuple[Any, Any]], source: str | None) -> int:
        """Admit records in order while there is buffer room: the batch put path.

        The same as :meth:`offer` for each ``(payload, partition_key)`` in turn, but runs of
        usual records are prepared in one loop and admitted under one acquisition of the gate's
        lock. No future is handed back: a caller using this follows delivery with :meth:`mark`.

        Returns:
            How many of the leading records were taken (admitted, or done already: rejected
            or dropped). Fewer than all when the buffer is full under the ``block`` policy.

        Raises:
            ProducerClosedError: the producer is closed.
            TypeError: a payload cannot be serialised as JSON; the records before it are
                taken.
        """
        count = len(records)
        taken = 0
        while taken < count:
            run, run_bytes = self._usual_run(records, taken, source)
            if run:
                admitted = self._admit_run(run, run_bytes)
                taken += admitted
                if admitted < len(run):
                    break
            else:
                payload, partition_key = records[taken]
                try:
                    self.offer(payload, partition_key, None, source)
                except NoRoom:
                    break
                taken += 1
        return taken

    def _usual_run(
        self, records: Sequence[tuple[Any, Any]], start: int, source: str | None
    ) -> tuple[list[Pending], int]:
        """Records for :meth:`offer`'s inline path from ``start`` on, up to the first other one.

        Returns:
            The records (not admitted yet) and the sum of their sizes.
        """
        run: list[Pending] = []
        add = run.append
        run_bytes = 0
        keys = self._key_hashes
        limit = self._record_limit
        source = source or DEFAULT_SOURCE
        # Records put together were put at once: one deadline for the run.
        deadline = _monotonic() + self._ttl_s
        # No more than the buffer has room for now (read without the lock: _admit_run checks),
        # so that a full buffer does not have records prepared only to be dropped.
        gate = self.gate
        room = gate.max_bytes - gate.bytes
        end = min(len(records), start + max(gate.max_records - gate.records, 0))
        for payload, partition_key in islice(records, start, end):
            if type(payload) is dict:
                data = _join((_dumps(payload), b""))  # a tight copy: see serialize()
            elif type(payload) is bytes:
                data = payload
            else:
                break
            try:
                hash_key = keys.get(partition_key)
            except TypeError:
                break
            if hash_key is None:
                hash_key = self._learn_key(partition_key, None)
                if hash_key is None:
                    break
            size = len(data) + len(partition_key)
            if size > limit or run_bytes + size > room:
                break
            # held: set before the gate's lock publishes it to the sender.
            add(Pending(data, partition_key, None, hash_key, source, size, deadline, True))
            run_bytes += size
        return run, run_bytes

    def _admit_run(self, run: list[Pending], run_bytes: int) -> int:
        """Admit the head of ``run`` that there is room for; how many that is."""
        gate = self.gate
        count = len(run)
        gate.lock.acquire()
        if (
            not gate.closed
            and gate.records + count <= gate.max_records
            and gate.bytes + run_bytes <= gate.max_bytes
        ):
            gate.records += count
            gate.bytes += run_bytes
            gate.inbound.extend(run)
            gate.lock.release()
        else:
            gate.lock.release()
            # Not room for all: one at a time, as far as there is room.
            count = 0
            for pending in run:
                pending.held = False
                if not self.try_admit(pending):
                    break
                count += 1
            return count
        weight = self._inbound_weight + run_bytes + count * self._record_weight
        self._inbound_weight = weight
        if weight >= self._wake_at:
            self._wake()
        return count

    def _learn_key(self, partition_key: Any, explicit_hash_key: Any) -> int | None:
        """The hash key of a usual record's partition key, now known to :meth:`offer`.

        None for anything else: an explicit hash key, a partition key that is not an ASCII
        str of valid length, compression, or a closed producer; those take the general path.
        """
        if (
            explicit_hash_key is not None
            or self._closed
            or self._compression is not None
            or type(partition_key) is not str
            or not 0 < len(partition_key) <= PARTITION_KEY_MAX_CHARS
            or not partition_key.isascii()
        ):
            return None
        keys = self._key_hashes
        hash_key = computed_hash_key(partition_key)
        if len(keys) >= _KNOWN_KEYS_MAX:
            keys.clear()  # crude, but bounded; keys in use come straight back
        keys[partition_key] = hash_key
        return hash_key

    def _offer_other(
        self, payload: Any, partition_key: Any, explicit_hash_key: Any, source: str | None
    ) -> Pending:
        """:meth:`offer` for records off its inline path (see :meth:`_learn_key`)."""
        pending = self.prepare(payload, partition_key, explicit_hash_key, source)
        if not self.try_admit(pending):
            raise NoRoom(pending)
        return pending

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
        started = _monotonic()
        admitted = self.gate.acquire(pending.size, timeout, pending)
        self.stats.blocked(pending.source, _monotonic() - started)
        if not admitted:
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
        started = _monotonic()
        admitted = await self.gate.acquire_async(pending.size, timeout, pending)
        self.stats.blocked(pending.source, _monotonic() - started)
        if not admitted:
            pending.held = False
            raise BufferFullError(f"no room in the producer's buffer within {timeout} s")
        self._admitted(pending.size)
        return pending

    def _admitted(self, size: int) -> None:
        """Wake the sender when the record just admitted makes it worth it."""
        weight = self._inbound_weight + size + self._record_weight
        self._inbound_weight = weight
        if weight >= self._wake_at:
            self._wake()

    def _rearm(self) -> None:
        """Set the weight of admitted records that wakes the sender (see __init__)."""
        self._wake_at = 0 if self._sender_idle else self._wake_bytes

    def _wake(self) -> None:
        if self._wake_requested or self._loop is None or self._wake_event is None:
            return
        self._wake_requested = True
        self._wake_at = _NEVER
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
