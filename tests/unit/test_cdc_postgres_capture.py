"""The checks capture makes before streaming, against a scripted server, and table filters."""

from __future__ import annotations

from typing import Any

import pytest

from kingest.errors import CaptureError
from kingest.sources.cdc.envelope import EnvelopeBuilder
from kingest.sources.cdc.postgres import capture as capture_module
from kingest.sources.cdc.postgres.capture import CaptureSettings, PostgresCapture, TableFilter


class ScriptedConnection:
    """Answers each query with the rows of the first script entry its text contains."""

    closed = False

    def __init__(self, script: dict[str, list[tuple[Any, ...]]]) -> None:
        self.script = script
        self.rows: list[tuple[Any, ...]] = []

    def cursor(self) -> ScriptedConnection:
        return self

    def __enter__(self) -> ScriptedConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def execute(self, statement: Any, params: Any = ()) -> None:
        text = str(statement)
        self.rows = next((rows for key, rows in self.script.items() if key in text), [])

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self.rows

    def close(self) -> None:
        self.closed = True


def settings() -> CaptureSettings:
    return CaptureSettings(
        dsn="postgresql://kingest@db/shop",
        slot="kingest",
        publication="kingest",
        tables=TableFilter(["public.orders"]),
        snapshot=False,
        heartbeat_interval_s=10,
        status_interval_s=10,
        recreate_dropped_slot=False,
        spool_memory_bytes=1 << 20,
    )


def prepare_against(
    monkeypatch: pytest.MonkeyPatch, script: dict[str, list[tuple[Any, ...]]]
) -> None:
    monkeypatch.setattr(
        capture_module, "connect", lambda dsn, replication: ScriptedConnection(script)
    )
    PostgresCapture(settings(), EnvelopeBuilder("postgresql", "pg")).prepare(None)


def test_wal_level_not_logical_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(CaptureError, match=r"wal_level=replica.*wal_level = logical"):
        prepare_against(monkeypatch, {"current_database": [("shop", "replica", "kingest")]})


def test_missing_replication_attribute_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    script = {"current_database": [("shop", "logical", "app")], "rolreplication": [(False,)]}
    with pytest.raises(CaptureError, match=r"ALTER ROLE app REPLICATION"):
        prepare_against(monkeypatch, script)


def test_a_slot_of_another_plugin_or_database_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    script = {
        "current_database": [("shop", "logical", "kingest")],
        "rolreplication": [(True,)],
        "from pg_publication where": [(1,)],
        "puballtables": [(True,)],
        "pg_replication_slots": [("test_decoding", "shop", "0/10")],
    }
    with pytest.raises(CaptureError, match="plugin test_decoding"):
        prepare_against(monkeypatch, script)


def test_table_filter() -> None:
    wanted = TableFilter(["public.orders", "sales.*"], ["sales.tmp_*"])
    assert wanted("public.orders") and wanted("sales.items")
    assert not wanted("public.users") and not wanted("sales.tmp_1")
    assert wanted.exact_tables() == ["public.orders"]
    assert TableFilter()("any.thing")
