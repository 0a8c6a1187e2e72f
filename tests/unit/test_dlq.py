"""Tests for the dead-letter queue: entry format, durable writes, rotation, reading, replay."""

from __future__ import annotations

import base64
import logging
import math
import os
import re
import stat
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kingest.dlq import NONE_KEY, DeadLetterQueue, DlqEntry
from kingest.dlq_replay import ReplaySummary, replay_files, summarize
from kingest.errors import ConfigError
from kingest.record import DlqReason

NAME_RE = re.compile(r"^dlq-\d{8}T\d{6}-\d{6,}\.jsonl$")
ISO_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")


def make_entry(
    n: int = 0,
    *,
    reason: DlqReason = DlqReason.NON_RETRYABLE_ERROR,
    source: str | None = "web_logs",
    error_code: str | None = "ValidationException",
    payload: bytes | None = None,
    dead_lettered_at: float = 1_700_000_000.5,
) -> DlqEntry:
    return DlqEntry(
        reason=reason,
        error_code=error_code,
        error_message="refused",
        attempts=1,
        source=source,
        stream="events",
        partition_key=f"key-{n}",
        explicit_hash_key=None,
        payload=payload if payload is not None else orjson.dumps({"n": n}),
        first_attempt_at=1_700_000_000.25,
        last_attempt_at=1_700_000_000.375,
        dead_lettered_at=dead_lettered_at,
    )


def entry_number(entry: DlqEntry) -> int:
    assert entry.partition_key is not None
    return int(entry.partition_key.removeprefix("key-"))


def all_numbers(dlq: DeadLetterQueue) -> list[int]:
    return [entry_number(entry) for _, _, entry in dlq.entries()]


# --- DlqEntry format -------------------------------------------------------------------------

optional_text = st.none() | st.text(max_size=40)
optional_time = st.none() | st.floats(allow_nan=False, allow_infinity=False, width=64)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
payloads = (
    st.binary(max_size=2048)
    | st.text(max_size=200).map(lambda s: s.encode("utf-8"))
    | json_values.map(orjson.dumps)
)
entries_strategy = st.builds(
    DlqEntry,
    reason=st.sampled_from(list(DlqReason)),
    error_code=optional_text,
    error_message=optional_text,
    attempts=st.integers(min_value=0, max_value=2**63 - 1),
    source=optional_text,
    stream=optional_text,
    partition_key=optional_text,
    explicit_hash_key=optional_text,
    payload=payloads,
    first_attempt_at=optional_time,
    last_attempt_at=optional_time,
    dead_lettered_at=st.floats(allow_nan=False, allow_infinity=False, width=64),
)


@given(entries_strategy)
def test_to_json_from_json_round_trip(entry: DlqEntry) -> None:
    obj = entry.to_json()
    assert DlqEntry.from_json(obj) == entry
    # And through the bytes actually written to a file.
    line = orjson.dumps(obj, option=orjson.OPT_APPEND_NEWLINE)
    assert line.count(b"\n") == 1 and line.endswith(b"\n")
    assert DlqEntry.from_json(orjson.loads(line)) == entry
    assert base64.b64decode(obj["payload_b64"]) == entry.payload
    assert obj["reason"] == entry.reason.value


@settings(max_examples=50)
@given(st.lists(entries_strategy, min_size=1, max_size=5))
def test_written_entries_read_back_identical(entries: list[DlqEntry]) -> None:
    with tempfile.TemporaryDirectory() as tmp, DeadLetterQueue(Path(tmp) / "dlq") as dlq:
        dlq.write(entries)
        errors: list[tuple[Path, int, str]] = []
        assert [entry for _, _, entry in dlq.entries(errors)] == entries
        assert errors == []


