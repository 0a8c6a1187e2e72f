"""The machine's database servers for CDC tests: reach them, or skip (fail under CI=true).

``.ci/servers`` puts them in the state the tests need (PostgreSQL wal_level=logical, MariaDB
with a row-based binlog); a test that finds a server absent or not in that state skips with the
reason, except under CI=true, where a skip would hide a broken CI machine, so it fails.
"""

from __future__ import annotations

import os
import threading
import time
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


class Publisher:
    """A QoS 1 publisher that waits for the broker's PUBACK and retries across restarts."""

    def __init__(self, host: str, port: int) -> None:
        from paho.mqtt import client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"kt-pub-{uuid.uuid4().hex[:8]}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        # Set while the broker has us: a publish that failed is tried again once it is.
        self.connected = threading.Event()
        self.client.on_connect = lambda *_: self.connected.set()
        self.client.on_disconnect = lambda *_: self.connected.clear()
        self.client.reconnect_delay_set(1, 2)
        self.client.connect(host, port)
        self.client.loop_start()

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        deadline = time.monotonic() + 60
        while True:
            info = self.client.publish(topic, payload, qos=qos)
            try:
                info.wait_for_publish(5)
                if info.is_published():
                    return
            except RuntimeError:
                pass  # not connected: the message was not queued
            if time.monotonic() > deadline:
                raise AssertionError(f"could not publish to {topic}")
            self.connected.wait(max(deadline - time.monotonic(), 0))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
