"""The CloudWatch exporter against a real local CloudWatch endpoint (moto's server, own process).

The exporter finds the endpoint the standard way, through AWS_ENDPOINT_URL_CLOUDWATCH; what
arrived is read back with a plain boto3 client: values, dimensions, and how many calls it took.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from kingest.metrics.cloudwatch import CloudWatchConfig, CloudWatchExporter
from kingest.metrics.cloudwatch_datums import METRIC_NAMES
from kingest.metrics.registry import Registry
from tests.cloudwatch_server import LocalCloudWatch, require_moto_server
from tests.helpers import wait_until
from tests.unit.test_cloudwatch import Workload

pytestmark = pytest.mark.integration

REGION = "us-east-1"
HOST_DIMENSION = {"host": "it-host"}


@pytest.fixture(scope="session")
def cloudwatch() -> Iterator[LocalCloudWatch]:
    """The session's local CloudWatch endpoint."""
    require_moto_server()
    with LocalCloudWatch() as server:
        yield server


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """Test credentials and region, and no AWS configuration of the machine."""
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    return monkeypatch


def namespace() -> str:
    """A namespace no other test writes to."""
    return f"Kingest/Test-{uuid.uuid4().hex[:12]}"


def make_exporter(work: Workload, ns: str, *, interval_s: float = 60) -> CloudWatchExporter:
    """An exporter reading ``work`` (its counters now are the baseline), found by env var."""
    registry = Registry()
    registry.register(work.families)
    config = CloudWatchConfig(namespace=ns, dimensions=HOST_DIMENSION, interval_s=interval_s)
    return CloudWatchExporter(registry, config)


