"""CloudWatch export without CloudWatch: datums, merging, batching, EMF, and the exporter's loop.

Families are built by hand under the names the collectors yield (a contract); nothing here
opens a socket. Sizes are checked against what botocore itself serializes, offline.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import botocore.session
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError
from botocore.serialize import create_serializer
from botocore.validate import ParamValidator
from pydantic import ValidationError

from kingest.errors import CredentialsError
from kingest.metrics.cloudwatch import CloudWatchConfig, CloudWatchExporter, classify_failure
from kingest.metrics.cloudwatch_datums import (
    EMF_MAX_VALUES,
    MAX_VALUES_PER_DATUM,
    PUT_METRIC_DATA_MAX_BYTES,
    PUT_METRIC_DATA_MAX_DATUMS,
    Datum,
    batch_datums,
    emf_documents,
    estimate_datum_bytes,
    interval_datums,
    merge_datums,
    put_metric_data_params,
)
from kingest.metrics.registry import (
    LATENCY_BUCKETS_S,
    Histogram,
    MetricFamily,
    MetricType,
    Registry,
)

HOST = {"host": "web-01"}


@dataclass
class Workload:
    """Live counters of an agent, as the collectors would read them, per source."""

    received: dict[str, int] = field(default_factory=dict)
    accepted: dict[str, int] = field(default_factory=dict)
    accepted_bytes: dict[str, int] = field(default_factory=dict)
    throttled: dict[str, int] = field(default_factory=dict)
    retried: dict[tuple[str, str], int] = field(default_factory=dict)
    dead_lettered: dict[tuple[str, str], int] = field(default_factory=dict)
    latency: dict[str, Histogram] = field(default_factory=dict)

    def deliver(
        self,
        source: str,
        *,
        received: int = 0,
        accepted: int = 0,
        accepted_bytes: int = 0,
        throttled: int = 0,
        retried: dict[str, int] | None = None,
        dead_lettered: dict[str, int] | None = None,
        latencies_s: list[tuple[float, int]] | None = None,
    ) -> None:
        for counter, value in (
            (self.received, received),
            (self.accepted, accepted),
            (self.accepted_bytes, accepted_bytes),
            (self.throttled, throttled),
        ):
            counter[source] = counter.get(source, 0) + value
        for code, n in (retried or {}).items():
            self.retried[(source, code)] = self.retried.get((source, code), 0) + n
        for reason, n in (dead_lettered or {}).items():
            self.dead_lettered[(source, reason)] = self.dead_lettered.get((source, reason), 0) + n
        histogram = self.latency.setdefault(source, Histogram(LATENCY_BUCKETS_S))
        for latency_s, times in latencies_s or []:
            histogram.observe(latency_s, times)

    def families(self) -> list[MetricFamily]:
        def counter(name: str, values: dict[str, int]) -> MetricFamily:
            family = MetricFamily(name, MetricType.COUNTER, "")
            for source, value in sorted(values.items()):
                family.add(value, (("source", source),))
            return family

        retried = MetricFamily("kingest_producer_retried_records_total", MetricType.COUNTER, "")
        for (source, code), value in sorted(self.retried.items()):
            retried.add(value, (("source", source), ("error_code", code)))
        dlq = MetricFamily("kingest_dlq_records_total", MetricType.COUNTER, "")
        for (source, reason), value in sorted(self.dead_lettered.items()):
            dlq.add(value, (("source", source), ("reason", reason)))
        latency = MetricFamily("kingest_source_delivery_latency_seconds", MetricType.HISTOGRAM, "")
        for source, histogram in sorted(self.latency.items()):
            latency.add_histogram(histogram.snapshot(), (("source", source),))
        buffered = MetricFamily("kingest_producer_buffered_records", MetricType.GAUGE, "")
        buffered.add(17)
        return [
            counter("kingest_source_received_records_total", self.received),
            counter("kingest_producer_accepted_records_total", self.accepted),
            counter("kingest_producer_accepted_bytes_total", self.accepted_bytes),
            counter("kingest_producer_throttled_records_total", self.throttled),
            retried,
            dlq,
            latency,
            buffered,
        ]


def by_name(datums: list[Datum], source: str) -> dict[str, Datum]:
    return {d.name: d for d in datums if ("DataSource", source) in d.dimensions}


# --- Config -----------------------------------------------------------------------------------


def test_config_defaults() -> None:
    config = CloudWatchConfig(namespace="Kingest/Ingestion")
    assert config.interval_s == 60
    assert config.mode == "api"
    assert config.emf_path is None
    assert config.dimensions == {}
    assert config.storage_resolution_s == 60


def test_config_is_frozen_and_strict() -> None:
    config = CloudWatchConfig(namespace="N")
    with pytest.raises(ValidationError):
        config.interval_s = 5  # type: ignore[misc]
    with pytest.raises(ValidationError, match="interval"):
        CloudWatchConfig(namespace="N", interval=5)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("namespace", "problem"),
    [
        ("", "at least 1"),
        ("x" * 256, "at most 255"),
        (":Kingest", "must not start with ':'"),
        ("AWS/Kinesis", "reserved"),
        ("Kingest;Prod", "letters, digits"),
    ],
)
def test_config_refuses_bad_namespaces(namespace: str, problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        CloudWatchConfig(namespace=namespace)


def test_config_accepts_every_allowed_namespace_character() -> None:
    assert CloudWatchConfig(namespace="Kingest/Prod ingest#1:a.b_c-d").namespace


def test_config_reports_every_dimension_problem() -> None:
    with pytest.raises(ValidationError) as info:
        CloudWatchConfig(
            namespace="N",
            dimensions={"DataSource": "x", ":host": "h", "zone": "", "café": "1", "ok": "é"},
        )
    text = str(info.value)
    for problem in (
        "'DataSource' is taken",
        "':host' must not start with ':'",
        "'zone': value must be 1 to 1024",
        "'café' must be printable ASCII",
        "'ok': value must be printable ASCII",
    ):
        assert problem in text


def test_config_allows_29_extra_dimensions_not_30() -> None:
    CloudWatchConfig(namespace="N", dimensions={f"d{i}": "v" for i in range(29)})
    with pytest.raises(ValidationError, match="at most 29"):
        CloudWatchConfig(namespace="N", dimensions={f"d{i}": "v" for i in range(30)})


def test_config_refuses_emf_path_without_emf_mode() -> None:
    with pytest.raises(ValidationError, match="emf_path is only used with mode emf"):
        CloudWatchConfig(namespace="N", emf_path="/tmp/metrics.log")
    assert CloudWatchConfig(namespace="N", mode="emf", emf_path="m.log").emf_path == "m.log"


# --- Datums -----------------------------------------------------------------------------------


def test_partially_failed_batch_counts_only_accepted_records_as_processed() -> None:
    work = Workload()
    work.deliver("orders", received=50, accepted=50, accepted_bytes=5_000)
    baseline = work.families()
    # A batch of 100: 90 accepted (some after retries), 10 dead-lettered for two reasons.
    work.deliver(
        "orders",
        received=100,
        accepted=90,
        accepted_bytes=9_000,
        throttled=5,
        retried={"ProvisionedThroughputExceededException": 5, "InternalFailure": 3},
        dead_lettered={"record_too_large": 6, "ttl_expired": 4},
        latencies_s=[(0.02, 90)],
    )
    datums = by_name(interval_datums(baseline, work.families(), HOST), "orders")

    assert datums["RecordsProcessed"].value == 90
    assert datums["RecordsFailed"].value == 10
    assert datums["SuccessRate"].value == pytest.approx(90.0)
    assert datums["SuccessRate"].unit == "Percent"
    assert datums["RecordsReceived"].value == 100
    assert datums["ThrottledRecords"].value == 5
    assert datums["RetriedRecords"].value == 8
    assert datums["BytesProcessed"].value == 9_000
    assert datums["BytesProcessed"].unit == "Bytes"
    assert datums["DeliveryLatency"].distribution == ((25.0, 90),)
    assert datums["DeliveryLatency"].unit == "Milliseconds"
    for datum in datums.values():
        assert datum.dimensions == (("DataSource", "orders"), ("host", "web-01"))
    assert list(datums) == [
        "RecordsProcessed",
        "RecordsFailed",
        "SuccessRate",
        "RecordsReceived",
        "ThrottledRecords",
        "RetriedRecords",
        "BytesProcessed",
        "DeliveryLatency",
    ]


def test_idle_source_sends_zeros_but_no_rate_or_latency() -> None:
    work = Workload()
    work.deliver("idle", received=5, accepted=5)
    baseline = work.families()
    datums = by_name(interval_datums(baseline, work.families()), "idle")
    assert {name: d.value for name, d in datums.items()} == {
        "RecordsProcessed": 0,
        "RecordsFailed": 0,
        "RecordsReceived": 0,
        "ThrottledRecords": 0,
        "RetriedRecords": 0,
        "BytesProcessed": 0,
    }


def test_all_dead_lettered_is_zero_percent() -> None:
    work = Workload()
    work.deliver("bad", received=4, dead_lettered={"invalid": 4})
    datums = by_name(interval_datums(None, work.families()), "bad")
    assert datums["SuccessRate"].value == 0.0
    assert datums["RecordsFailed"].value == 4


def test_only_sources_that_exist_get_datums() -> None:
    previous = Workload()
    previous.deliver("gone", accepted=3)
    current = Workload()
    current.deliver("new", accepted=2)
    datums = interval_datums(previous.families(), current.families())
    assert {dict(d.dimensions)["DataSource"] for d in datums} == {"new"}
    assert by_name(datums, "new")["RecordsProcessed"].value == 2


def test_source_seen_only_in_the_dead_letter_queue_still_exists() -> None:
    dlq = MetricFamily("kingest_dlq_records_total", MetricType.COUNTER, "")
    dlq.add(3, (("source", "mqtt"), ("reason", "invalid")))
    datums = by_name(interval_datums(None, [dlq]), "mqtt")
    assert datums["RecordsProcessed"].value == 0
    assert datums["RecordsFailed"].value == 3


def test_counter_reset_counts_from_zero() -> None:
    before = Workload()
    before.deliver("web", received=1_000, accepted=1_000, dead_lettered={"ttl_expired": 7})
    after = Workload()  # the process restarted: every counter began again at 0
    after.deliver("web", received=30, accepted=25, dead_lettered={"ttl_expired": 5})
    datums = by_name(interval_datums(before.families(), after.families()), "web")
    assert datums["RecordsProcessed"].value == 25
    assert datums["RecordsReceived"].value == 30
    assert datums["RecordsFailed"].value == 5


def test_reset_of_one_series_leaves_the_others_alone() -> None:
    before = Workload()
    before.deliver("web", retried={"A": 10, "B": 4})
    after = Workload()
    after.deliver("web", retried={"A": 12, "B": 1})  # B was reset (a new collector), A grew
    datums = by_name(interval_datums(before.families(), after.families()), "web")
    assert datums["RetriedRecords"].value == 2 + 1


def test_histogram_becomes_values_and_counts_at_upper_bounds() -> None:
    work = Workload()
    work.deliver("web", latencies_s=[(0.01, 3)])
    baseline = work.families()
    work.deliver("web", latencies_s=[(0.003, 4), (0.2, 2), (0.2001, 1)])
    latency = by_name(interval_datums(baseline, work.families()), "web")["DeliveryLatency"]
    # 0.003 s lies in (0.0025, 0.005]; 0.2 and 0.2001 in (0.1, 0.25]: sent at their bounds.
    assert latency.distribution == ((5.0, 4), (250.0, 3))


def test_overflow_bucket_takes_the_mean_of_what_overflowed() -> None:
    work = Workload()
    work.deliver("web", latencies_s=[(0.003, 4), (200.0, 1), (400.0, 1)])
    latency = by_name(interval_datums(None, work.families()), "web")["DeliveryLatency"]
    values = dict(latency.distribution)
    assert values[5.0] == 4
    ((overflow_ms, overflow_count),) = [(v, c) for v, c in latency.distribution if v > 120_000]
    assert overflow_count == 2
    # Sum minus the finite part at its upper bounds (4 x 5 ms), over the two that overflowed.
    assert overflow_ms == pytest.approx((4 * 3.0 + 600_000 - 4 * 5.0) / 2)


def test_overflow_bucket_never_goes_below_the_largest_bound() -> None:
    latency = MetricFamily("kingest_source_delivery_latency_seconds", MetricType.HISTOGRAM, "")
    labels = (("source", "web"),)
    latency.add(0, (*labels, ("le", "1.0")), "_bucket")
    latency.add(2, (*labels, ("le", "+Inf")), "_bucket")
    latency.add(0.5, labels, "_sum")  # inconsistent on purpose (a float sum's rounding)
    latency.add(2, labels, "_count")
    datum = by_name(interval_datums(None, [latency]), "web")["DeliveryLatency"]
    assert datum.distribution == ((1000.0, 2),)


def test_histogram_reset_counts_from_zero() -> None:
    before = Workload()
    before.deliver("web", latencies_s=[(0.01, 100)])
    after = Workload()
    after.deliver("web", latencies_s=[(0.5, 2)])
    latency = by_name(interval_datums(before.families(), after.families()), "web")[
        "DeliveryLatency"
    ]
    assert latency.distribution == ((500.0, 2),)


def test_histogram_with_many_buckets_keeps_at_most_150_values() -> None:
    bounds = [i / 1000 for i in range(1, 401)]
    histogram = Histogram(bounds)
    for bound in bounds:
        histogram.observe(bound, 2)
    latency = MetricFamily("kingest_source_delivery_latency_seconds", MetricType.HISTOGRAM, "")
    latency.add_histogram(histogram.snapshot(), (("source", "web"),))
    datum = by_name(interval_datums(None, [latency]), "web")["DeliveryLatency"]
    assert len(datum.distribution) <= MAX_VALUES_PER_DATUM
    assert sum(c for _, c in datum.distribution) == 800
    assert datum.distribution[-1][0] == pytest.approx(400.0)


def test_source_names_become_valid_dimension_values() -> None:
    work = Workload()
    work.deliver("café", accepted=1)
    work.deliver("x" * 2000, accepted=1)
    sources = {dict(d.dimensions)["DataSource"] for d in interval_datums(None, work.families())}
    assert sources == {"caf\\xe9", "x" * 1024}


# --- Merging ----------------------------------------------------------------------------------


def test_merge_sums_counts_distributions_and_recomputes_rates() -> None:
    work = Workload()
    work.deliver("web", accepted=9, dead_lettered={"x": 1}, latencies_s=[(0.02, 2)])
    first = interval_datums(None, work.families())
    baseline = work.families()
    work.deliver("web", accepted=1, dead_lettered={"x": 9}, latencies_s=[(0.02, 1), (1.5, 1)])
    second = interval_datums(baseline, work.families())

    merged = by_name(merge_datums(first, second), "web")
    assert merged["RecordsProcessed"].value == 10
    assert merged["RecordsFailed"].value == 10
    # 10 of 20: the ratio of the sums, not the sum (or mean) of 90% and 10%.
    assert merged["SuccessRate"].value == pytest.approx(50.0)
    assert merged["DeliveryLatency"].distribution == ((25.0, 3), (2500.0, 1))
    assert len(merge_datums(first, second)) == len(second)


def test_merge_keeps_metrics_only_one_side_has() -> None:
    a = Datum("RecordsProcessed", "Count", (("DataSource", "a"),), 1)
    b = Datum("RecordsProcessed", "Count", (("DataSource", "b"),), 2)
    assert merge_datums([a], [b]) == [a, b]


# --- Batching ---------------------------------------------------------------------------------


def counters(n: int, dimensions: int = 1, value_chars: int = 8) -> list[Datum]:
    return [
        Datum(
            "RecordsProcessed",
            "Count",
            tuple((f"d{j}", f"{i:0{value_chars}d}") for j in range(dimensions)),
            float(i),
        )
        for i in range(n)
    ]


@pytest.mark.parametrize(
    ("datums", "calls"), [(0, 0), (1, 1), (999, 1), (1000, 1), (1001, 2), (2000, 2), (2500, 3)]
)
def test_batches_hold_at_most_1000_datums(datums: int, calls: int) -> None:
    batches = batch_datums(counters(datums), "Kingest")
    assert len(batches) == calls
    assert all(len(b) <= PUT_METRIC_DATA_MAX_DATUMS for b in batches)
    assert [d for b in batches for d in b] == counters(datums)  # order kept, nothing lost


def test_batches_stop_at_the_byte_limit() -> None:
    # 30 dimensions of 1024 characters: about 33 KB a datum, so bytes bind long before count.
    datums = counters(200, dimensions=30, value_chars=1024)
    size = estimate_datum_bytes(datums[0])
    assert all(estimate_datum_bytes(d) == size for d in datums)
    batches = batch_datums(datums, "Kingest")

    overhead = len("Action=PutMetricData&Version=2010-08-01&Namespace=Kingest") + 64
    per_call = (PUT_METRIC_DATA_MAX_BYTES - overhead) // size
    assert per_call < PUT_METRIC_DATA_MAX_DATUMS
    assert len(batches) == math.ceil(len(datums) / per_call)  # the fewest calls possible
    assert all(len(b) == per_call for b in batches[:-1])
    for batch in batches:
        assert sum(estimate_datum_bytes(d) for d in batch) + overhead <= PUT_METRIC_DATA_MAX_BYTES


def test_batch_bytes_at_the_limit_exactly() -> None:
    datums = counters(10)
    size = estimate_datum_bytes(datums[0])
    overhead = len("Action=PutMetricData&Version=2010-08-01&Namespace=N") + 64 + 2
    exact = overhead + 4 * size
    assert [len(b) for b in batch_datums(datums, "N", max_bytes=exact)] == [4, 4, 2]
    assert [len(b) for b in batch_datums(datums, "N", max_bytes=exact - 1)] == [3, 3, 3, 1]


def _real_body_bytes(protocol: str, params: dict[str, Any]) -> int:
    model = botocore.session.get_session().get_service_model("cloudwatch")
    request = create_serializer(protocol).serialize_to_request(
        params, model.operation_model("PutMetricData")
    )
    body = request["body"]
    if isinstance(body, dict):  # query: botocore form-encodes the dict when it sends it
        return len(urlencode(body, doseq=True).encode())
    assert isinstance(body, bytes)
    return len(body)


def tricky_datums() -> list[Datum]:
    dims = (("DataSource", 'a "quoted" & 100% / odd source~'), ("host", "h" * 1024))
    return [
        Datum("RecordsProcessed", "Count", dims, 1.2345678901234567e300),
        Datum("SuccessRate", "Percent", dims, 33.333333333333336, ratio=(1, 3)),
        Datum(
            "DeliveryLatency",
            "Milliseconds",
            dims,
            distribution=tuple((i * 1.0000000000000002e-5, 10**15 + i) for i in range(150)),
        ),
    ]


@pytest.mark.parametrize("protocol", ["query", "json", "smithy-rpc-v2-cbor"])
def test_size_estimate_is_above_every_protocols_real_size(protocol: str) -> None:
    timestamp = datetime(2024, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    for datum in tricky_datums():
        one = _real_body_bytes(protocol, put_metric_data_params("N", [datum], timestamp))
        none = _real_body_bytes(protocol, put_metric_data_params("N", [], timestamp))
        assert estimate_datum_bytes(datum) >= one - none
    # A full batch by the estimate is within the service limit once really serialized.
    datums = counters(300, dimensions=30, value_chars=100) + tricky_datums() * 20
    for batch in batch_datums(datums, "Kingest/Test"):
        params = put_metric_data_params("Kingest/Test", batch, timestamp)
        assert _real_body_bytes(protocol, params) <= PUT_METRIC_DATA_MAX_BYTES


def test_params_match_the_service_model() -> None:
    work = Workload()
    work.deliver("web", accepted=3, dead_lettered={"x": 1}, latencies_s=[(0.2, 3), (500, 1)])
    datums = interval_datums(None, work.families(), HOST)
    params = put_metric_data_params("Kingest", datums, datetime.now(UTC), 1)
    shape = botocore.session.get_session().get_service_model("cloudwatch")
    report = ParamValidator().validate(params, shape.operation_model("PutMetricData").input_shape)
    assert not report.has_errors(), report.generate_report()
    latency = next(m for m in params["MetricData"] if m["MetricName"] == "DeliveryLatency")
    # The overflow: its mean from the sum, less the finite part at its bound (3 x 0.25 s).
    assert latency["Values"] == pytest.approx([250.0, (0.6 + 500 - 0.75) * 1000])
    assert latency["Counts"] == [3, 1]
    assert "Value" not in latency
    assert all(m["StorageResolution"] == 1 for m in params["MetricData"])


# --- EMF --------------------------------------------------------------------------------------


def check_emf(document: dict[str, Any]) -> None:
    """The structure the Embedded Metric Format specification requires of a document."""
    metadata = document["_aws"]
    assert set(metadata) == {"Timestamp", "CloudWatchMetrics"}
    assert isinstance(metadata["Timestamp"], int) and metadata["Timestamp"] > 0
    assert isinstance(metadata["CloudWatchMetrics"], list) and metadata["CloudWatchMetrics"]
    for directive in metadata["CloudWatchMetrics"]:
        assert set(directive) == {"Namespace", "Dimensions", "Metrics"}
        assert isinstance(directive["Namespace"], str) and 1 <= len(directive["Namespace"]) <= 255
        for dimension_set in directive["Dimensions"]:
            assert 0 < len(dimension_set) <= 30
            for name in dimension_set:
                assert isinstance(document[name], str)  # dimensions are string members
        assert 0 < len(directive["Metrics"]) <= 100
        for definition in directive["Metrics"]:
            assert set(definition) <= {"Name", "Unit", "StorageResolution"}
            assert definition.get("StorageResolution", 60) in (1, 60)
            value = document[definition["Name"]]  # every metric is a member of the root
            if isinstance(value, dict):
                assert set(value) == {"Values", "Counts", "Max", "Min", "Count", "Sum"}
                assert len(value["Values"]) == len(value["Counts"]) <= EMF_MAX_VALUES
                assert value["Min"] <= value["Max"]
                assert value["Count"] == sum(value["Counts"])
            else:
                assert isinstance(value, int | float)


def test_emf_is_one_document_per_source_per_interval() -> None:
    work = Workload()
    work.deliver("web", accepted=9, dead_lettered={"x": 1}, latencies_s=[(0.02, 9)])
    work.deliver("iot", accepted=4)
    timestamp = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    documents = emf_documents(interval_datums(None, work.families(), HOST), "Kingest", timestamp, 1)
    # JSON lines: a document must survive the trip through text unchanged.
    documents = [json.loads(json.dumps(d)) for d in documents]
    assert [d["DataSource"] for d in documents] == ["iot", "web"]
    for document in documents:
        check_emf(document)
        assert document["host"] == "web-01"
        assert document["_aws"]["Timestamp"] == int(timestamp.timestamp() * 1000)
        (directive,) = document["_aws"]["CloudWatchMetrics"]
        assert directive["Namespace"] == "Kingest"
        assert directive["Dimensions"] == [["DataSource", "host"]]
        assert all(m["StorageResolution"] == 1 for m in directive["Metrics"])
    web = documents[1]
    assert web["RecordsProcessed"] == 9
    assert web["SuccessRate"] == pytest.approx(90.0)
    assert web["DeliveryLatency"] == {
        "Values": [25.0],
        "Counts": [9],
        "Max": 25.0,
        "Min": 25.0,
        "Count": 9,
        "Sum": 225.0,
    }
    units = {m["Name"]: m["Unit"] for m in web["_aws"]["CloudWatchMetrics"][0]["Metrics"]}
    assert units["BytesProcessed"] == "Bytes"
    assert units["DeliveryLatency"] == "Milliseconds"
    assert "DeliveryLatency" not in documents[0]


def test_emf_standard_resolution_is_left_implicit() -> None:
    datum = Datum("RecordsProcessed", "Count", (("DataSource", "a"),), 1)
    (document,) = emf_documents([datum], "N", datetime.now(UTC))
    check_emf(document)
    assert document["_aws"]["CloudWatchMetrics"][0]["Metrics"] == [
        {"Name": "RecordsProcessed", "Unit": "Count"}
    ]


def test_emf_distribution_keeps_at_most_100_values() -> None:
    pairs = tuple((float(i), 1.0) for i in range(1, 151))
    datum = Datum("DeliveryLatency", "Milliseconds", (("DataSource", "a"),), distribution=pairs)
    (document,) = emf_documents([datum], "N", datetime.now(UTC))
    check_emf(document)
    assert document["DeliveryLatency"]["Count"] == 150
    assert document["DeliveryLatency"]["Max"] == 150.0


# --- Failures ---------------------------------------------------------------------------------


def client_error(code: str, status: int) -> ClientError:
    response: Any = {
        "Error": {"Code": code, "Message": f"{code} happened"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, "PutMetricData")


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (client_error("Throttling", 400), "transient"),
        (client_error("InternalServiceError", 500), "transient"),
        (client_error("ServiceUnavailable", 503), "transient"),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), "transient"),
        (client_error("AccessDenied", 403), "access"),
        (client_error("AccessDeniedException", 400), "access"),
        (client_error("InvalidClientTokenId", 403), "access"),
        (client_error("403", 403), "access"),
        (NoCredentialsError(), "access"),
        (client_error("InvalidParameterValue", 400), "refused"),
        (client_error("InvalidParameterCombination", 400), "refused"),
        (client_error("MissingParameter", 400), "refused"),
    ],
)
def test_failures_are_classified(exc: Exception, kind: str) -> None:
    failure = classify_failure(exc)
    assert failure.kind == kind
    assert failure.code


# --- Client and endpoint ------------------------------------------------------------------


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[pytest.MonkeyPatch]:
    """An AWS configuration of its own: no files, no instance metadata, test credentials."""
    for name in (
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_CLOUDWATCH",
        "AWS_SESSION_TOKEN",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    yield monkeypatch


def exporter(**kwargs: Any) -> CloudWatchExporter:
    return CloudWatchExporter(Registry(), CloudWatchConfig(namespace="N"), **kwargs)


def test_botocore_honours_the_cloudwatch_endpoint_variable(aws_env: pytest.MonkeyPatch) -> None:
    aws_env.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1111")
    aws_env.setenv("AWS_ENDPOINT_URL_CLOUDWATCH", "http://127.0.0.1:2222")
    assert exporter(region="eu-west-1").endpoint_url == "http://127.0.0.1:2222"
    aws_env.delenv("AWS_ENDPOINT_URL_CLOUDWATCH")
    assert exporter(region="eu-west-1").endpoint_url == "http://127.0.0.1:1111"
    explicit = exporter(region="eu-west-1", endpoint_url="http://localhost:3333")
    assert explicit.endpoint_url == "http://localhost:3333"


def test_region_comes_from_aws_region(aws_env: pytest.MonkeyPatch) -> None:
    aws_env.setenv("AWS_REGION", "ap-southeast-2")
    assert exporter().endpoint_url == "https://monitoring.ap-southeast-2.amazonaws.com"


def test_no_region_for_aws_is_a_credentials_error(aws_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(CredentialsError, match="No AWS region"):
        exporter()


def test_no_credentials_for_aws_is_a_credentials_error(aws_env: pytest.MonkeyPatch) -> None:
    aws_env.delenv("AWS_ACCESS_KEY_ID")
    aws_env.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(CredentialsError, match="No AWS credentials"):
        exporter(region="us-east-1")
    # A local endpoint needs neither credentials nor region.
    assert exporter(endpoint_url="http://127.0.0.1:4566").endpoint_url == "http://127.0.0.1:4566"


def test_unknown_profile_is_a_credentials_error(aws_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(CredentialsError, match="unusable"):
        exporter(profile="no-such-profile", region="us-east-1")


def test_emf_mode_needs_no_aws_configuration(aws_env: pytest.MonkeyPatch) -> None:
    aws_env.delenv("AWS_ACCESS_KEY_ID")
    config = CloudWatchConfig(namespace="N", mode="emf")
    assert CloudWatchExporter(Registry(), config).endpoint_url is None


# --- The exporter in EMF mode (no sockets) ----------------------------------------------------


def emf_exporter(work: Workload, path: Path, interval_s: float = 60) -> CloudWatchExporter:
    registry = Registry()
    registry.register(work.families)
    config = CloudWatchConfig(
        namespace="Kingest", mode="emf", emf_path=str(path), interval_s=interval_s
    )
    return CloudWatchExporter(registry, config)


def read_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_history_before_the_exporter_started_is_the_baseline(tmp_path: Path) -> None:
    work = Workload()
    work.deliver("web", accepted=1_000_000)  # counted before the exporter existed
    out = tmp_path / "emf.log"
    cw = emf_exporter(work, out)
    work.deliver("web", accepted=7)
    asyncio.run(cw.flush())
    (document,) = read_lines(out)
    assert document["RecordsProcessed"] == 7
    assert cw.documents_written == 1
    assert cw.datums_sent == 7  # SuccessRate too: 7 of 7 accepted
    assert cw.calls == 0


def test_run_flushes_each_interval_and_once_more_at_stop(tmp_path: Path) -> None:
    work = Workload()
    work.deliver("web")
    out = tmp_path / "emf.log"
    cw = emf_exporter(work, out, interval_s=1)

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(cw.run(stop))
        work.deliver("web", accepted=5)
        deadline = time.monotonic() + 10
        while len(read_lines(out)) < 1:
            assert time.monotonic() < deadline, "no flush within 10 s of a 1 s interval"
            await asyncio.sleep(0.05)
        work.deliver("web", accepted=3)  # the last interval, cut short by the stop
        stop.set()
        await asyncio.wait_for(task, 10)

    asyncio.run(scenario())
    assert [d["RecordsProcessed"] for d in read_lines(out)] == [5, 3]


def test_failed_emf_write_is_kept_for_the_next_flush(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    work = Workload()
    work.deliver("web")
    missing = tmp_path / "not-yet"
    cw = emf_exporter(work, missing / "emf.log")
    work.deliver("web", accepted=4, dead_lettered={"x": 1})
    asyncio.run(cw.flush())
    assert cw.pending_datums == 7
    assert "Cannot write EMF metrics; they will go with the next flush." in caplog.messages

    missing.mkdir()
    work.deliver("web", accepted=6, dead_lettered={"x": 4})
    asyncio.run(cw.flush())
    (document,) = read_lines(missing / "emf.log")
    assert document["RecordsProcessed"] == 10
    assert document["RecordsFailed"] == 5
    assert document["SuccessRate"] == pytest.approx(100 * 10 / 15)
    assert cw.pending_datums == 0