def test_to_json_payload_views_and_times() -> None:
    entry = make_entry(payload=b'{"user": "ann", "n": 3}')
    obj = entry.to_json()
    assert obj["payload_format"] == "json"
    assert obj["payload"] == {"user": "ann", "n": 3}
    assert obj["payload_bytes"] == len(entry.payload)
    assert obj["reason"] == "non_retryable_error"
    assert obj["dead_lettered_at"] == 1_700_000_000.5
    assert obj["dead_lettered_at_iso"] == "2023-11-14T22:13:20.500000Z"
    assert obj["first_attempt_at_iso"] == "2023-11-14T22:13:20.250000Z"
    for name in ("first_attempt_at_iso", "last_attempt_at_iso", "dead_lettered_at_iso"):
        assert ISO_RE.match(obj[name])

    text = make_entry(payload=b"GET /index.html 200").to_json()
    assert (text["payload_format"], text["payload"]) == ("text", "GET /index.html 200")

    binary = make_entry(payload=b"\xff\xfe\x00binary").to_json()
    assert (binary["payload_format"], binary["payload"]) == ("binary", None)

    # A JSON string payload is told apart from a text payload by payload_format.
    quoted = make_entry(payload=b'"hello"').to_json()
    assert (quoted["payload_format"], quoted["payload"]) == ("json", "hello")

    # Nesting deeper than orjson can write back falls back to text, and the line stays valid.
    deep = b"[" * 300 + b"]" * 300
    deep_obj = make_entry(payload=deep).to_json()
    assert deep_obj["payload_format"] == "text"
    assert DlqEntry.from_json(orjson.loads(orjson.dumps(deep_obj))).payload == deep

    no_attempt = DlqEntry(
        reason=DlqReason.INVALID_INPUT,
        error_code=None,
        error_message=None,
        attempts=0,
        source=None,
        stream=None,
        partition_key=None,
        explicit_hash_key=None,
        payload=b"",
        first_attempt_at=None,
        last_attempt_at=None,
        dead_lettered_at=0,
    )
    obj = no_attempt.to_json()
    assert obj["first_attempt_at"] is None and obj["first_attempt_at_iso"] is None
    assert obj["dead_lettered_at_iso"] == "1970-01-01T00:00:00.000000Z"
    assert DlqEntry.from_json(obj) == no_attempt


def test_entry_validation() -> None:
    with pytest.raises(ValueError, match="finite"):
        make_entry(dead_lettered_at=math.nan)
    with pytest.raises(ValueError, match="finite"):
        make_entry(dead_lettered_at=10**400)
    with pytest.raises(TypeError):
        DlqEntry(**{**_fields(make_entry()), "payload": "text"})
    with pytest.raises(ValueError):
        DlqEntry(**{**_fields(make_entry()), "attempts": -1})
    # bytearray is accepted and stored as bytes (the entry is hashable and immutable).
    entry = DlqEntry(**{**_fields(make_entry()), "payload": bytearray(b"abc")})
    assert type(entry.payload) is bytes and entry.payload == b"abc"


def _fields(entry: DlqEntry) -> dict[str, Any]:
    return {name: getattr(entry, name) for name in DlqEntry.__slots__}


@pytest.mark.parametrize(
    "change",
    [
        {"reason": None},
        {"reason": "no_such_reason"},
        {"payload_b64": "not base64!"},
        {"payload_b64": None},
        {"attempts": "1"},
        {"attempts": True},
        {"dead_lettered_at": None},
        {"dead_lettered_at": "2023-11-14T22:13:20Z"},
        {"source": 7},
    ],
)
def test_from_json_rejects_malformed(change: dict[str, Any]) -> None:
    obj = make_entry().to_json()
    obj.update(change)
    with pytest.raises(ValueError):
        DlqEntry.from_json(obj)


def test_from_json_ignores_unknown_keys() -> None:
    entry = make_entry()
    assert DlqEntry.from_json({**entry.to_json(), "added_later": 1}) == entry


def test_lone_surrogates_do_not_block_a_write(tmp_path: Path) -> None:
    # e.g. a file name decoded with surrogateescape becoming the source name.
    entry = DlqEntry(**{**_fields(make_entry()), "source": "file:/logs/\udcff.log"})
    with DeadLetterQueue(tmp_path / "dlq") as dlq:
        dlq.write([entry])
        [(_, _, back)] = list(dlq.entries())
    assert back.source == "file:/logs/\\udcff.log"
    assert back.payload == entry.payload


