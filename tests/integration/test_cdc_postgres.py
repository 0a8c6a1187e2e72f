"""PostgreSQL CDC end to end: the machine's PostgreSQL in, the embedded Kinesis endpoint out.

Each test uses its own table, slot and publication. The source runs in-process (an agent on
its own event loop) where only its output matters, and as ``kingest cdc postgres`` processes
where the command's contract, a crash or a restart is what is tested.
"""

from __future__ import annotations

import hashlib
import random
import signal
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from kingest.agent.config import AgentConfig
from kingest.sources.cdc.postgres.position import parse_lsn
from tests.agents import AgentProcess, InProcessAgent
from tests.helpers import read_stream, wait_until
from tests.servers import POSTGRES_DSN, unique_name

pytestmark = pytest.mark.integration


class Names:
    """A test's table, slot and publication, dropped afterwards."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        base = unique_name("kt")
        self.table = base
        self.slot = f"{base}_slot"
        self.publication = f"{base}_pub"
        self.extra: list[str] = []

    def sql(self, statement: str, params: tuple[Any, ...] = ()) -> list[Any]:
        with self.conn.cursor() as cursor:
            cursor.execute(statement, params)
            return cursor.fetchall() if cursor.description else []

    def slot_lsn(self) -> int | None:
        rows = self.sql(
            "select confirmed_flush_lsn::text from pg_replication_slots where slot_name = %s",
            (self.slot,),
        )
        return parse_lsn(rows[0][0]) if rows and rows[0][0] else None

    def slot_exists(self) -> bool:
        return bool(
            self.sql("select 1 from pg_replication_slots where slot_name = %s", (self.slot,))
        )

    def cleanup(self) -> None:
        def slot_idle() -> bool:
            rows = self.sql(
                "select active from pg_replication_slots where slot_name = %s", (self.slot,)
            )
            return not rows or not rows[0][0]

        wait_until(slot_idle, 30, "the slot to be released")
        if self.slot_exists():
            self.sql("select pg_drop_replication_slot(%s)", (self.slot,))
        self.sql(f'drop publication if exists "{self.publication}"')
        for name in [self.table, *self.extra]:
            self.sql(f'drop table if exists "{name}" cascade')


@pytest.fixture
def names(pg_conn: Any) -> Iterator[Names]:
    found = Names(pg_conn)
    try:
        yield found
    finally:
        found.cleanup()


def source_config(names: Names, stream: str, tmp_path: Path, **fields: Any) -> AgentConfig:
    return AgentConfig.model_validate(
        {
            "stream": stream,
            "checkpoint_path": str(tmp_path / "checkpoints.db"),
            "producer": {"linger_ms": 20, "dlq_dir": str(tmp_path / "dlq")},
            "sources": [
                {
                    "type": "postgres",
                    "name": "pg",
                    "dsn": fields.pop("dsn", POSTGRES_DSN),
                    "slot": names.slot,
                    "publication": names.publication,
                    "tables": [f"public.{names.table}"],
                    **fields,
                }
            ],
        }
    )


@pytest.fixture
def run_source(endpoint_url: str, tmp_path: Path) -> Iterator[Callable[..., InProcessAgent]]:
    running: list[InProcessAgent] = []

    def start(names: Names, stream: str, **fields: Any) -> InProcessAgent:
        agent = InProcessAgent(source_config(names, stream, tmp_path, **fields), endpoint_url)
        running.append(agent)
        wait_until(lambda: names.slot_lsn() is not None or agent.error is not None, 30, "the slot")
        if agent.error is not None:
            raise agent.error
        return agent

    yield start
    for agent in running:
        agent.stop()


def events_of(endpoint_url: str, stream: str) -> list[dict[str, Any]]:
    return [orjson.loads(record.data) for record in read_stream(endpoint_url, stream)]


def wait_for_events(
    endpoint_url: str, stream: str, count: int, timeout_s: float = 30
) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []

    def enough() -> bool:
        found[:] = events_of(endpoint_url, stream)
        return len(found) >= count

    wait_until(enough, timeout_s, f"{count} events in the stream")
    return found


# Large and incompressible: stored out of line (TOASTed), so an update that leaves it alone
# does not send it.
BIG_TEXT = "".join(hashlib.md5(str(i).encode()).hexdigest() for i in range(300))


def test_every_type_round_trips(
    names: Names, stream_factory: Callable[..., str], endpoint_url: str,
    run_source: Callable[..., InProcessAgent],
) -> None:  # fmt: skip
    mood = f"{names.table}_mood"
    names.extra.append(mood)
    names.sql(f"drop type if exists {mood}")
    names.sql(f"create type {mood} as enum ('happy', 'sad')")
    names.sql(
        f"""create table {names.table} (
            id int primary key, i2 smallint, i8 bigint, n numeric(30, 10), f8 float8,
            f4 float4, b bool, t text, vc varchar(10), ts timestamptz, tsn timestamp, d date,
            tm time, iv interval, j json, jb jsonb, ba bytea, ai int[], at text[], u uuid,
            e {mood}, ip inet, big text)"""
    )
    stream = stream_factory()
    # Every event also passes the built-in CDC schema, and says so.
    agent = run_source(names, stream, schema={"name": "database_cdc", "stamp": True})
    names.sql(
        f"""insert into {names.table} values (1, -32768, 9223372036854775807,
            12345678901234567890.0123456789, 0.1, 1.5, true, 'héllo "q" \\ ', 'short',
            '2024-05-26 19:30:45.123456+09', '2024-05-26 10:30:45', '2024-02-29', '23:59:59',
            '1 year 2 months 3 days 04:05:06', '{{"a": [1, null]}}', '{{"b": true}}',
            '\\x00ff10', '{{1, NULL, 3}}', '{{"a b", "c,d"}}',
            'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'happy', '192.168.0.1/24', %s)""",
        (BIG_TEXT,),
    )
    names.sql(f"insert into {names.table} (id) values (2)")
    names.sql(f"update {names.table} set t = 'changed' where id = 1")  # big: unchanged TOAST
    first, nulls, update = wait_for_events(endpoint_url, stream, 3)
    agent.stop()
    assert first["after"] == {
        "id": 1, "i2": -32768, "i8": 9223372036854775807,
        "n": "12345678901234567890.0123456789", "f8": 0.1, "f4": 1.5, "b": True,
        "t": 'héllo "q" \\ ', "vc": "short", "ts": "2024-05-26T10:30:45.123456+00:00",
        "tsn": "2024-05-26T10:30:45", "d": "2024-02-29", "tm": "23:59:59",
        "iv": "P1Y2M3DT4H5M6S", "j": {"a": [1, None]}, "jb": {"b": True}, "ba": "AP8Q",
        "ai": [1, None, 3], "at": ["a b", "c,d"], "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "e": "happy", "ip": "192.168.0.1/24", "big": BIG_TEXT,
    }  # fmt: skip
    assert nulls["after"] == {"id": 2} | {k: None for k in first["after"] if k != "id"}
    # The untouched TOASTed value is not sent: left out and named, never turned into NULL.
    assert "big" not in update["after"] and update["unchanged_columns"] == ["big"]
    assert update["after"]["t"] == "changed" and update["before"] == {"id": 1}
    assert {e["schema_id"] for e in (first, nulls, update)} == {"database_cdc/v1"}
    # How far behind the database the source read: a fresh commit, so well under a minute.
    lag = agent.agent.stats()["sources"]["pg"]["lag_s"]
    assert lag is not None and 0 <= lag < 60


