"""What ``kingest top`` shows: two scrapes of an agent made into the content of one screen.

:func:`build_view` turns the latest scrape and the one before it into a :class:`View`: rates
per second over the time between them, per-source rows and their totals, the buffer, retries
and dead letters broken down, shard heat and aggregation. :class:`Monitor` does the scraping
and keeps the previous scrape, so a loop of ``monitor.refresh()`` and
:func:`kingest.metrics.top_render.render` (which lays a view out as text) is the whole command.

The agent may not serve every family (a source that has not started, an older agent): a
missing family is None in the view (shown as ``-``), a present family without samples zero.
Families this view does not know are ignored.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from kingest.metrics.registry import MetricFamily
from kingest.metrics.scrape import ScrapeError, fetch

__all__ = [
    "Count",
    "Monitor",
    "Scrape",
    "ShardRow",
    "SourceRow",
    "View",
    "build_view",
    "histogram_quantile",
]

# The families read, as the agent names them (metrics/events.py emits them).
RECEIVED = "kingest_source_received_records_total"  # {source}
INVALID = "kingest_source_invalid_records_total"  # {source, reason}
LATENCY = "kingest_source_delivery_latency_seconds"  # histogram {source}
ACCEPTED = "kingest_producer_accepted_records_total"  # {source}
RETRIED = "kingest_producer_retried_records_total"  # {source, error_code}
THROTTLED = "kingest_producer_throttled_records_total"  # {source}
DLQ = "kingest_dlq_records_total"  # {source, reason}
BUFFERED_RECORDS = "kingest_producer_buffered_records"
BUFFERED_BYTES = "kingest_producer_buffered_bytes"
BUFFER_FILL = "kingest_producer_buffer_fill_ratio"
SHARD_RECORDS = "kingest_producer_shard_records_total"  # {stream, shard}
BLOCKED = "kingest_producer_blocked_seconds_total"  # {source}
LAG = "kingest_source_lag_seconds"  # gauge {source}, change-capture sources
SPOOLED = "kingest_source_spooled_events"  # gauge {source}, sources with a spool
SPOOL_BYTES = "kingest_source_spool_bytes"  # gauge {source}
PER_KINESIS_RECORD = "kingest_producer_user_records_per_kinesis_record"  # histogram
# Uptime: the agent's gauge, else the age of a start time (the agent's, or the standard one of
# the Prometheus clients).
UPTIME = "kingest_agent_uptime_seconds"
START_TIMES = ("kingest_agent_start_time_seconds", "process_start_time_seconds")

SHARDS_SHOWN = 10

Buckets = dict[float, float]  # upper bound ("le") -> cumulative count


@dataclass(frozen=True, slots=True)
class Scrape:
    """The families of one scrape, by name, and when it was taken."""

    families: Mapping[str, MetricFamily]
    monotonic_s: float
    wall_s: float

    @classmethod
    def of(
        cls,
        families: Iterable[MetricFamily],
        monotonic_s: float | None = None,
        wall_s: float | None = None,
    ) -> Scrape:
        """A scrape of these families, taken now unless the times are given."""
        return cls(
            {family.name: family for family in families},
            time.monotonic() if monotonic_s is None else monotonic_s,
            time.time() if wall_s is None else wall_s,
        )


@dataclass(frozen=True, slots=True)
class Count:
    """A counter: its value, and its rate over the interval (None on the first scrape)."""

    total: float
    rate: float | None


@dataclass(frozen=True, slots=True)
class SourceRow:
    """One source's line (or the totals line); None where the agent has no such family."""

    name: str
    received: Count | None
    accepted: Count | None
    retried: float | None
    throttled: float | None
    dlq: float | None
    invalid: float | None
    p50_s: float | None
    p99_s: float | None


@dataclass(frozen=True, slots=True)
class ShardRow:
    """One shard's records: total, per second, and its share of its stream's records (over
    the interval when the stream had any, else over all time)."""

    stream: str
    shard: str
    total: float
    rate: float | None
    share: float | None


