"""Helpers of the integration tests: read a stream back, poll a condition, inspect shards.

Everything here talks to the endpoint directly through :class:`KinesisTransport` (never through
a fault proxy), so what it reads is what the emulator really stored.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import orjson
import pytest

from kingest.dlq import DeadLetterQueue, DlqEntry
from kingest.errors import ConfigError
from kingest.local.kinesalite import ensure_installed
from kingest.partition import hash_key_of, parse_explicit_hash_key
from kingest.producer.deaggregate import deaggregate
from kingest.producer.transport import KinesisTransport

T = TypeVar("T")

# GetRecords answers at most this many records per call (the service limit).
GET_RECORDS_LIMIT = 10_000


class ReadRecord(NamedTuple):
    """One user record as stored in the stream (after de-aggregation)."""

    shard_id: str
    partition_key: str
    data: bytes
    explicit_hash_key: str | None
    sequence_number: str
    sub_sequence_number: int

    @property
    def hash_key(self) -> int:
        """The hash key Kinesis (and the KCL) places this user record by."""
        if self.explicit_hash_key is not None:
            return parse_explicit_hash_key(self.explicit_hash_key)
        return hash_key_of(self.partition_key)


class ShardRange(NamedTuple):
    """A shard (open or closed) and its hash-key range, both ends included."""

    shard_id: str
    start: int
    end: int
    closed: bool

    def owns(self, hash_key: int) -> bool:
        return self.start <= hash_key <= self.end


def run(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine on a fresh event loop (tests are synchronous functions)."""
    return asyncio.run(factory())


def call(endpoint_url: str, operation: str, params: dict[str, Any]) -> dict[str, Any]:
    """One Kinesis API call straight to the endpoint."""

    async def go() -> dict[str, Any]:
        transport = KinesisTransport(endpoint_url=endpoint_url, region="us-east-1")
        try:
            return await transport.call(operation, params)
        finally:
            await transport.close()

    return run(go)


async def _list_shards(transport: KinesisTransport, stream: str) -> list[dict[str, Any]]:
    return await transport.list_shards(stream)


def list_shards(endpoint_url: str, stream: str) -> list[ShardRange]:
    """Every shard of the stream, closed ones included, in ListShards order."""

    async def go() -> list[dict[str, Any]]:
        transport = KinesisTransport(endpoint_url=endpoint_url, region="us-east-1")
        try:
            return await _list_shards(transport, stream)
        finally:
            await transport.close()

    return [
        ShardRange(
            s["ShardId"],
            int(s["HashKeyRange"]["StartingHashKey"]),
            int(s["HashKeyRange"]["EndingHashKey"]),
            "EndingSequenceNumber" in s.get("SequenceNumberRange", {}),
        )
        for s in run(go)
    ]


async def _read_shard(transport: KinesisTransport, stream: str, shard_id: str) -> list[ReadRecord]:
    answer = await transport.call(
        "GetShardIterator",
        {"StreamName": stream, "ShardId": shard_id, "ShardIteratorType": "TRIM_HORIZON"},
    )
    iterator = answer.get("ShardIterator")
    out: list[ReadRecord] = []
    while iterator:
        answer = await transport.call(
            "GetRecords", {"ShardIterator": iterator, "Limit": GET_RECORDS_LIMIT}
        )
        records = answer.get("Records", [])
        for record in records:
            data = base64.b64decode(record["Data"])
            ehk = record.get("ExplicitHashKey")
            for user in deaggregate(data, record["PartitionKey"], ehk):
                out.append(
                    ReadRecord(
                        shard_id,
                        user.partition_key,
                        user.data,
                        user.explicit_hash_key,
                        record["SequenceNumber"],
                        user.sub_sequence_number,
                    )
                )
        if not records:
            break  # caught up (an open shard) or nothing left before the end (a closed one)
        iterator = answer.get("NextShardIterator")
    return out


def read_stream(endpoint_url: str, stream: str) -> list[ReadRecord]:
    """Every user record of every shard (closed ones too), in per-shard order."""

    async def go() -> list[ReadRecord]:
        transport = KinesisTransport(endpoint_url=endpoint_url, region="us-east-1")
        try:
            out: list[ReadRecord] = []
            for shard in await _list_shards(transport, stream):
                out.extend(await _read_shard(transport, stream, shard["ShardId"]))
            return out
        finally:
            await transport.close()

    return run(go)


def read_all(endpoint_url: str, stream: str) -> list[tuple[str, str, bytes]]:
    """Every user record as ``(shard_id, partition_key, data)``, in per-shard order."""
    return [(r.shard_id, r.partition_key, r.data) for r in read_stream(endpoint_url, stream)]


def wait_until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``check`` every 20 ms until it is true; AssertionError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}")
        time.sleep(0.02)


def make_payload(run_id: str, i: int, **extra: Any) -> dict[str, Any]:
    """A JSON payload carrying a unique id, so read-back can be checked as a set."""
    return {"id": f"{run_id}-{i}", "i": i, **extra}


def payload_id(data: bytes) -> str | None:
    """The id of a payload made by :func:`make_payload`, or None for foreign data."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return value.get("id") if isinstance(value, dict) else None


def ids_read(records: list[ReadRecord]) -> list[str]:
    """Ids of the records read, duplicates kept."""
    return [i for i in (payload_id(r.data) for r in records) if i is not None]


def dlq_entries(directory: str | Path) -> list[DlqEntry]:
    """Every readable entry of a dead-letter directory (an unreadable line fails the test)."""
    errors: list[tuple[Path, int, str]] = []
    entries = [entry for _, _, entry in DeadLetterQueue(directory).entries(errors=errors)]
    assert not errors, f"unreadable dead-letter lines: {errors}"
    return entries


def misplaced(records: list[ReadRecord], shards: list[ShardRange]) -> list[ReadRecord]:
    """Records stored on a shard whose hash range does not hold their hash key.

    The KCL drops such sub-records of an aggregate, so the producer must never cause them.
    """
    by_id = {s.shard_id: s for s in shards}
    return [r for r in records if not by_id[r.shard_id].owns(r.hash_key)]


def kcl_visible(records: list[ReadRecord], shards: list[ShardRange]) -> list[ReadRecord]:
    """The records a KCL consumer hands out: sub-records outside their shard's range are dropped.

    After resharding, an aggregate built for a shard that has just split may land on one child
    while carrying sub-records of the other; the KCL discards those, so the producer must send
    them again. What counts for a consumer is this list.
    """
    by_id = {s.shard_id: s for s in shards}
    return [r for r in records if by_id[r.shard_id].owns(r.hash_key)]


def require_embedded_endpoint() -> None:
    """Install the embedded endpoint, or skip for want of Node.js; under CI=true, fail instead
    so a CI image without Node.js cannot pass by skipping."""
    try:
        ensure_installed(quiet=True)
    except ConfigError as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"embedded Kinesis endpoint unavailable: {exc}")
        pytest.skip(f"embedded Kinesis endpoint unavailable: {exc}")


def free_port() -> int:
    """A TCP port nothing listens on now (for a server the test starts on it next)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
