"""Tests of ``kingest dlq list`` and ``kingest dlq replay`` against the embedded endpoint."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from kingest.dlq import DeadLetterQueue, DlqEntry
from kingest.dlq_replay import summarize
from kingest.reader import read_all
from kingest.record import DlqReason

pytestmark = pytest.mark.integration

KINGEST = [sys.executable, "-m", "kingest"]
SUMMARY_KEYS = {
    "files",
    "entries_seen",
    "replayed",
    "failed_again",
    "skipped",
    "unreadable_lines",
    "files_removed",
    "dry_run",
}


def _dlq(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*KINGEST, "dlq", *args], capture_output=True, text=True, timeout=120, cwd=cwd, check=False
    )


def _entry(
    n: int,
    *,
    reason: DlqReason = DlqReason.NON_RETRYABLE_ERROR,
    source: str | None = "web_logs",
    partition_key: str | None = None,
    explicit_hash_key: str | None = None,
    payload: bytes | None = None,
) -> DlqEntry:
    return DlqEntry(
        reason=reason,
        error_code="ValidationException" if reason is DlqReason.NON_RETRYABLE_ERROR else None,
        error_message="refused",
        attempts=1,
        source=source,
        stream="events",
        partition_key=partition_key if partition_key is not None else f"key-{n}",
        explicit_hash_key=explicit_hash_key,
        payload=payload if payload is not None else orjson.dumps({"n": n}),
        first_attempt_at=1_700_000_000.0 + n,
        last_attempt_at=1_700_000_000.5 + n,
        dead_lettered_at=1_700_000_001.0 + n,
    )


def _write(directory: Path, entries: list[DlqEntry]) -> None:
    with DeadLetterQueue(directory) as dlq:
        dlq.write(entries)


def _snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under directory, by relative path, with its bytes."""
    return {
        str(path.relative_to(directory)): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def _summary(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    summary: dict[str, Any] = orjson.loads(lines[0])
    assert set(summary) == SUMMARY_KEYS
    return summary


# ------------------------------------------------------------------------------------- list


def test_list_missing_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nothing-here"
    result = _dlq("list", "--dir", str(missing))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"no dead-lettered records in {missing}\n"
    assert not missing.exists(), "listing must not create the directory"


def test_list_empty_directory_and_default_dir(tmp_path: Path) -> None:
    (tmp_path / "kingest-dlq").mkdir()
    result = _dlq("list", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "no dead-lettered records in kingest-dlq\n"


def test_list_json_of_an_empty_queue_is_still_json(tmp_path: Path) -> None:
    result = _dlq("list", "--dir", str(tmp_path / "missing"), "--json")
    assert result.returncode == 0, result.stderr
    summary = orjson.loads(result.stdout)
    assert summary["total_entries"] == 0
    assert summary["files"] == []


def test_list_populated_directory(tmp_path: Path) -> None:
    directory = tmp_path / "dlq"
    _write(directory, [_entry(n) for n in range(3)])
    _write(
        directory,
        [
            _entry(10, reason=DlqReason.TTL_EXPIRED, source="iot_sensors"),
            _entry(11, reason=DlqReason.RECORD_TOO_LARGE, source=None),
        ],
    )
    with (directory / sorted(p.name for p in directory.iterdir())[0]).open("ab") as file:
        file.write(b"this line is damaged\n")

    as_json = _dlq("list", "--dir", str(directory), "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert orjson.loads(as_json.stdout) == summarize(DeadLetterQueue(directory))
    assert as_json.stdout.count("\n") == 1

    human = _dlq("list", "--dir", str(directory))
    assert human.returncode == 0, human.stderr
    text = human.stdout
    assert f"{directory}: 5 entries in 2 files" in text
    assert "oldest: 2023-11-14T22:13:21.000000Z" in text
    assert "newest: 2023-11-14T22:13:32.000000Z" in text
    assert "unreadable lines: 1" in text
    rows = {tuple(line.split()) for line in text.splitlines()}
    for row in [
        ("non_retryable_error", "3"),
        ("ttl_expired", "1"),
        ("record_too_large", "1"),
        ("web_logs", "3"),
        ("iot_sensors", "1"),
        ("(none)", "2"),  # by source (one None) and error code (two None) both show it
        ("ValidationException", "3"),
    ]:
        assert row in rows, (row, text)
    for path in DeadLetterQueue(directory).files():
        assert str(path) in text


def test_list_of_a_file_is_an_error(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    result = _dlq("list", "--dir", str(not_a_dir))
    assert result.returncode == 1
    assert result.stderr.startswith("kingest dlq: error: cannot read dead-letter directory")


def test_dlq_without_action_prints_usage() -> None:
    result = _dlq()
    assert result.returncode == 2
    assert "usage:" in result.stderr


# ----------------------------------------------------------------------------------- replay


def _replay(
    endpoint_url: str, stream: str, directory: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    return _dlq(
        "replay", "--endpoint-url", endpoint_url, "--stream", stream, "--dir", str(directory), *args
    )


def test_replay_moves_every_entry_into_the_stream(
    endpoint_url: str, stream_factory: Callable[..., str], tmp_path: Path
) -> None:
    stream = stream_factory(shards=2)
    directory = tmp_path / "dlq"
    entries = [_entry(n) for n in range(25)]
    entries.append(_entry(25, explicit_hash_key=str(2**127 + 5), payload=b"\x00\xffbinary"))
    entries.append(_entry(26, reason=DlqReason.SHUTDOWN, payload=b"two\nlines"))
    _write(directory, entries[:10])
    _write(directory, entries[10:])

    result = _replay(endpoint_url, stream, directory)

    assert result.returncode == 0, result.stderr
    assert _summary(result) == {
        "files": 2,
        "entries_seen": 27,
        "replayed": 27,
        "failed_again": 0,
        "skipped": 0,
        "unreadable_lines": 0,
        "files_removed": 2,
        "dry_run": False,
    }
    assert DeadLetterQueue(directory).files() == []
    assert not (directory / "replay-failures").exists()
    records = read_all(endpoint_url, stream, idle_s=0.5)
    assert sorted((r.partition_key, r.data) for r in records) == sorted(
        (e.partition_key, e.payload) for e in entries
    )
    (with_hash_key,) = [r for r in records if r.data == b"\x00\xffbinary"]
    assert with_hash_key.explicit_hash_key == str(2**127 + 5)
    assert with_hash_key.shard_id == "shardId-000000000001"  # the upper half of the key space


def test_replay_only_the_reasons_asked_for(
    endpoint_url: str, stream_factory: Callable[..., str], tmp_path: Path
) -> None:
    stream = stream_factory(shards=1)
    directory = tmp_path / "dlq"
    reasons = [DlqReason.TTL_EXPIRED, DlqReason.NON_RETRYABLE_ERROR, DlqReason.SHUTDOWN]
    _write(directory, [_entry(n, reason=reasons[n % 3]) for n in range(30)])

    result = _replay(
        endpoint_url, stream, directory, "--reason", "ttl_expired", "--reason", "shutdown"
    )

    assert result.returncode == 0, result.stderr
    summary = _summary(result)
    assert (summary["replayed"], summary["skipped"], summary["failed_again"]) == (20, 10, 0)
    left = Counter(entry.reason for _, _, entry in DeadLetterQueue(directory).entries())
    assert left == {DlqReason.NON_RETRYABLE_ERROR: 10}
    sent = sorted(orjson.loads(r.data)["n"] for r in read_all(endpoint_url, stream, idle_s=0.5))
    assert sent == [n for n in range(30) if n % 3 != 1]


def test_replay_into_a_missing_stream_keeps_everything(endpoint_url: str, tmp_path: Path) -> None:
    directory = tmp_path / "dlq"
    _write(directory, [_entry(n) for n in range(5)])
    before = _snapshot(directory)

    result = _replay(endpoint_url, "no-such-stream", directory)

    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("kingest dlq: error: ")
    assert len(result.stderr.splitlines()) == 1
    assert _snapshot(directory) == before


def test_replay_dry_run_changes_nothing(
    endpoint_url: str, stream_factory: Callable[..., str], tmp_path: Path
) -> None:
    stream = stream_factory(shards=1)
    directory = tmp_path / "dlq"
    _write(
        directory,
        [_entry(n, reason=[DlqReason.SHUTDOWN, DlqReason.BUFFER_FULL][n % 2]) for n in range(8)],
    )
    before = _snapshot(directory)

    result = _replay(endpoint_url, stream, directory, "--dry-run", "--reason", "shutdown")

    assert result.returncode == 0, result.stderr
    assert _summary(result) == {
        "files": 1,
        "entries_seen": 8,
        "replayed": 4,
        "failed_again": 0,
        "skipped": 4,
        "unreadable_lines": 0,
        "files_removed": 0,
        "dry_run": True,
    }
    assert _snapshot(directory) == before
    assert read_all(endpoint_url, stream, idle_s=0.5) == []


def test_replay_keeps_entries_that_fail_again(
    endpoint_url: str, stream_factory: Callable[..., str], tmp_path: Path
) -> None:
    stream = stream_factory(shards=1)
    directory = tmp_path / "dlq"
    # An empty partition key can never be sent: the replaying producer dead-letters it again.
    bad = _entry(99, reason=DlqReason.INVALID_PARTITION_KEY, partition_key="")
    _write(directory, [_entry(0), bad, _entry(1)])
    with (DeadLetterQueue(directory).files()[0]).open("ab") as file:
        file.write(b"{damaged\n")

    result = _replay(endpoint_url, stream, directory)

    assert result.returncode == 1, result.stderr
    summary = _summary(result)
    assert (summary["replayed"], summary["failed_again"], summary["unreadable_lines"]) == (2, 1, 1)
    (only_file,) = DeadLetterQueue(directory).files()
    lines = only_file.read_bytes().splitlines()
    assert len(lines) == 2 and lines[1] == b"{damaged"
    assert DlqEntry.from_json(orjson.loads(lines[0])) == bad
    # The failed attempt is recorded beside, never in, the files being replayed.
    failures = list(DeadLetterQueue(directory / "replay-failures").entries())
    assert [entry.reason for _, _, entry in failures] == [DlqReason.INVALID_PARTITION_KEY]
    assert sorted(r.partition_key for r in read_all(endpoint_url, stream, idle_s=0.5)) == [
        "key-0",
        "key-1",
    ]


def test_replay_of_a_missing_directory_is_nothing_to_do(
    endpoint_url: str, stream_factory: Callable[..., str], tmp_path: Path
) -> None:
    stream = stream_factory(shards=1)
    result = _replay(endpoint_url, stream, tmp_path / "missing")
    assert result.returncode == 0, result.stderr
    assert _summary(result)["entries_seen"] == 0
    assert not (tmp_path / "missing").exists()


def test_replay_rejects_an_unknown_reason(endpoint_url: str, tmp_path: Path) -> None:
    result = _replay(endpoint_url, "s", tmp_path, "--reason", "bogus")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr
