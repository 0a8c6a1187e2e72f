"""The metrics interface: families of samples, collected on demand from live counters.

Counting happens where the work is done, in plain integer fields updated per batch (the
producer's and sources' statistics) and in :class:`Histogram` objects; nothing is formatted or
allocated per record. A :class:`Registry` holds *collectors*, functions that turn those live
values into :class:`MetricFamily` objects when somebody asks (a Prometheus scrape, a CloudWatch
flush, ``kingest top``), so an agent that nobody watches pays nothing for its metrics.
"""

from __future__ import annotations

import bisect
import enum
import math
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

# Seconds, for latencies from a millisecond to two minutes (a record's default time-to-live
# is far above that, but a record that slow is an incident, not a distribution).
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
)
# User records per Kinesis record: 1 when aggregation is off, up to thousands when on.
PER_RECORD_BUCKETS: tuple[float, ...] = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)

Labels = tuple[tuple[str, str], ...]


class MetricType(enum.StrEnum):
    """The Prometheus metric types kingest uses."""

    COUNTER = "counter"  # only grows (until the process restarts)
    GAUGE = "gauge"  # goes up and down
    HISTOGRAM = "histogram"  # cumulative buckets, a sum and a count


@dataclass(frozen=True, slots=True)
class Sample:
    """One value of a family: its sample name (``..._bucket``, ``..._sum`` for histograms),
    its labels in a fixed order, and the value."""

    name: str
    labels: Labels
    value: float

    def label(self, name: str) -> str | None:
        """The value of one label, or None when the sample lacks it."""
        for key, value in self.labels:
            if key == name:
                return value
        return None


@dataclass(slots=True)
class MetricFamily:
    """A metric name with its type, help text and samples."""

    name: str
    type: MetricType
    help: str
    samples: list[Sample] = field(default_factory=list)

    def add(self, value: float, labels: Labels = (), suffix: str = "") -> None:
        """Append a sample of this family (``suffix``: ``_bucket``, ``_sum``, ``_count``)."""
        self.samples.append(Sample(self.name + suffix, labels, value))

    def add_histogram(self, snapshot: HistogramSnapshot, labels: Labels = ()) -> None:
        """Append a histogram's cumulative buckets (with ``+Inf``), sum and count."""
        running = 0
        for bound, count in zip(snapshot.bounds, snapshot.counts, strict=False):
            running += count
            self.add(running, (*labels, ("le", _bound_text(bound))), "_bucket")
        self.add(snapshot.count, (*labels, ("le", "+Inf")), "_bucket")
        self.add(snapshot.sum, labels, "_sum")
        self.add(snapshot.count, labels, "_count")

    def value(self, **labels: str) -> float:
        """The sum of the samples named like the family whose labels include ``labels``."""
        wanted = set(labels.items())
        return sum(s.value for s in self.samples if s.name == self.name and wanted <= set(s.labels))


@dataclass(frozen=True, slots=True)
class HistogramSnapshot:
    """A histogram's state: per-bucket (not cumulative) counts, the overflow in ``count``."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    sum: float
    count: int

    def merged(self, other: HistogramSnapshot) -> HistogramSnapshot:
        """Both histograms' observations together (same bounds)."""
        return HistogramSnapshot(
            self.bounds,
            tuple(a + b for a, b in zip(self.counts, other.counts, strict=True)),
            self.sum + other.sum,
            self.count + other.count,
        )


class Histogram:
    """Observations counted into fixed buckets; cheap enough to call per batch.

    Args:
        bounds: the buckets' upper bounds, ascending (``+Inf`` is implied).
    """

    __slots__ = ("_counts", "_lock", "bounds", "count", "sum")

    def __init__(self, bounds: Sequence[float] = LATENCY_BUCKETS_S) -> None:
        self.bounds = tuple(bounds)
        # One slot per bound plus the overflow slot.
        self._counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0
        self._lock = threading.Lock()

    def observe(self, value: float, times: int = 1) -> None:
        """Count ``times`` observations of ``value``."""
        index = bisect.bisect_left(self.bounds, value)
        with self._lock:
            self._counts[index] += times
            self.sum += value * times
            self.count += times

    def observe_many(self, values: Iterable[float]) -> None:
        """Count one observation of each value, under one lock."""
        bounds = self.bounds
        counts = self._counts
        with self._lock:
            for value in values:
                counts[bisect.bisect_left(bounds, value)] += 1
                self.sum += value
                self.count += 1

    def observe_before(
        self, items: Sequence[Any], key: Callable[[Any], float], origin: float
    ) -> None:
        """Observe ``origin - key(item)`` for each item, the items sorted by ``key``.

        The values fall as the items go on, so each bucket's count is found by a binary search
        over the items: a few dozen comparisons for a batch of thousands, instead of one
        bucket lookup per item.
        """
        count = len(items)
        if not count:
            return
        per_bucket = []
        below = 0  # items whose value is at most the current bound
        for bound in self.bounds:
            # value <= bound  <=>  key(item) >= origin - bound
            within = count - bisect.bisect_left(items, origin - bound, key=key)
            per_bucket.append(within - below)
            below = within
        total = count * origin - math.fsum(map(key, items))
        counts = self._counts
        with self._lock:
            for index, n in enumerate(per_bucket):
                counts[index] += n
            counts[-1] += count - below
            self.sum += total
            self.count += count

    def snapshot(self) -> HistogramSnapshot:
        """The counts now (per bucket, without the overflow slot)."""
        with self._lock:
            return HistogramSnapshot(self.bounds, tuple(self._counts[:-1]), self.sum, self.count)


def empty_snapshot(bounds: Sequence[float] = LATENCY_BUCKETS_S) -> HistogramSnapshot:
    """A histogram with no observations."""
    return HistogramSnapshot(tuple(bounds), (0,) * len(bounds), 0.0, 0)


Collector = Callable[[], Iterable[MetricFamily]]


class Registry:
    """The collectors of one process, and the families they yield when asked."""

    def __init__(self) -> None:
        self._collectors: list[Collector] = []
        self._lock = threading.Lock()

    def register(self, collector: Collector) -> None:
        """Add a collector; it is called on every :meth:`collect`."""
        with self._lock:
            self._collectors.append(collector)

    def collect(self) -> list[MetricFamily]:
        """Every family, those of the same name from several collectors merged, by name."""
        with self._lock:
            collectors = list(self._collectors)
        merged: dict[str, MetricFamily] = {}
        for collector in collectors:
            for family in collector():
                known = merged.get(family.name)
                if known is None:
                    merged[family.name] = MetricFamily(
                        family.name, family.type, family.help, list(family.samples)
                    )
                else:
                    known.samples.extend(family.samples)
        return [merged[name] for name in sorted(merged)]


def _bound_text(bound: float) -> str:
    # Prometheus clients print bounds as floats ("0.005", "1.0"); integers keep a ".0".
    return repr(float(bound))
