"""Per-shard queues of records waiting to be sent, with each shard's backoff and rate limit.

Records are grouped by the shard their hash key maps to, so that an aggregated Kinesis record
only ever carries records of one shard. A shard that just failed backs off as a whole (sending
it more would only fail more); in strict-order mode a shard also has at most one Kinesis record
in flight, and its retries go out before anything queued after them.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import Counter, deque
from collections.abc import Callable, Collection, Iterator

from kingest.partition import Shard, ShardMap
from kingest.producer.batch import Pending
from kingest.producer.limits import ShardRateLimiter
from kingest.producer.retry import Backoff


class ShardBuffer:
    """Records waiting for one shard: retries first, then new records, in order."""

    __slots__ = (
        "_directory",
        "failures",
        "limiter",
        "not_before",
        "queue",
        "retries",
        "shard_id",
    )

    def __init__(
        self, shard_id: str, directory: ShardDirectory, limiter: ShardRateLimiter | None
    ) -> None:
        self.shard_id = shard_id
        self._directory = directory
        self.queue: deque[Pending] = deque()
        self.retries: deque[Pending] = deque()
        self.not_before = 0.0
        self.failures = 0
        self.limiter = limiter

    def __bool__(self) -> bool:
        return bool(self.queue) or bool(self.retries)

    def push(self, record: Pending) -> None:
        """Queue a new record."""
        self.queue.append(record)
        self._directory.queued += 1
        self._directory.queued_bytes += record.size

    def push_retry(self, record: Pending) -> None:
        """Queue a record for another attempt, ahead of new records."""
        self.retries.append(record)
        self._directory.queued += 1
        self._directory.queued_bytes += record.size

    def peek(self) -> Pending | None:
        """The next record to send, or None."""
        if self.retries:
            return self.retries[0]
        return self.queue[0] if self.queue else None

    def pop(self) -> Pending:
        """Take the next record to send."""
        record = self.retries.popleft() if self.retries else self.queue.popleft()
        self._directory.queued -= 1
        self._directory.queued_bytes -= record.size
        return record

    def started(self, n_bytes: int, now: float) -> None:
        """Account a Kinesis record of this shard going out."""
        self._directory.in_flight[self.shard_id] += 1
        if self.limiter is not None:
            self.limiter.take(n_bytes, now)

    def oldest_deadline(self) -> float | None:
        """Time-to-live deadline of the oldest waiting record (deadlines grow with age)."""
        head = self.peek()
        if head is None:
            return None
        return min(head.deadline, self.queue[0].deadline) if self.queue else head.deadline

    def drain(self) -> Iterator[Pending]:
        """Take every waiting record (retries first), emptying the buffer."""
        while self:
            yield self.pop()


class ShardDirectory:
    """Every open shard's buffer, and the totals the sender decides with."""

    def __init__(
        self, shard_map: ShardMap, new_limiter: Callable[[], ShardRateLimiter | None]
    ) -> None:
        self._new_limiter = new_limiter
        self.map = shard_map
        self.queued = 0
        self.queued_bytes = 0
        self.in_flight: Counter[str] = Counter()
        self._buffers: dict[str, ShardBuffer] = {}
        self._order: list[ShardBuffer] = []
        self._rotation = 0
        # Every source whose records ever reached a queue: with only one, no request needs
        # its records' sources looked at.
        self.sources: set[str] = set()
        self.replace_map(shard_map)

    def replace_map(self, shard_map: ShardMap) -> None:
        """Adopt a new shard map; records of shards that closed move to their successors."""
        old = self._buffers
        self.map = shard_map
        # An empty buffer is falsy, so test membership: a shard that stays open keeps its
        # backoff and rate-limit state even when nothing waits in it.
        self._buffers = {
            shard.shard_id: old[shard.shard_id]
            if shard.shard_id in old
            else ShardBuffer(shard.shard_id, self, self._new_limiter())
            for shard in shard_map.shards
        }
        self._order = list(self._buffers.values())
        # Aligned with map.shards, for the bisect in the producer's drain loop.
        self.by_index = [self._buffers[shard.shard_id] for shard in shard_map.shards]
        self.starts = [shard.starting_hash_key for shard in shard_map.shards]
        for shard_id, buffer in old.items():
            if shard_id in self._buffers:
                continue
            for record in list(buffer.drain()):
                self.buffer_for(record.hash_key).push_retry(record)

    def take_inbound(
        self, inbound: Collection[Pending], generation: int
    ) -> tuple[int, dict[str, int]]:
        """Move the records of ``inbound`` into their shards' queues, tagged ``generation``.

        Returns:
            How many records moved, and how many per source.
        """
        starts = self.starts
        appends = [buffer.queue.append for buffer in self.by_index]
        received: dict[str, int] = {}
        # Records come in runs of one source: count runs, not records, into the dict.
        run_source: str | None = None
        run = 0
        total_bytes = 0
        if len(appends) == 1:
            self.by_index[0].queue.extend(inbound)
            for record in inbound:
                record.generation = generation
                total_bytes += record.size
                source = record.source
                if source is not run_source:
                    if run_source is not None:
                        received[run_source] = received.get(run_source, 0) + run
                    run_source = source
                    run = 0
                run += 1
        else:
            for record in inbound:
                record.generation = generation
                # Shard ranges start at 0 and tile the hash space, so index >= 0.
                appends[bisect_right(starts, record.hash_key) - 1](record)
                total_bytes += record.size
                source = record.source
                if source is not run_source:
                    if run_source is not None:
                        received[run_source] = received.get(run_source, 0) + run
                    run_source = source
                    run = 0
                run += 1
        if run_source is not None:
            received[run_source] = received.get(run_source, 0) + run
        count = len(inbound)
        self.queued += count
        self.queued_bytes += total_bytes
        self.sources.update(received)
        return count, received

    def buffer_for(self, hash_key: int) -> ShardBuffer:
        """The buffer of the shard that owns ``hash_key``."""
        return self._buffers[self.map.shard_for(hash_key).shard_id]

    def shard(self, shard_id: str) -> Shard | None:
        """The open shard with this id, if the map knows it."""
        return self.map.get(shard_id)

    def has_records(self) -> bool:
        """True when any record waits in any shard buffer."""
        return self.queued > 0

    def sendable(self, now: float, strict: bool, taken: set[str]) -> list[ShardBuffer]:
        """Buffers that may add a Kinesis record to the request being built, in fair order.

        A shard is in at most one request at a time: two requests in flight to one shard could
        be stored in either order, and per-key order would be lost without any retry. In strict
        mode a shard also gives at most one Kinesis record per request, so a failed one is
        always retried before anything after it is accepted.

        Args:
            now: the current monotonic time.
            strict: strict-order mode.
            taken: shards already in the request being built.
        """
        order = self._order
        start = self._rotation % len(order) if order else 0
        ready = []
        in_flight = self.in_flight
        for buffer in order[start:] + order[:start]:
            if not buffer or buffer.not_before > now:
                continue
            shard_id = buffer.shard_id
            if in_flight.get(shard_id) and (strict or shard_id not in taken):
                continue
            if buffer.limiter is not None and not buffer.limiter.ready(now):
                continue
            ready.append(buffer)
        return ready

    def rotate(self) -> None:
        """Start the next request with the next shard, so no shard is always last."""
        self._rotation += 1

    def retry_due(self, now: float) -> bool:
        """True when some shard has retries whose backoff is over."""
        return any(b.retries and b.not_before <= now for b in self._order)

    def oldest_deadline(self) -> float | None:
        """Time-to-live deadline of the oldest waiting record over every shard."""
        oldest: float | None = None
        for buffer in self._order:
            when = buffer.oldest_deadline()
            if when is not None and (oldest is None or when < oldest):
                oldest = when
        return oldest

    def blocked_until(self, now: float) -> list[float]:
        """When each shard that has records but may not send now may send again."""
        times = []
        for buffer in self._order:
            if not buffer:
                continue
            if buffer.not_before > now:
                times.append(buffer.not_before)
            elif buffer.limiter is not None and not buffer.limiter.ready(now):
                times.append(now + buffer.limiter.wait_s(now))
        return times

    def earliest_deadline(self) -> float | None:
        """The soonest time-to-live deadline of any waiting record."""
        earliest: float | None = None
        for buffer in self._order:
            candidates = [r.deadline for r in buffer.retries]
            if buffer.queue:
                candidates.append(buffer.queue[0].deadline)
            for deadline in candidates:
                if earliest is None or deadline < earliest:
                    earliest = deadline
        return earliest

    def pop_expired(self, now: float) -> list[Pending]:
        """Remove and return every waiting record whose time-to-live has passed."""
        expired: list[Pending] = []
        for buffer in self._order:
            if buffer.retries and any(r.deadline <= now for r in buffer.retries):
                keep = deque(r for r in buffer.retries if r.deadline > now)
                gone = [r for r in buffer.retries if r.deadline <= now]
                buffer.retries = keep
                self.queued -= len(gone)
                self.queued_bytes -= sum(r.size for r in gone)
                expired.extend(gone)
            queue = buffer.queue
            while queue and queue[0].deadline <= now:
                record = queue.popleft()
                self.queued -= 1
                self.queued_bytes -= record.size
                expired.append(record)
        return expired

    def pop_all(self) -> list[Pending]:
        """Remove and return every waiting record."""
        records: list[Pending] = []
        for buffer in self._order:
            records.extend(buffer.drain())
        return records

    def failed(self, shard_id: str, now: float, backoff: Backoff) -> None:
        """A Kinesis record of this shard failed: the shard backs off."""
        buffer = self._buffers.get(shard_id)
        if buffer is not None:
            buffer.failures += 1
            buffer.not_before = max(buffer.not_before, now + backoff.delay(buffer.failures))

    def succeeded(self, shard_id: str) -> None:
        """A Kinesis record of this shard was accepted: its backoff starts over."""
        buffer = self._buffers.get(shard_id)
        if buffer is not None:
            buffer.failures = 0

    def finished(self, shard_id: str) -> None:
        """A Kinesis record of this shard is no longer in flight."""
        self.in_flight[shard_id] -= 1
        if self.in_flight[shard_id] <= 0:
            del self.in_flight[shard_id]
