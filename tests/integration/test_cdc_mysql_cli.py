"""``kingest cdc mysql`` as a process: crashes, clean stops and its one-line errors.

The command runs against the machine's MariaDB and the embedded Kinesis endpoint. A SIGKILL
mid-stream must lose nothing (changes may come twice) and the committed position must never be
ahead of what the stream holds; a SIGTERM delivers everything, commits and exits 0.
"""

from __future__ import annotations

import signal
import sqlite3
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from kingest.checkpoint import CheckpointStore
from kingest.sources.cdc.mysql.position import BinlogPosition
from tests.agents import AgentProcess
from tests.helpers import read_stream, wait_until
from tests.integration.test_cdc_mysql import DSN, SOURCE, Tables, committed
from tests.servers import require_mysql, unique_name

pytestmark = pytest.mark.integration

Agents = Callable[[list[str], Path], AgentProcess]


@pytest.fixture
def tables(mysql_conn: Any) -> Iterator[Tables]:
    found = Tables(mysql_conn)
    try:
        yield found
    finally:
        for name in found.names:
            found.sql(f"DROP TABLE IF EXISTS {name}")


def cdc_args(stream: str, endpoint_url: str, table: str, *extra: str, dsn: str = DSN) -> list[str]:
    return [
        "cdc", "mysql", "--dsn", dsn, "--stream", stream, "--table", f"test.{table}",
        "--endpoint-url", endpoint_url, "--checkpoint", "checkpoints.db", "--linger-ms", "20",
        "--dlq-dir", "dlq", *extra,
    ]  # fmt: skip


def ids_in(endpoint_url: str, stream: str) -> list[int]:
    return [orjson.loads(r.data)["after"]["id"] for r in read_stream(endpoint_url, stream)]


def started(tmp_path: Path, agent: AgentProcess) -> Callable[[], bool]:
    def check() -> bool:
        assert agent.process.poll() is None, agent.stderr
        return committed(tmp_path / "checkpoints.db") is not None

    return check


def test_sigkill_and_restart_lose_nothing_and_the_position_never_runs_ahead(
    tables: Tables, stream_factory: Callable[..., str], endpoint_url: str, tmp_path: Path,
    agents: Agents,
) -> None:  # fmt: skip
    table = tables.new("id INT PRIMARY KEY, v INT")
    stream = stream_factory(shards=2)
    args = cdc_args(stream, endpoint_url, table)
    agent = agents(args, tmp_path)
    wait_until(started(tmp_path, agent), 30, "the start position")
    commits: list[tuple[int, int]] = []  # (GTID sequence of the transaction, last id written)
    stop_writing = threading.Event()

    def write() -> None:
        conn = require_mysql()
        try:
            with conn.cursor() as cursor:
                i = 0
                while not stop_writing.is_set() and i < 6000:
                    values = ", ".join(f"({k}, {k})" for k in range(i + 1, i + 21))
                    cursor.execute(f"INSERT INTO {table} VALUES {values}")
                    i += 20
                    cursor.execute("SELECT @@last_gtid")
                    (gtid,) = cursor.fetchone()
                    commits.append((int(str(gtid).rsplit("-", 1)[1]), i))
                    stop_writing.wait(0.005)
        finally:
            conn.close()

    writer = threading.Thread(target=write)
    writer.start()
    try:
        first = committed(tmp_path / "checkpoints.db")

        def written_and_committed() -> bool:
            assert agent.process.poll() is None, agent.stderr
            return len(commits) >= 60 and committed(tmp_path / "checkpoints.db") != first

        wait_until(written_and_committed, 60, "writes and a commit before the crash")
        agent.process.kill()
        agent.process.wait(10)
        position = committed(tmp_path / "checkpoints.db")
        delivered = set(ids_in(endpoint_url, stream))
        assert position is not None and position.gtid is not None
        # Every transaction the stored position covers was in the stream before the crash.
        covered = int(position.gtid.rsplit("-", 1)[1])
        safe = [last for seq, last in commits if seq <= covered]
        assert safe, "no commit covered our writes before the crash"
        assert set(range(1, max(safe) + 1)) <= delivered
        agent = agents(args, tmp_path)
    finally:
        writer.join(60)
    total = commits[-1][1]
    assert len(delivered) < total, "the crash came too late to prove anything"
    wait_until(
        lambda: set(ids_in(endpoint_url, stream)) >= set(range(1, total + 1)),
        60,
        "every change after the restart",
    )
    assert agent.stop(signal.SIGTERM) == 0, agent.stderr
    ids = ids_in(endpoint_url, stream)
    assert set(ids) == set(range(1, total + 1))
    duplicates = sum(n - 1 for n in Counter(ids).values())
    # Only what was delivered but not yet committed at the crash came again.
    assert duplicates <= len(delivered) - max(safe)


def test_clean_stop_exits_zero_and_a_restart_sends_nothing_twice(
    tables: Tables, stream_factory: Callable[..., str], endpoint_url: str, tmp_path: Path,
    agents: Agents,
) -> None:  # fmt: skip
    table = tables.new("id INT PRIMARY KEY")
    stream = stream_factory()
    args = cdc_args(stream, endpoint_url, table)
    agent = agents(args, tmp_path)
    wait_until(started(tmp_path, agent), 30, "the start position")
    tables.sql(f"INSERT INTO {table} VALUES " + ", ".join(f"({i})" for i in range(1, 301)))
    wait_until(lambda: len(ids_in(endpoint_url, stream)) >= 300, 60, "300 changes")
    assert agent.stop(signal.SIGTERM) == 0, agent.stderr
    assert "mysql_cdc: 300 read, 0 rejected" in agent.stderr
    assert "300 accepted, 0 dead-lettered" in agent.stderr
    assert "Traceback" not in agent.stderr
    # Written while the agent is away: found on restart, and nothing before it again.
    tables.sql(f"INSERT INTO {table} VALUES (301)")
    agent = agents(args, tmp_path)
    wait_until(lambda: len(ids_in(endpoint_url, stream)) >= 301, 60, "the change made meanwhile")
    assert agent.stop(signal.SIGINT) == 0, agent.stderr
    assert sorted(ids_in(endpoint_url, stream)) == list(range(1, 302))


