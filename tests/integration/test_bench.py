"""Smoke tests of ``kingest bench``: it runs, reports every row and loses nothing. No timings."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import orjson
import pytest

from kingest.bench.report import COLUMNS, format_report
from tests.helpers import require_embedded_endpoint

pytestmark = pytest.mark.integration

KINGEST = [sys.executable, "-m", "kingest"]


def _bench(*args: str) -> dict[str, Any]:
    done = subprocess.run(
        [*KINGEST, "bench", *args, "--json"],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report: dict[str, Any] = orjson.loads(done.stdout)
    return report


def _assert_complete(row: dict[str, Any], records: int) -> None:
    assert row["error"] is None
    assert row["lost"] == 0
    assert row["accepted"] == records
    assert row["failed"] == row["dropped"] == row["unsent"] == 0
    assert row["requests"] >= 1
    assert row["kinesis_records"] >= 1
    assert row["bytes_sent"] > 0
    assert row["peak_rss_mib"] > 0
    assert row["cpu_us_per_record"] > 0


def test_null_endpoint_kingest_and_boto3() -> None:
    report = _bench(
        "--records", "2000", "--implementations", "kingest,boto3", "--endpoints", "null"
    )
    rows = report["rows"]
    assert [(r["endpoint"], r["implementation"]) for r in rows] == [
        ("null", "kingest"),
        ("null", "boto3"),
    ]
    for row in rows:
        _assert_complete(row, 2000)
        counts = row["endpoint_counts"]
        assert counts["put_records_requests"] == row["requests"]
        assert counts["kinesis_records"] == row["kinesis_records"]
    assert rows[1]["kinesis_records"] == 2000  # the plain loop sends one Kinesis record each
    assert report["settings"]["kingest"]["rate_limit"] is False
    [ratios] = report["ratios"]
    assert ratios["endpoint"] == "null"
    assert ratios["cpu_per_record_vs_boto3"] is not None
    text = format_report(report)
    for column in COLUMNS:
        assert column in text
    assert "rate_limit=False" in text


def test_embedded_endpoint_all_implementations_read_back() -> None:
    require_embedded_endpoint()
    report = _bench("--records", "2000", "--endpoints", "embedded", "--seed-timeout", "60")
    rows = report["rows"]
    assert [r["implementation"] for r in rows] == ["kingest", "boto3", "seed"]
    for row in rows:
        _assert_complete(row, 2000)
        assert row["lost_basis"] == "read-back"
        found = row["read_back"]
        assert found["distinct"] == 2000
        assert found["duplicates"] == 0
        assert found["other_records"] == 0


def test_memory_check_runs_kingest_twice() -> None:
    report = _bench("--memory-check", "--records", "500")
    assert [r["records"] for r in report["rows"]] == [500, 5000]
    for row in report["rows"]:
        _assert_complete(row, row["records"])
    check = report["memory_check"]
    assert all(value > 0 for value in check["peak_rss_mib"])
    assert check["max_buffer_bytes"] > 0
