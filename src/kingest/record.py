"""The record that flows through kingest, its final result, and the future that carries it.

A record ends in exactly one of two ways: Kinesis accepted it (``Outcome.DELIVERED``, with the
shard id and sequence number) or it was written to the dead-letter queue
(``Outcome.DEAD_LETTERED``, with a reason from :class:`DlqReason`). Both are "done" for the
purpose of acknowledging a source position.
"""

from __future__ import annotations

import asyncio
import enum
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any


class Outcome(enum.Enum):
    """How a record ended."""

    # Kinesis answered the PutRecords entry with a shard id and sequence number.
    DELIVERED = "delivered"
    # The record is durably in the dead-letter queue with its reason.
    DEAD_LETTERED = "dead_lettered"


class DlqReason(enum.StrEnum):
    """Why a record went to the dead-letter queue. A fixed list: dashboards and alerts key on it."""

    INVALID_INPUT = "invalid_input"  # not decodable as the input format said (e.g. bad JSON)
    INVALID_RECORD = "invalid_record"  # decoded, but broke a data-quality rule or its schema
    INVALID_PARTITION_KEY = "invalid_partition_key"  # empty, over 256 chars, or a bad hash key
    RECORD_TOO_LARGE = "record_too_large"  # data + partition key over the stream's record limit
    NON_RETRYABLE_ERROR = "non_retryable_error"  # Kinesis refused it for good (code kept)
    TTL_EXPIRED = "ttl_expired"  # not accepted within the record time-to-live
    BUFFER_FULL = "buffer_full"  # on_buffer_full=drop_newest and the buffer was full
    SHUTDOWN = "shutdown"  # close() ran out of time before the record was accepted
    INTERNAL_ERROR = "internal_error"  # the producer itself failed; the record is kept here


@dataclass(slots=True)
class Record:
    """One event on its way to Kinesis.

    Attributes:
        source: name of the source that produced it (``web_logs``, ``iot_sensors``, ...).
        payload: a dict (sent as compact JSON) or bytes (sent as they are).
        partition_key: Kinesis partition key; derived from the data when None.
        explicit_hash_key: optional decimal 128-bit hash key that overrides the key's hash.
        position: opaque, source-defined position committed once the record is done.
        event_time: when the event happened (seconds since the epoch), if known.
        ingestion_time: when kingest received it (seconds since the epoch).
    """

    source: str
    payload: dict[str, Any] | bytes
    partition_key: str | None = None
    explicit_hash_key: str | None = None
    position: Any = None
    event_time: float | None = None
    ingestion_time: float = field(default_factory=time.time)


@dataclass(frozen=True, slots=True)
class RecordResult:
    """The final word on one record.

    Attributes:
        outcome: DELIVERED or DEAD_LETTERED.
        shard_id: shard that stored it (delivered only).
        sequence_number: sequence number of the Kinesis record holding it (delivered only).
        sub_sequence_number: its index inside an aggregated Kinesis record (0 when plain).
        reason: why it was dead-lettered.
        error_code: the AWS error code behind the reason, when there is one.
        error_message: a human explanation of the reason.
        attempts: how many PutRecords attempts carried it.
    """

    outcome: Outcome
    shard_id: str | None = None
    sequence_number: str | None = None
    sub_sequence_number: int = 0
    reason: DlqReason | None = None
    error_code: str | None = None
    error_message: str | None = None
    attempts: int = 0

    @property
    def delivered(self) -> bool:
        """True when Kinesis accepted the record."""
        return self.outcome is Outcome.DELIVERED


# The value of a future's result slot until it is done.
PENDING: Any = object()


class Delivery:
    """Where one Kinesis record was stored; shared by every user record it carries."""

    __slots__ = ("aggregated", "sequence_number", "shard_id")

    def __init__(self, shard_id: str, sequence_number: str, aggregated: bool) -> None:
        self.shard_id = shard_id
        self.sequence_number = sequence_number
        self.aggregated = aggregated


