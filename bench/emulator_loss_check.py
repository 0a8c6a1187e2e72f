"""Loss check of the embedded Kinesis endpoint: is every acknowledged record stored exactly once?

Concurrent writers send PutRecords through kingest's transport into a fresh stream; entries the
endpoint rejects are sent again until acknowledged. Then every shard is read back from
TRIM_HORIZON and compared with what was acknowledged: stored, missing, duplicated, unexpected,
and whether the stored sequence numbers are exactly the acknowledged ones.

Workload: 80,000 records of 100 bytes by default, 16 writers, batches of 100, unique partition
keys (spread over every shard), against a stream of 1 shard and one of 4.

Run: .venv/bin/python bench/emulator_loss_check.py [--records N] [--writers W] [--batch B]
         [--size BYTES] [--shards 1,4] [--endpoint-url URL]
Exit status 1 when anything acknowledged is missing or stored twice.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from kingest.local.kinesalite import LocalKinesis, create_stream
from kingest.producer.transport import KinesisTransport

MAX_ATTEMPTS = 10


@dataclass
class Written:
    acknowledged: dict[bytes, str] = field(default_factory=dict)  # payload -> sequence number
    rejected_entries: int = 0
    requests: int = 0


def payload(run: str, writer: int, index: int, size: int) -> bytes:
    ident = f"{run}/{writer}/{index}/".encode()
    return ident + b"x" * max(0, size - len(ident))


async def write(
    transport: KinesisTransport,
    stream: str,
    run: str,
    writer: int,
    count: int,
    batch: int,
    size: int,
    written: Written,
) -> None:
    for start in range(0, count, batch):
        pending = [payload(run, writer, i, size) for i in range(start, min(start + batch, count))]
        for attempt in range(MAX_ATTEMPTS):
            answer = await transport.call(
                "PutRecords",
                {
                    "StreamName": stream,
                    "Records": [
                        {"Data": base64.b64encode(p).decode(), "PartitionKey": p[:40].decode()}
                        for p in pending
                    ],
                },
            )
            written.requests += 1
            retry = []
            for data, entry in zip(pending, answer["Records"], strict=True):
                if "SequenceNumber" in entry:
                    written.acknowledged[data] = entry["SequenceNumber"]
                else:
                    retry.append(data)
            written.rejected_entries += len(retry)
            if not retry:
                break
            pending = retry
            await asyncio.sleep(0.05 * 2**attempt)
        else:
            raise RuntimeError(f"{len(pending)} entries still rejected after {MAX_ATTEMPTS} tries")


async def read_all(transport: KinesisTransport, stream: str) -> list[dict[str, Any]]:
    shards = (await transport.call("ListShards", {"StreamName": stream}))["Shards"]
    records: list[dict[str, Any]] = []
    for shard in shards:
        iterator = (
            await transport.call(
                "GetShardIterator",
                {
                    "StreamName": stream,
                    "ShardId": shard["ShardId"],
                    "ShardIteratorType": "TRIM_HORIZON",
                },
            )
        )["ShardIterator"]
        while iterator:
            page = await transport.call("GetRecords", {"ShardIterator": iterator, "Limit": 10000})
            if not page["Records"]:
                break  # caught up with everything written before this call
            records += page["Records"]
            iterator = page.get("NextShardIterator")
    return records


async def check(url: str, shards: int, args: argparse.Namespace) -> bool:
    transport = KinesisTransport(endpoint_url=url, max_connections=args.writers)
    run = uuid.uuid4().hex[:8]
    stream = f"losscheck-{shards}-{run}"
    try:
        await create_stream(transport, stream, shards)
        written = Written()
        per_writer = [args.records // args.writers] * args.writers
        per_writer[0] += args.records - sum(per_writer)
        started = time.perf_counter()
        await asyncio.gather(
            *(
                write(transport, stream, run, w, n, args.batch, args.size, written)
                for w, n in enumerate(per_writer)
            )
        )
        write_s = time.perf_counter() - started
        started = time.perf_counter()
        stored = await read_all(transport, stream)
        read_s = time.perf_counter() - started
    finally:
        await transport.close()

    counts = Counter(base64.b64decode(record["Data"]) for record in stored)
    acknowledged = written.acknowledged
    missing = [p for p in acknowledged if p not in counts]
    unexpected = [p for p in counts if p not in acknowledged]
    duplicates = sum(n - 1 for n in counts.values())
    sequence_match = sorted(r["SequenceNumber"] for r in stored) == sorted(acknowledged.values())
    print(
        f"{shards} shard(s): sent {args.records:,} in {written.requests:,} PutRecords "
        f"({args.writers} writers, {write_s:.1f}s, {args.records / write_s:,.0f} records/s); "
        f"rejected entries re-sent: {written.rejected_entries:,}\n"
        f"    acknowledged {len(acknowledged):,}  stored {len(stored):,}  "
        f"distinct stored {len(counts):,}  missing {len(missing):,}  "
        f"duplicates {duplicates:,}  unexpected {len(unexpected):,}  "
        f"sequence numbers match: {'yes' if sequence_match else 'NO'}  (read in {read_s:.1f}s)"
    )
    return (
        len(acknowledged) == args.records
        and not missing
        and not duplicates
        and not unexpected
        and sequence_match
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=80_000)
    parser.add_argument("--writers", type=int, default=16)
    parser.add_argument("--batch", type=int, default=100, help="records per PutRecords (≤500)")
    parser.add_argument("--size", type=int, default=100, help="bytes per record")
    parser.add_argument("--shards", default="1,4", help="comma-separated shard counts")
    parser.add_argument("--endpoint-url", help="check this endpoint instead of starting one")
    args = parser.parse_args()
    shard_counts = [int(s) for s in args.shards.split(",")]

    async def run_all(url: str) -> bool:
        results = [await check(url, shards, args) for shards in shard_counts]
        return all(results)

    if args.endpoint_url:
        ok = asyncio.run(run_all(args.endpoint_url))
    else:
        with LocalKinesis() as local:
            print(f"kinesalite at {local.endpoint_url}")
            ok = asyncio.run(run_all(local.endpoint_url))
    print("RESULT:", "no loss, no duplicates" if ok else "LOSS OR DUPLICATES")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
