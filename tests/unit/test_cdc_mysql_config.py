"""The MySQL source's config, example, command line and reader channel (no server)."""

from __future__ import annotations

import argparse
import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from kingest.agent.config import AgentConfig, load_config, parse_config
from kingest.cli import cdc_mysql
from kingest.errors import ConfigError
from kingest.sources.cdc.mysql.assembler import Chunk, Reject
from kingest.sources.cdc.mysql.channel import Channel, ReaderStopped
from kingest.sources.cdc.mysql.position import BinlogPosition
from kingest.sources.cdc.mysql.source import MySqlSourceConfig, default_server_id

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "mysql.yaml"


def config(**fields: Any) -> MySqlSourceConfig:
    return MySqlSourceConfig.model_validate(
        {"type": "mysql", "dsn": "mysql://kingest:secret@db:3306/shop", **fields}
    )


def test_defaults_and_derived_settings() -> None:
    source = config()
    assert source.name == "mysql_cdc"
    assert source.replica_server_id() == default_server_id("mysql_cdc")
    assert config(server_id=7).replica_server_id() == 7
    tables = source.table_filter()
    assert tables.include == ("shop.*",)
    assert tables("shop", "orders") and not tables("crm", "users")
    everything = MySqlSourceConfig.model_validate({"type": "mysql", "dsn": "mysql://u@h"})
    assert everything.table_filter()("crm", "users")
    assert config(tables=["crm.users"]).table_filter().include == ("crm.users",)
    settings = source.connection_settings()
    assert (settings.user, settings.password, settings.database) == ("kingest", "secret", "shop")


def test_default_server_ids_are_stable_and_in_range() -> None:
    ids = {default_server_id(f"source_{i}") for i in range(1000)}
    assert len(ids) > 990
    assert all(1 <= i < 1 << 32 for i in ids)
    assert default_server_id("a") == default_server_id("a")


def test_the_password_stays_out_of_the_config_dump() -> None:
    source = config()
    assert "secret" not in repr(source)
    assert "secret" not in str(source.model_dump())


def test_every_field_is_described_and_the_config_is_strict() -> None:
    for name, field in MySqlSourceConfig.model_fields.items():
        assert field.description, name
    with pytest.raises(ValidationError, match="Extra inputs"):
        config(slot="x")
    source = config()
    with pytest.raises(ValidationError):
        source.name = "other"


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"dsn": "postgresql://u:secret@h/db"}, "must start with mysql://"),
        ({"tables": ["orders"]}, "is not DATABASE.TABLE"),
        ({"exclude_tables": ["shop."]}, "is not DATABASE.TABLE"),
        ({"critical_columns": {"orders": ["status"]}}, "is not DATABASE.TABLE"),
        ({"server_id": 0}, "greater than or equal to 1"),
        ({"heartbeat_interval_s": 0}, "greater than 0"),
    ],
)
def test_invalid_settings(fields: dict[str, Any], words: str) -> None:
    with pytest.raises(ValidationError) as caught:
        config(**fields)
    assert words in str(caught.value)
    assert "secret" not in str(caught.value)


def test_the_example_config_loads() -> None:
    agent = load_config(EXAMPLE)
    (source,) = agent.sources
    assert isinstance(source, MySqlSourceConfig)
    assert source.name == "shop_cdc"
    assert source.server_id == 5401
    assert source.critical_columns["shop.orders"] == ["status", "total_amount"]
    assert source.table_filter()("shop", "order_lines")
    assert not source.table_filter()("shop", "order_tmp1")


def test_config_errors_name_the_key_and_line() -> None:
    text = "stream: s\nsources:\n  - type: mysql\n    dsn: mysql://u@h/db\n    tables: [orders]\n"
    with pytest.raises(ConfigError, match=r"<config>:5: sources\.0\.tables: 'orders' is not"):
        parse_config(text)
    text = "stream: s\nsources:\n  - type: mysql\n    dsn: mysql://u:secret@h:x/db\n"
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    assert "sources.0.dsn" in str(caught.value) and "secret" not in str(caught.value)


# ------------------------------------------------------------------ command line


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    subparsers = parser.add_subparsers(dest="database")
    cdc_mysql.register(subparsers)
    return parser.parse_args(["mysql", *argv])