class RecordFuture:
    """Resolves once, with a :class:`RecordResult`, when the record is done.

    Cheaper than ``concurrent.futures.Future`` (no lock or condition until somebody waits, and
    the result object is built only when asked for), usable from threads (:meth:`result`) and
    from asyncio (``await future``). Callbacks run on the producer's event-loop thread and must
    be quick.
    """

    __slots__ = ("_attempts", "_callbacks", "_event", "_index", "_result")

    def __init__(self) -> None:
        self._result: Any = PENDING
        self._callbacks: list[Callable[[RecordFuture], None]] | None = None
        self._event: threading.Event | None = None
        # _index and _attempts are set with a Delivery result, the only time they are read.

    def done(self) -> bool:
        """True once the record is delivered or dead-lettered."""
        return self._result is not PENDING

    def _final(self) -> RecordResult:
        result = self._result
        if isinstance(result, Delivery):
            result = self._result = RecordResult(
                Outcome.DELIVERED,
                shard_id=result.shard_id,
                sequence_number=result.sequence_number,
                sub_sequence_number=self._index if result.aggregated else 0,
                attempts=self._attempts,
            )
        final: RecordResult = result
        return final

    def result(self, timeout: float | None = None) -> RecordResult:
        """Wait for the record to be done and return its result.

        Raises:
            TimeoutError: the record was not done within ``timeout`` seconds.
        """
        if self._result is PENDING:
            event = self._event
            if event is None:
                with _EVENT_LOCK:
                    if self._event is None:
                        self._event = threading.Event()
                    event = self._event
            if self._result is PENDING and not event.wait(timeout):
                raise TimeoutError("record not done in time")
        return self._final()

    def add_done_callback(self, callback: Callable[[RecordFuture], None]) -> None:
        """Call ``callback(self)`` once done (at once if already done)."""
        with _EVENT_LOCK:
            pending = self._result is PENDING
            if pending:
                if self._callbacks is None:
                    self._callbacks = []
                self._callbacks.append(callback)
        if not pending:
            callback(self)
        elif self._result is not PENDING:
            # Completed while we appended, possibly without seeing our callback.
            self._run_callbacks()

    def _run_callbacks(self) -> None:
        with _EVENT_LOCK:
            callbacks, self._callbacks = self._callbacks, None
        if callbacks:
            for callback in callbacks:
                callback(self)

    def set_result(self, result: RecordResult) -> None:
        """Resolve the future. Called by the producer only; a second call is ignored."""
        self._complete(result)

    def set_delivered(self, delivery: Delivery, index: int, attempts: int) -> None:
        """Resolve as delivered without building a result object until one is asked for."""
        self._index = index
        self._attempts = attempts
        self._complete(delivery)

    def _complete(self, value: Any) -> None:
        if self._result is not PENDING:
            return
        if self._event is None and self._callbacks is None:
            self._result = value
            # A waiter may have appeared between the check and the store: look again.
            if self._event is None and self._callbacks is None:
                return
        with _EVENT_LOCK:
            self._result = value
        self._wake_waiters()

    def _wake_waiters(self) -> None:
        """Wake threads waiting in result() and run callbacks, once the result is stored.

        Whoever stores the result without the lock calls this when it then sees a waiter; a
        waiter appearing after the store sees the result itself, so none is missed.
        """
        event = self._event
        if event is not None:
            event.set()
        self._run_callbacks()

    def __await__(self) -> Generator[Any, None, RecordResult]:
        if self._result is PENDING:
            loop = asyncio.get_running_loop()
            waiter: asyncio.Future[None] = loop.create_future()

            def wake(_: RecordFuture) -> None:
                def set_done() -> None:
                    if not waiter.done():
                        waiter.set_result(None)

                loop.call_soon_threadsafe(set_done)

            self.add_done_callback(wake)
            yield from waiter.__await__()
        return self._final()


# One lock for the rare paths (a waiter or callback appearing while the record is in flight);
# the common path (resolve with nobody waiting) takes it once, uncontended.
_EVENT_LOCK = threading.Lock()
