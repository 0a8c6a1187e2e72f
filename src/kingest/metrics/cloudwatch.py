"""CloudWatch export: every interval, the registry's per-source counters become CloudWatch datums.

The job splits in pure functions and one small async shell:

* :func:`interval_datums` turns two consecutive collections of the registry into the interval's
  datums, one set per source (dimension ``DataSource``, plus the configured extra dimensions),
  under the seed's names: ``RecordsProcessed``, ``RecordsFailed``, ``SuccessRate`` and, beside
  them, ``RecordsReceived``, ``ThrottledRecords``, ``RetriedRecords``, ``BytesProcessed`` and
  ``DeliveryLatency`` (a distribution sent as ``Values``/``Counts``).
* :func:`merge_datums` sums datums of the same metric, so what a failed call could not deliver
  goes out with the next one, once.
* :func:`batch_datums` packs datums into as few ``PutMetricData`` calls as the service limits
  allow (1000 datums, 1 MB per request, sized conservatively by :func:`estimate_datum_bytes`).
* :func:`emf_documents` writes the same datums as CloudWatch Embedded Metric Format documents,
  for hosts where a log agent (or Lambda) ships standard output or a file to CloudWatch Logs.
* :class:`CloudWatchExporter` runs it: it flushes every ``interval_s`` and once more at stop,
  calls botocore in a worker thread so the event loop never waits on CloudWatch, and never
  raises into the agent because CloudWatch is down.

Example config (the agent embeds it as ``metrics.cloudwatch``)::

    metrics:
      cloudwatch:
        namespace: Kingest/Ingestion
        interval_s: 60
        dimensions: {host: web-01}
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, NamedTuple
from urllib.parse import quote

import botocore.exceptions
import orjson
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    CredentialRetrievalError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.session import Session
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from kingest.errors import CredentialsError, is_retriable_code
from kingest.metrics.registry import Labels, MetricFamily, Registry
from kingest.producer.transport import LOCAL_CREDENTIALS, LOCAL_REGION, is_loopback_url

log = logging.getLogger(__name__)

# Service limits (https://docs.aws.amazon.com/AmazonCloudWatch/latest/APIReference/API_PutMetricData.html).
PUT_METRIC_DATA_MAX_DATUMS = 1000  # CloudWatch limit: MetricData members per request
PUT_METRIC_DATA_MAX_BYTES = 1_000_000  # CloudWatch limit: 1 MB per request (HTTP POST body)
MAX_VALUES_PER_DATUM = 150  # CloudWatch limit: Values/Counts entries per datum
MAX_DIMENSIONS = 30  # CloudWatch limit: dimensions per metric
MAX_NAMESPACE_CHARS = 255  # CloudWatch limit
MAX_DIMENSION_NAME_CHARS = 255  # CloudWatch limit
MAX_DIMENSION_VALUE_CHARS = 1024  # CloudWatch limit
# EMF limits (aws-embedded-metrics Constants: MAX_METRICS_PER_EVENT, MAX_DATAPOINTS_PER_METRIC).
EMF_MAX_METRICS = 100
EMF_MAX_VALUES = 100

SOURCE_DIMENSION = "DataSource"  # the seed's dimension name
MAX_EXTRA_DIMENSIONS = MAX_DIMENSIONS - 1  # DataSource takes one

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

# Botocore's own retries only ride out a blip: a call that still fails is not lost, its datums
# go with the next flush, and a long retry chain would hold up the agent's shutdown flush.
_CLIENT_CONFIG = Config(
    connect_timeout=5,
    read_timeout=15,
    retries={"mode": "standard", "total_max_attempts": 2},
    user_agent_extra="kingest",
)

# Answers that mean "not these credentials / not this account": every call fails the same way
# until an operator acts, but the datums are fine, so they are kept (merged, so bounded by the
# number of series) and sent once CloudWatch accepts them.
_ACCESS_CODES = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "IncompleteSignature",
        "MissingAuthenticationToken",
        "InvalidAccessKeyId",
        "OptInRequired",
        "NotAuthorized",
    }
)

Dimensions = tuple[tuple[str, str], ...]
_NAMESPACE_CHARS = re.compile(r"[0-9A-Za-z._\-/#: ]+")


class CloudWatchConfig(BaseModel):
    """Where and how often the agent's metrics go to CloudWatch."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    namespace: str = Field(
        min_length=1,
        max_length=MAX_NAMESPACE_CHARS,
        description=(
            "CloudWatch namespace of every metric (letters, digits, . - _ / # : and space; "
            "no leading ':' and not 'AWS/', which CloudWatch reserves)."
        ),
    )
    interval_s: float = Field(
        default=60.0,
        ge=1,
        description="Seconds between flushes; each sends what the interval counted.",
    )
    mode: Literal["api", "emf"] = Field(
        default="api",
        description=(
            "api: PutMetricData calls; emf: Embedded Metric Format JSON lines for a log agent "
            "to ship to CloudWatch Logs (no CloudWatch credentials needed)."
        ),
    )
    emf_path: str | None = Field(
        default=None,
        description="File the EMF lines are appended to (mode emf only); None: standard output.",
    )
    dimensions: dict[str, str] = Field(
        default_factory=dict,
        description=(
            f"Extra dimensions on every datum, e.g. host (at most {MAX_EXTRA_DIMENSIONS}: "
            f"{SOURCE_DIMENSION} takes the 30th)."
        ),
    )
    storage_resolution_s: Literal[1, 60] = Field(
        default=60,
        description="Seconds CloudWatch stores each point at: 60 standard, 1 high resolution.",
    )

    @field_validator("namespace")
    @classmethod
    def _check_namespace(cls, value: str) -> str:
        problems = []
        if value.startswith(":"):
            problems.append("must not start with ':'")
        if value.startswith("AWS/"):
            problems.append("must not start with 'AWS/' (reserved for AWS services)")
        if not _NAMESPACE_CHARS.fullmatch(value):
            problems.append("may hold only letters, digits, space and . - _ / # :")
        if problems:
            raise ValueError(f"namespace {value!r} " + "; ".join(problems))
        return value

    @field_validator("dimensions")
    @classmethod
    def _check_dimensions(cls, value: dict[str, str]) -> dict[str, str]:
        problems = []
        if len(value) > MAX_EXTRA_DIMENSIONS:
            problems.append(
                f"{len(value)} extra dimensions; at most {MAX_EXTRA_DIMENSIONS} fit beside "
                f"{SOURCE_DIMENSION}"
            )
        for name, text in value.items():
            problems.extend(_dimension_problems(name, text))
        if problems:
            raise ValueError("; ".join(problems))
        return value

    @model_validator(mode="after")
    def _check_together(self) -> CloudWatchConfig:
        if self.emf_path is not None and self.mode != "emf":
            raise ValueError("emf_path is only used with mode emf")
        return self


