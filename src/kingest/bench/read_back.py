"""Read-back of a ``kingest bench`` run: what a stream really holds of one run's records.

This module's one job is to read every shard of a stream (GetRecords, KPL aggregates
de-aggregated) and count the user records that carry a run's id, telling distinct records from
duplicates and from other runs' records, with the Kinesis records and bytes that carried them.
:mod:`kingest.bench.runner` calls it after a run on the embedded endpoint, and on a custom
endpoint when asked.
"""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass
from typing import Any

import orjson

from kingest.errors import KinesisError
from kingest.producer.deaggregate import deaggregate
from kingest.producer.transport import KinesisTransport

READ_LIMIT = 10_000


@dataclass
class ReadBack:
    """What a stream held of one run after it."""

    user_records: int = 0  # user records of this run, duplicates included
    distinct: int = 0
    duplicates: int = 0
    other_records: int = 0  # user records of other runs or not ours
    kinesis_records: int = 0  # Kinesis records carrying the run's records
    kinesis_bytes: int = 0  # their data + partition key


async def read_back(
    transport: KinesisTransport,
    stream: str,
    run_id: str,
    records: int,
    *,
    since: float | None = None,
) -> ReadBack:
    """Read every shard of a stream and count the user records of one run.

    Args:
        transport: where the stream is.
        stream: the stream's name.
        run_id: the ``run`` field of the run's records.
        records: how many records the run put (their ids are 0..records-1).
        since: read from this Unix time (AT_TIMESTAMP); None reads from TRIM_HORIZON.
    """
    shards = await transport.list_shards(stream)
    seen = bytearray(records)
    found = ReadBack()
    for shard in shards:
        position: dict[str, Any] = {"ShardIteratorType": "TRIM_HORIZON"}
        if since is not None:
            position = {"ShardIteratorType": "AT_TIMESTAMP", "Timestamp": since}
        answer = await _call_with_retries(
            transport,
            "GetShardIterator",
            {"StreamName": stream, "ShardId": shard["ShardId"], **position},
        )
        iterator = answer.get("ShardIterator")
        while iterator:
            answer = await _call_with_retries(
                transport, "GetRecords", {"ShardIterator": iterator, "Limit": READ_LIMIT}
            )
            batch = answer.get("Records", [])
            for entry in batch:
                data = base64.b64decode(entry["Data"])
                key = str(entry["PartitionKey"])
                ours = False
                for user in deaggregate(data, key, entry.get("ExplicitHashKey")):
                    ours = _tally(found, seen, user.data, run_id, records) or ours
                if ours:
                    found.kinesis_records += 1
                    found.kinesis_bytes += len(data) + len(key.encode())
            iterator = answer.get("NextShardIterator")
            if not batch and not answer.get("MillisBehindLatest"):
                break
    return found


def _tally(found: ReadBack, seen: bytearray, data: bytes, run_id: str, records: int) -> bool:
    """Count one user record; True when it is one of the run's."""
    try:
        payload = orjson.loads(data)
        ours = isinstance(payload, dict) and payload.get("run") == run_id
        index = payload["id"] if ours else -1
    except (orjson.JSONDecodeError, KeyError, TypeError):
        ours, index = False, -1
    if not ours or not isinstance(index, int) or not 0 <= index < records:
        found.other_records += 1
        return False
    found.user_records += 1
    if seen[index]:
        found.duplicates += 1
    else:
        seen[index] = 1
        found.distinct += 1
    return True


async def _call_with_retries(
    transport: KinesisTransport, operation: str, params: dict[str, Any], attempts: int = 10
) -> dict[str, Any]:
    delay = 0.2
    for attempt in range(attempts):
        try:
            return await transport.call(operation, params)
        except KinesisError as exc:
            if not exc.retriable or attempt == attempts - 1:
                raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0)
    raise AssertionError("unreachable")
