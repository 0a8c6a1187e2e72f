"""MySQL/MariaDB CDC end to end: the machine's MariaDB in, the embedded Kinesis endpoint out.

The source runs in-process (an agent on its own event loop in a thread); each test has its own
tables, stream and checkpoint file. ``binlog_row_metadata`` is global: the tests that change
it put it back.
"""

from __future__ import annotations

import base64
import random
import sqlite3
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from kingest.agent.config import AgentConfig
from kingest.agent.runner import SourceFailedError
from kingest.checkpoint import CheckpointStore
from kingest.sources.cdc.mysql.position import BinlogPosition
from tests.agents import InProcessAgent as SharedInProcessAgent
from tests.helpers import dlq_entries, read_stream, wait_until
from tests.servers import unique_name

pytestmark = pytest.mark.integration

SOURCE = "mysql_cdc"
DSN = "mysql://root@127.0.0.1:3306/test"


class Tables:
    """A test's tables in database ``test``, dropped afterwards."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.names: list[str] = []

    def new(self, definition: str) -> str:
        name = unique_name("kcdc")
        self.names.append(name)
        self.sql(f"CREATE TABLE {name} ({definition})")
        return name

    def sql(self, statement: str, params: tuple[Any, ...] | None = None) -> list[Any]:
        with self.conn.cursor() as cursor:
            cursor.execute(statement, params)
            return list(cursor.fetchall()) if cursor.description else []

    def transaction(self, *statements: str) -> None:
        with self.conn.cursor() as cursor:
            cursor.execute("BEGIN")
            for statement in statements:
                cursor.execute(statement)
            cursor.execute("COMMIT")


@pytest.fixture
def tables(mysql_conn: Any) -> Iterator[Tables]:
    found = Tables(mysql_conn)
    try:
        yield found
    finally:
        for name in found.names:
            found.sql(f"DROP TABLE IF EXISTS {name}")


@pytest.fixture(params=["NO_LOG", "FULL"])
def row_metadata(request: pytest.FixtureRequest, mysql_conn: Any) -> Iterator[str]:
    """binlog_row_metadata for the test (global: put back afterwards)."""
    with mysql_conn.cursor() as cursor:
        cursor.execute("SELECT @@GLOBAL.binlog_row_metadata")
        (before,) = cursor.fetchone()
        cursor.execute(f"SET GLOBAL binlog_row_metadata = {request.param}")
    try:
        yield str(request.param)
    finally:
        with mysql_conn.cursor() as cursor:
            cursor.execute(f"SET GLOBAL binlog_row_metadata = {before}")


class InProcessAgent(SharedInProcessAgent):
    """The suite's in-process agent, handed over once its source reads the binlog."""

    def __init__(self, config: AgentConfig, endpoint_url: str) -> None:
        super().__init__(config, endpoint_url)
        wait_until(lambda: self.reading or self.error is not None, 30, "the source to read")
        if self.error is not None:
            raise self.error

    @property
    def reading(self) -> bool:
        """True once the source reads the binlog (its start position is fixed)."""
        return any(source.status().get("read") for source, _ in self.agent.sources)

    def status(self) -> dict[str, Any]:
        return self.agent.sources[0][0].status()


def agent_config(stream: str, tmp_path: Path, **fields: Any) -> AgentConfig:
    return AgentConfig.model_validate(
        {
            "stream": stream,
            "checkpoint_path": str(tmp_path / "checkpoints.db"),
            "commit_interval_ms": 100,
            "producer": {"linger_ms": 20, "dlq_dir": str(tmp_path / "dlq")},
            "sources": [{"type": "mysql", "name": SOURCE, "dsn": DSN, **fields}],
        }
    )


def events_of(endpoint_url: str, stream: str) -> list[dict[str, Any]]:
    return [orjson.loads(record.data) for record in read_stream(endpoint_url, stream)]


def wait_for_events(
    endpoint_url: str, stream: str, count: int, agent: InProcessAgent | None = None
) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []

    def enough() -> bool:
        if agent is not None and agent.error is not None:
            raise agent.error
        found[:] = events_of(endpoint_url, stream)
        return len(found) >= count

    try:
        wait_until(enough, 60, f"{count} change events")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; {len(found)} arrived: {found}") from None
    return found


