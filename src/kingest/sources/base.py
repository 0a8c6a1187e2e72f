"""What every source is: a config, a class that runs, and positions committed after ack.

A source reads from the outside world and hands records to the producer through a
:class:`SourceContext`. It never decides by itself that a record is safe: the context's
:class:`AckTracker` keeps, per *lane* (a file, a table, a topic: a sequence whose order the
source's positions follow), the records in the order they were emitted, and a position is
handed back to the source for committing only once every record emitted before it, in its
lane, is delivered to Kinesis or written to the dead-letter queue.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from kingest.producer.producer import AsyncProducer
from kingest.record import DlqReason, RecordFuture
from kingest.schemas.validate import RecordValidator


class Completion(Protocol):
    """Something that ends: a record's future, or a producer's delivery mark."""

    def done(self) -> bool:
        """True once it ended."""
        ...


log = logging.getLogger(__name__)

# A record's partition key as its source hands it over (None: derived from the data).
Key = TypeVar("Key", str, str | None)


class AckTracker:
    """Commit positions per lane once every record before them is done.

    The tracker polls futures instead of registering callbacks: a record is checked when the
    tracker is asked what may be committed, and each done record is looked at once.
    """

    def __init__(self) -> None:
        self._lanes: dict[str, deque[tuple[Any, Completion | None]]] = {}
        self._committable: dict[str, Any] = {}

    def add(self, lane: str, position: Any, future: Completion | None) -> None:
        """Note a position reached in ``lane``, committed once ``future`` and all before it end.

        Args:
            lane: the ordered sequence the position belongs to.
            position: what to commit once this record and all before it are done.
            future: the record's future; or a delivery mark covering a whole batch
                (:meth:`AsyncProducer.mark`); or None when nothing was sent for it.
        """
        queue = self._lanes.get(lane)
        if queue is None:
            queue = self._lanes[lane] = deque()
        queue.append((position, future))

    def pending(self) -> int:
        """Records emitted whose position cannot be committed yet."""
        return sum(len(queue) for queue in self._lanes.values())

    def collect(self) -> dict[str, Any]:
        """Positions safe to commit and not yet marked committed, per lane (latest only)."""
        ready = self._committable
        for lane, queue in self._lanes.items():
            advanced = False
            position = None
            while queue:
                head_position, future = queue[0]
                if future is not None and not future.done():
                    break
                queue.popleft()
                position = head_position
                advanced = True
            if advanced:
                ready[lane] = position
        for lane in [lane for lane, queue in self._lanes.items() if not queue]:
            del self._lanes[lane]
        return dict(ready)

    def committed(self, positions: dict[str, Any]) -> None:
        """Mark positions from :meth:`collect` as stored; a failed commit just skips this."""
        ready = self._committable
        for lane, position in positions.items():
            if lane in ready and ready[lane] is position:
                del ready[lane]


@dataclass
class SourceStats:
    """What one source read and what became of it (the producer counts what it sent)."""

    received: int = 0
    parsed: int = 0
    invalid: int = 0
    invalid_by_reason: dict[str, int] = field(default_factory=dict)
    # Seconds from the newest change's commit to its reading (change-capture sources only).
    lag_s: float | None = None
    # Events on disk not yet committed, and the spool's size (sources with a spool only).
    spooled_events: int | None = None
    spool_bytes: int | None = None

    def read_changes(self, events: list[tuple[dict[str, Any], str]]) -> None:
        """Note the lag of the newest of a batch of change events (Debezium ``source.ts_ms``)."""
        if events:
            block = events[-1][0].get("source")
            committed_ms = block.get("ts_ms") if isinstance(block, dict) else None
            if type(committed_ms) is int:
                self.lag_s = max(time.time() - committed_ms / 1000, 0.0)

    def snapshot(self) -> dict[str, Any]:
        """The counters as a plain dict."""
        return {
            "received": self.received,
            "parsed": self.parsed,
            "invalid": self.invalid,
            "invalid_by_reason": dict(self.invalid_by_reason),
            "lag_s": self.lag_s,
            "spooled_events": self.spooled_events,
            "spool_bytes": self.spool_bytes,
        }


class SourceContext:
    """What a running source uses: its producer, its ack tracker, its statistics and its
    schema check.

    Args:
        name: the source's name (the ``source`` field of its records and the DLQ).
        producer: the started producer of the source's stream.
        validator: the source's schema check, if its config names a schema.
    """

    def __init__(
        self, name: str, producer: AsyncProducer, validator: RecordValidator | None = None
    ) -> None:
        self.name = name
        self.producer = producer
        self.acks = AckTracker()
        self.stats = SourceStats()
        self.validator = validator

    def validate(
        self, records: list[tuple[dict[str, Any], Key]]
    ) -> list[tuple[dict[str, Any], Key]]:
        """The records that may be sent, after the source's schema check (when it has one).

        Records that break the schema go to the dead-letter queue with their violations (or
        are sent flagged, as the source's ``schema.on_invalid`` says); those sent are stamped
        with the schema's id and version when asked.
        """
        validator = self.validator
        if validator is None:
            return records
        kept = []
        for record, key in records:
            violations = validator.check(record)
            if violations is None:
                kept.append((record, key))
            else:
                self.reject(record, DlqReason.INVALID_RECORD, validator.describe(violations))
        return kept

    def reject(self, payload: Any, reason: DlqReason, message: str) -> RecordFuture:
        """Send an unusable input to the dead-letter queue (done when this returns).

        The input's position is the caller's to track, like any other's.
        """
        self.count_invalid(reason)
        return self.producer.reject(payload, reason, message, source=self.name)

    def count_invalid(self, reason: DlqReason) -> None:
        """Count an input refused for ``reason`` (by :meth:`reject`, or answered as refused)."""
        self.stats.invalid += 1
        by_reason = self.stats.invalid_by_reason
        by_reason[reason.value] = by_reason.get(reason.value, 0) + 1


class Source(abc.ABC):
    """A running source. Subclasses read their input and hand records to the context.

    ``can_ack`` says whether the source can commit positions (a file, a replication slot);
    sources without one (an HTTP request answered late, a simulator) set it to False.
    ``reads_in_thread`` says its reading runs in a thread beside the event loop.
    """

    can_ack: bool = True
    # True for a source whose blocking client reads in a thread of its own (see
    # kingest.runtime.tune_for_reader_threads).
    reads_in_thread: bool = False

    def __init__(self, name: str) -> None:
        self.name = name

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect and check the outside world before running; raise what stops the agent.

        Called once, before :meth:`run`. A :class:`~kingest.errors.KingestError` raised here
        (a server setting, a missing privilege) ends the agent with its one-line message.
        """

    @abc.abstractmethod
    async def run(self, ctx: SourceContext, stop: asyncio.Event) -> None:
        """Read until ``stop`` is set, handing every record to ``ctx``; then return."""

    def commit(self, positions: Mapping[str, Any]) -> None:  # noqa: B027 - optional hook
        """Make committable positions durable (lane -> position). Default: nothing."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections, after the last :meth:`commit`. Default: nothing."""

    def pause(self) -> None:  # noqa: B027 - optional hook
        """Stop reading for a while (the producer's buffer is full). Default: nothing."""

    def resume(self) -> None:  # noqa: B027 - optional hook
        """Read again after :meth:`pause`. Default: nothing."""

    def status(self) -> dict[str, Any]:
        """What the source is doing, for operators."""
        return {}
