"""Log output: human lines or JSON objects, with the context fields, and never a secret.

kingest logs a sentence per event with its context in ``extra`` fields
(``log.info("The agent is running.", extra={"sources": [...]})``). Both styles keep those
fields: the human style appends them as ``key=value``, the JSON style writes one object per
line (``ts``, ``level``, ``logger``, ``message``, the fields, ``exception``). Before either is
written, values under secret-looking keys and credentials inside URLs or bearer headers are
replaced by ``***``, whatever the code that logged them passed.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from typing import Any, Literal

import orjson

LogStyle = Literal["human", "json"]
LOG_STYLES: tuple[LogStyle, ...] = ("human", "json")
REDACTED = "***"

# The attributes every LogRecord has; anything else was passed in ``extra``.
_STANDARD_ATTRIBUTES = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)
_SECRET_KEY = re.compile(
    r"pass(word|wd)?|secret|token|authorization|api[_-]?key|credential|private[_-]?key",
    re.IGNORECASE,
)
# user:password@ in a URL or DSN, and the value of a bearer/basic authorization.
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://[^:/@\s]*):[^@\s]*@", re.IGNORECASE)
_AUTH_VALUE = re.compile(r"\b(?P<kind>bearer|basic)\s+[A-Za-z0-9._~+/=-]+", re.IGNORECASE)
_KEY_VALUE = re.compile(
    r"(?P<key>\b(?:password|passwd|pwd|secret|token|api[_-]?key)\s*[=:]\s*)(?P<q>['\"]?)[^\s'\",;&]+",
    re.IGNORECASE,
)


def redact_text(text: str) -> str:
    """``text`` with passwords in URLs/DSNs, ``password=...`` pairs and bearer tokens masked."""
    text = _URL_PASSWORD.sub(lambda m: f"{m['scheme']}:{REDACTED}@", text)
    text = _AUTH_VALUE.sub(lambda m: f"{m['kind']} {REDACTED}", text)
    return _KEY_VALUE.sub(lambda m: f"{m['key']}{m['q']}{REDACTED}", text)


def redact(value: Any, key: str = "") -> Any:
    """A log field's value with every secret in it masked (recursively)."""
    if key and _SECRET_KEY.search(key) and value is not None:
        return REDACTED
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [redact(v) for v in value]
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    return redact_text(str(value))


def fields_of(record: logging.LogRecord) -> dict[str, Any]:
    """The ``extra`` fields of a record, redacted."""
    return {
        key: redact(value, key)
        for key, value in vars(record).items()
        if key not in _STANDARD_ATTRIBUTES and not key.startswith("_")
    }


class HumanFormatter(logging.Formatter):
    """``2026-01-02 03:04:05,678 INFO kingest.agent: Message. key=value key=value``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        """The line, with the fields appended and secrets masked."""
        line = redact_text(super().format(record))
        fields = fields_of(record)
        if fields:
            extra = " ".join(f"{key}={_human(value)}" for key, value in fields.items())
            head, newline, rest = line.partition("\n")  # a traceback stays below the fields
            line = f"{head} {extra}{newline}{rest}"
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as a JSON object, secrets masked."""
        document: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": redact_text(record.getMessage()),
        }
        for key, value in fields_of(record).items():
            document.setdefault(key, value)
        if record.exc_info:
            document["exception"] = redact_text(self.formatException(record.exc_info))
        return orjson.dumps(document, default=str).decode()


def configure(level: str, style: LogStyle = "human") -> None:
    """Send kingest's logs (and its libraries') to standard error in ``style``."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if style == "json" else HumanFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level))


def _human(value: Any) -> str:
    if isinstance(value, str):
        return value if value and " " not in value and "=" not in value else repr(value)
    return orjson.dumps(value, default=str).decode()