def committed(checkpoint: Path) -> BinlogPosition | None:
    """The source's committed position in the checkpoint file (None before the first)."""
    if not checkpoint.exists():
        return None
    with sqlite3.connect(f"file:{checkpoint}?mode=ro", uri=True) as db:
        try:
            rows = db.execute(
                "SELECT value FROM checkpoints WHERE source = ? AND key = 'binlog'", (SOURCE,)
            ).fetchall()
        except sqlite3.OperationalError:
            return None
    return BinlogPosition.from_json(orjson.loads(rows[0][0])) if rows else None


def master_status(tables: Tables) -> BinlogPosition:
    file, pos = tables.sql("SHOW MASTER STATUS")[0][:2]
    return BinlogPosition(str(file), int(pos))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# ------------------------------------------------------------------ types

TYPES = """
  id BIGINT UNSIGNED PRIMARY KEY,
  ti TINYINT, tiu TINYINT UNSIGNED, si SMALLINT, siu SMALLINT UNSIGNED,
  mi MEDIUMINT, miu MEDIUMINT UNSIGNED, i INT, iu INT UNSIGNED, bi BIGINT,
  dec1 DECIMAL(30,10), dec2 DECIMAL(5,2), dec0 DECIMAL(10,0),
  f FLOAT, d DOUBLE,
  vc VARCHAR(50) CHARACTER SET utf8mb4, ch CHAR(5), tx TEXT,
  l1 VARCHAR(10) CHARACTER SET latin1,
  bl BLOB, bin BINARY(4), vb VARBINARY(10),
  dt DATE, dtt DATETIME(6), dt0 DATETIME, ts TIMESTAMP(3) NULL, tm TIME(6), tm0 TIME,
  y YEAR, j JSON, e ENUM('a','b','it''s'), s SET('x','y','z'),
  b BIT(10), b1 BIT(1), b64 BIT(64)
"""
HIGH = """(18446744073709551615, 127, 255, 32767, 65535, 8388607, 16777215, 2147483647,
  4294967295, 9223372036854775807, '12345678901234567890.0123456789', -1.05, 1234567890,
  1.1, 3.141592653589793, 'héllo 🎉', 'ab', 'long text\nwith a newline', 'café',
  x'00ff10', x'0102', x'00', '2024-02-29', '2024-05-26 10:30:45.123456', '1000-01-01 00:00:00',
  '2024-05-26 12:30:45.678', '-838:59:59.000000', '12:34:56', 2024,
  '{"a": [1, 2.5, "x", null, true], "b": {"c": "é"}}', 'it''s', 'x,z', b'1010000001', b'1',
  b'1111111111111111111111111111111111111111111111111111111111111111')"""
LOW = """(3, -128, 0, -32768, 0, -8388608, 0, -2147483648, 0, -9223372036854775808,
  '-0.0000000001', 0, -1, -1.5e-10, -1e-300, '', '', '', 'ÿ', x'', x'00000000', x'',
  '1000-01-01', '9999-12-31 23:59:59.999999', '9999-12-31 23:59:59',
  '2038-01-19 05:14:07.999', '00:00:00.000001', '-00:00:01', 1901, '123', 'a', 'x,y,z',
  b'0', b'0', b'0')"""