# --- Writing -----------------------------------------------------------------------------------


def test_nothing_created_when_nothing_written(tmp_path: Path) -> None:
    directory = tmp_path / "a" / "dlq"
    dlq = DeadLetterQueue(directory)
    dlq.write([])
    assert dlq.files() == []
    assert list(dlq.entries()) == []
    assert dlq.count() == 0
    assert summarize(dlq)["total_entries"] == 0
    assert replay_files(dlq, lambda batch: [True] * len(batch)) == ReplaySummary()
    dlq.close()
    assert not directory.exists()
    assert not (tmp_path / "a").exists()


def test_write_is_on_disk_before_close(tmp_path: Path) -> None:
    dlq = DeadLetterQueue(tmp_path / "nested" / "dlq")
    dlq.write([make_entry(1), make_entry(2)])
    [path] = dlq.files()
    assert NAME_RE.match(path.name)
    lines = path.read_bytes().splitlines()
    assert [entry_number(DlqEntry.from_json(orjson.loads(line))) for line in lines] == [1, 2]
    assert dlq.total_written == 2
    dlq.write([make_entry(3)])
    assert len(path.read_bytes().splitlines()) == 3
    dlq.close()


def test_one_fsync_per_write_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    dlq = DeadLetterQueue(tmp_path / "dlq")
    dlq.write([make_entry(n) for n in range(100)])
    # Directory creation is synced in its parent, the new file in the directory, then the data.
    assert synced.count("file") == 1
    assert synced.count("dir") >= 2
    synced.clear()
    dlq.write([make_entry(n) for n in range(100, 200)])
    assert synced == ["file"]
    dlq.close()


def test_rotation_by_size(tmp_path: Path) -> None:
    line_size = len(orjson.dumps(make_entry(10).to_json())) + 1
    dlq = DeadLetterQueue(tmp_path, max_file_bytes=3 * line_size + 10)
    dlq.write([make_entry(n) for n in range(10, 17)])  # one call spanning three files
    for n in range(17, 20):
        dlq.write([make_entry(n)])
    files = dlq.files()
    assert [len(path.read_bytes().splitlines()) for path in files] == [3, 3, 3, 1]
    assert all(path.stat().st_size <= 3 * line_size + 10 for path in files)
    assert all(NAME_RE.match(path.name) for path in files)
    assert all_numbers(dlq) == list(range(10, 20))
    assert dlq.count() == dlq.total_written == 10
    dlq.close()


def test_entry_larger_than_max_file_bytes_gets_its_own_file(tmp_path: Path) -> None:
    dlq = DeadLetterQueue(tmp_path, max_file_bytes=100)
    dlq.write([make_entry(1), make_entry(2, payload=b"x" * 1000), make_entry(3)])
    assert [len(path.read_bytes().splitlines()) for path in dlq.files()] == [1, 1, 1]
    assert all_numbers(dlq) == [1, 2, 3]
    dlq.close()


def test_max_files_deletes_oldest_and_counts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    line_size = len(orjson.dumps(make_entry(10).to_json())) + 1
    dlq = DeadLetterQueue(tmp_path, max_file_bytes=2 * line_size, max_files=2)
    with caplog.at_level(logging.WARNING, logger="kingest.dlq"):
        for n in range(10, 20):
            dlq.write([make_entry(n)])
    assert len(dlq.files()) == 2
    assert all_numbers(dlq) == [16, 17, 18, 19]
    assert dlq.dropped_files == 3
    assert dlq.dropped_entries == 6
    assert dlq.total_written == 10
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3
    assert all(r.getMessage()[0].isupper() and r.getMessage().endswith(".") for r in warnings)
    dlq.close()


def test_default_keeps_every_file(tmp_path: Path) -> None:
    dlq = DeadLetterQueue(tmp_path, max_file_bytes=1)
    for n in range(20):
        dlq.write([make_entry(n)])
    assert len(dlq.files()) == 20
    assert dlq.dropped_entries == 0
    dlq.close()