@dataclass(frozen=True, slots=True)
class View:
    """Everything one frame shows. ``error`` set and nothing else: the scrape failed."""

    address: str
    wall_s: float
    error: str | None = None
    interval_s: float | None = None
    uptime_s: float | None = None
    sources: tuple[SourceRow, ...] = ()
    total: SourceRow | None = None
    buffered_records: float | None = None
    buffered_bytes: float | None = None
    buffer_fill_ratio: float | None = None
    records_per_kinesis_record: float | None = None
    retries_by_code: tuple[tuple[str, Count], ...] | None = None
    dlq_by_reason: tuple[tuple[str, Count], ...] | None = None
    shards: tuple[ShardRow, ...] | None = None
    shard_count: int = 0
    # Seconds each source's puts waited for buffer room: its rate is the share of the time.
    blocked: tuple[tuple[str, Count], ...] | None = None
    # Seconds from commit to read, per change-capture source.
    lag_s: tuple[tuple[str, float], ...] | None = None
    # Events on disk not yet committed, and the spool's bytes, per source with a spool.
    spooled: tuple[tuple[str, float], ...] | None = None
    spool_bytes: tuple[tuple[str, float], ...] | None = None


class Monitor:
    """Scrapes one endpoint and makes each scrape, with the one before it, into a view.

    Args:
        url: the metrics URL.
        timeout_s: the longest wait for one scrape.
        fetcher: the scrape function (tests pass their own).
    """

    def __init__(
        self,
        url: str,
        timeout_s: float = 5.0,
        fetcher: Callable[[str, float], list[MetricFamily]] = fetch,
    ) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self._fetch = fetcher
        self._previous: Scrape | None = None

    def refresh(self) -> View:
        """Scrape now.

        Returns:
            The view of this scrape against the last good one; when this one failed, a view
            whose ``error`` says why (the last good scrape stays the base of the next rates).
        """
        try:
            current = Scrape.of(self._fetch(self.url, self.timeout_s))
        except ScrapeError as exc:
            return View(self.url, time.time(), error=str(exc))
        view = build_view(self.url, current, self._previous)
        self._previous = current
        return view


def build_view(address: str, current: Scrape, previous: Scrape | None = None) -> View:
    """Compute a frame from a scrape and, for rates, the one before it.

    Args:
        address: what the header names (the URL scraped).
        current: the latest scrape.
        previous: an earlier scrape of the same agent; None gives no rates.

    Returns:
        The view. A counter that fell between the scrapes (the agent restarted) counts from
        zero, as Prometheus's ``rate()`` does.
    """
    seconds = None
    if previous is not None and current.monotonic_s > previous.monotonic_s:
        seconds = current.monotonic_s - previous.monotonic_s
    else:
        previous = None

    def counts(name: str, *labels: str) -> dict[tuple[str, ...], Count] | None:
        return _counts(name, labels, current, previous, seconds)

    received = counts(RECEIVED, "source")
    accepted = counts(ACCEPTED, "source")
    retried, throttled, dlq, invalid = (
        _totals(current.families.get(name), "source") for name in (RETRIED, THROTTLED, DLQ, INVALID)
    )
    latency = _histograms(current.families.get(LATENCY), "source")
    latency_before = _histograms(previous.families.get(LATENCY), "source") if previous else None
    names: set[str] = set()
    for counted in (received, accepted):
        names.update(key[0] for key in counted or ())
    for table in (retried, throttled, dlq, invalid, latency):
        names.update(table or ())

    rows = []
    for name in sorted(names):
        window = None
        if latency is not None and name in latency:
            window = _window(latency[name], (latency_before or {}).get(name))
        rows.append(
            SourceRow(
                name=name,
                received=_pick(received, (name,)),
                accepted=_pick(accepted, (name,)),
                retried=_total_of(retried, name),
                throttled=_total_of(throttled, name),
                dlq=_total_of(dlq, name),
                invalid=_total_of(invalid, name),
                p50_s=histogram_quantile(0.5, window) if window else None,
                p99_s=histogram_quantile(0.99, window) if window else None,
            )
        )

    all_latency = _histograms(current.families.get(LATENCY), None)
    all_before = _histograms(previous.families.get(LATENCY), None) if previous else None
    total_window = None
    if all_latency is not None:
        total_window = _window(all_latency.get("", {}), (all_before or {}).get(""))
    total = SourceRow(
        name="TOTAL",
        received=_sum_counts(received),
        accepted=_sum_counts(accepted),
        retried=_sum(retried),
        throttled=_sum(throttled),
        dlq=_sum(dlq),
        invalid=_sum(invalid),
        p50_s=histogram_quantile(0.5, total_window) if total_window else None,
        p99_s=histogram_quantile(0.99, total_window) if total_window else None,
    )

    shards, shard_count = _shard_heat(counts(SHARD_RECORDS, "stream", "shard"))
    return View(
        address=address,
        wall_s=current.wall_s,
        interval_s=seconds,
        uptime_s=_uptime(current),
        sources=tuple(rows),
        total=total,
        buffered_records=_gauge(current, BUFFERED_RECORDS),
        buffered_bytes=_gauge(current, BUFFERED_BYTES),
        buffer_fill_ratio=_gauge(current, BUFFER_FILL),
        records_per_kinesis_record=_mean(current, previous, PER_KINESIS_RECORD),
        retries_by_code=_breakdown(counts(RETRIED, "error_code")),
        dlq_by_reason=_breakdown(counts(DLQ, "reason")),
        shards=shards,
        shard_count=shard_count,
        blocked=_breakdown(counts(BLOCKED, "source")),
        lag_s=_per_source(current, LAG),
        spooled=_per_source(current, SPOOLED),
        spool_bytes=_per_source(current, SPOOL_BYTES),
    )


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """The q-quantile of a histogram, interpolated within its bucket like Prometheus's
    ``histogram_quantile`` (promql/quantile.go ``bucketQuantile``).

    Args:
        q: the quantile, 0 to 1.
        buckets: cumulative counts by upper bound, ``+Inf`` among them.

    Returns:
        The estimate; the highest finite bound when it falls in the ``+Inf`` bucket; None
        when there is no ``+Inf`` bucket, fewer than two buckets, or no observation.

    Raises:
        ValueError: q outside 0..1.
    """
    if not 0 <= q <= 1:
        raise ValueError(f"a quantile is between 0 and 1, not {q}")
    points = sorted(buckets.items())
    if len(points) < 2 or points[-1][0] != math.inf:
        return None
    # Counts scraped from several series at slightly different moments can fall by a little
    # from one bucket to the next; Prometheus forces them monotonic, and so do we.
    bounds = [bound for bound, _ in points]
    cumulative = []
    highest = 0.0
    for _, count in points:
        highest = max(highest, count)
        cumulative.append(highest)
    observations = cumulative[-1]
    if observations <= 0:
        return None
    rank = q * observations
    b = next((i for i, c in enumerate(cumulative[:-1]) if c >= rank), len(points) - 1)
    if b == len(points) - 1:
        return bounds[-2]
    if b == 0 and bounds[0] <= 0:
        return bounds[0]
    start = bounds[b - 1] if b > 0 else 0.0
    below = cumulative[b - 1] if b > 0 else 0.0
    in_bucket = cumulative[b] - below
    if in_bucket <= 0:
        return start
    return start + (bounds[b] - start) * ((rank - below) / in_bucket)