def _dimension_problems(name: str, value: str) -> list[str]:
    problems = []
    if name in _RESERVED_NAMES:
        problems.append(f"dimension name {name!r} is taken by kingest")
    if not 1 <= len(name) <= MAX_DIMENSION_NAME_CHARS:
        problems.append(f"dimension name {name!r} must be 1 to {MAX_DIMENSION_NAME_CHARS} chars")
    if name.startswith(":"):
        problems.append(f"dimension name {name!r} must not start with ':'")
    if not _is_dimension_text(name):
        problems.append(f"dimension name {name!r} must be printable ASCII, not only spaces")
    if not 1 <= len(value) <= MAX_DIMENSION_VALUE_CHARS:
        problems.append(f"dimension {name!r}: value must be 1 to {MAX_DIMENSION_VALUE_CHARS} chars")
    elif not _is_dimension_text(value):
        problems.append(f"dimension {name!r}: value must be printable ASCII, not only spaces")
    return problems


def _is_dimension_text(text: str) -> bool:
    # CloudWatch takes only ASCII in dimensions, with at least one non-whitespace character.
    return text.isascii() and text.isprintable() and bool(text.strip())


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
# An extra dimension with one of these names would collide with a member of an EMF document.
_RESERVED_NAMES = frozenset({SOURCE_DIMENSION, "_aws", *METRIC_NAMES})


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


