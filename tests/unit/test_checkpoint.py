"""Tests for the SQLite checkpoint store."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from kingest.checkpoint import SCHEMA_VERSION, CheckpointError, CheckpointStore
from kingest.errors import KingestError


def test_round_trip_and_sources_are_separate(tmp_path: Path) -> None:
    with CheckpointStore(tmp_path / "cp.db") as store:
        assert store.load("web") == {}
        value = {"dev": 1, "ino": 2, "fp": "ab", "fp_len": 2, "offset": 10, "path": "/x/é.log"}
        store.save("web", {"1:2": value})
        store.save("cdc", {"slot": "0/16B3748"})
        assert store.load("web") == {"1:2": value}
        assert store.load("cdc") == {"slot": "0/16B3748"}
        store.save("web", {"1:2": {**value, "offset": 20}})
        assert store.load("web")["1:2"]["offset"] == 20


def test_creates_parent_directory_and_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "cp.db"
    with CheckpointStore(path) as store:
        store.save("s", {"k": 1})
    assert path.exists()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        conn.close()


def test_many_keys_in_one_save(tmp_path: Path) -> None:
    with CheckpointStore(tmp_path / "cp.db") as store:
        positions = {f"key-{i}": {"offset": i} for i in range(5000)}
        store.save("web", positions)
        assert store.load("web") == positions
        store.save("web", {})  # nothing to do, no error


def test_save_is_all_or_nothing(tmp_path: Path) -> None:
    with CheckpointStore(tmp_path / "cp.db") as store:
        store.save("web", {"a": 1})
        with pytest.raises(TypeError):
            store.save("web", {"a": 2, "b": object()})
        assert store.load("web") == {"a": 1}


def test_delete(tmp_path: Path) -> None:
    with CheckpointStore(tmp_path / "cp.db") as store:
        store.save("web", {"a": 1, "b": 2, "c": 3})
        store.save("other", {"a": 9})
        store.delete("web", ["a", "c", "missing"])
        store.delete("web", [])
        assert store.load("web") == {"b": 2}
        assert store.load("other") == {"a": 9}


def test_reopen_after_close(tmp_path: Path) -> None:
    path = tmp_path / "cp.db"
    store = CheckpointStore(path)
    store.save("web", {"k": [1, 2, None]})
    store.close()
    store.close()  # idempotent
    with pytest.raises(CheckpointError, match="closed"):
        store.load("web")
    with pytest.raises(CheckpointError):
        store.save("web", {"k": 1})
    with CheckpointStore(path) as again:
        assert again.load("web") == {"k": [1, 2, None]}


def test_concurrent_saves_from_two_threads(tmp_path: Path) -> None:
    errors: list[BaseException] = []
    with CheckpointStore(tmp_path / "cp.db") as store:

        def work(name: str) -> None:
            try:
                for i in range(200):
                    store.save("web", {f"{name}-{i % 10}": i, f"{name}-last": i})
                    store.load("web")
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in ("a", "b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        loaded = store.load("web")
        assert loaded["a-last"] == 199 and loaded["b-last"] == 199
        assert len(loaded) == 22


def test_corrupt_file_raises_checkpoint_error(tmp_path: Path) -> None:
    path = tmp_path / "cp.db"
    path.write_bytes(b"this is not a sqlite database at all" * 200)
    with pytest.raises(CheckpointError) as info:
        CheckpointStore(path)
    assert isinstance(info.value, KingestError)
    assert info.value.retriable is False
    assert isinstance(info.value.__cause__, sqlite3.Error)


def test_non_json_value_raises_checkpoint_error(tmp_path: Path) -> None:
    path = tmp_path / "cp.db"
    with CheckpointStore(path) as store:
        store.save("web", {"k": 1})
    conn = sqlite3.connect(path)
    try:
        conn.execute("UPDATE checkpoints SET value = '{not json'")
        conn.commit()
    finally:
        conn.close()
    with CheckpointStore(path) as store, pytest.raises(CheckpointError, match="not JSON"):
        store.load("web")


def test_unwritable_location_raises_checkpoint_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CheckpointError):
        CheckpointStore(blocker / "cp.db")  # parent is a regular file


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cp.db"
    conn = sqlite3.connect(path)
    try:
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
        conn.commit()
    finally:
        conn.close()
    with pytest.raises(CheckpointError, match="newer"):
        CheckpointStore(path)