def _counts(
    name: str,
    labels: Sequence[str],
    current: Scrape,
    previous: Scrape | None,
    seconds: float | None,
) -> dict[tuple[str, ...], Count] | None:
    """A counter family's series grouped by ``labels``, each with its rate."""
    now = _sums(current.families.get(name), labels)
    if now is None:
        return None
    before = _sums(previous.families.get(name), labels) if previous is not None else None
    result = {}
    for key, total in now.items():
        rate = None
        if seconds is not None:
            delta = total - (before or {}).get(key, 0.0)
            if delta < 0:
                delta = total  # the counter restarted from zero
            rate = delta / seconds
        result[key] = Count(total, rate)
    return result


def _sums(
    family: MetricFamily | None, labels: Sequence[str]
) -> dict[tuple[str, ...], float] | None:
    """The family's own samples summed by the values of ``labels`` ("" where one is absent)."""
    if family is None:
        return None
    sums: dict[tuple[str, ...], float] = {}
    for sample in family.samples:
        if sample.name != family.name or math.isnan(sample.value):
            continue
        key = tuple(sample.label(label) or "" for label in labels)
        sums[key] = sums.get(key, 0.0) + sample.value
    return sums


def _totals(family: MetricFamily | None, label: str) -> dict[str, float] | None:
    sums = _sums(family, (label,))
    return None if sums is None else {key[0]: value for key, value in sums.items()}


def _total_of(table: dict[str, float] | None, name: str) -> float | None:
    return None if table is None else table.get(name, 0.0)


def _pick(table: dict[tuple[str, ...], Count] | None, key: tuple[str, ...]) -> Count | None:
    if table is None:
        return None
    return table.get(key, Count(0.0, None if _no_rates(table) else 0.0))