def test_new_instance_starts_a_new_file_after_existing_ones(tmp_path: Path) -> None:
    with DeadLetterQueue(tmp_path) as first:
        first.write([make_entry(1)])
    [old] = first.files()
    # A crash mid-write left a partial line: a new writer must not append after it.
    with old.open("ab") as file:
        file.write(b'{"v": 1, "reason": "ttl_ex')
    with DeadLetterQueue(tmp_path) as second:
        second.write([make_entry(2)])
        files = second.files()
    assert files[0] == old and len(files) == 2
    errors: list[tuple[Path, int, str]] = []
    assert [entry_number(e) for _, _, e in second.entries(errors)] == [1, 2]
    assert len(errors) == 1


def test_write_after_close_opens_a_new_file(tmp_path: Path) -> None:
    dlq = DeadLetterQueue(tmp_path)
    dlq.write([make_entry(1)])
    dlq.close()
    dlq.write([make_entry(2)])
    dlq.close()
    assert len(dlq.files()) == 2
    assert all_numbers(dlq) == [1, 2]


def test_failed_write_raises_and_next_write_uses_a_new_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dlq = DeadLetterQueue(tmp_path)
    dlq.write([make_entry(1)])
    real_fsync = os.fsync

    def failing_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError):
        dlq.write([make_entry(2)])
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert dlq.total_written == 1
    dlq.write([make_entry(3)])
    assert len(dlq.files()) == 2
    assert 3 in all_numbers(dlq)
    dlq.close()


def test_concurrent_writers(tmp_path: Path) -> None:
    threads_count, per_thread, batch = 8, 250, 5
    line_size = len(orjson.dumps(make_entry(10_000).to_json())) + 1
    dlq = DeadLetterQueue(tmp_path, max_file_bytes=100 * line_size)
    barrier = threading.Barrier(threads_count)
    failures: list[BaseException] = []

    def writer(index: int) -> None:
        try:
            barrier.wait()
            base = 10_000 + index * per_thread
            for start in range(0, per_thread, batch):
                dlq.write([make_entry(base + n) for n in range(start, start + batch)])
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    dlq.close()

    total = threads_count * per_thread
    assert dlq.total_written == total
    seen: list[int] = []
    for path in dlq.files():
        data = path.read_bytes()
        assert data.endswith(b"\n")
        for line in data.splitlines():
            seen.append(entry_number(DlqEntry.from_json(orjson.loads(line))))
    assert sorted(seen) == list(range(10_000, 10_000 + total))
    # Each writer's entries keep their order.
    for index in range(threads_count):
        base = 10_000 + index * per_thread
        mine = [n for n in seen if base <= n < base + per_thread]
        assert mine == sorted(mine)


# --- Reading -----------------------------------------------------------------------------------


def test_corrupt_lines_are_reported_and_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dlq = DeadLetterQueue(tmp_path)
    dlq.write([make_entry(1), make_entry(2)])
    dlq.close()
    dlq.write([make_entry(3)])
    dlq.close()
    first, second = dlq.files()
    with first.open("ab") as file:
        file.write(b"this is not json\n\n")
    with second.open("ab") as file:
        file.write(b'{"v": 1, "reason": "ttl_expired", "payl')  # crash mid-write

    errors: list[tuple[Path, int, str]] = []
    found = [(path, line, entry_number(entry)) for path, line, entry in dlq.entries(errors)]
    assert found == [(first, 1, 1), (first, 2, 2), (second, 1, 3)]
    assert [(path, line) for path, line, _ in errors] == [(first, 3), (second, 2)]
    assert "truncated" in errors[1][2]
    assert dlq.count() == 3

    with caplog.at_level(logging.WARNING, logger="kingest.dlq"):
        assert len(list(dlq.entries())) == 3
    assert len(caplog.records) == 2
    assert all("payl" not in record.getMessage() for record in caplog.records)