def test_mixed_workload_keeps_each_rows_order_and_drops_rollbacks(
    names: Names, stream_factory: Callable[..., str], endpoint_url: str,
    run_source: Callable[..., InProcessAgent], pg_conn: Any,
) -> None:  # fmt: skip
    names.sql(f"create table {names.table} (id int primary key, status text, amount numeric)")
    names.sql(f"alter table {names.table} replica identity full")
    stream = stream_factory(shards=3)
    agent = run_source(names, stream)
    rng = random.Random(11)
    expected: dict[int, list[tuple[str, Any]]] = defaultdict(list)
    rows: dict[int, str] = {}
    next_id = 0
    committed_events = 0
    pg_conn.autocommit = False
    with pg_conn.cursor() as cursor:
        for tx in range(120):
            planned: list[tuple[int, str, Any]] = []
            for _ in range(rng.randint(1, 5)):
                choice = rng.random()
                if not rows or choice < 0.4:
                    next_id += 1
                    status = f"new-{tx}"
                    cursor.execute(
                        f"insert into {names.table} values (%s, %s, %s)", (next_id, status, tx)
                    )
                    planned.append((next_id, "c", status))
                    rows[next_id] = status
                elif choice < 0.8:
                    row = rng.choice(sorted(rows))
                    status = f"upd-{tx}-{rng.randrange(1000)}"
                    cursor.execute(
                        f"update {names.table} set status = %s where id = %s", (status, row)
                    )
                    planned.append((row, "u", status))
                    rows[row] = status
                else:
                    row = rng.choice(sorted(rows))
                    cursor.execute(f"delete from {names.table} where id = %s", (row,))
                    planned.append((row, "d", None))
                    del rows[row]
            if tx % 10 == 9:
                pg_conn.rollback()  # never to be seen
                for row, op, _ in planned:
                    if op == "c":
                        rows.pop(row, None)
                cursor.execute(f"select id, status from {names.table}")
                rows = dict(cursor.fetchall())
                pg_conn.commit()
                continue
            pg_conn.commit()
            for row, op, status in planned:
                expected[row].append((op, status))
                committed_events += 1
    pg_conn.autocommit = True
    events = wait_for_events(endpoint_url, stream, committed_events)
    agent.stop()
    assert len(events) == committed_events  # a clean run sends nothing twice
    seen: dict[int, list[tuple[str, Any]]] = defaultdict(list)
    for event in events:
        row = (event["after"] or event["before"])["id"]
        seen[row].append((event["op"], (event["after"] or {}).get("status")))
        assert event["database"] == "postgres" and event["table"] == names.table
    assert seen == expected
    by_tx: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in events:
        by_tx[event["transaction_id"]].append(event)
    for tx_events in by_tx.values():
        orders = sorted(e["transaction"]["total_order"] for e in tx_events)
        assert orders == list(range(1, len(tx_events) + 1))
        counts = [e["transaction"].get("event_count") for e in tx_events]
        assert [c for c in counts if c is not None] == [len(tx_events)]


