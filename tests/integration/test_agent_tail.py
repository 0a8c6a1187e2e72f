"""``kingest tail`` and ``kingest run -c`` end to end: files in, Kinesis out, checkpoints.

The agent runs as a real process against the embedded endpoint; lines are written while it
runs; it is stopped by SIGTERM (a clean stop: nothing sent twice on restart) or by SIGKILL
(a crash: nothing lost, only the in-flight window sent again).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import orjson

from tests.agents import AgentProcess, tail_args
from tests.helpers import dlq_entries, read_stream, wait_until

COMBINED = (
    '10.1.{a}.{b} - - [26/May/2024:10:30:{s:02d} +0000] "GET /item/{i}?run={run} HTTP/1.1" '
    '200 {i} "https://example.com/" "test-agent/1.0"\n'
)


def line(i: int, run: str = "r") -> str:
    return COMBINED.format(a=i % 250, b=i % 7, s=i % 60, i=i, run=run)


def write_lines(path: Path, start: int, stop: int, run: str = "r") -> None:
    with path.open("a", encoding="ascii") as handle:
        handle.write("".join(line(i, run) for i in range(start, stop)))


def item_ids(endpoint_url: str, stream: str) -> list[int]:
    """The ``i`` of every line read back from the stream (duplicates kept)."""
    ids = []
    for record in read_stream(endpoint_url, stream):
        document = orjson.loads(record.data)
        ids.append(int(document["path"].split("/")[2].split("?")[0]))
    return ids


def committed_offset(database: Path) -> int:
    """The largest offset committed in the checkpoint store (0 when none yet)."""
    if not database.exists():
        return 0
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as connection:
        try:
            rows = connection.execute("SELECT value FROM checkpoints").fetchall()
        except sqlite3.OperationalError:
            return 0  # the table is not created yet
    return max((orjson.loads(value)["offset"] for (value,) in rows), default=0)


def test_tail_sends_lines_and_a_clean_restart_sends_nothing_twice(
    tmp_path: Path,
    endpoint_url: str,
    stream_factory: Callable[..., str],
    agents: Callable[[list[str], Path], AgentProcess],
) -> None:
    stream = stream_factory(shards=2)
    log = tmp_path / "access.log"
    write_lines(log, 0, 1000)
    args = tail_args(stream, endpoint_url, tmp_path / "*.log", "--from", "beginning")
    agent = agents(args, tmp_path)
    wait_until(lambda: len(item_ids(endpoint_url, stream)) >= 1000, 60, "the first lines")
    write_lines(log, 1000, 1500)
    wait_until(lambda: len(item_ids(endpoint_url, stream)) >= 1500, 60, "appended lines")
    assert agent.stop() == 0, agent.stderr
    assert "1,500 accepted" in agent.stderr

    # Written while the agent was down: read on restart, and nothing before it again.
    write_lines(log, 1500, 1800)
    agent = agents(args, tmp_path)
    wait_until(lambda: len(item_ids(endpoint_url, stream)) >= 1800, 60, "lines after restart")
    assert agent.stop() == 0, agent.stderr
    ids = item_ids(endpoint_url, stream)
    assert sorted(ids) == list(range(1800))

    document = orjson.loads(read_stream(endpoint_url, stream)[0].data)
    assert document["source"] == "web_logs"
    assert document["file"] == str(log)
    assert isinstance(document["offset"], int)
    assert document["ingestion_timestamp"].endswith("+00:00")
    assert document["timestamp"].startswith("2024-05-26T10:30:")
    assert document["log_type"] == "web_access"


def test_tail_dead_letters_lines_that_do_not_parse(
    tmp_path: Path,
    endpoint_url: str,
    stream_factory: Callable[..., str],
    agents: Callable[[list[str], Path], AgentProcess],
) -> None:
    stream = stream_factory()
    log = tmp_path / "access.log"
    write_lines(log, 0, 10)
    with log.open("a") as handle:
        handle.write('10.0.0.1 - - [30/Feb/2024:10:00:00 +0000] "GET / HTTP/1.1" 200 1 "-" "-"\n')
        handle.write("not a log line\n")
    write_lines(log, 10, 20)
    agent = agents(
        tail_args(stream, endpoint_url, log, "--from", "beginning", "--dlq-dir", "dlq"), tmp_path
    )
    wait_until(lambda: len(item_ids(endpoint_url, stream)) >= 20, 60, "the good lines")
    wait_until(lambda: len(dlq_entries(tmp_path / "dlq")) >= 2, 30, "the bad lines in the DLQ")
    assert agent.stop() == 0, agent.stderr
    entries = dlq_entries(tmp_path / "dlq")
    assert [entry.reason.value for entry in entries] == ["invalid_input", "invalid_input"]
    assert entries[0].payload.startswith(b"10.0.0.1 - - [30/Feb/2024")
    assert entries[1].payload == b"not a log line"
    assert sorted(item_ids(endpoint_url, stream)) == list(range(20))


def test_sigkill_mid_stream_loses_nothing(
    tmp_path: Path,
    endpoint_url: str,
    stream_factory: Callable[..., str],
    agents: Callable[[list[str], Path], AgentProcess],
) -> None:
    """Lines are appended while the agent is killed and restarted: every line arrives."""
    stream = stream_factory(shards=2)
    log = tmp_path / "access.log"
    log.touch()
    total = 30_000
    args = tail_args(stream, endpoint_url, log, "--from", "beginning")
    agent = agents(args, tmp_path)

    def writer() -> None:
        for start in range(0, total, 500):
            write_lines(log, start, start + 500)
            time.sleep(0.01)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        wait_until(lambda: committed_offset(tmp_path / "checkpoints.db") > 0, 60, "a commit")
        agent.stop(signal.SIGKILL)
    finally:
        thread.join()
    sent_before_kill = len(item_ids(endpoint_url, stream))
    assert sent_before_kill < total, "the kill came too late to prove anything"

    agent = agents(args, tmp_path)
    wait_until(lambda: set(item_ids(endpoint_url, stream)) >= set(range(total)), 120, "every line")
    assert agent.stop() == 0, agent.stderr
    ids = item_ids(endpoint_url, stream)
    assert set(ids) == set(range(total))
    duplicates = sum(n - 1 for n in Counter(ids).values())
    # Only what was sent after the last commit is sent again, never what was committed.
    assert duplicates < sent_before_kill


def test_run_with_a_config_file(
    tmp_path: Path,
    endpoint_url: str,
    stream_factory: Callable[..., str],
    agents: Callable[[list[str], Path], AgentProcess],
) -> None:
    stream = stream_factory()
    logs = tmp_path / "logs"
    logs.mkdir()
    write_lines(logs / "a.log", 0, 100)
    write_lines(logs / "b.log", 100, 250)
    config = tmp_path / "kingest.yaml"
    config.write_text(
        f"""\
