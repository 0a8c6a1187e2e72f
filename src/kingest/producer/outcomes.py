"""How records end: accepted by Kinesis or written to the dead-letter queue.

Both endings resolve the record's future, count it per source, give back its buffer room and
let ``flush()`` waiters re-check. A record is reported dead-lettered only once its DLQ entry is
on disk: when the DLQ cannot be written, the records are kept and the write is tried again.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from bisect import bisect_right
from collections import Counter
from operator import attrgetter

from kingest.dlq import DeadLetterQueue, DlqEntry
from kingest.producer.batch import Pending
from kingest.producer.buffer import BufferGate
from kingest.producer.stats import ProducerStats
from kingest.record import PENDING, Delivery, DlqReason, Outcome, RecordResult

log = logging.getLogger(__name__)

_generation_of = attrgetter("generation")
_deadline_of = attrgetter("deadline")


class Outcomes:
    """Ends records and keeps the accounting that follows.

    Args:
        stream: stream name, written into dead-letter entries.
        dlq: the dead-letter queue.
        stats: per-source counters.
        gate: the buffer bound whose room done records give back.
    """

    def __init__(
        self, stream: str, dlq: DeadLetterQueue, stats: ProducerStats, gate: BufferGate
    ) -> None:
        self.stream = stream
        self.dlq = dlq
        self.stats = stats
        self.gate = gate
        # Records not yet done per flush generation (see ProducerCore.flush).
        self.undone: Counter[int] = Counter()
        # Set on the sender's loop whenever held records finish; flush() waits on it.
        self.done_event: asyncio.Event | None = None
        self._backlog: list[tuple[list[DlqEntry], list[Pending], DlqReason, str | None, str | None]]
        self._backlog = []
        self._backlog_lock = threading.Lock()

    def deliver(
        self,
        records: list[Pending],
        aggregated: bool,
        shard_id: str,
        sequence: str,
        sources: dict[str, int],
        sizes: dict[str, int],
        positions: list[int] | None = None,
        *,
        source: str | None = None,
        user_bytes: int = 0,
        in_order: bool = False,
        now: float | None = None,
    ) -> None:
        """Resolve records Kinesis accepted, count them per source into the two dicts, and
        release their buffer room: this runs for every record sent, so the usual entry (records
        not done yet, of one source and one flush generation) costs one short pass.

        ``positions`` are the records' places in the stored aggregate when they are not
        simply 0, 1, 2... (some of an aggregate's records were sent again). ``source``, when
        given, is the source of every record and ``user_bytes`` the sum of their sizes.
        ``in_order``: the records were taken from one shard's queue of new records, in the
        order they were admitted, so their flush generations never decrease. ``now``: when
        the answer arrived (``time.monotonic()``), for the put-to-acceptance latency.
        """
        if now is None:
            now = time.monotonic()
        delivery = Delivery(shard_id, sequence, aggregated)
        pending = PENDING
        skipped = 0
        numbered = enumerate(records) if positions is None else zip(positions, records, strict=True)
        for index, record in numbered:
            # RecordFuture.set_delivered, inlined: this loop is the send path's per-record cost.
            if record._result is pending:
                record._index = index  # the attempt count is read from the record when asked for
                record._result = delivery
                if record._event is not None or record._callbacks is not None:
                    record._wake_waiters()
            else:
                skipped += 1  # done already (and so released then): not counted again
        if skipped or source is None or not in_order:
            self._count_done([r for r in records if r._result is delivery], sources, sizes, now)
            return
        count = len(records)
        # Taken in the order they were put: their deadlines never decrease.
        self.stats.accepted(source, records, now)
        # Every record here was admitted (nothing reaches a shard queue otherwise), so each
        # holds buffer room until this, its one ending.
        sources[source] = sources.get(source, 0) + count
        sizes[source] = sizes.get(source, 0) + user_bytes
        undone = self.undone
        generation = records[0].generation
        if records[-1].generation == generation:
            undone[generation] -= count
        else:
            # Generations never decrease along the records: one binary search per generation.
            start = 0
            while start < count:
                end = bisect_right(records, generation, lo=start, key=_generation_of)
                undone[generation] -= end - start
                if end < count:
                    generation = records[end].generation
                start = end
        self.gate.release(count, user_bytes)
        if self.done_event is not None:
            self.done_event.set()

    def _observe_latency(self, records: list[Pending], now: float) -> None:
        """Observe put-to-acceptance latencies of records in any order, of any sources."""
        by_source: dict[str, list[Pending]] = {}
        for record in records:
            group = by_source.get(record.source)
            if group is None:
                by_source[record.source] = [record]
            else:
                group.append(record)
        for source, group in by_source.items():
            group.sort(key=_deadline_of)
            self.stats.accepted(source, group, now)

    def _count_done(
        self, records: list[Pending], sources: dict[str, int], sizes: dict[str, int], now: float
    ) -> None:
        """Count records just delivered per source, and release the room of those holding it."""
        if records:
            self._observe_latency(records, now)
        undone = self.undone
        held_records = 0
        held_bytes = 0
        for record in records:
            size = record.size
            record_source = record.source
            sources[record_source] = sources.get(record_source, 0) + 1
            sizes[record_source] = sizes.get(record_source, 0) + size
            if record.held:
                held_records += 1
                held_bytes += size
                undone[record.generation] -= 1
        if held_records:
            self.gate.release(held_records, held_bytes)
            if self.done_event is not None:
                self.done_event.set()

    def dead_letter(
        self,
        records: list[Pending],
        reason: DlqReason,
        code: str | None,
        message: str | None,
    ) -> None:
        """Write records to the dead-letter queue, then resolve them. Any thread."""
        now = time.time()
        entries = [
            DlqEntry(
                reason=reason,
                error_code=code,
                error_message=message,
                attempts=record.attempts,
                source=record.source,
                stream=self.stream,
                partition_key=record.partition_key,
                explicit_hash_key=record.explicit_hash_key,
                payload=record.data,
                first_attempt_at=record.attempt_times[0] if record.attempt_times else None,
                last_attempt_at=record.attempt_times[1] if record.attempt_times else None,
                dead_lettered_at=now,
            )
            for record in records
        ]
        try:
            self.dlq.write(entries)
        except OSError:
            # Not durable anywhere yet: keep the records and try again, never report them done.
            log.exception(
                "Cannot write to the dead-letter queue; records are kept and retried.",
                extra={"dlq": str(self.dlq.directory), "records": len(records)},
            )
            with self._backlog_lock:
                self._backlog.append((entries, records, reason, code, message))
            return
        self._resolve_dead_lettered(records, reason, code, message)

    def retry_backlog(self) -> None:
        """Try again to write dead-letter entries an earlier write failed to store."""
        with self._backlog_lock:
            backlog, self._backlog = self._backlog, []
        for index, (entries, records, reason, code, message) in enumerate(backlog):
            try:
                self.dlq.write(entries)
            except OSError:
                with self._backlog_lock:
                    self._backlog[:0] = backlog[index:]
                return
            self._resolve_dead_lettered(records, reason, code, message)

    def _resolve_dead_lettered(
        self, records: list[Pending], reason: DlqReason, code: str | None, message: str | None
    ) -> None:
        ended: list[Pending] = []
        for record in records:
            # A record already done (delivered, say, before a cancelled request's records were
            # dead-lettered) keeps its first ending; its room was given back then.
            if record._result is PENDING:
                record.set_result(
                    RecordResult(
                        Outcome.DEAD_LETTERED,
                        reason=reason,
                        error_code=code,
                        error_message=message,
                        attempts=record.attempts,
                    )
                )
                ended.append(record)
        if not ended:
            return
        self.stats.dead_lettered(Counter(r.source for r in ended), reason.value)
        held_records = 0
        held_bytes = 0
        for record in ended:
            if record.held:
                held_records += 1
                held_bytes += record.size
                self.undone[record.generation] -= 1
        if held_records:
            self.gate.release(held_records, held_bytes)
            if self.done_event is not None:
                self.done_event.set()


class DeliveryMark:
    """Done once every record admitted before it was made is delivered or dead-lettered."""

    __slots__ = ("_done", "_target", "_undone")

    def __init__(self, undone: Counter[int], target: int) -> None:
        self._undone = undone
        self._target = target
        self._done = False

    def done(self) -> bool:
        """True once nothing admitted before the mark is still pending."""
        if not self._done:
            target = self._target
            self._done = not any(n for g, n in self._undone.items() if g <= target)
        return self._done