def test_snapshot_then_stream(
    names: Names, stream_factory: Callable[..., str], endpoint_url: str,
    run_source: Callable[..., InProcessAgent],
) -> None:  # fmt: skip
    names.sql(f"create table {names.table} (id int primary key, v text)")
    names.sql(f"insert into {names.table} select g, 'old-' || g from generate_series(1, 2500) g")
    stream = stream_factory(shards=2)
    agent = run_source(names, stream, snapshot=True)
    names.sql(f"update {names.table} set v = 'new' where id = 7")
    events = wait_for_events(endpoint_url, stream, 2501)
    agent.stop()
    snapshot = [e for e in events if e["op"] == "r"]
    assert sorted(e["after"]["id"] for e in snapshot) == list(range(1, 2501))
    assert [e["source"]["snapshot"] for e in snapshot].count("last") == 1
    assert all(e["operation"] == "READ" for e in snapshot)
    (change,) = [e for e in events if e["op"] != "r"]
    assert change["after"] == {"id": 7, "v": "new"}
    on_shard = [e for e in events if e["primary_key"] == {"id": 7}]
    assert [e["op"] for e in on_shard] == ["r", "u"]


def test_large_streamed_transactions_and_savepoint_rollbacks(
    names: Names, stream_factory: Callable[..., str], endpoint_url: str,
    run_source: Callable[..., InProcessAgent], pg_conn: Any,
) -> None:  # fmt: skip
    names.sql(f"create table {names.table} (id int primary key, pad text)")
    stream = stream_factory()
    # A tiny decoding memory makes the server stream the transactions before they commit.
    dsn = f"{POSTGRES_DSN}?options=-c%20logical_decoding_work_mem%3D64kB"
    agent = run_source(names, stream, dsn=dsn, spool_memory_mib=1)
    pg_conn.autocommit = False
    with pg_conn.cursor() as cursor:
        cursor.execute(
            f"insert into {names.table} select g, repeat('x', 200) from generate_series(1, 3000) g"
        )
        cursor.execute("savepoint s1")
        cursor.execute(
            f"insert into {names.table} select g, 'gone' from generate_series(3001, 5000) g"
        )
        cursor.execute("rollback to savepoint s1")
        cursor.execute(
            f"insert into {names.table} select g, 'kept' from generate_series(5001, 5500) g"
        )
        pg_conn.commit()
        cursor.execute(
            f"insert into {names.table} select g, 'aborted' from generate_series(6001, 9000) g"
        )
        pg_conn.rollback()
        cursor.execute(f"insert into {names.table} values (10000, 'last')")
        pg_conn.commit()
    pg_conn.autocommit = True
    events = wait_for_events(endpoint_url, stream, 3501, timeout_s=60)
    agent.stop()
    ids = sorted(e["after"]["id"] for e in events)
    assert ids == [*range(1, 3001), *range(5001, 5501), 10000]
    big = [e for e in events if e["after"]["id"] != 10000]
    assert len({e["transaction_id"] for e in big}) == 1
    assert max(e["transaction"]["total_order"] for e in big) == 3500


