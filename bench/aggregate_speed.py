"""Micro-benchmark of kingest.producer.aggregate: ns per add(), per fill() and per encode().

Workload: 300-byte records, partition keys drawn at random from 5,000 distinct keys (no
explicit hash keys), packed into aggregates of at most 1 MiB (about 3,300 records each).

Run: .venv/bin/python bench/aggregate_speed.py [--records N] [--repeats R]
"""

from __future__ import annotations

import argparse
import os
import random
import time
from collections import deque

from kingest.producer.aggregate import Aggregator
from kingest.producer.deaggregate import deaggregate

RECORD_SIZE = 300
DISTINCT_KEYS = 5_000
MAX_AGGREGATE = 1024 * 1024


def make_records(count: int, seed: int = 7) -> list[tuple[str, None, bytes]]:
    rng = random.Random(seed)
    keys = [f"device-{i:05d}-{rng.getrandbits(32):08x}" for i in range(DISTINCT_KEYS)]
    pool = os.urandom(RECORD_SIZE * 1024)
    return [
        (
            keys[rng.randrange(DISTINCT_KEYS)],
            None,
            pool[(i % 1024) * RECORD_SIZE : (i % 1024 + 1) * RECORD_SIZE],
        )
        for i in range(count)
    ]


def split_into_batches(
    records: list[tuple[str, None, bytes]],
) -> list[list[tuple[str, None, bytes]]]:
    """Cut the records where a 1 MiB aggregate fills up (so timed loops need no size checks)."""
    batches: list[list[tuple[str, None, bytes]]] = []
    agg = Aggregator()
    batch: list[tuple[str, None, bytes]] = []
    for record in records:
        if agg.size_if_added(*record) > MAX_AGGREGATE:
            batches.append(batch)
            batch = []
            agg.clear()
        agg.add(*record)
        batch.append(record)
    if batch:
        batches.append(batch)
    return batches


def bench_add(batches: list[list[tuple[str, None, bytes]]]) -> tuple[float, float, int]:
    """Return (ns per add, ns per encode, total encoded bytes); one aggregator, reused."""
    agg = Aggregator()
    add = agg.add
    add_ns = encode_ns = 0
    total_bytes = 0
    for batch in batches:
        agg.clear()
        t0 = time.perf_counter_ns()
        for pk, ehk, data in batch:
            add(pk, ehk, data)
        t1 = time.perf_counter_ns()
        blob = agg.encode()
        t2 = time.perf_counter_ns()
        add_ns += t1 - t0
        encode_ns += t2 - t1
        total_bytes += len(blob)
    n = sum(len(b) for b in batches)
    return add_ns / n, encode_ns / len(batches), total_bytes


def bench_checked_add(records: list[tuple[str, None, bytes]]) -> float:
    """ns per record for the fill loop a producer runs: size_if_added() then add()."""
    agg = Aggregator()
    size_if_added, add = agg.size_if_added, agg.add
    t0 = time.perf_counter_ns()
    for pk, ehk, data in records:
        if size_if_added(pk, ehk, data) > MAX_AGGREGATE:
            agg.clear()
        add(pk, ehk, data)
    return (time.perf_counter_ns() - t0) / len(records)


def bench_add_if_fits(records: list[tuple[str, None, bytes]]) -> float:
    """ns per record for the same fill loop with add_if_fits()."""
    agg = Aggregator()
    add_if_fits = agg.add_if_fits
    t0 = time.perf_counter_ns()
    for pk, ehk, data in records:
        if not add_if_fits(pk, ehk, data, MAX_AGGREGATE):
            agg.clear()
            agg.add(pk, ehk, data)
    return (time.perf_counter_ns() - t0) / len(records)


class _Queued:
    """A queued record as the producer holds it: the attributes fill() reads."""

    __slots__ = ("data", "explicit_hash_key", "partition_key")

    def __init__(self, partition_key: str, explicit_hash_key: None, data: bytes) -> None:
        self.partition_key = partition_key
        self.explicit_hash_key = explicit_hash_key
        self.data = data


def bench_fill(records: list[tuple[str, None, bytes]]) -> float:
    """ns per record for the producer's own fill loop: fill() from a queue of records."""
    queue = deque(_Queued(*record) for record in records)
    agg = Aggregator()
    t0 = time.perf_counter_ns()
    while queue:
        agg.clear()
        agg.fill(queue, [], MAX_AGGREGATE)
    return (time.perf_counter_ns() - t0) / len(records)


def bench_deaggregate(batches: list[list[tuple[str, None, bytes]]]) -> float:
    """ns per user record to deaggregate the aggregates."""
    blobs = []
    agg = Aggregator()
    for batch in batches:
        agg.clear()
        for record in batch:
            agg.add(*record)
        blobs.append(agg.encode())
    t0 = time.perf_counter_ns()
    n = 0
    for blob in blobs:
        n += len(deaggregate(blob, "outer"))
    return (time.perf_counter_ns() - t0) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=300_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    records = make_records(args.records)
    batches = split_into_batches(records)
    per_agg = len(records) / len(batches)
    print(
        f"{len(records):,} records of {RECORD_SIZE} B, {DISTINCT_KEYS:,} distinct keys, "
        f"{len(batches)} aggregates of <= {MAX_AGGREGATE:,} B (~{per_agg:,.0f} records each); "
        f"best of {args.repeats}"
    )
    add_ns, encode_ns = float("inf"), float("inf")
    checked_ns = fits_ns = fill_ns = deagg_ns = float("inf")
    total = 0
    for _ in range(args.repeats):
        a, e, total = bench_add(batches)
        add_ns, encode_ns = min(add_ns, a), min(encode_ns, e)
        checked_ns = min(checked_ns, bench_checked_add(records))
        fits_ns = min(fits_ns, bench_add_if_fits(records))
        fill_ns = min(fill_ns, bench_fill(records))
        deagg_ns = min(deagg_ns, bench_deaggregate(batches))
    avg_size = total / len(batches)
    print(f"add()                        {add_ns:8.0f} ns/record  ({1e9 / add_ns:,.0f} records/s)")
    print(f"size_if_added() + add()      {checked_ns:8.0f} ns/record")
    print(f"add_if_fits()                {fits_ns:8.0f} ns/record")
    print(f"fill()                       {fill_ns:8.0f} ns/record")
    print(
        f"encode()                     {encode_ns / 1e3:8.0f} µs/aggregate of {avg_size:,.0f} B"
        f"  ({encode_ns / per_agg:.0f} ns/record, {avg_size / encode_ns * 1e3:,.0f} MB/s)"
    )
    print(f"deaggregate()                {deagg_ns:8.0f} ns/record")


if __name__ == "__main__":
    main()
