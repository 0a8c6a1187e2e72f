"""CloudWatch datums: the registry's per-source counters as PutMetricData requests and EMF.

Everything here is a pure function of its arguments: no clock (the caller passes the
timestamp), no botocore, no I/O. That keeps all of the export's arithmetic (deltas, resets,
merging, sizes) testable offline against hand-built families, and leaves
:mod:`kingest.metrics.cloudwatch` with only the I/O and its failures.

* :func:`interval_datums` turns two consecutive collections of the registry into the interval's
  datums, one set per source (dimension ``DataSource``, plus the configured extra dimensions),
  under the seed's names: ``RecordsProcessed``, ``RecordsFailed``, ``SuccessRate`` and, beside
  them, ``RecordsReceived``, ``ThrottledRecords``, ``RetriedRecords``, ``BytesProcessed`` and
  ``DeliveryLatency`` (a distribution sent as ``Values``/``Counts``).
* :func:`merge_datums` sums datums of the same metric, so what a failed call could not deliver
  goes out with the next one, once.
* :func:`batch_datums` packs datums into as few ``PutMetricData`` calls as the service limits
  allow (1000 datums, 1 MB per request, sized conservatively by :func:`estimate_datum_bytes`),
  and :func:`put_metric_data_params` writes one batch as botocore's keyword arguments.
* :func:`emf_documents` writes the same datums as CloudWatch Embedded Metric Format documents,
  for hosts where a log agent (or Lambda) ships standard output or a file to CloudWatch Logs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote

from kingest.metrics.registry import Labels, MetricFamily

# Service limits (https://docs.aws.amazon.com/AmazonCloudWatch/latest/APIReference/API_PutMetricData.html).
PUT_METRIC_DATA_MAX_DATUMS = 1000  # CloudWatch limit: MetricData members per request
PUT_METRIC_DATA_MAX_BYTES = 1_000_000  # CloudWatch limit: 1 MB per request (HTTP POST body)
MAX_VALUES_PER_DATUM = 150  # CloudWatch limit: Values/Counts entries per datum
MAX_DIMENSION_VALUE_CHARS = 1024  # CloudWatch limit
# EMF limits (aws-embedded-metrics Constants: MAX_METRICS_PER_EVENT, MAX_DATAPOINTS_PER_METRIC).
EMF_MAX_METRICS = 100
EMF_MAX_VALUES = 100

SOURCE_DIMENSION = "DataSource"  # the seed's dimension name

# The registry's families this module reads (a contract with the collectors).
RECEIVED_RECORDS = "kingest_source_received_records_total"
ACCEPTED_RECORDS = "kingest_producer_accepted_records_total"
ACCEPTED_BYTES = "kingest_producer_accepted_bytes_total"
THROTTLED_RECORDS = "kingest_producer_throttled_records_total"
RETRIED_RECORDS = "kingest_producer_retried_records_total"
DLQ_RECORDS = "kingest_dlq_records_total"
DELIVERY_LATENCY = "kingest_source_delivery_latency_seconds"
SOURCE_LABEL = "source"

# Counter family -> the field of _SourceDelta it feeds; labels other than ``source``
# (error_code, reason) are summed over.
_COUNTERS: dict[str, str] = {
    RECEIVED_RECORDS: "received",
    ACCEPTED_RECORDS: "accepted",
    ACCEPTED_BYTES: "accepted_bytes",
    THROTTLED_RECORDS: "throttled",
    RETRIED_RECORDS: "retried",
    DLQ_RECORDS: "dead_lettered",
}

COUNT = "Count"
BYTES = "Bytes"
PERCENT = "Percent"
MILLISECONDS = "Milliseconds"
MS_PER_S = 1000.0

Dimensions = tuple[tuple[str, str], ...]


# --- Datums ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Datum:
    """One metric point of one interval, before it is stamped and sent.

    Attributes:
        name: the CloudWatch metric name (``RecordsProcessed``).
        unit: the CloudWatch unit (``Count``, ``Bytes``, ``Percent``, ``Milliseconds``).
        dimensions: name/value pairs, ``DataSource`` first.
        value: the point's value (unused by a distribution).
        distribution: (value, count) pairs in ascending value, sent as ``Values``/``Counts``;
            empty for a single value.
        ratio: (part, whole) of a ``Percent`` datum, kept so that merging two intervals gives
            the ratio of the sums rather than a sum of ratios.
    """

    name: str
    unit: str
    dimensions: Dimensions
    value: float = 0.0
    distribution: tuple[tuple[float, float], ...] = ()
    ratio: tuple[float, float] | None = None

    @property
    def key(self) -> tuple[str, str, Dimensions]:
        """What identifies the metric: the same key in two intervals is the same series."""
        return (self.name, self.unit, self.dimensions)


# The metrics each source gets, in the order they are sent.
METRIC_NAMES: tuple[str, ...] = (
    "RecordsProcessed",
    "RecordsFailed",
    "SuccessRate",
    "RecordsReceived",
    "ThrottledRecords",
    "RetriedRecords",
    "BytesProcessed",
    "DeliveryLatency",
)


@dataclass(slots=True)
class _Histogram:
    """A histogram series: cumulative counts by upper bound (``inf`` for +Inf), sum, count."""

    buckets: dict[float, float] = field(default_factory=dict)
    sum: float = 0.0
    count: float = 0.0

    def add(self, other: _Histogram) -> None:
        for bound, count in other.buckets.items():
            self.buckets[bound] = self.buckets.get(bound, 0.0) + count
        self.sum += other.sum
        self.count += other.count

    def minus(self, earlier: _Histogram | None) -> _Histogram:
        """The observations since ``earlier``; all of them when the histogram was reset."""
        if earlier is None or self.count < earlier.count:
            return self
        for bound, count in earlier.buckets.items():
            if self.buckets.get(bound, -1.0) < count:
                return self  # a bucket went backwards (or vanished): a restart
        return _Histogram(
            {b: c - earlier.buckets.get(b, 0.0) for b, c in self.buckets.items()},
            self.sum - earlier.sum,
            self.count - earlier.count,
        )


@dataclass(slots=True)
class _SourceDelta:
    """What one source did during one interval."""

    received: float = 0.0
    accepted: float = 0.0
    accepted_bytes: float = 0.0
    throttled: float = 0.0
    retried: float = 0.0
    dead_lettered: float = 0.0
    latency: _Histogram = field(default_factory=_Histogram)


def interval_datums(
    previous: Sequence[MetricFamily] | None,
    current: Sequence[MetricFamily],
    dimensions: Mapping[str, str] | None = None,
) -> list[Datum]:
    """The datums of the interval between two collections of the registry.

    Every source present in ``current`` gets its counters' deltas, zeros included (a flat line
    at 0 is information, a missing point is not); ``SuccessRate`` only when something was
    accepted or dead-lettered, ``DeliveryLatency`` only when a record was delivered.

    A counter that went backwards was reset (a restart) and counts from 0. A source's name
    becomes a ``DataSource`` value CloudWatch accepts: non-ASCII characters are escaped
    (``\\xe9``) and the value is cut at 1024 characters.

    ``DeliveryLatency`` takes each bucket's *upper bound* as the value of the observations in
    it: every one of them is at most that, so a percentile or an alarm on it errs towards
    "slower" and never hides a latency. The overflow (+Inf) bucket takes the mean of what
    overflowed, estimated from the histogram's sum, and at least the largest finite bound.

    Args:
        previous: the collection at the start of the interval; None counts from zero.
        current: the collection at its end.
        dimensions: extra dimensions added after ``DataSource`` to every datum.

    Returns:
        The datums, by source name, in :data:`METRIC_NAMES` order.
    """
    extra = tuple((dimensions or {}).items())
    deltas = _source_deltas(previous or (), current)
    datums: list[Datum] = []
    for source in sorted(deltas):
        source_dimensions = ((SOURCE_DIMENSION, _source_value(source)), *extra)
        datums.extend(_datums_of(deltas[source], source_dimensions))
    return datums


def relevant_families(families: Iterable[MetricFamily]) -> list[MetricFamily]:
    """The families :func:`interval_datums` reads, the others left out.

    An exporter holds the previous collection a whole interval: this is what it needs to keep.

    Args:
        families: a collection of the registry.

    Returns:
        The counter families and the delivery latency histogram, in their order.
    """
    return [f for f in families if f.name in _COUNTERS or f.name == DELIVERY_LATENCY]


def _source_value(source: str) -> str:
    text = source.encode("ascii", "backslashreplace").decode("ascii")
    text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
    return text[:MAX_DIMENSION_VALUE_CHARS] if text.strip() else "-"


def _source_deltas(
    previous: Sequence[MetricFamily], current: Sequence[MetricFamily]
) -> dict[str, _SourceDelta]:
    deltas: dict[str, _SourceDelta] = {}
    before = {f.name: f for f in previous}
    for family in current:
        earlier = before.get(family.name)
        if family.name in _COUNTERS:
            attribute = _COUNTERS[family.name]
            old = _counter_series(earlier) if earlier is not None else {}
            for labels, value in _counter_series(family).items():
                source = _label(labels, SOURCE_LABEL)
                if source is None:
                    continue
                last = old.get(labels, 0.0)
                # A counter below its last value was reset and counts from 0 again.
                increase = value - last if value >= last else value
                delta = deltas.setdefault(source, _SourceDelta())
                setattr(delta, attribute, getattr(delta, attribute) + increase)
        elif family.name == DELIVERY_LATENCY:
            old_histograms = _histogram_series(earlier) if earlier is not None else {}
            for labels, histogram in _histogram_series(family).items():
                source = _label(labels, SOURCE_LABEL)
                if source is None:
                    continue
                delta = deltas.setdefault(source, _SourceDelta())
                delta.latency.add(histogram.minus(old_histograms.get(labels)))
    return deltas


def _label(labels: Labels, name: str) -> str | None:
    for key, value in labels:
        if key == name:
            return value
    return None


def _counter_series(family: MetricFamily) -> dict[Labels, float]:
    # Two collectors may yield the same series; the registry's reading of that is a sum.
    series: dict[Labels, float] = {}
    for sample in family.samples:
        if sample.name == family.name and math.isfinite(sample.value):
            series[sample.labels] = series.get(sample.labels, 0.0) + sample.value
    return series


def _histogram_series(family: MetricFamily) -> dict[Labels, _Histogram]:
    series: dict[Labels, _Histogram] = {}
    for sample in family.samples:
        if not math.isfinite(sample.value):
            continue
        suffix = sample.name[len(family.name) :]
        if suffix == "_bucket":
            bound_text = _label(sample.labels, "le")
            if bound_text is None:
                continue
            try:
                bound = float(bound_text)
            except ValueError:
                continue
            labels = tuple(pair for pair in sample.labels if pair[0] != "le")
            histogram = series.setdefault(labels, _Histogram())
            histogram.buckets[bound] = histogram.buckets.get(bound, 0.0) + sample.value
        elif suffix in ("_sum", "_count"):
            histogram = series.setdefault(sample.labels, _Histogram())
            if suffix == "_sum":
                histogram.sum += sample.value
            else:
                histogram.count += sample.value
    return series


def _datums_of(delta: _SourceDelta, dimensions: Dimensions) -> list[Datum]:
    processed, failed = delta.accepted, delta.dead_lettered
    datums = [
        Datum("RecordsProcessed", COUNT, dimensions, processed),
        Datum("RecordsFailed", COUNT, dimensions, failed),
    ]
    if processed + failed > 0:
        datums.append(_ratio_datum("SuccessRate", dimensions, processed, processed + failed))
    datums += [
        Datum("RecordsReceived", COUNT, dimensions, delta.received),
        Datum("ThrottledRecords", COUNT, dimensions, delta.throttled),
        Datum("RetriedRecords", COUNT, dimensions, delta.retried),
        Datum("BytesProcessed", BYTES, dimensions, delta.accepted_bytes),
    ]
    distribution = _latency_distribution_ms(delta.latency)
    if distribution:
        datums.append(
            Datum(
                "DeliveryLatency",
                MILLISECONDS,
                dimensions,
                distribution=_reduce(distribution, MAX_VALUES_PER_DATUM),
            )
        )
    return datums


def _ratio_datum(name: str, dimensions: Dimensions, part: float, whole: float) -> Datum:
    return Datum(name, PERCENT, dimensions, part / whole * 100.0, ratio=(part, whole))


def _latency_distribution_ms(histogram: _Histogram) -> tuple[tuple[float, float], ...]:
    finite = sorted(b for b in histogram.buckets if not math.isinf(b))
    pairs: list[tuple[float, float]] = []
    below = 0.0  # cumulative count up to the previous bound
    finite_sum_s = 0.0  # the finite buckets' observations, each counted at its upper bound
    for bound in finite:
        count = histogram.buckets[bound] - below
        below = histogram.buckets[bound]
        if count > 0:
            pairs.append((bound * MS_PER_S, count))
            finite_sum_s += bound * count
    total = histogram.buckets.get(math.inf, histogram.count)
    overflow = total - below
    if overflow > 0:
        largest = finite[-1] if finite else 0.0
        # The finite part is over-counted (upper bounds), so this mean errs low; no overflowed
        # observation is below the largest bound, so neither is the value sent for them.
        mean = (histogram.sum - finite_sum_s) / overflow
        pairs.append((max(largest, mean) * MS_PER_S, overflow))
    return tuple(pairs)


def _reduce(
    pairs: tuple[tuple[float, float], ...], max_values: int
) -> tuple[tuple[float, float], ...]:
    """At most ``max_values`` pairs: runs of neighbours merged, each at its largest value."""
    if len(pairs) <= max_values:
        return pairs
    size = math.ceil(len(pairs) / max_values)
    return tuple(
        (chunk[-1][0], sum(count for _, count in chunk))
        for chunk in (pairs[i : i + size] for i in range(0, len(pairs), size))
    )


def merge_datums(older: Iterable[Datum], newer: Iterable[Datum]) -> list[Datum]:
    """Datums of the same metric and dimensions summed into one, so a retry sends each once.

    Counts and bytes add up, distributions add their counts value by value, and a percentage
    becomes the ratio of the summed parts.

    Args:
        older: datums not sent yet (a failed call's).
        newer: the new interval's datums.

    Returns:
        One datum per metric, those of ``older`` first.
    """
    merged: dict[tuple[str, str, Dimensions], Datum] = {}
    for datum in (*older, *newer):
        known = merged.get(datum.key)
        merged[datum.key] = datum if known is None else _merge_two(known, datum)
    return list(merged.values())


def _merge_two(a: Datum, b: Datum) -> Datum:
    if a.ratio is not None and b.ratio is not None:
        return _ratio_datum(a.name, a.dimensions, a.ratio[0] + b.ratio[0], a.ratio[1] + b.ratio[1])
    if a.distribution or b.distribution:
        counts: dict[float, float] = {}
        for value, count in (*a.distribution, *b.distribution):
            counts[value] = counts.get(value, 0.0) + count
        pairs = tuple(sorted(counts.items()))
        return Datum(
            a.name, a.unit, a.dimensions, distribution=_reduce(pairs, MAX_VALUES_PER_DATUM)
        )
    return Datum(a.name, a.unit, a.dimensions, a.value + b.value)


# --- Batching ---------------------------------------------------------------------------------

# Sizes are estimated for the query protocol (form-encoded), the most verbose of the three
# botocore may speak to CloudWatch (query, JSON 1.0, RPC v2 CBOR): every key spelled out with
# its member index, every value percent-encoded. The unit tests hold the estimate above what
# botocore really serializes in each protocol.
_MEMBER_PREFIX_CHARS = len("MetricData.member.1000.")
_NUMBER_CHARS = 32  # a float's repr is at most 24 characters ("-2.2250738585072014e-308")
_TIMESTAMP_CHARS = 40  # "2024-01-01T00%3A00%3A00.000000Z" is 31
_REQUEST_OVERHEAD_BYTES = len("Action=PutMetricData&Version=2010-08-01&Namespace=") + 64


def _text_bytes(text: str) -> int:
    # The larger of percent-encoding and JSON escaping, both of which a protocol may use.
    return max(len(quote(text, safe="")), len(json.dumps(text)))


def _field_bytes(key: str, value_bytes: int) -> int:
    return _MEMBER_PREFIX_CHARS + len(key) + 1 + value_bytes + 1  # key=value&


def estimate_datum_bytes(datum: Datum) -> int:
    """An upper bound on the bytes one datum adds to a PutMetricData request body.

    Args:
        datum: the datum.

    Returns:
        Bytes, at least what botocore serializes for it in any of CloudWatch's protocols.
    """
    size = _field_bytes("MetricName", _text_bytes(datum.name))
    for index, (name, value) in enumerate(datum.dimensions, 1):
        size += _field_bytes(f"Dimensions.member.{index}.Name", _text_bytes(name))
        size += _field_bytes(f"Dimensions.member.{index}.Value", _text_bytes(value))
    size += _field_bytes("Timestamp", _TIMESTAMP_CHARS)
    size += _field_bytes("Unit", _text_bytes(datum.unit))
    size += _field_bytes("StorageResolution", 2)
    if datum.distribution:
        for index in range(1, len(datum.distribution) + 1):
            size += _field_bytes(f"Values.member.{index}", _NUMBER_CHARS)
            size += _field_bytes(f"Counts.member.{index}", _NUMBER_CHARS)
    else:
        size += _field_bytes("Value", _NUMBER_CHARS)
    return size


def batch_datums(
    datums: Sequence[Datum],
    namespace: str,
    *,
    max_datums: int = PUT_METRIC_DATA_MAX_DATUMS,
    max_bytes: int = PUT_METRIC_DATA_MAX_BYTES,
) -> list[list[Datum]]:
    """Datums packed into PutMetricData requests, in order, each request as full as it can be.

    Every datum is far smaller than a request (a datum with 30 dimensions of 1024 characters
    and 150 values is about 0.1 MB), so filling each request before opening the next wastes
    less than one datum per request: the fewest requests the limits allow, give or take one.

    Args:
        datums: what to send.
        namespace: the namespace, which every request carries once.
        max_datums: datums per request (the service limit by default).
        max_bytes: estimated body bytes per request (the service limit by default).

    Returns:
        The requests' datums; empty when there are no datums.
    """
    overhead = _REQUEST_OVERHEAD_BYTES + _text_bytes(namespace)
    batches: list[list[Datum]] = []
    batch: list[Datum] = []
    size = overhead
    for datum in datums:
        datum_bytes = estimate_datum_bytes(datum)
        if batch and (len(batch) >= max_datums or size + datum_bytes > max_bytes):
            batches.append(batch)
            batch, size = [], overhead
        batch.append(datum)
        size += datum_bytes
    if batch:
        batches.append(batch)
    return batches


def put_metric_data_params(
    namespace: str,
    batch: Sequence[Datum],
    timestamp: datetime,
    storage_resolution_s: int = 60,
) -> dict[str, Any]:
    """The keyword arguments of one botocore ``put_metric_data`` call.

    Args:
        namespace: the CloudWatch namespace.
        batch: the datums (one :func:`batch_datums` batch).
        timestamp: the time of every point (the end of the interval).
        storage_resolution_s: 1 (high resolution) or 60.

    Returns:
        ``Namespace`` and ``MetricData``.
    """
    data: list[dict[str, Any]] = []
    for datum in batch:
        item: dict[str, Any] = {
            "MetricName": datum.name,
            "Dimensions": [{"Name": k, "Value": v} for k, v in datum.dimensions],
            "Timestamp": timestamp,
            "Unit": datum.unit,
            "StorageResolution": storage_resolution_s,
        }
        if datum.distribution:
            item["Values"] = [value for value, _ in datum.distribution]
            item["Counts"] = [count for _, count in datum.distribution]
        else:
            item["Value"] = datum.value
        data.append(item)
    return {"Namespace": namespace, "MetricData": data}


# --- Embedded Metric Format ----------------------------------------------------------------


def emf_documents(
    datums: Sequence[Datum],
    namespace: str,
    timestamp: datetime,
    storage_resolution_s: int = 60,
) -> list[dict[str, Any]]:
    """The datums as Embedded Metric Format documents, one per dimension set (per source).

    Spec: https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Specification.html.
    A distribution is written the way the aws-embedded-metrics libraries write histograms:
    ``{"Values": [...], "Counts": [...], "Max", "Min", "Count", "Sum"}``, at most 100 values.

    Args:
        datums: the interval's datums.
        namespace: the CloudWatch namespace.
        timestamp: the time of every point.
        storage_resolution_s: 1 marks the metrics high resolution; 60 is EMF's default.

    Returns:
        JSON-ready documents, in the order their dimension sets first appear.
    """
    groups: dict[Dimensions, list[Datum]] = {}
    for datum in datums:
        groups.setdefault(datum.dimensions, []).append(datum)
    stamp_ms = int(timestamp.timestamp() * 1000)
    documents: list[dict[str, Any]] = []
    for dimensions, members in groups.items():
        for start in range(0, len(members), EMF_MAX_METRICS):
            chunk = members[start : start + EMF_MAX_METRICS]
            definitions: list[dict[str, Any]] = []
            for datum in chunk:
                definition: dict[str, Any] = {"Name": datum.name, "Unit": datum.unit}
                if storage_resolution_s == 1:
                    definition["StorageResolution"] = 1
                definitions.append(definition)
            document: dict[str, Any] = {
                "_aws": {
                    "Timestamp": stamp_ms,
                    "CloudWatchMetrics": [
                        {
                            "Namespace": namespace,
                            "Dimensions": [[name for name, _ in dimensions]],
                            "Metrics": definitions,
                        }
                    ],
                }
            }
            document.update(dimensions)
            for datum in chunk:
                document[datum.name] = _emf_value(datum)
            documents.append(document)
    return documents


def _emf_value(datum: Datum) -> Any:
    if not datum.distribution:
        return datum.value
    pairs = _reduce(datum.distribution, EMF_MAX_VALUES)
    return {
        "Values": [value for value, _ in pairs],
        "Counts": [count for _, count in pairs],
        "Max": pairs[-1][0],
        "Min": pairs[0][0],
        "Count": sum(count for _, count in pairs),
        "Sum": sum(value * count for value, count in pairs),
    }
