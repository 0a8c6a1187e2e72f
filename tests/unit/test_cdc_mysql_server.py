"""Server checks, start positions, DSNs and error mapping of the MySQL source (no server)."""

from __future__ import annotations

from typing import Any

import pymysql
import pytest

from kingest.errors import ConfigError
from kingest.sources.cdc.mysql.errors import (
    CaptureError,
    PositionLostError,
    PrivilegeError,
    ServerUnreachableError,
    map_error,
)
from kingest.sources.cdc.mysql.position import BinlogPosition
from kingest.sources.cdc.mysql.server import (
    ServerStatus,
    check_server,
    parse_dsn,
    resolve_start,
)

UUID = "3e11fa47-71ca-11e1-9e33-c80aa9429562"
GOOD = {
    "version": "10.11.19-MariaDB-log",
    "server_id": "1",
    "log_bin": "ON",
    "binlog_format": "ROW",
    "binlog_row_image": "FULL",
    "binlog_row_metadata": "NO_LOG",
    "log_bin_compress": "OFF",
}


def status(flavor: str = "mariadb", **changes: Any) -> ServerStatus:
    variables = {**GOOD, **{k: v for k, v in changes.items() if isinstance(v, str)}}
    current = changes.get("current", BinlogPosition("mysql-bin.000003", 900, "0-1-50"))
    return ServerStatus(
        flavor=flavor,  # type: ignore[arg-type]
        version=variables["version"],
        server_id=1,
        variables=variables,
        current=current,
        binlog_files=changes.get("files", {"mysql-bin.000002": 5000, "mysql-bin.000003": 900}),
    )


def test_a_good_server_has_no_problems() -> None:
    assert check_server(status(), replica_server_id=5401) == []


def test_every_problem_is_reported_at_once() -> None:
    bad = status(
        log_bin="OFF",
        binlog_format="STATEMENT",
        binlog_row_image="MINIMAL",
        log_bin_compress="ON",
        current=None,
    )
    problems = check_server(bad, replica_server_id=1)
    assert len(problems) == 5
    text = "; ".join(problems)
    assert "the binary log is off (log_bin=OFF)" in text
    assert "binlog_format is STATEMENT" in text and "SET GLOBAL binlog_format=ROW" in text
    assert "binlog_row_image is MINIMAL" in text
    assert "log_bin_compress is ON" in text
    assert "server_id 1 is the server's own" in text


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("binlog_format", "MIXED", "binlog_format is MIXED"),
        ("binlog_row_image", "NOBLOB", "binlog_row_image is NOBLOB"),
        ("binlog_row_value_options", "PARTIAL_JSON", "binlog_row_value_options=PARTIAL_JSON"),
        ("binlog_transaction_compression", "ON", "binlog_transaction_compression is ON"),
    ],
)
def test_mysql_settings_that_lose_row_data(variable: str, value: str, expected: str) -> None:
    problems = check_server(status("mysql", **{variable: value}), replica_server_id=5401)
    assert len(problems) == 1 and expected in problems[0]


def test_the_first_run_starts_at_the_current_position() -> None:
    position, by_gtid = resolve_start(status(), None)
    assert position == BinlogPosition("mysql-bin.000003", 900, "0-1-50")
    assert not by_gtid


def test_a_stored_position_resumes_by_gtid_when_the_server_has_gtids() -> None:
    stored = BinlogPosition("mysql-bin.000001", 400, "0-1-20")
    assert resolve_start(status(), stored) == (stored, True)
    mysql_on = status("mysql", gtid_mode="ON", gtid_purged=f"{UUID}:1-10")
    stored = BinlogPosition("binlog.000002", 400, f"{UUID}:1-20")
    assert resolve_start(mysql_on, stored) == (stored, True)


def test_without_gtids_a_stored_position_resumes_by_file_and_offset() -> None:
    stored = BinlogPosition("mysql-bin.000002", 4000, None)
    assert resolve_start(status(), stored) == (stored, False)
    mysql_off = status("mysql", gtid_mode="OFF")
    with_set = BinlogPosition("mysql-bin.000002", 4000, f"{UUID}:1-3")
    assert resolve_start(mysql_off, with_set) == (with_set, False)