def test_files_ignores_foreign_names_and_sorts_by_sequence(tmp_path: Path) -> None:
    for name in (
        "dlq-20240101T000000-000010.jsonl",
        "dlq-20250101T000000-000002.jsonl",
        "dlq-20230101T000000-1000000.jsonl",
        "notes.txt",
        ".dlq-replay-dlq-20240101T000000-000010.jsonl.tmp",
    ):
        (tmp_path / name).write_bytes(b"")
    names = [path.name for path in DeadLetterQueue(tmp_path).files()]
    assert names == [
        "dlq-20250101T000000-000002.jsonl",
        "dlq-20240101T000000-000010.jsonl",
        "dlq-20230101T000000-1000000.jsonl",
    ]
    with DeadLetterQueue(tmp_path) as dlq:
        dlq.write([make_entry()])
        assert dlq.files()[-1].name.endswith("-1000001.jsonl")


def test_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        DeadLetterQueue(tmp_path, max_file_bytes=0)
    with pytest.raises(ConfigError):
        DeadLetterQueue(tmp_path, max_files=0)
    with pytest.raises(ConfigError):
        replay_files(DeadLetterQueue(tmp_path), lambda batch: [], batch_size=0)


# --- Replay ------------------------------------------------------------------------------------


def fill(dlq: DeadLetterQueue, numbers: Sequence[int], **kwargs: Any) -> None:
    dlq.write([make_entry(n, **kwargs) for n in numbers])


def test_replay_removes_delivered_and_keeps_the_rest(tmp_path: Path) -> None:
    dlq = DeadLetterQueue(tmp_path)
    fill(dlq, range(10))
    dlq.close()
    fill(dlq, range(10, 14))  # a second file, every entry delivered
    sent: list[list[int]] = []

    def send(batch: Sequence[DlqEntry]) -> list[bool]:
        sent.append([entry_number(e) for e in batch])
        return [entry_number(e) % 3 == 0 or entry_number(e) >= 10 for e in batch]

    summary = replay_files(dlq, send, batch_size=4)
    assert sent == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9], [10, 11, 12, 13]]
    assert summary == ReplaySummary(
        files=2,
        files_removed=1,
        entries_seen=14,
        replayed=8,
        failed_again=6,
        skipped=0,
        unreadable_lines=0,
    )
    assert all_numbers(dlq) == [1, 2, 4, 5, 7, 8]
    assert len(dlq.files()) == 1

    summary = replay_files(dlq, lambda batch: [True] * len(batch))
    assert summary.replayed == 6 and summary.files_removed == 1
    assert dlq.files() == []
    assert not any(tmp_path.iterdir())  # no temporaries left behind


def test_replay_kept_lines_are_byte_identical(tmp_path: Path) -> None:
    dlq = DeadLetterQueue(tmp_path)
    fill(dlq, range(4))
    [path] = dlq.files()
    with path.open("ab") as file:
        file.write(b"garbage line\n")
    before = path.read_bytes().splitlines(keepends=True)
    summary = replay_files(dlq, lambda batch: [entry_number(e) != 2 for e in batch])
    assert summary.unreadable_lines == 1
    assert path.read_bytes().splitlines(keepends=True) == [before[2], before[4]]


def test_replay_with_reason_filter(tmp_path: Path) -> None:
    dlq = DeadLetterQueue(tmp_path)
    fill(dlq, range(0, 3), reason=DlqReason.TTL_EXPIRED)
    fill(dlq, range(3, 6), reason=DlqReason.RECORD_TOO_LARGE)
    fill(dlq, range(6, 8), reason=DlqReason.SHUTDOWN)
    sent: list[DlqEntry] = []

    def send(batch: Sequence[DlqEntry]) -> list[bool]:
        sent.extend(batch)
        return [True] * len(batch)

    summary = replay_files(dlq, send, reasons={DlqReason.TTL_EXPIRED, DlqReason.SHUTDOWN})
    assert {e.reason for e in sent} == {DlqReason.TTL_EXPIRED, DlqReason.SHUTDOWN}
    assert (summary.entries_seen, summary.replayed, summary.skipped) == (8, 5, 3)
    assert all_numbers(dlq) == [3, 4, 5]

    summary = replay_files(dlq, send, reasons=set())
    assert (summary.skipped, summary.replayed) == (3, 0)
    assert all_numbers(dlq) == [3, 4, 5]


