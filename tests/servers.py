"""The machine's database servers for CDC tests: reach them, or skip (fail under CI=true).

``.ci/servers`` puts them in the state the tests need (PostgreSQL wal_level=logical, MariaDB
with a row-based binlog); a test that finds a server absent or not in that state skips with the
reason, except under CI=true, where a skip would hide a broken CI machine, so it fails.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any, NoReturn

import pytest

POSTGRES_DSN = os.environ.get(
    "KINGEST_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)
MYSQL_DSN = os.environ.get("KINGEST_TEST_MYSQL", "mysql://root@127.0.0.1:3306/test")


def unavailable(what: str) -> NoReturn:
    """Skip the test for want of ``what``; under CI=true, fail it instead."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{what} (CI=true: .ci/servers should have set it up)")
    pytest.skip(f"{what} (run .ci/servers to set it up)")


def require_postgres() -> Any:
    """A psycopg2 connection to the test PostgreSQL (autocommit), which has wal_level=logical."""
    import psycopg2

    try:
        conn = psycopg2.connect(POSTGRES_DSN, connect_timeout=5)
    except psycopg2.OperationalError as exc:
        unavailable(f"PostgreSQL unreachable at {POSTGRES_DSN}: {str(exc).strip()}")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("show wal_level")
        (level,) = cur.fetchone()
    if level != "logical":
        conn.close()
        unavailable(f"PostgreSQL has wal_level={level}, logical decoding needs logical")
    return conn


def require_mysql() -> Any:
    """A PyMySQL connection to the test MariaDB/MySQL (autocommit), which has a ROW binlog."""
    import pymysql

    try:
        conn = pymysql.connect(
            host="127.0.0.1",
            port=3306,
            user="root",
            password="",
            database="test",
            autocommit=True,
            connect_timeout=5,
        )
    except pymysql.err.MySQLError as exc:
        unavailable(f"MariaDB/MySQL unreachable at 127.0.0.1:3306: {exc}")
    with conn.cursor() as cur:
        cur.execute("select @@log_bin, @@binlog_format, @@binlog_row_image")
        log_bin, binlog_format, row_image = cur.fetchone()
    if (int(log_bin), binlog_format, row_image) != (1, "ROW", "FULL"):
        conn.close()
        unavailable(
            f"MariaDB/MySQL binlog is log_bin={log_bin} binlog_format={binlog_format} "
            f"binlog_row_image={row_image}; CDC needs 1, ROW, FULL"
        )
    return conn


def unique_name(prefix: str) -> str:
    """A name no other test uses (tables, slots, publications)."""
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def pg_conn() -> Iterator[Any]:
    """An autocommit connection to the test PostgreSQL."""
    conn = require_postgres()
    try:
        yield conn
    finally:
        conn.close()


@pytest.fixture
def mysql_conn() -> Iterator[Any]:
    """An autocommit connection to the test MariaDB/MySQL (database ``test``)."""
    conn = require_mysql()
    try:
        yield conn
    finally:
        conn.close()


MQTT_BROKER = os.environ.get("KINGEST_TEST_MQTT", "127.0.0.1:1883")


def require_mqtt() -> tuple[str, int]:
    """The test MQTT broker's host and port, once it answers."""
    import socket

    host, _, port = MQTT_BROKER.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            pass
    except OSError as exc:
        unavailable(f"MQTT broker unreachable at {MQTT_BROKER}: {exc}")
    return host, int(port)