def test_a_purged_binlog_file_is_a_lost_position() -> None:
    with pytest.raises(PositionLostError, match=r"mysql-bin\.000001, which the server no longer"):
        resolve_start(status(), BinlogPosition("mysql-bin.000001", 400, None))
    with pytest.raises(PositionLostError, match=r"past the end of mysql-bin\.000002"):
        resolve_start(status(), BinlogPosition("mysql-bin.000002", 9000, None))


def test_purged_mysql_gtids_are_a_lost_position() -> None:
    mysql_on = status("mysql", gtid_mode="ON", gtid_purged=f"{UUID}:1-30")
    with pytest.raises(PositionLostError, match="purged"):
        resolve_start(mysql_on, BinlogPosition("binlog.000002", 400, f"{UUID}:1-20"))


def test_a_gtid_state_of_the_other_kind_of_server_is_refused() -> None:
    with pytest.raises(ConfigError, match="written for a mysql server, but this one is mariadb"):
        resolve_start(status(), BinlogPosition("mysql-bin.000002", 400, f"{UUID}:1-20"))


# ------------------------------------------------------------------ DSN


def test_dsn_parts_and_percent_encoding() -> None:
    settings = parse_dsn("mysql://app%40x:p%3Ass@db.internal:3307/shop")
    assert (settings.host, settings.port, settings.user, settings.database) == (
        "db.internal",
        3307,
        "app@x",
        "shop",
    )
    assert settings.password == "p:ss"
    assert "p:ss" not in repr(settings) and "p:ss" not in settings.redacted
    assert settings.redacted == "mysql://app%40x@db.internal:3307/shop"
    kwargs = settings.pymysql_kwargs(read_timeout_s=5)
    assert kwargs["password"] == "p:ss" and kwargs["read_timeout"] == 5
    v6 = parse_dsn("mariadb://root@[::1]")
    assert (v6.host, v6.port, v6.database, v6.address) == ("::1", 3306, None, "[::1]:3306")


def test_the_password_may_come_from_mysql_pwd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MYSQL_PWD", "from-env")
    assert parse_dsn("mysql://root@h/db").password == "from-env"
    assert parse_dsn("mysql://root:given@h/db").password == "given"


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://u:secret@h/db",
        "mysql://h:3306/db",
        "mysql://u:secret@/db",
        "mysql://u:secret@h:notaport/db",
        "mysql://u:secret@h/db?ssl=1",
        "mysql://u:secret@h/a/b",
    ],
)
def test_bad_dsns_never_show_the_password(dsn: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_dsn(dsn)
    assert "secret" not in str(caught.value)


# ------------------------------------------------------------------ errors


def err(code: int, text: str) -> pymysql.err.OperationalError:
    return pymysql.err.OperationalError(code, text)


@pytest.mark.parametrize(
    ("exc", "kind", "words"),
    [
        (err(1045, "Access denied"), PrivilegeError, "access denied for user 'u'"),
        (
            err(1227, "you need (at least one of) the REPLICATION SLAVE privilege(s)"),
            PrivilegeError,
            "lacks REPLICATION SLAVE",
        ),
        (
            err(1227, "you need (at least one of) the SUPER, BINLOG MONITOR privilege(s)"),
            PrivilegeError,
            "lacks REPLICATION CLIENT",
        ),
        (err(1236, "Could not find first log file"), PositionLostError, "purged"),
        (err(2003, "Can't connect"), ServerUnreachableError, "cannot reach MySQL at h:1"),
        (ConnectionRefusedError(111, "refused"), ServerUnreachableError, "cannot reach"),
        (err(1049, "Unknown database 'x'"), ConfigError, "Unknown database"),
        (err(1105, "odd"), CaptureError, "odd"),
    ],
)
def test_error_mapping(exc: BaseException, kind: type, words: str) -> None:
    mapped = map_error(exc, "h:1", "u", "read the binlog")
    assert type(mapped) is kind
    assert words in str(mapped)
    assert "\n" not in str(mapped)
