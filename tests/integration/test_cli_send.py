"""``kingest send`` end to end: the JSON summary contract, exit status, bad input, streaming."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from kingest.dlq import DeadLetterQueue
from kingest.reader import read_all
from kingest.record import DlqReason
from tests.faultproxy import FaultPlan, FaultProxy

SUMMARY_FIELDS = [
    "records",
    "accepted",
    "dead_lettered",
    "kinesis_records",
    "requests",
    "retried_records",
    "elapsed_s",
    "records_per_s",
]


def kingest(
    *args: str, stdin: bytes | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "kingest", *args],
        input=stdin,
        capture_output=True,
        timeout=120,
        cwd=cwd,
        check=False,
    )


def summary_of(result: subprocess.CompletedProcess[bytes]) -> dict[str, object]:
    lines = result.stdout.decode().strip().splitlines()
    assert len(lines) == 1, result.stdout
    summary = json.loads(lines[0])
    assert list(summary) == SUMMARY_FIELDS
    return summary


def write_ndjson(path: Path, count: int) -> Path:
    with path.open("wb") as handle:
        for i in range(count):
            handle.write(orjson.dumps({"id": i, "user": {"id": f"u{i % 7}"}}) + b"\n")
    return path


def test_every_line_is_accepted_and_read_back(
    endpoint_url: str, stream_factory, tmp_path: Path
) -> None:
    stream = stream_factory(shards=2)
    source = write_ndjson(tmp_path / "in.ndjson", 2_000)
    result = kingest(
        "send",
        "--stream",
        stream,
        "--endpoint-url",
        endpoint_url,
        "--partition-key-field",
        "user.id",
        "--dlq-dir",
        str(tmp_path / "dlq"),
        str(source),
    )
    assert result.returncode == 0, result.stderr
    summary = summary_of(result)
    assert summary["records"] == summary["accepted"] == 2_000
    assert summary["dead_lettered"] == 0
    assert 0 < int(summary["kinesis_records"]) < 2_000  # aggregated
    records = read_all(endpoint_url, stream, idle_s=1.0)
    ids = {orjson.loads(r.data)["id"] for r in records}
    assert ids == set(range(2_000))
    assert {r.partition_key for r in records} == {f"u{i}" for i in range(7)}
    assert not (tmp_path / "dlq").exists()


def test_no_aggregate_sends_one_kinesis_record_per_line(
    endpoint_url: str, stream_factory, tmp_path: Path
) -> None:
    stream = stream_factory(shards=1)
    source = write_ndjson(tmp_path / "in.ndjson", 300)
    result = kingest(
        "send",
        "--stream",
        stream,
        "--endpoint-url",
        endpoint_url,
        "--no-aggregate",
        "--partition-key",
        "{user.id}-x",
        "--dlq-dir",
        str(tmp_path / "dlq"),
        str(source),
    )
    assert result.returncode == 0, result.stderr
    summary = summary_of(result)
    assert summary["kinesis_records"] == 300
    assert {r.partition_key for r in read_all(endpoint_url, stream, idle_s=1.0)} == {
        f"u{i}-x" for i in range(7)
    }


def test_bad_lines_go_to_the_dlq_and_the_exit_status_says_so(
    endpoint_url: str, stream_factory, tmp_path: Path
) -> None:
    stream = stream_factory(shards=1)
    lines = [
        b'{"id": 1, "user": {"id": "a"}}',
        b"not json at all",
        b'{"id": 2}',
        b"",
        b'{"id": 3, "user": {"id": "' + b"k" * 300 + b'"}}',
        b'{"id": 4, "user": {"id": "b"}, "pad": "' + b"x" * (1024 * 1024) + b'"}',
    ]
    dlq_dir = tmp_path / "dlq"
    result = kingest(
        "send",
        "--stream",
        stream,
        "--endpoint-url",
        endpoint_url,
        "--partition-key-field",
        "user.id",
        "--dlq-dir",
        str(dlq_dir),
        "-",
        stdin=b"\n".join(lines) + b"\n",
    )
    assert result.returncode == 1
    summary = summary_of(result)
    assert summary["records"] == 5  # the blank line is not a record
    assert summary["accepted"] == 1
    assert summary["dead_lettered"] == 4
    assert str(dlq_dir) in result.stderr.decode()
    assert "Traceback" not in result.stderr.decode()
    reasons = sorted(entry.reason for _, _, entry in DeadLetterQueue(dlq_dir).entries())
    assert reasons == sorted(
        [
            DlqReason.INVALID_INPUT,
            DlqReason.INVALID_PARTITION_KEY,
            DlqReason.INVALID_PARTITION_KEY,
            DlqReason.RECORD_TOO_LARGE,
        ]
    )
    messages = [entry.error_message or "" for _, _, entry in DeadLetterQueue(dlq_dir).entries()]
    assert any("<stdin>:2" in m for m in messages)


def test_raw_lines_are_sent_as_they_are(endpoint_url: str, stream_factory, tmp_path: Path) -> None:
    stream = stream_factory(shards=1)
    result = kingest(
        "send",
        "--stream",
        stream,
        "--endpoint-url",
        endpoint_url,
        "--raw",
        "--partition-key",
        "fixed",
        "--dlq-dir",
        str(tmp_path / "dlq"),
        "-",
        stdin=b"plain text\nnot json either\n",
    )
    assert result.returncode == 0, result.stderr
    assert sorted(r.data for r in read_all(endpoint_url, stream, idle_s=1.0)) == [
        b"not json either",
        b"plain text",
    ]


def test_standard_input_is_sent_as_it_arrives(
    endpoint_url: str, stream_factory, tmp_path: Path
) -> None:
    """A first line is delivered while the writer still holds the pipe open."""
    stream = stream_factory(shards=1)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kingest",
            "send",
            "--stream",
            stream,
            "--endpoint-url",
            endpoint_url,
            "--dlq-dir",
            str(tmp_path / "dlq"),
            "-",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdin is not None
    try:
        process.stdin.write(b'{"first": true}\n')
        process.stdin.flush()
        deadline = time.monotonic() + 30
        seen: list[bytes] = []
        while time.monotonic() < deadline and not seen:
            seen = [r.data for r in read_all(endpoint_url, stream, idle_s=0.5)]
        assert seen == [b'{"first": true}']
        out, err = process.communicate(b'{"second": true}\n', timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert json.loads(out)["accepted"] == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--stream", "no-such-stream"], "ResourceNotFoundException"),
        (["--stream", "s", "--endpoint-url", "http://127.0.0.1:9"], "failed"),
    ],
)
def test_unusable_stream_or_endpoint_is_one_clear_line(
    endpoint_url: str, args: list[str], message: str, tmp_path: Path
) -> None:
    full = ["send", *args]
    if "--endpoint-url" not in args:
        full += ["--endpoint-url", endpoint_url]
    result = kingest(*full, "-", stdin=b'{"a": 1}\n', cwd=tmp_path)
    assert result.returncode == 1
    err = result.stderr.decode()
    assert message in err
    assert "Traceback" not in err
    assert err.startswith("kingest send: error:")


def test_unreadable_file_and_bad_arguments_exit_2(endpoint_url: str, tmp_path: Path) -> None:
    missing = kingest(
        "send", "--stream", "s", "--endpoint-url", endpoint_url, str(tmp_path / "missing.ndjson")
    )
    assert missing.returncode == 2
    assert "cannot read" in missing.stderr.decode()
    raw_field = kingest(
        "send", "--stream", "s", "--raw", "--partition-key-field", "a", "-", stdin=b"x\n"
    )
    assert raw_field.returncode == 2


def test_standard_aws_endpoint_variable_is_honoured(
    endpoint_url: str, stream_factory, tmp_path: Path
) -> None:
    stream = stream_factory(shards=1)
    result = subprocess.run(
        [sys.executable, "-m", "kingest", "send", "--stream", stream, "-"],
        input=b'{"via": "environment"}\n',
        capture_output=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "AWS_ENDPOINT_URL_KINESIS": endpoint_url},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert [r.data for r in read_all(endpoint_url, stream, idle_s=1.0)] == [
        b'{"via": "environment"}'
    ]


def test_bad_credentials_are_one_clear_line(
    endpoint_url: str, stream_factory, tmp_path: Path
) -> None:
    """The service refusing the signature (as AWS does for a bad key) ends the command cleanly."""
    stream = stream_factory(shards=1)
    plan = FaultPlan(
        fail_all_code="UnrecognizedClientException",
        operations=("DescribeStreamSummary", "PutRecords"),
    )
    with FaultProxy(endpoint_url, plan) as proxy:
        result = kingest(
            "send",
            "--stream",
            stream,
            "--endpoint-url",
            proxy.url,
            "-",
            stdin=b'{"a": 1}\n',
            cwd=tmp_path,
        )
    assert result.returncode == 1
    err = result.stderr.decode()
    assert err.startswith("kingest send: error:")
    assert "UnrecognizedClientException" in err
    assert "Traceback" not in err