# --- Failures -----------------------------------------------------------------------------


class Failure(NamedTuple):
    """Why a PutMetricData call failed, and what becomes of its datums.

    ``kind``: ``transient`` (throttling, a 5xx, no answer: the datums go with the next flush),
    ``access`` (credentials or permissions: kept, but an operator must act), ``refused`` (the
    request itself is invalid and would be refused again: the datums are dropped).
    """

    kind: Literal["transient", "access", "refused"]
    code: str
    http_status: int | None
    detail: str


def classify_failure(exc: BaseException) -> Failure:
    """Translate a botocore exception from a PutMetricData call into a :class:`Failure`.

    Args:
        exc: what botocore raised.

    Returns:
        The failure's kind, AWS error code (or exception name), HTTP status and message.
    """
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code") or "Unknown")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        detail = str(error.get("Message") or "")[:200]
        if is_retriable_code(code, status):
            return Failure("transient", code, status, detail)
        if code in _ACCESS_CODES or status in (401, 403):
            return Failure("access", code, status, detail)
        return Failure("refused", code, status, detail)
    code = type(exc).__name__
    detail = str(exc)[:200]
    if isinstance(exc, botocore.exceptions.ConnectionError | HTTPClientError):
        return Failure("transient", code, None, detail)
    if isinstance(exc, NoCredentialsError | PartialCredentialsError | CredentialRetrievalError):
        return Failure("access", code, None, detail)
    return Failure("refused", code, None, detail)


# --- The exporter -----------------------------------------------------------------------------


def build_client(
    *, region: str | None = None, profile: str | None = None, endpoint_url: str | None = None
) -> Any:
    """A botocore CloudWatch client configured the way kingest's Kinesis transport is.

    Credentials come from the standard chain (environment, profile, container or instance
    role); the region from ``region``, the profile or AWS_REGION/AWS_DEFAULT_REGION; the endpoint
    from ``endpoint_url`` or, as botocore resolves it, AWS_ENDPOINT_URL_CLOUDWATCH, AWS_ENDPOINT_URL
    and the config files. A loopback endpoint works without credentials or region.

    Args:
        region: AWS region; None takes it from the standard configuration.
        profile: a named profile of the AWS configuration files.
        endpoint_url: CloudWatch endpoint; None resolves it the standard AWS way.

    Returns:
        The client.

    Raises:
        CredentialsError: no region or no credentials for a non-local endpoint, or an
            unusable AWS configuration (an unknown profile).
    """
    try:
        session = Session(profile=profile)
        # botocore reads AWS_DEFAULT_REGION; the other SDKs (and Lambda) set AWS_REGION.
        configured_region = (
            region or session.get_config_variable("region") or os.environ.get("AWS_REGION")
        )
        client = session.create_client(
            "cloudwatch",
            region_name=configured_region or LOCAL_REGION,
            endpoint_url=endpoint_url,
            config=_CLIENT_CONFIG,
        )
        local = is_loopback_url(client.meta.endpoint_url)
        if configured_region is None and not local:
            client.close()
            raise CredentialsError(
                "No AWS region is configured for CloudWatch: set AWS_REGION (or "
                "AWS_DEFAULT_REGION), a profile region, or pass --region."
            )
        if session.get_credentials() is None:
            client.close()
            if not local:
                raise CredentialsError(
                    "No AWS credentials found for CloudWatch: set AWS_ACCESS_KEY_ID and "
                    "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or run with an instance or task role."
                )
            # Local emulators check only that requests are signed, not by whom.
            client = session.create_client(
                "cloudwatch",
                region_name=configured_region or LOCAL_REGION,
                endpoint_url=endpoint_url,
                config=_CLIENT_CONFIG,
                aws_access_key_id=LOCAL_CREDENTIALS[0],
                aws_secret_access_key=LOCAL_CREDENTIALS[1],
            )
    except BotoCoreError as exc:
        raise CredentialsError(f"AWS configuration is unusable for CloudWatch: {exc}") from exc
    return client