HIGH_JSON = {
    "id": 18446744073709551615,
    "ti": 127,
    "tiu": 255,
    "si": 32767,
    "siu": 65535,
    "mi": 8388607,
    "miu": 16777215,
    "i": 2147483647,
    "iu": 4294967295,
    "bi": 9223372036854775807,
    "dec1": "12345678901234567890.0123456789",
    "dec2": "-1.05",
    "dec0": "1234567890",
    "f": 1.1,
    "d": 3.141592653589793,
    "vc": "héllo 🎉",
    "ch": "ab",
    "tx": "long text\nwith a newline",
    "l1": "café",
    "bl": b64(b"\x00\xff\x10"),
    "bin": b64(b"\x01\x02\x00\x00"),
    "vb": b64(b"\x00"),
    "dt": "2024-02-29",
    "dtt": "2024-05-26T10:30:45.123456",
    "dt0": "1000-01-01T00:00:00",
    "ts": "2024-05-26T10:30:45.678000+00:00",  # written at +02:00, logged in UTC
    "tm": "-838:59:59",
    "tm0": "12:34:56",
    "y": 2024,
    "j": {"a": [1, 2.5, "x", None, True], "b": {"c": "é"}},
    "e": "it's",
    "s": "x,z",
    "b": 641,
    "b1": 1,
    "b64": 18446744073709551615,
}
LOW_JSON = {
    "id": 3,
    "ti": -128,
    "tiu": 0,
    "si": -32768,
    "siu": 0,
    "mi": -8388608,
    "miu": 0,
    "i": -2147483648,
    "iu": 0,
    "bi": -9223372036854775808,
    "dec1": "-0.0000000001",
    "dec2": "0.00",
    "dec0": "-1",
    "f": -1.5e-10,
    "d": -1e-300,
    "vc": "",
    "ch": "",
    "tx": "",
    "l1": "ÿ",
    "bl": "",
    "bin": b64(b"\x00" * 4),
    "vb": "",
    "dt": "1000-01-01",
    "dtt": "9999-12-31T23:59:59.999999",
    "dt0": "9999-12-31T23:59:59",
    "ts": "2038-01-19T03:14:07.999000+00:00",
    "tm": "00:00:00.000001",
    "tm0": "-00:00:01",
    "y": 1901,
    "j": 123,
    "e": "a",
    "s": "x,y,z",
    "b": 0,
    "b1": 0,
    "b64": 0,
}


def test_every_type_round_trips(
    row_metadata: str,
    tables: Tables,
    stream_factory: Callable[..., str],
    endpoint_url: str,
    tmp_path: Path,
) -> None:
    table = tables.new(TYPES)
    stream = stream_factory()
    # Every event also passes the built-in CDC schema, and says so.
    schema = {"name": "database_cdc", "stamp": True}
    config = agent_config(stream, tmp_path, tables=[f"test.{table}"], schema=schema)
    agent = InProcessAgent(config, endpoint_url)
    try:
        tables.sql("SET time_zone = '+02:00'")
        tables.sql(f"INSERT INTO {table} VALUES {HIGH}")
        tables.sql(f"INSERT INTO {table} (id) VALUES (2)")
        tables.sql(f"INSERT INTO {table} VALUES {LOW}")
        tables.sql(f"UPDATE {table} SET s = '', e = 'b', vc = 'x' WHERE id = 2")
        tables.sql(f"DELETE FROM {table} WHERE id = 3")
        events = wait_for_events(endpoint_url, stream, 5, agent)
    finally:
        tables.sql("SET time_zone = SYSTEM")
        agent.stop()
    nulls = dict.fromkeys(HIGH_JSON, None)
    assert [(e["op"], e["before"], e["after"]) for e in events] == [
        ("c", None, HIGH_JSON),
        ("c", None, {**nulls, "id": 2}),
        ("c", None, LOW_JSON),
        ("u", {**nulls, "id": 2}, {**nulls, "id": 2, "s": "", "e": "b", "vc": "x"}),
        ("d", LOW_JSON, None),
    ]
    assert all(e["database"] == "test" and e["table"] == table for e in events)
    assert events[0]["primary_key"] == {"id": 18446744073709551615}
    assert {e["schema_id"] for e in events} == {"database_cdc/v1"}
    lag = agent.agent.stats()["sources"][config.sources[0].name]["lag_s"]
    assert lag is not None and 0 <= lag < 60
    assert not dlq_entries(tmp_path / "dlq")


# ------------------------------------------------------------------ workload and order


