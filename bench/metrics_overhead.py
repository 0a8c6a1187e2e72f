"""What metrics cost the send path: the producer with and without them, in one run.

Each round sends the same records through kingest's Producer to a null endpoint (a child
process that stores nothing, so the producer's own CPU is what is measured), twice:

* ``with``: the producer as shipped (put-to-acceptance latency histograms, records per Kinesis
  record, per-shard counts);
* ``with+scrape``: the same, and a thread collecting and rendering the Prometheus text every
  100 ms, ten times more often than a usual scrape interval;
* ``without``: the observations added for metrics switched off (no-op histograms and latency),
  no scrapes; what is left is the counting ``Producer.stats()`` always needs.

The order rotates between rounds so that a slowly changing machine load favours none.
The report gives CPU seconds per 100k records and throughput for each, and the ratio.

Run: .venv/bin/python bench/metrics_overhead.py [--records N] [--rounds R]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kingest.bench.worker import generate
from kingest.local.null_endpoint import NullEndpoint
from kingest.metrics.events import producer_families
from kingest.metrics.prometheus import render
from kingest.metrics.registry import Histogram
from kingest.producer.producer import Producer
from kingest.producer.stats import ProducerStats
from kingest.runtime import tune_for_throughput


@contextmanager
def metrics_off() -> Iterator[None]:
    """Switch off the observations that exist for metrics alone."""
    saved = (ProducerStats.accepted, Histogram.observe, Histogram.observe_many)

    def ignore(*_: Any) -> None:
        return None

    ProducerStats.accepted = ignore  # type: ignore[method-assign]
    Histogram.observe = ignore  # type: ignore[method-assign]
    Histogram.observe_many = ignore  # type: ignore[method-assign]
    try:
        yield
    finally:
        ProducerStats.accepted, Histogram.observe, Histogram.observe_many = saved  # type: ignore[method-assign]


def one_run(
    endpoint_url: str, records: list[tuple[dict[str, Any], str]], scrape: bool
) -> dict[str, float]:
    stream = f"metrics-bench-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as dlq:
        producer = Producer(stream, endpoint_url=endpoint_url, dlq_dir=dlq, rate_limit=False)
        stop = threading.Event()
        scrapes = 0

        def scraper() -> None:
            nonlocal scrapes
            while not stop.wait(0.1):
                render(producer_families([producer._core]))
                scrapes += 1

        thread = threading.Thread(target=scraper, daemon=True)
        cpu = time.process_time()
        wall = time.perf_counter()
        if scrape:
            thread.start()
        put = producer.put
        for payload, key in records:
            put(payload, key, source="bench")
        producer.flush()
        wall = time.perf_counter() - wall
        cpu = time.process_time() - cpu
        stop.set()
        if scrape:
            thread.join()
        stats = producer.stats()
        producer.close()
    assert stats["total_sent"] == len(records), stats
    return {"cpu_s": cpu, "wall_s": wall, "scrapes": scrapes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--record-bytes", type=int, default=300)
    parser.add_argument("--keys", type=int, default=5_000)
    args = parser.parse_args()
    tune_for_throughput()
    records = list(generate(args.records, args.record_bytes, args.keys, uuid.uuid4().hex[:8]))
    modes = ("without", "with", "with+scrape")
    results: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
    with NullEndpoint(shards=4) as endpoint:
        one_run(endpoint.endpoint_url, records[:20_000], scrape=False)  # warm-up
        for round_index in range(args.rounds):
            # Rotate the order so that a slowly changing load favours no mode.
            shift = round_index % len(modes)
            for mode in modes[shift:] + modes[:shift]:
                if mode == "without":
                    with metrics_off():
                        results[mode].append(one_run(endpoint.endpoint_url, records, scrape=False))
                else:
                    scrape = mode == "with+scrape"
                    results[mode].append(one_run(endpoint.endpoint_url, records, scrape=scrape))
    per_100k = 100_000 / args.records
    print(f"{args.records:,} records of {args.record_bytes} bytes, {args.rounds} rounds (median)")
    print(f"{'':12} {'CPU s/100k':>11} {'records/s':>11} {'scrapes':>8}")
    medians = {}
    for mode, runs in results.items():
        cpu = statistics.median(r["cpu_s"] for r in runs) * per_100k
        rate = statistics.median(args.records / r["wall_s"] for r in runs)
        scrapes = statistics.median(r["scrapes"] for r in runs)
        medians[mode] = (cpu, rate)
        print(f"{mode:12} {cpu:11.3f} {rate:11,.0f} {scrapes:8.0f}")
    base_cpu, base_rate = medians["without"]
    for mode in modes[1:]:
        cpu, rate = medians[mode]
        print(
            f"{mode}/without: CPU {cpu / base_cpu:.3f}x, throughput {rate / base_rate:.3f}x "
            "(the budget: throughput at least 0.95x)"
        )


if __name__ == "__main__":
    main()
