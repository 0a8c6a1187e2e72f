"""Tests of ``kingest demo``: every record of the three simulated sources comes back."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from kingest.cli.demo import RecordMix, enrich
from kingest.cli.main import main
from kingest.reader import ReadRecord, read_all
from kingest.sources.simulate import partition_key_for
from tests.helpers import require_embedded_endpoint

pytestmark = pytest.mark.integration

KINGEST = [sys.executable, "-m", "kingest"]
SOURCES = ("web_logs", "iot_sensors", "database_cdc")


def _demo(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*KINGEST, "demo", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _json_demo(*args: str) -> dict[str, Any]:
    done = _demo(*args, "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    report: dict[str, Any] = orjson.loads(done.stdout)
    return report


def _assert_complete(report: dict[str, Any], counts: dict[str, int]) -> None:
    try:
        _check_complete(report, counts)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nreport: {orjson.dumps(report).decode()}") from None


def _check_complete(report: dict[str, Any], counts: dict[str, int]) -> None:
    assert report["ok"] is True
    assert report["lost"] == 0
    assert report["dead_lettered"] == 0
    assert report["dlq_dir"] is None
    for name in SOURCES:
        row = report["sources"][name]
        assert row["generated"] == row["sent"] == row["read_back"] == counts[name], name
        assert row["lost"] == row["dead_lettered"] == row["duplicates"] == 0
        assert row["throughput_per_s"] > 0
    total = report["total"]
    assert total["sent"] == total["read_back"] == sum(counts.values())
    assert report["wrong_partition_keys"] == 0
    assert report["cdc_out_of_order"] == 0
    assert report["corrupt_records_in_stream"] == 0
    assert 0 < report["kinesis_records"] <= total["sent"]
    assert report["requests"] >= 1


def test_demo_on_the_embedded_endpoint() -> None:
    require_embedded_endpoint()
    report = _json_demo("--records", "3000", "--seed", "42")
    # The seed's proportions, 2 : 6 : 1.
    _assert_complete(report, {"web_logs": 667, "iot_sensors": 2000, "database_cdc": 333})
    assert report["embedded"] is True
    assert report["shards"] == 4
    assert report["seed"] == 42
    assert report["other_records_in_stream"] == 0
    assert report["aggregation_ratio"] > 1


def test_demo_table_output(endpoint_url: str, stream_factory: Callable[..., str]) -> None:
    stream = stream_factory(2, "demo")
    done = _demo("--records", "900", "--endpoint-url", endpoint_url, "--stream", stream)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    header = next(line for line in lines if line.startswith("source"))
    assert [cell.strip() for cell in header.split("|")] == [
        "source",
        "sent",
        "read back",
        "lost",
        "dead-lettered",
        "throughput (records/s)",
    ]
    rows = {line.split("|")[0].strip(): line for line in lines if "|" in line}
    assert [cell.strip() for cell in rows["database_cdc"].split("|")[1:5]] == [
        "100",
        "100",
        "0",
        "0",
    ]
    assert any(
        line.startswith("0 lost: every one of 900 records was read back from the stream (")
        for line in lines
    )
    assert done.stderr == ""  # no progress line when standard error is not a terminal


def test_demo_counts_only_its_own_records(
    endpoint_url: str, stream_factory: Callable[..., str]
) -> None:
    stream = stream_factory(1, "demo")
    target = ("--endpoint-url", endpoint_url, "--stream", stream)
    first = _json_demo("--records", "450", *target)
    second = _json_demo("--records", "450", *target)
    for report in (first, second):
        _assert_complete(report, {"web_logs": 100, "iot_sensors": 300, "database_cdc": 50})
        assert report["embedded"] is False
    assert first["run_id"] != second["run_id"]
    assert first["other_records_in_stream"] == 0
    assert second["other_records_in_stream"] == 450
    _assert_records_as_sent(read_all(endpoint_url, stream, idle_s=0.5))


def _assert_records_as_sent(records: list[ReadRecord]) -> None:
    """What a consumer of the stream sees: the seed's fields, enriched, under the right keys."""
    assert len(records) == 900
    offsets: set[str] = set()
    for record in records:
        obj = orjson.loads(record.data)
        assert obj["source"] in SOURCES
        assert record.partition_key == partition_key_for(obj["source"], obj)
        ingested = datetime.fromisoformat(obj["ingestion_timestamp"])
        assert ingested.utcoffset() == timedelta(0)
        stamp = obj["timestamp"]
        if obj["source"] == "database_cdc":
            # The Debezium-style source block is kept, not overwritten by the source name.
            assert obj["origin"] == {
                "db": "ecommerce_db",
                "table": obj["table"],
                "txId": int(obj["transaction_id"]),
            }
            pk = next(iter(obj["primary_key"].values()))
            assert record.partition_key == f"ecommerce_db.{obj['table']}:{pk}"
        elif obj["source"] == "web_logs":
            offsets.add(stamp[-6:])
            assert obj["log_type"] == "web_access"
        else:
            assert record.partition_key == obj["device_id"]
    assert "+00:00" in offsets
    assert len(offsets) > 1, "web log timestamps keep the servers' own offsets"


def test_demo_duration_and_rate(endpoint_url: str, stream_factory: Callable[..., str]) -> None:
    stream = stream_factory(2, "demo")
    report = _json_demo(
        "--duration", "1", "--rate", "450", "--endpoint-url", endpoint_url, "--stream", stream
    )
    generated = {name: report["sources"][name]["generated"] for name in SOURCES}
    # 450 at 450/s, unless the machine is too busy to keep up within the second.
    assert 300 <= sum(generated.values()) <= 450
    _assert_complete(report, generated)
    assert report["send_seconds"] >= 0.6


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--records", "10", "--duration", "1"), "exclude each other"),
        (("--stream", "s"), "go together"),
        (("--endpoint-url", "http://127.0.0.1:9"), "go together"),
    ],
)
def test_demo_refuses_conflicting_options(
    args: tuple[str, ...], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Checked before anything starts: no endpoint, no producer.
    assert main(["demo", *args]) == 1
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("args", [("--records", "0"), ("--rate", "-1"), ("--duration", "nan")])
def test_demo_rejects_bad_numbers(
    args: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["demo", *args])
    assert exited.value.code == 2
    assert "error" in capsys.readouterr().err


def test_enrich_keeps_a_record_s_own_source_as_origin() -> None:
    event = {"table": "users", "source": {"db": "d", "table": "users", "txId": 7}}
    enriched = enrich(event, "database_cdc", "run-000000001")
    assert next(iter(enriched)) == "event_id"
    assert enriched["source"] == "database_cdc"
    assert enriched["origin"] == {"db": "d", "table": "users", "txId": 7}
    assert event["source"] == {"db": "d", "table": "users", "txId": 7}, "input unchanged"
    assert datetime.fromisoformat(enriched["ingestion_timestamp"]).utcoffset() == timedelta(0)
    assert "origin" not in enrich({"device_id": "d1"}, "iot_sensors", "run-2")


def test_record_mix_follows_the_seed_s_proportions() -> None:
    mix = RecordMix(1, clock=lambda: datetime(2024, 5, 26, tzinfo=UTC))
    first = [mix.next()[0] for _ in range(9)]
    assert Counter(first) == {"web_logs": 2, "iot_sensors": 6, "database_cdc": 1}
    rest = Counter(mix.next()[0] for _ in range(9 * 100))
    assert rest == {"web_logs": 200, "iot_sensors": 600, "database_cdc": 100}