def test_mixed_transactions_keep_each_keys_changes_in_commit_order(
    tables: Tables, stream_factory: Callable[..., str], endpoint_url: str, tmp_path: Path
) -> None:
    table = tables.new("id INT PRIMARY KEY, qty INT NOT NULL, status VARCHAR(10)")
    stream = stream_factory(shards=4)
    agent = InProcessAgent(
        agent_config(
            stream,
            tmp_path,
            tables=[f"test.{table}"],
            critical_columns={f"test.{table}": ["status"]},
        ),
        endpoint_url,
    )
    rng = random.Random(7)
    model: dict[int, tuple[int, str]] = {}
    expected: dict[int, list[tuple[str, Any, Any]]] = defaultdict(list)
    next_id = 1
    transactions = 0
    try:
        for _ in range(40):
            statements = []
            for _ in range(rng.randint(1, 4)):
                choice = rng.random()
                if choice < 0.4 or len(model) < 5:
                    new = list(range(next_id, next_id + rng.randint(1, 5)))
                    next_id += len(new)
                    values = ", ".join(f"({k}, {k % 7}, 'new')" for k in new)
                    statements.append(f"INSERT INTO {table} VALUES {values}")
                    for k in new:
                        model[k] = (k % 7, "new")
                        expected[k].append(("c", None, {"id": k, "qty": k % 7, "status": "new"}))
                elif choice < 0.7:
                    keys = sorted(rng.sample(sorted(model), min(len(model), 3)))
                    status = rng.choice(["paid", "sent", "new"])
                    statements.append(
                        f"UPDATE {table} SET qty = qty + 1, status = '{status}' "
                        f"WHERE id IN ({', '.join(map(str, keys))})"
                    )
                    for k in keys:
                        qty, old = model[k]
                        model[k] = (qty + 1, status)
                        expected[k].append(
                            (
                                "u",
                                {"id": k, "qty": qty, "status": old},
                                {"id": k, "qty": qty + 1, "status": status},
                            )
                        )
                elif choice < 0.85:
                    key = rng.choice(sorted(model))
                    statements.append(f"DELETE FROM {table} WHERE id = {key}")
                    qty, status = model.pop(key)
                    expected[key].append(("d", {"id": key, "qty": qty, "status": status}, None))
                else:
                    key = rng.choice(sorted(model))
                    moved = next_id
                    next_id += 1
                    statements.append(f"UPDATE {table} SET id = {moved} WHERE id = {key}")
                    qty, status = model.pop(key)
                    model[moved] = (qty, status)
                    row = {"qty": qty, "status": status}
                    expected[key].append(("d", {"id": key, **row}, None))
                    expected[moved].append(("c", None, {"id": moved, **row}))
            tables.transaction(*statements)
            transactions += 1
        total = sum(len(changes) for changes in expected.values())
        wait_for_events(endpoint_url, stream, total, agent)
    finally:
        agent.stop()
    records = read_stream(endpoint_url, stream)
    got: dict[int, list[tuple[str, Any, Any]]] = defaultdict(list)
    by_transaction: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        event = orjson.loads(record.data)
        key = (event["after"] or event["before"])["id"]
        assert record.partition_key == f"test.{table}:[{key}]"
        got[key].append((event["op"], event["before"], event["after"]))
        by_transaction[event["transaction_id"]].append(event)
    assert len(records) == total  # nothing twice on a clean run
    assert got == expected
    assert len(by_transaction) == transactions
    for events in by_transaction.values():
        orders = sorted(e["transaction"]["total_order"] for e in events)
        assert orders == list(range(1, len(events) + 1))
        last = [e for e in events if "event_count" in e["transaction"]]
        assert len(last) == 1 and last[0]["transaction"]["event_count"] == len(events)
    critical = [e for events in by_transaction.values() for e in events if e["op"] == "u"]
    assert {e["change_type"] for e in critical} <= {"critical_update", "standard_update"}
    assert all(
        (e["change_type"] == "critical_update") == (e["before"]["status"] != e["after"]["status"])
        for e in critical
    )


def test_a_rolled_back_transaction_never_appears(
    tables: Tables, stream_factory: Callable[..., str], endpoint_url: str, tmp_path: Path
) -> None:
    table = tables.new("id INT PRIMARY KEY, v VARCHAR(10)")
    stream = stream_factory()
    agent = InProcessAgent(agent_config(stream, tmp_path, tables=[f"test.{table}"]), endpoint_url)
    try:
        with tables.conn.cursor() as cursor:
            cursor.execute("BEGIN")
            cursor.execute(f"INSERT INTO {table} VALUES (1, 'rolled')")
            cursor.execute(f"UPDATE {table} SET v = 'back' WHERE id = 1")
            cursor.execute("ROLLBACK")
        tables.transaction(f"INSERT INTO {table} VALUES (2, 'kept')")
        events = wait_for_events(endpoint_url, stream, 1, agent)
        # The committed one arrived; give a rolled-back change every chance to show up too.
        tables.transaction(f"INSERT INTO {table} VALUES (3, 'marker')")
        events = wait_for_events(endpoint_url, stream, 2, agent)
    finally:
        agent.stop()
    assert [e["after"] for e in events] == [{"id": 2, "v": "kept"}, {"id": 3, "v": "marker"}]