def test_an_idle_database_still_advances_the_slot(
    names: Names, stream_factory: Callable[..., str],
    run_source: Callable[..., InProcessAgent],
) -> None:  # fmt: skip
    names.sql(f"create table {names.table} (id int primary key)")
    other = f"{names.table}_other"
    names.extra.append(other)
    names.sql(f"create table {other} (id int)")
    agent = run_source(names, stream_factory(), heartbeat_interval_s=0.2, status_interval_s=1)
    start = names.slot_lsn()
    assert start is not None
    names.sql(f"insert into {other} select generate_series(1, 1000)")  # not published
    (after_write,) = names.sql("select pg_current_wal_lsn()::text")[0]
    wait_until(lambda: (names.slot_lsn() or 0) >= parse_lsn(after_write), 30, "the slot to advance")
    agent.stop()


def cdc_args(names: Names, stream: str, endpoint_url: str, *extra: str) -> list[str]:
    return [
        "cdc", "postgres", "--dsn", POSTGRES_DSN, "--stream", stream, "--slot", names.slot,
        "--publication", names.publication, "--table", f"public.{names.table}",
        "--endpoint-url", endpoint_url, "--linger-ms", "20", *extra,
    ]  # fmt: skip


def test_sigkill_and_restart_lose_nothing_and_the_slot_never_runs_ahead(
    names: Names, stream_factory: Callable[..., str], endpoint_url: str, tmp_path: Path,
    agents: Callable[[list[str], Path], AgentProcess], pg_conn: Any,
) -> None:  # fmt: skip
    names.sql(f"create table {names.table} (id int primary key, v int)")
    stream = stream_factory(shards=2)
    agent = agents(cdc_args(names, stream, endpoint_url), tmp_path)
    wait_until(names.slot_exists, 30, "the slot")
    commits: list[tuple[int, int]] = []  # (WAL position after the commit, last id written)
    stop_writing = threading.Event()

    def write() -> None:
        with pg_conn.cursor() as cursor:
            i = 0
            while not stop_writing.is_set() and i < 4000:
                cursor.execute(
                    f"insert into {names.table} select g, g from generate_series(%s, %s) g",
                    (i + 1, i + 20),
                )
                i += 20
                cursor.execute("select pg_current_wal_lsn()::text")
                commits.append((parse_lsn(cursor.fetchone()[0]), i))

    writer = threading.Thread(target=write)
    writer.start()
    wait_until(lambda: len(commits) >= 60, 30, "writes before the crash")
    agent.process.kill()
    agent.process.wait(10)
    confirmed = names.slot_lsn() or 0
    delivered = {orjson.loads(r.data)["after"]["id"] for r in read_stream(endpoint_url, stream)}
    # Every transaction the slot confirmed was delivered before the crash.
    safe = [last for lsn, last in commits if lsn <= confirmed]
    if safe:
        assert set(range(1, max(safe) + 1)) <= delivered
    agent = agents(cdc_args(names, stream, endpoint_url), tmp_path)
    writer.join(60)
    stop_writing.set()
    total = commits[-1][1]
    wait_until(
        lambda: (
            {orjson.loads(r.data)["after"]["id"] for r in read_stream(endpoint_url, stream)}
            >= set(range(1, total + 1))
        ),
        60,
        "every change after the restart",
    )
    assert agent.stop(signal.SIGTERM) == 0, agent.stderr


