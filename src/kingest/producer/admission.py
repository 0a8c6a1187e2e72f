"""Admission: how a put() call's record enters the producer's bounded buffer, from any thread.

:class:`Admission` is the half of :class:`~kingest.producer.core.ProducerCore` that callers'
threads run: serialising a record, hashing its partition key (remembered per key), claiming
buffer room under the gate's lock (or raising :class:`NoRoom` for the caller to wait, or
dead-lettering under ``drop_newest``), and waking the sender loop when what was admitted is
worth a look. The usual record takes an inlined path: each Python step per record is a
measurable share of the CPU. Everything after admission runs on the sender's loop
(:mod:`kingest.producer.core`).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from itertools import islice
from typing import Any

import orjson

from kingest.config import ProducerConfig
from kingest.errors import BufferFullError, ProducerClosedError
from kingest.partition import computed_hash_key
from kingest.producer.batch import Pending, make_pending, serialize
from kingest.producer.buffer import BufferGate
from kingest.producer.limits import PARTITION_KEY_MAX_CHARS
from kingest.producer.outcomes import Outcomes
from kingest.producer.packing import RequestPacker
from kingest.producer.stats import ProducerStats
from kingest.record import PENDING, DlqReason, RecordFuture

_dumps = orjson.dumps
_join = b"".join
_monotonic = time.monotonic

DEFAULT_SOURCE = "default"
# The wake threshold once a wake is requested: no admission wakes the sender again.
NEVER = float("inf")
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


class Admission:
    """The admission half of the producer's engine (a base of ProducerCore, which sets every
    attribute below in its ``__init__``)."""

    config: ProducerConfig
    gate: BufferGate
    outcomes: Outcomes
    stats: ProducerStats
    _packer: RequestPacker
    _compression: Callable[[bytes], bytes] | None
    _ttl_s: float
    _closed: bool
    _key_hashes: dict[str, int]
    _record_limit: int
    # The sender-waking state: see ProducerCore.__init__.
    _loop: asyncio.AbstractEventLoop | None
    _loop_thread: int | None
    _wake_event: asyncio.Event | None
    _wake_requested: bool
    _sender_idle: bool
    _wake_bytes: int
    _record_weight: int
    _inbound_weight: int
    _wake_at: float

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
        self._wake_at = NEVER
        if threading.get_ident() == self._loop_thread:
            self._wake_event.set()
        else:
            # The loop may be gone: close() ended after the record was admitted, and its last
            # drain took the record, so there is nobody left to wake.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._wake_event.set)