def test_the_command_builds_a_one_source_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def fake_run_agent(agent: AgentConfig, args: argparse.Namespace, command: str) -> int:
        seen.update(agent=agent, endpoint_url=args.endpoint_url, command=command)
        return 0

    monkeypatch.setattr(cdc_mysql, "run_agent", fake_run_agent)
    args = parse(
        "--dsn",
        "mysql://root@127.0.0.1:3306/test",
        "--stream",
        "changes",
        "--server-id",
        "77",
        "--table",
        "test.a",
        "--table",
        "test.b*",
        "--exclude-table",
        "test.b_tmp",
        "--critical-columns",
        "test.a=status,email",
        "--checkpoint",
        "state.db",
        "--endpoint-url",
        "http://127.0.0.1:4567",
        "--linger-ms",
        "20",
    )
    assert args.handler(args) == 0
    agent: AgentConfig = seen["agent"]
    (source,) = agent.sources
    assert isinstance(source, MySqlSourceConfig)
    assert source.server_id == 77
    assert source.tables == ["test.a", "test.b*"]
    assert source.exclude_tables == ["test.b_tmp"]
    assert source.critical_columns == {"test.a": ["status", "email"]}
    assert agent.stream == "changes" and agent.checkpoint_path == "state.db"
    assert agent.producer.linger_ms == 20
    assert seen["endpoint_url"] == "http://127.0.0.1:4567" and seen["command"] == "cdc"


def test_bad_arguments_are_one_line_errors() -> None:
    args = parse("--dsn", "mysql://root@h/db", "--stream", "s", "--table", "orders")
    with pytest.raises(ConfigError, match=r"tables: Value error, 'orders' is not DATABASE\.TABLE"):
        args.handler(args)
    with pytest.raises(SystemExit):
        parse("--dsn", "mysql://root@h/db", "--stream", "s", "--server-id", "0")
    with pytest.raises(SystemExit):
        parse("--dsn", "mysql://root@h/db", "--stream", "s", "--critical-columns", "t")


# ------------------------------------------------------------------ channel


def end(pos: int) -> Chunk:
    return Chunk(end=BinlogPosition("mysql-bin.000001", pos))


def test_the_channel_merges_position_only_chunks() -> None:
    async def scenario() -> list[Chunk]:
        channel = Channel(asyncio.get_running_loop(), capacity=100)
        channel.put(Chunk(events=[({"a": 1}, "k")], end=BinlogPosition("f.000001", 10)))
        channel.put(end(20))
        channel.put(end(30))
        channel.put(Chunk(events=[({"a": 2}, "k")]))  # a transaction not ended yet
        channel.put(end(40))  # cannot be merged into an unfinished transaction
        return await channel.get(1)

    chunks = asyncio.run(scenario())
    assert [(len(c.events), c.end.pos if c.end else None) for c in chunks] == [
        (1, 30),
        (1, None),
        (0, 40),
    ]


def test_the_channel_blocks_a_full_reader_and_hands_over_its_error() -> None:
    async def scenario() -> tuple[list[int], list[str]]:
        channel = Channel(asyncio.get_running_loop(), capacity=3)
        put: list[int] = []
        events = [({"i": i}, "k") for i in range(2)]

        def reader() -> None:
            for i in range(5):
                channel.put(Chunk(events=list(events), rejects=[Reject({}, str(i))]))
                put.append(i)
            channel.fail(RuntimeError("reader failed"))

        thread = threading.Thread(target=reader)
        thread.start()
        await asyncio.sleep(0.2)
        blocked_at = len(put)  # the first chunk fills the channel; the second waits
        got: list[str] = []
        with pytest.raises(RuntimeError, match="reader failed"):
            while True:
                for chunk in await channel.get(5):
                    got.append(chunk.rejects[0].message)
        thread.join(5)
        return [blocked_at], got

    (blocked_at,), got = asyncio.run(scenario())
    assert blocked_at == 1
    assert got == ["0", "1", "2", "3", "4"]  # everything before the error, in order


def test_closing_the_channel_releases_a_waiting_reader_and_getter() -> None:
    async def scenario() -> tuple[list[Chunk], bool]:
        channel = Channel(asyncio.get_running_loop(), capacity=1)
        channel.put(Chunk(events=[({}, "k")]))
        stopped = threading.Event()

        def reader() -> None:
            try:
                channel.put(Chunk(events=[({}, "k")]))
            except ReaderStopped:
                stopped.set()

        thread = threading.Thread(target=reader)
        thread.start()
        await asyncio.sleep(0.1)
        channel.close()
        thread.join(5)
        first = await channel.get(1)
        return [*first, *(await channel.get(1))], stopped.is_set()

    chunks, stopped = asyncio.run(scenario())
    assert stopped and len(chunks) == 1
    assert asyncio.run(_empty_get()) == []


async def _empty_get() -> list[Chunk]:
    return await Channel(asyncio.get_running_loop(), capacity=1).get(0.05)
