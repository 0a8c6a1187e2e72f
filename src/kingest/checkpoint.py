"""The checkpoint store: every source's committed positions in one SQLite file per agent.

A position is written here only once every record before it is done (delivered to Kinesis or
dead-lettered), so after a crash a source resumes from the last committed position and nothing is
lost (records after it may be sent twice: delivery is at-least-once).

Layout: one table keyed by (source name, key). A source picks its own keys (a file identity for
the web-log tailer, a slot name for PostgreSQL, ...) and stores a JSON value per key, e.g.::

    source="web_logs", key="2049:1835012",
    value={"dev": 2049, "ino": 1835012, "fp": "9f86d0...", "fp_len": 1024, "offset": 53211}

Durability: WAL journal with ``synchronous=FULL``, so a :meth:`CheckpointStore.save` that returned
survives a power loss, not only a process crash (``NORMAL`` in WAL mode may lose the last
transactions on power loss: https://www.sqlite.org/pragma.html#pragma_synchronous).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson

from kingest.errors import CheckpointError

__all__ = ["CheckpointError", "CheckpointStore"]

# Bumped when the table layout changes; a file written by a newer layout is refused rather than
# misread.
SCHEMA_VERSION = 1

# How long a statement waits for another process holding the write lock (e.g. an operator's
# sqlite3 shell) before failing.
BUSY_TIMEOUT_S = 5.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS checkpoints (
    source     TEXT NOT NULL,
    key        TEXT NOT NULL,
    value      TEXT NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (source, key)
) WITHOUT ROWID
"""


class CheckpointStore:
    """Committed positions of every source of one agent, in one SQLite file.

    Thread-safe: one connection shared under a lock, so sources running in threads and on the
    event loop can save concurrently (each save is one short transaction).

    Usable as a context manager; :meth:`close` on exit.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        """Open (or create) the store.

        Args:
            path: the SQLite file; its parent directory is created when missing.

        Raises:
            CheckpointError: the directory or file cannot be created, the file is not a SQLite
                database (or is damaged), or it was written by a newer schema.
        """
        self.path = Path(path)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            existed = self.path.exists()
            # isolation_level=None: we issue BEGIN/COMMIT ourselves so one save is one transaction.
            conn = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
        except (OSError, sqlite3.Error) as exc:
            raise CheckpointError(f"cannot open checkpoint file {self.path}: {exc}") from exc
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()
            if mode is None or str(mode[0]).lower() != "wal":
                raise CheckpointError(f"cannot switch {self.path} to WAL mode (got {mode!r})")
            conn.execute("PRAGMA synchronous=FULL")
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise CheckpointError(
                    f"checkpoint file {self.path} has schema {version}, newer than this "
                    f"version of kingest understands ({SCHEMA_VERSION})"
                )
            conn.execute(_SCHEMA)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            # Fail now, not at the first save, when the file is damaged beyond its header.
            check = conn.execute("PRAGMA quick_check").fetchone()
            if check is None or check[0] != "ok":
                raise CheckpointError(f"checkpoint file {self.path} is damaged: {check!r}")
        except CheckpointError:
            conn.close()
            raise
        except sqlite3.Error as exc:
            conn.close()
            raise CheckpointError(f"cannot use checkpoint file {self.path}: {exc}") from exc
        if not existed:
            _fsync_dir(self.path.parent)
        self._conn = conn

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise CheckpointError(f"checkpoint store {self.path} is closed")
        return self._conn

    def load(self, source: str) -> dict[str, Any]:
        """Every committed position of one source.

        Args:
            source: the source name.

        Returns:
            key -> decoded JSON value; empty when the source has never committed.

        Raises:
            CheckpointError: the store is closed, or the file cannot be read or holds a value
                that is not JSON.
        """
        with self._lock:
            try:
                rows = (
                    self._connection()
                    .execute("SELECT key, value FROM checkpoints WHERE source = ?", (source,))
                    .fetchall()
                )
            except sqlite3.Error as exc:
                raise CheckpointError(f"cannot read checkpoints of {source!r}: {exc}") from exc
        out: dict[str, Any] = {}
        for key, value in rows:
            try:
                out[key] = orjson.loads(value)
            except orjson.JSONDecodeError as exc:
                raise CheckpointError(
                    f"checkpoint {source!r}/{key!r} in {self.path} is not JSON: {exc}"
                ) from exc
        return out

    def save(self, source: str, positions: Mapping[str, Any]) -> None:
        """Insert or replace positions of one source, all in one durable transaction.

        Either every position is stored or none is.

        Args:
            source: the source name.
            positions: key -> JSON-serializable value (dicts, lists, str, int, float, bool, None).

        Raises:
            TypeError: a value is not JSON-serializable (nothing is written).
            CheckpointError: the store is closed or the file cannot be written.
        """
        if not positions:
            return
        now = time.time()
        # Encode before taking the lock so a bad value fails without touching the file.
        rows = [
            (source, key, orjson.dumps(value).decode(), now) for key, value in positions.items()
        ]
        with self._lock:
            conn = self._connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.executemany(
                        "INSERT INTO checkpoints (source, key, value, updated_at) "
                        "VALUES (?, ?, ?, ?) ON CONFLICT (source, key) DO UPDATE SET "
                        "value = excluded.value, updated_at = excluded.updated_at",
                        rows,
                    )
                    conn.execute("COMMIT")
                except BaseException:
                    _rollback(conn)
                    raise
            except sqlite3.Error as exc:
                raise CheckpointError(f"cannot save checkpoints of {source!r}: {exc}") from exc

    def delete(self, source: str, keys: Iterable[str]) -> None:
        """Remove positions of one source (missing keys are ignored), in one transaction.

        Args:
            source: the source name.
            keys: the keys to remove.

        Raises:
            CheckpointError: the store is closed or the file cannot be written.
        """
        rows = [(source, key) for key in keys]
        if not rows:
            return
        with self._lock:
            conn = self._connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.executemany("DELETE FROM checkpoints WHERE source = ? AND key = ?", rows)
                    conn.execute("COMMIT")
                except BaseException:
                    _rollback(conn)
                    raise
            except sqlite3.Error as exc:
                raise CheckpointError(f"cannot delete checkpoints of {source!r}: {exc}") from exc

    def close(self) -> None:
        """Close the file. Idempotent; any later call other than close raises CheckpointError."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error as exc:
                raise CheckpointError(f"cannot close checkpoint file {self.path}: {exc}") from exc

    def __enter__(self) -> CheckpointStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _rollback(conn: sqlite3.Connection) -> None:
    # The transaction may already be gone (SQLite rolls back by itself on some errors).
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def _fsync_dir(directory: Path) -> None:
    # A new file's directory entry is only durable once the directory itself is synced.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
