"""``kingest simulate``: the seed's data into a file, real database tables, standard output."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.servers import MYSQL_DSN, POSTGRES_DSN, unique_name

pytestmark = pytest.mark.integration


def simulate(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "kingest", "simulate", *args], capture_output=True, timeout=60
    )


def test_weblog_and_generated_cdc_events(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    done = simulate("weblog", "--file", str(log), "--rate", "400", "--duration", "0.5")
    assert done.returncode == 0 and b"200 in" in done.stderr
    assert len(log.read_bytes().splitlines()) == 200
    done = simulate("cdc", "--rate", "100", "--duration", "0.3", "--seed", "1")
    events = [orjson.loads(line) for line in done.stdout.splitlines()]
    assert len(events) == 30 and {e["operation"] for e in events} <= {"INSERT", "UPDATE", "DELETE"}


@pytest.mark.parametrize("database", ["postgres", "mysql"])
def test_cdc_writes_real_rows(database: str, pg_conn: Any, mysql_conn: Any) -> None:
    prefix = unique_name("sim") + "_"
    dsn = POSTGRES_DSN if database == "postgres" else MYSQL_DSN
    connection = pg_conn if database == "postgres" else mysql_conn
    try:
        done = simulate("cdc", "--dsn", dsn, "--rate", "200", "--duration", "0.5",
                        "--table-prefix", prefix)  # fmt: skip
        assert done.returncode == 0, done.stderr
        with connection.cursor() as cursor:
            cursor.execute(f"select count(*) from {prefix}users")
            (users,) = cursor.fetchone()
        assert users > 0
    finally:
        with connection.cursor() as cursor:
            for table in ("users", "orders"):
                cursor.execute(f"drop table if exists {prefix}{table}")