stream: {stream}
endpoint_url: {endpoint_url}
checkpoint_path: state/checkpoints.db
commit_interval_ms: 100
producer:
  linger_ms: 20
  dlq_dir: state/dlq
sources:
  - type: file
    name: web
    paths: ["{logs}/*.log"]
    format: combined
    from: beginning
    partition_key: "{{ip_address}}"
"""
    )
    agent = agents(["run", "-c", str(config)], tmp_path)
    wait_until(lambda: len(item_ids(endpoint_url, stream)) >= 250, 60, "both files")
    assert agent.stop(signal.SIGINT) == 0, agent.stderr
    assert sorted(item_ids(endpoint_url, stream)) == list(range(250))
    assert (tmp_path / "state" / "checkpoints.db").exists()
    records = read_stream(endpoint_url, stream)
    assert all(r.partition_key == orjson.loads(r.data)["ip_address"] for r in records)
    assert {orjson.loads(r.data)["source"] for r in records} == {"web"}


def test_run_reports_config_errors_with_key_and_line(tmp_path: Path) -> None:
    config = tmp_path / "kingest.yaml"
    config.write_text(
        """\
stream: s
sources:
  - type: file
    paths: ["/tmp/*.log"]
    format: combined
    linger: 5
"""
    )
    result = subprocess.run(
        [sys.executable, "-m", "kingest", "run", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ},
    )
    assert result.returncode == 1
    assert f"{config}:6: sources.0.linger: Extra inputs are not permitted" in result.stderr
    assert "Traceback" not in result.stderr


def test_from_end_applies_to_the_first_run_only(
    tmp_path: Path,
    endpoint_url: str,
    stream_factory: Callable[..., str],
    agents: Callable[[list[str], Path], AgentProcess],
) -> None:
    """Old lines of files present at the first start are skipped; nothing new ever is."""
    stream = stream_factory()
    logs = tmp_path / "logs"
    logs.mkdir()
    write_lines(logs / "a.log", 0, 10)  # old: skipped
    write_lines(logs / "quiet.log", 100, 110)  # old, and never written to again
    args = tail_args(stream, endpoint_url, logs / "*.log", "--from", "end")
    agent = agents(args, tmp_path)
    wait_until(lambda: committed_offset(tmp_path / "checkpoints.db") > 0, 60, "start commits")
    write_lines(logs / "a.log", 10, 15)
    wait_until(lambda: len(item_ids(endpoint_url, stream)) >= 5, 60, "the appended lines")
    assert agent.stop() == 0, agent.stderr

    # While the agent is down: a.log grows and b.log appears.
    write_lines(logs / "a.log", 15, 18)
    write_lines(logs / "b.log", 200, 207)
    agent = agents(args, tmp_path)
    wait_until(lambda: len(item_ids(endpoint_url, stream)) >= 15, 60, "lines written meanwhile")
    assert agent.stop() == 0, agent.stderr
    assert sorted(item_ids(endpoint_url, stream)) == [*range(10, 18), *range(200, 207)]