class Reader:
    """Reads back what the endpoint stored, with boto3 as any user would."""

    def __init__(self, endpoint_url: str, ns: str) -> None:
        self.ns = ns
        self.client = boto3.client(
            "cloudwatch",
            region_name=REGION,
            endpoint_url=endpoint_url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def close(self) -> None:
        self.client.close()

    def stats(self, metric: str, source: str) -> dict[str, float]:
        """Sum, SampleCount, Minimum and Maximum over every point of one source's metric."""
        now = dt.datetime.now(dt.UTC)
        answer = self.client.get_metric_statistics(
            Namespace=self.ns,
            MetricName=metric,
            Dimensions=[
                {"Name": "DataSource", "Value": source},
                {"Name": "host", "Value": HOST_DIMENSION["host"]},
            ],
            StartTime=now - dt.timedelta(hours=1),
            EndTime=now + dt.timedelta(hours=1),
            Period=3600,
            Statistics=["Sum", "SampleCount", "Minimum", "Maximum"],
        )
        points = answer["Datapoints"]
        if not points:
            return {"Sum": 0.0, "SampleCount": 0.0}
        return {
            "Sum": sum(p["Sum"] for p in points),
            "SampleCount": sum(p["SampleCount"] for p in points),
            "Minimum": min(p["Minimum"] for p in points),
            "Maximum": max(p["Maximum"] for p in points),
            "Unit": points[0]["Unit"],
        }

    def series(self) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
        """Every (metric, dimensions) the namespace holds."""
        found = set()
        for page in self.client.get_paginator("list_metrics").paginate(Namespace=self.ns):
            for metric in page["Metrics"]:
                dims = tuple(sorted((d["Name"], d["Value"]) for d in metric["Dimensions"]))
                found.add((metric["MetricName"], dims))
        return found


@pytest.fixture
def reader_factory() -> Iterator[Any]:
    readers: list[Reader] = []

    def make(endpoint_url: str, ns: str) -> Reader:
        readers.append(Reader(endpoint_url, ns))
        return readers[-1]

    yield make
    for reader in readers:
        reader.close()


def test_metrics_arrive_with_values_units_and_dimensions(
    cloudwatch: LocalCloudWatch, aws: pytest.MonkeyPatch, reader_factory: Any
) -> None:
    aws.setenv("AWS_ENDPOINT_URL_CLOUDWATCH", cloudwatch.endpoint_url)
    ns = namespace()
    work = Workload()
    work.deliver("orders", received=500, accepted=500)  # before the exporter: the baseline
    exporter = make_exporter(work, ns)
    assert exporter.endpoint_url == cloudwatch.endpoint_url
    # A partially failed batch: 90 accepted, 10 dead-lettered.
    work.deliver(
        "orders",
        received=100,
        accepted=90,
        accepted_bytes=9_000,
        throttled=4,
        retried={"ProvisionedThroughputExceededException": 4, "InternalFailure": 2},
        dead_lettered={"record_too_large": 6, "ttl_expired": 4},
        latencies_s=[(0.003, 5), (0.2, 4), (1.5, 1)],
    )
    work.deliver("sensors")  # exists, did nothing: zeros
    asyncio.run(exporter.flush())
    exporter.close()
    assert (exporter.calls, exporter.failed_calls, exporter.datums_sent) == (1, 0, 8 + 6)

    reader = reader_factory(cloudwatch.endpoint_url, ns)
    expected = {
        "RecordsProcessed": (90, "Count"),
        "RecordsFailed": (10, "Count"),
        "SuccessRate": (90.0, "Percent"),
        "RecordsReceived": (100, "Count"),
        "ThrottledRecords": (4, "Count"),
        "RetriedRecords": (6, "Count"),
        "BytesProcessed": (9_000, "Bytes"),
    }
    for metric, (value, unit) in expected.items():
        stats = reader.stats(metric, "orders")
        assert (stats["Sum"], stats["SampleCount"], stats["Unit"]) == (value, 1, unit), metric
    latency = reader.stats("DeliveryLatency", "orders")
    assert latency["SampleCount"] == 10
    assert latency["Sum"] == pytest.approx(5 * 5.0 + 4 * 250.0 + 1 * 2500.0)
    assert (latency["Minimum"], latency["Maximum"], latency["Unit"]) == (
        5.0,
        2500.0,
        "Milliseconds",
    )

    for metric in ("RecordsProcessed", "RecordsFailed", "RecordsReceived", "BytesProcessed"):
        stats = reader.stats(metric, "sensors")  # a flat line at 0, not a gap
        assert (stats["Sum"], stats["SampleCount"], stats["Maximum"]) == (0, 1, 0), metric
    dims = (("DataSource", "sensors"), ("host", "it-host"))
    series = reader.series()
    assert ("RecordsProcessed", dims) in series
    assert ("SuccessRate", dims) not in series  # nothing accepted nor failed: no rate
    assert ("DeliveryLatency", dims) not in series  # nothing delivered: no distribution


@pytest.mark.parametrize("sources", [1, 125, 126, 300])
def test_n_sources_go_out_in_the_fewest_calls(
    sources: int, cloudwatch: LocalCloudWatch, aws: pytest.MonkeyPatch, reader_factory: Any
) -> None:
    aws.setenv("AWS_ENDPOINT_URL_CLOUDWATCH", cloudwatch.endpoint_url)
    ns = namespace()
    work = Workload()
    exporter = make_exporter(work, ns)
    requests_before = cloudwatch.requests_seen()
    for i in range(sources):
        work.deliver(
            f"source-{i:03d}",
            received=10,
            accepted=9,
            accepted_bytes=900,
            dead_lettered={"invalid": 1},
            latencies_s=[(0.05, 1)],
        )
    asyncio.run(exporter.flush())
    exporter.close()

    metrics = len(METRIC_NAMES)  # 8 per source, all present with this workload
    assert exporter.datums_sent == sources * metrics
    assert exporter.calls == math.ceil(sources * metrics / 1000)
    assert exporter.failed_calls == 0
    # The server saw exactly those requests (it logs each one as it answers).
    expected = requests_before + exporter.calls
    wait_until(lambda: cloudwatch.requests_seen() >= expected, 5, "the server's request log")
    assert cloudwatch.requests_seen() == expected
    reader = reader_factory(cloudwatch.endpoint_url, ns)
    series = reader.series()
    assert len(series) == sources * metrics
    assert {name for name, _ in series} == set(METRIC_NAMES)
    last = f"source-{sources - 1:03d}"
    assert reader.stats("RecordsProcessed", last)["Sum"] == 9
    assert reader.stats("SuccessRate", last)["Sum"] == pytest.approx(90.0)


def test_outage_values_arrive_with_the_next_flush_summed(
    aws: pytest.MonkeyPatch, reader_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    require_moto_server()
    with LocalCloudWatch() as server:  # its own server: this test stops it
        aws.setenv("AWS_ENDPOINT_URL_CLOUDWATCH", server.endpoint_url)
        ns = namespace()
        work = Workload()
        work.deliver("web")
        work.deliver("iot")
        exporter = make_exporter(work, ns)

        work.deliver("web", received=10, accepted=10, latencies_s=[(0.02, 10)])
        asyncio.run(exporter.flush())
        assert (exporter.calls, exporter.failed_calls) == (1, 0)

        server.stop()  # the endpoint is down for one flush
        work.deliver("web", received=20, accepted=15, dead_lettered={"ttl_expired": 5})
        work.deliver("web", latencies_s=[(0.02, 3), (0.7, 2)])
        work.deliver("iot", received=7, accepted=7)
        with caplog.at_level(logging.WARNING, logger="kingest.metrics.cloudwatch"):
            asyncio.run(exporter.flush())
        assert (exporter.calls, exporter.failed_calls) == (2, 1)
        assert exporter.pending_datums == 8 + 7
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert [r.getMessage() for r in warnings] == [
            "Cannot send metrics to CloudWatch; they will go with the next flush."
        ]
        assert warnings[0].error_code == "EndpointConnectionError"  # type: ignore[attr-defined]

        server.start()  # same port, fresh state: only what is sent from now on is there
        work.deliver("web", received=30, accepted=30, latencies_s=[(0.02, 1)])
        asyncio.run(exporter.flush())
        exporter.close()
        assert (exporter.calls, exporter.failed_calls) == (3, 1)
        assert exporter.pending_datums == 0

        reader = reader_factory(server.endpoint_url, ns)
        processed = reader.stats("RecordsProcessed", "web")
        # Both intervals in one point: summed, not lost, not sent twice.
        assert (processed["Sum"], processed["SampleCount"]) == (45, 1)
        assert reader.stats("RecordsFailed", "web")["Sum"] == 5
        assert reader.stats("RecordsReceived", "web")["Sum"] == 50
        assert reader.stats("SuccessRate", "web")["Sum"] == pytest.approx(100 * 45 / 50)
        latency = reader.stats("DeliveryLatency", "web")
        assert latency["SampleCount"] == 3 + 2 + 1
        assert latency["Maximum"] == 1000.0
        assert reader.stats("RecordsProcessed", "iot")["Sum"] == 7


def test_refused_credentials_are_an_error_once_and_the_datums_are_kept(
    aws: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    require_moto_server()
    # moto checks signatures against its IAM once this is 0, and does not know "testing".
    with LocalCloudWatch(env={"INITIAL_NO_AUTH_ACTION_COUNT": "0"}) as server:
        aws.setenv("AWS_ENDPOINT_URL_CLOUDWATCH", server.endpoint_url)
        work = Workload()
        exporter = make_exporter(work, namespace())
        with caplog.at_level(logging.DEBUG, logger="kingest.metrics.cloudwatch"):
            for accepted in (3, 4):
                work.deliver("web", accepted=accepted)
                asyncio.run(exporter.flush())
        exporter.close()

    assert (exporter.calls, exporter.failed_calls, exporter.datums_sent) == (2, 2, 0)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1  # not once per flush
    assert errors[0].getMessage().startswith("CloudWatch refuses kingest's credentials")
    # moto answers its auth errors in XML whatever the protocol, so botocore reads no AWS code
    # from the JSON client's point of view, only the status; AWS itself says
    # UnrecognizedClientException or AccessDenied, classified the same way.
    assert errors[0].http_status == 403  # type: ignore[attr-defined]
    # Both flushes' datums merged into one set (7 metrics, no latency), kept for when it heals.
    assert exporter.pending_datums == 7


def test_run_sends_every_interval_and_the_last_one_at_stop(
    cloudwatch: LocalCloudWatch, aws: pytest.MonkeyPatch, reader_factory: Any
) -> None:
    aws.setenv("AWS_ENDPOINT_URL_CLOUDWATCH", cloudwatch.endpoint_url)
    ns = namespace()
    work = Workload()
    exporter = make_exporter(work, ns, interval_s=1)

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(exporter.run(stop))
        work.deliver("web", accepted=5)
        deadline = time.monotonic() + 15
        while exporter.calls < 1:
            assert time.monotonic() < deadline, "no flush within 15 s of a 1 s interval"
            await asyncio.sleep(0.05)
        work.deliver("web", accepted=3)
        stop.set()
        await asyncio.wait_for(task, 15)

    asyncio.run(scenario())
    assert exporter.calls == 2
    processed = reader_factory(cloudwatch.endpoint_url, ns).stats("RecordsProcessed", "web")
    assert (processed["Sum"], processed["SampleCount"]) == (8, 2)


def test_an_agent_publishes_with_the_command_line_flags(
    cloudwatch: LocalCloudWatch,
    aws: pytest.MonkeyPatch,
    agents: Any,
    endpoint_url: str,
    stream_factory: Any,
    tmp_path: Path,
) -> None:
    """``kingest tail --cloudwatch-namespace``: accepted lines are RecordsProcessed, refused ones
    RecordsFailed, found through AWS_ENDPOINT_URL_CLOUDWATCH like any AWS tool would."""
    aws.setenv("AWS_ENDPOINT_URL_CLOUDWATCH", cloudwatch.endpoint_url)
    ns = namespace()
    log = tmp_path / "access.log"
    log.write_text(
        "".join(
            f'10.0.0.1 - - [26/May/2024:10:30:00 +0000] "GET /{i} HTTP/1.1" 200 1\n'
            for i in range(40)
        )
        + "garbage\n" * 2
    )
    agent = agents(
        [
            "tail",
            "--path",
            str(log),
            "--format",
            "common",
            "--from",
            "beginning",
            "--stream",
            stream_factory(shards=1),
            "--endpoint-url",
            endpoint_url,
            "--cloudwatch-namespace",
            ns,
            "--cloudwatch-interval-s",
            "1",
        ],
        tmp_path,
    )
    client = boto3.client(
        "cloudwatch",
        region_name=REGION,
        endpoint_url=cloudwatch.endpoint_url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )

    def total(metric: str) -> float:
        now = dt.datetime.now(dt.UTC)
        points = client.get_metric_statistics(
            Namespace=ns,
            MetricName=metric,
            Dimensions=[{"Name": "DataSource", "Value": "web_logs"}],
            StartTime=now - dt.timedelta(hours=1),
            EndTime=now + dt.timedelta(hours=1),
            Period=3600,
            Statistics=["Sum"],
        )["Datapoints"]
        return sum(p["Sum"] for p in points)

    try:
        wait_until(
            lambda: total("RecordsProcessed") >= 40 or agent.process.poll() is not None,
            60,
            "RecordsProcessed to reach 40",
        )
        assert agent.stop() == 0, agent.stderr
        assert total("RecordsProcessed") == 40
        assert total("RecordsFailed") == 2
        assert total("RecordsReceived") == 42
        names = {
            m["MetricName"]
            for page in client.get_paginator("list_metrics").paginate(Namespace=ns)
            for m in page["Metrics"]
        }
        assert {"SuccessRate", "DeliveryLatency", "ThrottledRecords"} <= names
    finally:
        client.close()