class CloudWatchExporter:
    """Sends the registry's per-source metrics to CloudWatch every interval.

    The registry is read once at construction: that collection is the baseline, so an exporter
    started in a process that has been counting for hours sends only what comes after, not the
    history as one interval. Each flush sends the difference since the previous flush.

    Args:
        registry: the process's metrics registry.
        config: namespace, interval, mode and extra dimensions.
        region: AWS region (mode api); None takes it from the standard configuration.
        profile: named AWS profile (mode api).
        endpoint_url: CloudWatch endpoint (mode api); None honours AWS_ENDPOINT_URL_CLOUDWATCH,
            AWS_ENDPOINT_URL and the config files.

    Attributes:
        calls: PutMetricData calls made, failed ones included.
        failed_calls: PutMetricData calls that failed.
        datums_sent: datums CloudWatch accepted (mode api) or written as EMF (mode emf).
        datums_dropped: datums of calls CloudWatch refused as invalid (never retried).
        documents_written: EMF documents written (mode emf).
        endpoint_url: the CloudWatch endpoint in use; None in mode emf.

    Raises:
        CredentialsError: mode api without region or credentials for a non-local endpoint.
    """

    def __init__(
        self,
        registry: Registry,
        config: CloudWatchConfig,
        *,
        region: str | None = None,
        profile: str | None = None,
        endpoint_url: str | None = None,
    ) -> None:
        self._registry = registry
        self._config = config
        self._client: Any = None
        self.endpoint_url: str | None = None
        if config.mode == "api":
            self._client = build_client(region=region, profile=profile, endpoint_url=endpoint_url)
            self.endpoint_url = str(self._client.meta.endpoint_url)
        self.calls = 0
        self.failed_calls = 0
        self.datums_sent = 0
        self.datums_dropped = 0
        self.documents_written = 0
        self._pending: list[Datum] = []
        # Error codes already logged as ERROR, with their kind.
        self._reported: dict[str, str] = {}
        self._lock = asyncio.Lock()
        self._previous = _relevant(registry.collect())

    @property
    def pending_datums(self) -> int:
        """Datums held for the next flush because a call failed."""
        return len(self._pending)

    async def run(self, stop: asyncio.Event) -> None:
        """Flush every ``interval_s`` until ``stop`` is set, then flush once more and return.

        Never raises for CloudWatch trouble: failures are logged and their datums go with the
        next flush. Cancelling it skips the final flush (set ``stop`` for a clean end).

        Args:
            stop: set by the agent when it shuts down.
        """
        loop = asyncio.get_running_loop()
        interval_s = self._config.interval_s
        deadline = loop.time() + interval_s
        try:
            while True:
                stopped = await _wait(stop, deadline - loop.time())
                try:
                    await self.flush()
                except Exception:
                    # A collector's bug, not CloudWatch: keep the agent running and say so.
                    log.exception(
                        "CloudWatch flush failed unexpectedly.",
                        extra={"namespace": self._config.namespace},
                    )
                if stopped:
                    return
                deadline += interval_s
                if deadline <= loop.time():  # the flush took longer than an interval
                    deadline = loop.time() + interval_s
        finally:
            self.close()

    async def flush(self) -> None:
        """Send what was counted since the last flush, with anything a failed call left.

        Never raises for CloudWatch trouble (see :meth:`run`).
        """
        async with self._lock:
            current = _relevant(self._registry.collect())
            fresh = interval_datums(self._previous, current, self._config.dimensions)
            self._previous = current
            datums = merge_datums(self._pending, fresh)
            self._pending = []
            if not datums:
                return
            timestamp = datetime.now(UTC)
            if self._config.mode == "emf":
                await self._write_emf(datums, timestamp)
            else:
                await self._put(datums, timestamp)

    def close(self) -> None:
        """Release the client's pooled connections (a later flush opens new ones)."""
        if self._client is not None:
            self._client.close()

    async def _put(self, datums: list[Datum], timestamp: datetime) -> None:
        namespace = self._config.namespace
        batches = batch_datums(datums, namespace)
        for index, batch in enumerate(batches):
            params = put_metric_data_params(
                namespace, batch, timestamp, self._config.storage_resolution_s
            )
            self.calls += 1
            try:
                await asyncio.to_thread(self._client.put_metric_data, **params)
            except asyncio.CancelledError:
                # The thread may still complete the call: keeping the batch risks sending it
                # twice, dropping it risks losing it; the owner is stopping us, so keep it.
                self._keep(batches[index:])
                raise
            except (ClientError, BotoCoreError) as exc:
                self.failed_calls += 1
                failure = classify_failure(exc)
                if failure.kind == "refused":
                    self.datums_dropped += len(batch)
                    self._report(
                        failure,
                        "CloudWatch refused a batch of metrics as invalid; it is dropped.",
                        len(batch),
                    )
                    continue
                # The next batches would fail the same way: keep them all for the next flush.
                self._keep(batches[index:])
                if failure.kind == "access":
                    self._report(
                        failure,
                        "CloudWatch refuses kingest's credentials; metrics are kept and sent "
                        "once it accepts them.",
                        len(self._pending),
                    )
                else:
                    log.warning(
                        "Cannot send metrics to CloudWatch; they will go with the next flush.",
                        extra=self._failure_fields(failure, len(self._pending)),
                    )
                return
            self.datums_sent += len(batch)
            # Access healed (an operator acted): should it break again, that is news again. A
            # refused batch is a defect of ours that no success elsewhere repairs: once it is.
            self._reported = {c: k for c, k in self._reported.items() if k != "access"}
        log.debug(
            "Sent metrics to CloudWatch.",
            extra={"namespace": namespace, "datums": len(datums), "calls": len(batches)},
        )

    def _keep(self, batches: Sequence[Sequence[Datum]]) -> None:
        self._pending = merge_datums(self._pending, [d for batch in batches for d in batch])

    def _report(self, failure: Failure, message: str, datums: int) -> None:
        # An error that will not heal by itself is an ERROR once; repeating it every interval
        # would bury the rest of the log.
        level = logging.DEBUG if failure.code in self._reported else logging.ERROR
        self._reported[failure.code] = failure.kind
        log.log(level, message, extra=self._failure_fields(failure, datums))

    def _failure_fields(self, failure: Failure, datums: int) -> dict[str, Any]:
        return {
            "namespace": self._config.namespace,
            "error_code": failure.code,
            "http_status": failure.http_status,
            "detail": failure.detail,
            "datums": datums,
        }

    async def _write_emf(self, datums: list[Datum], timestamp: datetime) -> None:
        documents = emf_documents(
            datums, self._config.namespace, timestamp, self._config.storage_resolution_s
        )
        text = b"".join(orjson.dumps(document) + b"\n" for document in documents).decode()
        try:
            await asyncio.to_thread(_append, self._config.emf_path, text)
        except asyncio.CancelledError:
            self._pending = merge_datums(self._pending, datums)
            raise
        except OSError as exc:
            self._pending = merge_datums(self._pending, datums)
            log.warning(
                "Cannot write EMF metrics; they will go with the next flush.",
                extra={"path": self._config.emf_path, "error": str(exc), "datums": len(datums)},
            )
            return
        self.documents_written += len(documents)
        self.datums_sent += len(datums)


def _relevant(families: Iterable[MetricFamily]) -> list[MetricFamily]:
    # Only these are read; the previous collection is held a whole interval.
    return [f for f in families if f.name in _COUNTERS or f.name == DELIVERY_LATENCY]


def _append(path: str | None, text: str) -> None:
    if path is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    with Path(path).open("a", encoding="utf-8") as out:
        out.write(text)


async def _wait(stop: asyncio.Event, timeout_s: float) -> bool:
    """Wait for ``stop`` at most ``timeout_s``; True when it was set."""
    if stop.is_set():
        return True
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=max(0.0, timeout_s))
    return stop.is_set()