def test_clean_stop_exits_zero_and_a_restart_sends_nothing_twice(
    names: Names, stream_factory: Callable[..., str], endpoint_url: str, tmp_path: Path,
    agents: Callable[[list[str], Path], AgentProcess],
) -> None:  # fmt: skip
    names.sql(f"create table {names.table} (id int primary key)")
    stream = stream_factory()
    agent = agents(cdc_args(names, stream, endpoint_url), tmp_path)
    wait_until(names.slot_exists, 30, "the slot")
    names.sql(f"insert into {names.table} select generate_series(1, 300)")
    wait_for_events(endpoint_url, stream, 300)
    assert agent.stop(signal.SIGTERM) == 0, agent.stderr
    assert "300 accepted" in agent.stderr
    names.sql(f"insert into {names.table} values (301)")
    agent = agents(cdc_args(names, stream, endpoint_url), tmp_path)
    wait_for_events(endpoint_url, stream, 301)
    assert agent.stop(signal.SIGINT) == 0, agent.stderr
    assert len(events_of(endpoint_url, stream)) == 301


def run_to_exit(
    agents: Callable[[list[str], Path], AgentProcess], args: list[str], cwd: Path
) -> tuple[int, str]:
    agent = agents(args, cwd)
    status = agent.process.wait(60)
    return status, agent.stderr


def test_a_dropped_slot_is_an_error_not_a_silent_gap(
    names: Names, stream_factory: Callable[..., str], endpoint_url: str, tmp_path: Path,
    agents: Callable[[list[str], Path], AgentProcess],
) -> None:  # fmt: skip
    names.sql(f"create table {names.table} (id int primary key)")
    stream = stream_factory()
    agent = agents(cdc_args(names, stream, endpoint_url), tmp_path)
    wait_until(names.slot_exists, 30, "the slot")
    assert agent.stop() == 0, agent.stderr
    names.sql("select pg_drop_replication_slot(%s)", (names.slot,))
    status, stderr = run_to_exit(agents, cdc_args(names, stream, endpoint_url), tmp_path)
    assert status == 1
    assert "was dropped" in stderr and "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
    agent = agents(cdc_args(names, stream, endpoint_url, "--recreate-slot"), tmp_path)
    wait_until(names.slot_exists, 30, "a new slot")
    assert agent.stop() == 0, agent.stderr


def test_a_user_without_replication_privilege_gets_one_clear_line(
    names: Names, stream_factory: Callable[..., str], endpoint_url: str, tmp_path: Path,
    agents: Callable[[list[str], Path], AgentProcess],
) -> None:  # fmt: skip
    role = f"{names.table}_user"
    names.sql(f"create role {role} login")
    try:
        dsn = POSTGRES_DSN.replace("postgres@", f"{role}@", 1)
        args = cdc_args(names, stream_factory(), endpoint_url)
        args[args.index("--dsn") + 1] = dsn
        names.sql(f"create table {names.table} (id int primary key)")
        names.sql(f"alter table {names.table} owner to {role}")
        status, stderr = run_to_exit(agents, args, tmp_path)
        assert status == 1
        assert "REPLICATION" in stderr and "Traceback" not in stderr, stderr
        assert len(stderr.strip().splitlines()) == 1, stderr
    finally:
        names.sql(f"drop table if exists {names.table}")
        names.sql(f"drop publication if exists {names.publication}")
        names.sql(f"drop role {role}")


def test_an_unreachable_server_is_one_line(
    names: Names, stream_factory: Callable[..., str], endpoint_url: str, tmp_path: Path,
    agents: Callable[[list[str], Path], AgentProcess],
) -> None:  # fmt: skip
    args = cdc_args(names, stream_factory(), endpoint_url)
    args[args.index("--dsn") + 1] = "postgresql://postgres@127.0.0.1:1/postgres"
    status, stderr = run_to_exit(agents, args, tmp_path)
    assert status == 1
    assert "cannot connect to PostgreSQL" in stderr and "Traceback" not in stderr