def test_replay_crash_mid_file_loses_nothing(tmp_path: Path) -> None:
    dlq = DeadLetterQueue(tmp_path)
    fill(dlq, range(5))
    dlq.close()
    fill(dlq, range(5, 15))
    first, second = dlq.files()
    second_before = second.read_bytes()
    calls = 0

    def send(batch: Sequence[DlqEntry]) -> list[bool]:
        nonlocal calls
        calls += 1
        if calls == 3:  # second batch of the second file
            raise ConnectionError("producer died")
        return [True] * len(batch)

    with pytest.raises(ConnectionError):
        replay_files(dlq, send, batch_size=5)
    assert not first.exists()  # fully processed before the crash: all delivered
    assert second.read_bytes() == second_before
    assert all_numbers(dlq) == list(range(5, 15))

    # The next replay sends the second file again from its start (at-least-once).
    replayed: list[int] = []

    def send_all(batch: Sequence[DlqEntry]) -> list[bool]:
        replayed.extend(entry_number(e) for e in batch)
        return [True] * len(batch)

    assert replay_files(dlq, send_all).replayed == 10
    assert replayed == list(range(5, 15))
    assert dlq.files() == []


def test_replay_rejects_wrong_result_count_without_changing_the_file(tmp_path: Path) -> None:
    dlq = DeadLetterQueue(tmp_path)
    fill(dlq, range(3))
    [path] = dlq.files()
    before = path.read_bytes()
    with pytest.raises(ValueError, match="results"):
        replay_files(dlq, lambda batch: [True])
    assert path.read_bytes() == before


def test_replay_leaves_entries_written_during_replay(tmp_path: Path) -> None:
    dlq = DeadLetterQueue(tmp_path)
    fill(dlq, range(3))

    def send(batch: Sequence[DlqEntry]) -> list[bool]:
        # The same DLQ keeps receiving entries (e.g. the producer is still running).
        dlq.write([make_entry(entry_number(e) + 100) for e in batch])
        return [True] * len(batch)

    summary = replay_files(dlq, send)
    assert summary.replayed == 3
    assert all_numbers(dlq) == [100, 101, 102]
    dlq.close()


def test_replay_removes_stale_temporaries(tmp_path: Path) -> None:
    dlq = DeadLetterQueue(tmp_path)
    fill(dlq, range(2))
    [path] = dlq.files()
    stale = tmp_path / f".dlq-replay-{path.name}.tmp"
    stale.write_bytes(b"half written")
    replay_files(dlq, lambda batch: [False] * len(batch))
    assert not stale.exists()
    assert all_numbers(dlq) == [0, 1]


# --- Summary -----------------------------------------------------------------------------------


def test_summarize(tmp_path: Path) -> None:
    dlq = DeadLetterQueue(tmp_path)
    fill(dlq, range(3), reason=DlqReason.TTL_EXPIRED, error_code=None, dead_lettered_at=100.0)
    dlq.close()
    fill(dlq, range(3, 4), source=None, dead_lettered_at=50.25)
    fill(dlq, range(4, 5), source="iot", dead_lettered_at=200.0)
    with dlq.files()[0].open("ab") as file:
        file.write(b"{broken\n")

    summary = summarize(dlq)
    assert summary["total_entries"] == 5
    assert summary["by_reason"] == {"ttl_expired": 3, "non_retryable_error": 2}
    assert summary["by_source"] == {"web_logs": 3, NONE_KEY: 1, "iot": 1}
    assert summary["by_error_code"] == {NONE_KEY: 3, "ValidationException": 2}
    assert summary["oldest_dead_lettered_at"] == 50.25
    assert summary["oldest_dead_lettered_at_iso"] == "1970-01-01T00:00:50.250000Z"
    assert summary["newest_dead_lettered_at"] == 200.0
    assert summary["unreadable_lines"] == 1
    assert [f["path"] for f in summary["files"]] == [str(p) for p in dlq.files()]
    assert [f["bytes"] for f in summary["files"]] == [p.stat().st_size for p in dlq.files()]
    assert summary["directory"] == str(tmp_path)
    orjson.dumps(summary)  # ready for `kingest dlq list --json`
    dlq.close()