def test_tables_without_primary_key_are_keyed_by_table_name(
    tables: Tables, stream_factory: Callable[..., str], endpoint_url: str, tmp_path: Path
) -> None:
    table = tables.new("msg VARCHAR(20), n INT")
    stream = stream_factory(shards=2)
    agent = InProcessAgent(agent_config(stream, tmp_path, tables=[f"test.{table}"]), endpoint_url)
    try:
        tables.sql(f"INSERT INTO {table} VALUES ('a', 1), ('b', 2)")
        tables.sql(f"UPDATE {table} SET n = n + 10")
        tables.sql(f"DELETE FROM {table} WHERE msg = 'a'")
        wait_for_events(endpoint_url, stream, 5, agent)
    finally:
        agent.stop()
    records = read_stream(endpoint_url, stream)
    assert {r.partition_key for r in records} == {f"test.{table}"}
    events = [orjson.loads(r.data) for r in records]
    assert [e["op"] for e in events] == ["c", "c", "u", "u", "d"]
    assert all(e["primary_key"] is None for e in events)
    assert events[4]["before"] == {"msg": "a", "n": 11}


def test_truncate_is_one_event_keyed_by_the_table(
    tables: Tables, stream_factory: Callable[..., str], endpoint_url: str, tmp_path: Path
) -> None:
    table = tables.new("id INT PRIMARY KEY")
    stream = stream_factory()
    agent = InProcessAgent(agent_config(stream, tmp_path, tables=[f"test.{table}"]), endpoint_url)
    try:
        tables.sql(f"INSERT INTO {table} VALUES (1), (2)")
        tables.sql(f"TRUNCATE TABLE {table}")
        tables.sql(f"INSERT INTO {table} VALUES (1)")
        wait_for_events(endpoint_url, stream, 4, agent)
    finally:
        agent.stop()
    records = read_stream(endpoint_url, stream)
    events = [orjson.loads(r.data) for r in records]
    assert [e["op"] for e in events] == ["c", "c", "t", "c"]
    assert records[2].partition_key == f"test.{table}"
    assert events[2]["change_type"] == "table_truncation"


# ------------------------------------------------------------------ schema changes


def test_alter_table_mid_stream_names_every_row_right(
    row_metadata: str,
    tables: Tables,
    stream_factory: Callable[..., str],
    endpoint_url: str,
    tmp_path: Path,
) -> None:
    table = tables.new("id INT PRIMARY KEY, a VARCHAR(10), b INT")
    stream = stream_factory()
    agent = InProcessAgent(agent_config(stream, tmp_path, tables=[f"test.{table}"]), endpoint_url)
    try:
        tables.sql(f"INSERT INTO {table} VALUES (1, 'one', 10)")
        wait_for_events(endpoint_url, stream, 1, agent)
        tables.sql(f"ALTER TABLE {table} ADD COLUMN extra VARCHAR(10) NOT NULL DEFAULT 'dflt'")
        tables.sql(f"INSERT INTO {table} VALUES (2, 'two', 20, 'x')")
        tables.sql(f"UPDATE {table} SET b = 11 WHERE id = 1")
        # Without binlog metadata, names come from information_schema as it is when the source
        # reads the ALTER: a second ALTER before the rows between them are read would make
        # those rows mismatch (and go to the dead-letter queue, see the next test).
        wait_for_events(endpoint_url, stream, 3, agent)
        tables.sql(f"ALTER TABLE {table} DROP COLUMN a")
        tables.sql(f"INSERT INTO {table} VALUES (3, 30, 'y')")
        events = wait_for_events(endpoint_url, stream, 4, agent)
    finally:
        agent.stop()
    assert [(e["op"], e["before"], e["after"]) for e in events] == [
        ("c", None, {"id": 1, "a": "one", "b": 10}),
        ("c", None, {"id": 2, "a": "two", "b": 20, "extra": "x"}),
        (
            "u",
            {"id": 1, "a": "one", "b": 10, "extra": "dflt"},
            {"id": 1, "a": "one", "b": 11, "extra": "dflt"},
        ),
        ("c", None, {"id": 3, "b": 30, "extra": "y"}),
    ]
    assert not dlq_entries(tmp_path / "dlq")