# ------------------------------------------------------------------ one-line errors


def run_to_exit(agents: Agents, args: list[str], cwd: Path) -> tuple[int, str]:
    agent = agents(args, cwd)
    status = agent.process.wait(60)
    return status, agent.stderr


def assert_one_line_error(status: int, stderr: str, *words: str) -> None:
    assert status == 1, stderr
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("kingest cdc: error: ")]
    assert len(errors) == 1, stderr
    for word in words:
        assert word in errors[0], stderr


@pytest.fixture
def limited_user(mysql_conn: Any) -> Iterator[Callable[[str], str]]:
    """Make users with only the given privileges; each is dropped afterwards."""
    made: list[str] = []

    def make(privileges: str) -> str:
        name = unique_name("kingest_u")
        with mysql_conn.cursor() as cursor:
            cursor.execute(f"CREATE USER '{name}'@'%' IDENTIFIED BY 'pw'")
            cursor.execute(f"GRANT {privileges} ON *.* TO '{name}'@'%'")
        made.append(name)
        return name

    yield make
    with mysql_conn.cursor() as cursor:
        for name in made:
            cursor.execute(f"DROP USER IF EXISTS '{name}'@'%'")


def test_missing_replication_privileges_are_one_line_errors(
    tables: Tables, stream_factory: Callable[..., str], endpoint_url: str, tmp_path: Path,
    agents: Agents, limited_user: Callable[[str], str],
) -> None:  # fmt: skip
    table = tables.new("id INT PRIMARY KEY")
    stream = stream_factory()
    plain = limited_user("SELECT")
    dsn = f"mysql://{plain}:pw@127.0.0.1:3306/test"
    status, stderr = run_to_exit(agents, cdc_args(stream, endpoint_url, table, dsn=dsn), tmp_path)
    assert_one_line_error(status, stderr, f"user '{plain}' lacks REPLICATION CLIENT", "GRANT")
    assert "pw@" not in stderr
    client = limited_user("SELECT, REPLICATION CLIENT")
    dsn = f"mysql://{client}:pw@127.0.0.1:3306/test"
    status, stderr = run_to_exit(agents, cdc_args(stream, endpoint_url, table, dsn=dsn), tmp_path)
    assert_one_line_error(status, stderr, f"user '{client}' lacks REPLICATION SLAVE")


def test_wrong_password_and_unreachable_server_are_one_line_errors(
    stream_factory: Callable[..., str], endpoint_url: str, tmp_path: Path, agents: Agents
) -> None:
    stream = stream_factory()
    dsn = "mysql://root:wrong@127.0.0.1:3306/test"
    status, stderr = run_to_exit(agents, cdc_args(stream, endpoint_url, "t", dsn=dsn), tmp_path)
    assert_one_line_error(status, stderr, "access denied for user 'root'")
    assert "wrong" not in stderr
    dsn = "mysql://root@127.0.0.1:1/test"
    status, stderr = run_to_exit(agents, cdc_args(stream, endpoint_url, "t", dsn=dsn), tmp_path)
    assert_one_line_error(status, stderr, "cannot reach MySQL at 127.0.0.1:1")


@pytest.mark.parametrize(
    ("stored", "words"),
    [
        (
            {"file": "mysql-bin.999999", "pos": 4, "gtid": None},
            "binlog file mysql-bin.999999, which the server no longer has",
        ),
        (
            {"file": "mysql-bin.000001", "pos": 4, "gtid": "0-1-999999999"},
            "not in the master's binlog",
        ),
    ],
)
def test_a_position_the_server_no_longer_has_is_a_one_line_error(
    stored: dict[str, Any], words: str, tables: Tables, stream_factory: Callable[..., str],
    endpoint_url: str, tmp_path: Path, agents: Agents,
) -> None:  # fmt: skip
    table = tables.new("id INT PRIMARY KEY")
    stream = stream_factory()
    with CheckpointStore(tmp_path / "checkpoints.db") as store:
        store.save(SOURCE, {"binlog": stored})
    status, stderr = run_to_exit(agents, cdc_args(stream, endpoint_url, table), tmp_path)
    assert_one_line_error(status, stderr, words, "Remove the source's checkpoint")
    # The stored position is left as it was, for the operator to decide.
    with sqlite3.connect(tmp_path / "checkpoints.db") as db:
        (value,) = db.execute("SELECT value FROM checkpoints").fetchone()
    assert BinlogPosition.from_json(orjson.loads(value)) == BinlogPosition.from_json(stored)


def test_bad_arguments_are_one_line_errors(tmp_path: Path, agents: Agents) -> None:
    args = ["cdc", "mysql", "--dsn", "mysql://root:secret@h:x/db", "--stream", "s"]
    status, stderr = run_to_exit(agents, args, tmp_path)
    assert_one_line_error(status, stderr, "dsn:")
    assert "secret" not in stderr
