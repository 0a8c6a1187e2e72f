"""Log output: both styles keep the context fields, and no secret gets through."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from kingest.logs import HumanFormatter, JsonFormatter, redact, redact_text


def record(message: str, exc: bool = False, **fields: object) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise RuntimeError("connect to postgresql://kingest:hunter2@db/app failed")
        except RuntimeError:
            exc_info = sys.exc_info()
    item = logging.LogRecord("kingest.test", logging.WARNING, __file__, 1, message, None, exc_info)
    for key, value in fields.items():
        setattr(item, key, value)
    return item


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql://kingest:hunter2@db:5432/app", "postgresql://kingest:***@db:5432/app"),
        ("mysql://root:p%40ss@127.0.0.1/test", "mysql://root:***@127.0.0.1/test"),
        ("mqtt://:only-password@broker", "mqtt://:***@broker"),
        ("Authorization: Bearer abc.def-ghi", "Authorization: Bearer ***"),
        ("host=db password=hunter2 user=x", "host=db password=*** user=x"),
        ("token: 's3cr3t'", "token: '***'"),
        ("postgresql://kingest@db/app", "postgresql://kingest@db/app"),
        ("nothing secret here", "nothing secret here"),
    ],
)
def test_secrets_in_text_are_masked(text: str, expected: str) -> None:
    assert redact_text(text) == expected


def test_secret_fields_are_masked_at_any_depth() -> None:
    value = {"broker": "b:1883", "password": "x", "auth": {"token": "t", "user": "u"}}
    assert redact(value) == {
        "broker": "b:1883",
        "password": "***",
        "auth": {"token": "***", "user": "u"},
    }
    assert redact("hunter2", "db_password") == "***"
    assert redact(None, "password") is None


def test_json_lines_carry_the_fields_and_no_secret() -> None:
    line = JsonFormatter().format(
        record(
            "Cannot connect to postgresql://u:pw@db/x.",
            exc=True,
            source="cdc",
            records=3,
            dsn="postgresql://u:pw@db/x",
            api_token="abc",
        )
    )
    document = json.loads(line)
    assert document["level"] == "WARNING"
    assert document["logger"] == "kingest.test"
    assert document["message"] == "Cannot connect to postgresql://u:***@db/x."
    assert document["source"] == "cdc" and document["records"] == 3
    assert document["dsn"] == "postgresql://u:***@db/x"
    assert document["api_token"] == "***"
    assert "RuntimeError" in document["exception"]
    assert "hunter2" not in line and ":pw@" not in line
    assert document["ts"].endswith("+00:00")


def test_human_lines_append_the_fields_before_a_traceback() -> None:
    text = HumanFormatter().format(
        record("The agent is running.", exc=True, sources=["web", "iot"], note="two words")
    )
    head, _, rest = text.partition("\n")
    assert head.endswith("""The agent is running. sources=["web","iot"] note='two words'""")
    assert "Traceback" in rest
    assert "hunter2" not in text