def test_rows_logged_before_an_alter_the_source_did_not_see(
    row_metadata: str,
    tables: Tables,
    stream_factory: Callable[..., str],
    endpoint_url: str,
    tmp_path: Path,
) -> None:
    """Without binlog metadata, a row whose columns information_schema no longer matches goes
    to the dead-letter queue; with binlog_row_metadata=FULL it is named from the binlog."""
    table = tables.new("id INT PRIMARY KEY, a VARCHAR(10)")
    stream = stream_factory()
    config = agent_config(stream, tmp_path, tables=[f"test.{table}"])
    InProcessAgent(config, endpoint_url).stop()  # the position is stored; the agent is away
    tables.sql(f"INSERT INTO {table} VALUES (1, 'old')")
    tables.sql(f"ALTER TABLE {table} ADD COLUMN c INT NOT NULL DEFAULT 7")
    tables.sql(f"INSERT INTO {table} VALUES (2, 'new', 8)")
    agent = InProcessAgent(config, endpoint_url)
    try:
        if row_metadata == "FULL":
            events = wait_for_events(endpoint_url, stream, 2, agent)
        else:
            events = wait_for_events(endpoint_url, stream, 1, agent)
            wait_until(lambda: len(dlq_entries(tmp_path / "dlq")) >= 1, 30, "the dead letter")
    finally:
        agent.stop()
    if row_metadata == "FULL":
        assert [e["after"] for e in events] == [
            {"id": 1, "a": "old"},
            {"id": 2, "a": "new", "c": 8},
        ]
        return
    assert [e["after"] for e in events] == [{"id": 2, "a": "new", "c": 8}]
    (entry,) = dlq_entries(tmp_path / "dlq")
    assert entry.reason.value == "invalid_input"
    assert entry.source == SOURCE
    assert "has 2 columns, but information_schema now lists 3" in (entry.error_message or "")
    payload = orjson.loads(entry.payload)
    assert payload["table"] == table and payload["op"] == "c"
    assert payload["after"] == [1, base64.b64encode(b"old").decode()]


# ------------------------------------------------------------------ filters, progress, reconnection


def test_filters_and_an_idle_captured_table_still_advance_the_position(
    tables: Tables, stream_factory: Callable[..., str], endpoint_url: str, tmp_path: Path
) -> None:
    kept = tables.new("id INT PRIMARY KEY")
    skipped = tables.new("id INT PRIMARY KEY")
    other = tables.new("id INT PRIMARY KEY")
    stream = stream_factory()
    checkpoint = tmp_path / "checkpoints.db"
    agent = InProcessAgent(
        agent_config(stream, tmp_path, tables=["test.kcdc_*"], exclude_tables=[f"test.{skipped}"]),
        endpoint_url,
    )
    try:
        tables.sql(f"INSERT INTO {kept} VALUES (1)")
        tables.sql(f"INSERT INTO {skipped} VALUES (1)")
        tables.sql(f"INSERT INTO {other} VALUES (1)")
        events = wait_for_events(endpoint_url, stream, 2, agent)
        # Only changes of tables not captured from here on: the position still moves past them.
        before = committed(checkpoint)
        for i in range(2, 6):
            tables.sql(f"INSERT INTO {skipped} VALUES ({i})")
        target = master_status(tables)
        wait_until(
            lambda: (c := committed(checkpoint)) is not None and c.pos >= target.pos,
            30,
            "the position to pass the skipped changes",
        )
    finally:
        agent.stop()
    assert {e["table"] for e in events} == {kept, other}
    assert len(events_of(endpoint_url, stream)) == 2
    final = committed(checkpoint)
    assert before is not None and final is not None and final.pos > before.pos
    assert final.gtid and final.gtid.startswith("0-1-")