def _no_rates(table: dict[tuple[str, ...], Count]) -> bool:
    return any(count.rate is None for count in table.values())


def _sum(table: dict[str, float] | None) -> float | None:
    return None if table is None else sum(table.values())


def _sum_counts(table: dict[tuple[str, ...], Count] | None) -> Count | None:
    if table is None:
        return None
    rates = [count.rate for count in table.values()]
    rate = None if any(r is None for r in rates) else sum(r or 0.0 for r in rates)
    return Count(sum(count.total for count in table.values()), rate)


def _breakdown(
    table: dict[tuple[str, ...], Count] | None,
) -> tuple[tuple[str, Count], ...] | None:
    if table is None:
        return None
    rows = [(key[0], count) for key, count in table.items()]
    return tuple(sorted(rows, key=lambda row: (-row[1].total, row[0])))


def _histograms(family: MetricFamily | None, label: str | None) -> dict[str, Buckets] | None:
    """A histogram family's buckets per value of ``label`` (all under "" when None), summed
    over its other labels."""
    if family is None:
        return None
    bucket_name = family.name + "_bucket"
    result: dict[str, Buckets] = {}
    for sample in family.samples:
        if sample.name != bucket_name:
            continue
        try:
            bound = float(sample.label("le") or "")
        except ValueError:
            continue
        key = (sample.label(label) or "") if label is not None else ""
        buckets = result.setdefault(key, {})
        buckets[bound] = buckets.get(bound, 0.0) + sample.value
    return result


def _window(current: Buckets, previous: Buckets | None) -> Buckets:
    """The observations made since ``previous``, or all of them when there were none since
    (or the histogram restarted)."""
    if previous is None:
        return current
    delta = {bound: count - previous.get(bound, 0.0) for bound, count in current.items()}
    if any(count < 0 for count in delta.values()) or delta.get(math.inf, 0.0) <= 0:
        return current
    return delta


def _mean(current: Scrape, previous: Scrape | None, name: str) -> float | None:
    """A histogram's mean observation over the interval, else over all time."""

    def sum_count(scrape: Scrape | None) -> tuple[float, float]:
        family = scrape.families.get(name) if scrape is not None else None
        if family is None:
            return 0.0, 0.0
        total = sum(s.value for s in family.samples if s.name == name + "_sum")
        count = sum(s.value for s in family.samples if s.name == name + "_count")
        return total, count

    if name not in current.families:
        return None
    total, count = sum_count(current)
    before_total, before_count = sum_count(previous)
    if count - before_count > 0 and total >= before_total:
        return (total - before_total) / (count - before_count)
    return total / count if count > 0 else None


def _per_source(scrape: Scrape, name: str) -> tuple[tuple[str, float], ...] | None:
    """A gauge's value per source, by name; None when the family is absent or empty."""
    values = _sums(scrape.families.get(name), ("source",))
    if not values:
        return None
    return tuple(sorted((key[0], value) for key, value in values.items()))


def _gauge(scrape: Scrape, name: str) -> float | None:
    family = scrape.families.get(name)
    if family is None:
        return None
    values = [s.value for s in family.samples if s.name == name]
    return sum(values) if values else None


def _uptime(scrape: Scrape) -> float | None:
    uptime = _gauge(scrape, UPTIME)
    if uptime is not None:
        return uptime
    for name in START_TIMES:
        started = _gauge(scrape, name)
        if started is not None:
            return max(0.0, scrape.wall_s - started)
    return None


def _shard_heat(
    table: dict[tuple[str, ...], Count] | None,
) -> tuple[tuple[ShardRow, ...] | None, int]:
    if table is None:
        return None, 0
    stream_totals: dict[str, float] = {}
    stream_rates: dict[str, float] = {}
    for (stream, _), count in table.items():
        stream_totals[stream] = stream_totals.get(stream, 0.0) + count.total
        stream_rates[stream] = stream_rates.get(stream, 0.0) + (count.rate or 0.0)
    rows = []
    for (stream, shard), count in table.items():
        share = None
        if count.rate is not None and stream_rates[stream] > 0:
            share = count.rate / stream_rates[stream]
        elif stream_totals[stream] > 0:
            share = count.total / stream_totals[stream]
        rows.append(ShardRow(stream, shard, count.total, count.rate, share))
    rows.sort(key=lambda row: (-(row.rate or 0.0), -row.total, row.stream, row.shard))
    return tuple(rows[:SHARDS_SHOWN]), len(rows)