def test_a_position_without_gtid_resumes_by_file_and_offset(
    tables: Tables, stream_factory: Callable[..., str], endpoint_url: str, tmp_path: Path
) -> None:
    table = tables.new("id INT PRIMARY KEY")
    stream = stream_factory()
    checkpoint = tmp_path / "checkpoints.db"
    config = agent_config(stream, tmp_path, tables=[f"test.{table}"])
    InProcessAgent(config, endpoint_url).stop()
    start = committed(checkpoint)
    assert start is not None and start.gtid is not None
    with CheckpointStore(checkpoint) as store:  # as written before the server had GTIDs
        store.save(SOURCE, {"binlog": {"file": start.file, "pos": start.pos, "gtid": None}})
    tables.sql(f"INSERT INTO {table} VALUES (1), (2)")
    tables.transaction(f"INSERT INTO {table} VALUES (3)")
    agent = InProcessAgent(config, endpoint_url)
    try:
        events = wait_for_events(endpoint_url, stream, 3, agent)
        wait_until(
            lambda: (c := committed(checkpoint)) is not None and c.pos > start.pos, 30, "a commit"
        )
    finally:
        agent.stop()
    assert [e["after"]["id"] for e in events] == [1, 2, 3]
    final = committed(checkpoint)
    assert final is not None and final.gtid is not None  # the state was read at the start
    assert final.gtid.split("-")[:2] == start.gtid.split("-")[:2]
    assert int(final.gtid.rsplit("-", 1)[1]) >= int(start.gtid.rsplit("-", 1)[1]) + 2


def test_a_lost_connection_is_taken_again_without_duplicates(
    tables: Tables, stream_factory: Callable[..., str], endpoint_url: str, tmp_path: Path
) -> None:
    table = tables.new("id INT PRIMARY KEY")
    stream = stream_factory()
    agent = InProcessAgent(agent_config(stream, tmp_path, tables=[f"test.{table}"]), endpoint_url)
    try:
        tables.sql(f"INSERT INTO {table} VALUES (1), (2)")
        wait_for_events(endpoint_url, stream, 2, agent)
        dumps = tables.sql(
            "SELECT ID FROM information_schema.PROCESSLIST WHERE COMMAND = 'Binlog Dump'"
        )
        assert dumps, "the source's binlog connection is not on the server"
        for (thread_id,) in dumps:
            tables.sql(f"KILL {int(thread_id)}")
        tables.sql(f"INSERT INTO {table} VALUES (3)")
        tables.transaction(*(f"INSERT INTO {table} VALUES ({i})" for i in range(4, 8)))
        wait_for_events(endpoint_url, stream, 7, agent)
        wait_until(lambda: agent.status()["reconnections"] >= 1, 30, "the reconnection")
    finally:
        agent.stop()
    assert [e["after"]["id"] for e in events_of(endpoint_url, stream)] == list(range(1, 8))


def test_an_error_in_the_reader_thread_stops_the_agent(
    tables: Tables, stream_factory: Callable[..., str], endpoint_url: str, tmp_path: Path
) -> None:
    """The binlog connection is lost and the new one is refused: the agent stops with the
    reader's error (the command then exits 1)."""
    table = tables.new("id INT PRIMARY KEY")
    user = unique_name("kingest_u")
    tables.sql(f"CREATE USER '{user}'@'%' IDENTIFIED BY 'pw'")
    try:
        tables.sql(f"GRANT SELECT, REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO '{user}'@'%'")
        stream = stream_factory()
        config = agent_config(
            stream,
            tmp_path,
            dsn=f"mysql://{user}:pw@127.0.0.1:3306/test",
            tables=[f"test.{table}"],
        )
        agent = InProcessAgent(config, endpoint_url)
        tables.sql(f"INSERT INTO {table} VALUES (1)")
        wait_for_events(endpoint_url, stream, 1, agent)
        tables.sql(f"REVOKE REPLICATION SLAVE ON *.* FROM '{user}'@'%'")
        for (thread_id,) in tables.sql(
            "SELECT ID FROM information_schema.PROCESSLIST "
            "WHERE COMMAND = 'Binlog Dump' AND USER = %s",
            (user,),
        ):
            tables.sql(f"KILL {int(thread_id)}")
        wait_until(lambda: not agent.thread.is_alive(), 30, "the agent to stop")
        with pytest.raises(SourceFailedError, match=f"user '{user}' lacks REPLICATION SLAVE"):
            agent.stop()
    finally:
        tables.sql(f"DROP USER IF EXISTS '{user}'@'%'")
