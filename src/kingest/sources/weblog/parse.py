"""Parsing one access-log line: the field conversions every format shares, and the parsers' base.

This module's one job is turning one matched field of a log line into its JSON value (times,
escapes, request lines, numbers), and saying why when it cannot. It also holds
:class:`LineParser`, the interface of every parser, and the JSON lines parser. The text formats
themselves (which fields, in which order) are compiled in :mod:`kingest.sources.weblog.formats`.

Times are parsed by hand rather than with ``strptime``, which is slow and reads ``%b`` through
the locale. Every time keeps the offset the server logged it in: ``26/May/2024:19:30:45 +0900``
becomes ``2024-05-26T19:30:45+09:00``, never a UTC conversion and never "now".
"""

from __future__ import annotations

import abc
import enum
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Final

import orjson

__all__ = [
    "BARE_TEXT",
    "BARE_TEXT_FAST",
    "CLF_TIME_PATTERN",
    "ISO_TIME_PATTERN",
    "KIND_PATTERNS",
    "MONTHS",
    "QUOTED_TEXT",
    "QUOTED_TEXT_FAST",
    "JsonLineParser",
    "Kind",
    "LineParser",
    "ParseError",
    "clf_shaped_time_to_iso",
    "clf_time_to_iso",
    "compile_strftime",
    "epoch_to_iso",
    "has_surrogates",
    "iso_time_to_iso",
    "remember_time",
    "request_fields",
    "snippet",
    "split_request",
    "sum_times",
    "text_field",
    "unescape",
]


class ParseError(ValueError):
    """One log line that does not fit its format; ``str(error)`` is the human reason.

    For example ``bad timestamp '30/Feb/2024:10:00:00 +0000': day is out of range for month``.
    """


class LineParser(abc.ABC):
    """Parses one access-log line of one format; made by :func:`compile_format`.

    Attributes:
        name: the format's name (``combined``, ``nginx``, ``apache``, ``json``, ...).
        log_format: the format string it was compiled from, when there is one.
    """

    def __init__(self, name: str, log_format: str | None = None) -> None:
        self.name = name
        self.log_format = log_format

    @abc.abstractmethod
    def __call__(self, line: bytes | str) -> dict[str, Any]:
        """Parse one line.

        Args:
            line: the line as read, raw bytes or str, with or without its line ending.

        Returns:
            The line's fields (see the module docstring).

        Raises:
            ParseError: the line does not fit the format; ``str(error)`` says why.
        """

    def __repr__(self) -> str:
        extra = f", {self.log_format!r}" if self.log_format is not None else ""
        return f"{type(self).__name__}({self.name!r}{extra})"


def has_surrogates(text: str) -> bool:
    """True when ``text`` holds lone surrogates (bytes kept by ``surrogateescape``)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return True
    return False


# Distinct times a parser keeps converted, per time field.
TIME_CACHE_SIZE: Final = 4096


def remember_time(cache: dict[str, str], raw: str, iso: str) -> str:
    """Store one converted time in a bounded cache and return it."""
    # Bounded: a log's times move forward, so old entries are dead weight.
    if len(cache) >= TIME_CACHE_SIZE:
        cache.clear()
    cache[raw] = iso
    return iso


def snippet(text: str) -> str:
    """``text`` quoted and cut short for an error message."""
    if not text:
        return "end of line"
    return repr(text[:40] + "..." if len(text) > 40 else text)


class JsonLineParser(LineParser):
    """JSON lines: each line one JSON object, passed through unchanged."""

    def __init__(self) -> None:
        super().__init__("json")

    def __call__(self, line: bytes | str) -> dict[str, Any]:
        """See :meth:`LineParser.__call__`."""
        line = line.rstrip(b"\r\n") if isinstance(line, bytes) else line.rstrip("\r\n")
        if not line:
            raise ParseError("empty line")
        try:
            document = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise ParseError(f"not valid JSON: {exc}") from None
        if not isinstance(document, dict):
            kind = {list: "an array", str: "a string", bool: "a boolean"}.get(
                type(document), "null" if document is None else "a number"
            )
            raise ParseError(f"not a JSON object but {kind}")
        return document


# English names, never the locale's (strptime's %b follows the locale).
_FULL_MONTHS: Final = {
    name: number
    for number, name in enumerate(
        (
            *("January", "February", "March", "April", "May", "June"),
            *("July", "August", "September", "October", "November", "December"),
        ),
        start=1,
    )
}
MONTHS: Final = {name[:3]: number for name, number in _FULL_MONTHS.items()}

# ---------------------------------------------------------------------------------------------
# Fields: how each kind looks in a line


class Kind(enum.IntEnum):
    """How a field's text becomes its value."""

    TEXT = 0  # text; "-" is null; escapes decoded
    HOST = 1  # client address or host name (ASCII by its pattern); "-" is null
    REQUEST = 2  # request line: also gives method, path and protocol
    TIME = 3  # a time, by the field's converter, to ISO 8601
    STATUS = 4  # three digits
    SIZE = 5  # bytes; "-" is 0
    INT = 6  # "-" is null
    FLOAT = 7  # "-" is null
    UPSTREAM_TIME = 8  # Nginx's "0.002, 0.004" lists; summed
    RAW = 9  # text kept as logged, "-" included (Apache's %X writes "-" for "closed")
    IGNORED = 10  # matched, not kept (identd's user name)


# Text fields. The exact patterns honour backslash escapes (\" inside a quoted field); the fast
# ones are the same language on a line without any backslash (most lines), and far cheaper for
# the regex engine, whose loop over (?:\\.[^"\\]*)* costs more than the rest of the line.
QUOTED_TEXT: Final = r'[^"\\]*(?:\\.[^"\\]*)*'
QUOTED_TEXT_FAST: Final = r'[^"]*'
BARE_TEXT: Final = r'[^"\\ ]*(?:\\.[^"\\ ]*)*'
BARE_TEXT_FAST: Final = r'[^" ]*'
# Numbers stop at 18 digits: orjson writes integers of at most 64 bits.
KIND_PATTERNS: Final = {
    Kind.HOST: r"[0-9A-Za-z._:%-]+",
    Kind.STATUS: r"[0-9]{3}",
    Kind.SIZE: r"[0-9]{1,18}",
    Kind.INT: r"[0-9]{1,18}",
    Kind.FLOAT: r"[0-9]{1,18}(?:\.[0-9]{1,18})?",
    Kind.UPSTREAM_TIME: r"(?:-|[0-9.]{1,40})(?:(?:, | : )(?:-|[0-9.]{1,40}))*",
}
CLF_TIME_PATTERN: Final = r"[0-9]{2}/[A-Za-z]{3}/[0-9]{4}:[0-9]{2}:[0-9]{2}:[0-9]{2} [+-][0-9]{4}"
ISO_TIME_PATTERN: Final = (
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:Z|[+-][0-9]{2}:[0-9]{2})"
)

# ---------------------------------------------------------------------------------------------
# Escapes and text

# Apache's ap_escape_logitem writes \" \\ \b \n \r \t \v and \xhh for other control bytes;
# Nginx's escape=default writes \xHH for ", \, control bytes and bytes >= 0x7f. Any other
# backslash sequence is left as it was logged.
_ESCAPE: Final = re.compile(rb"\\(x[0-9A-Fa-f]{2}|.)", re.DOTALL)
_SIMPLE_ESCAPES: Final = {
    b'"': b'"',
    b"\\": b"\\",
    b"b": b"\b",
    b"n": b"\n",
    b"r": b"\r",
    b"t": b"\t",
    b"v": b"\v",
}


# Surrogates other than U+DC80..U+DCFF, which surrogateescape uses for the bytes 0x80..0xFF.
_FOREIGN_SURROGATE: Final = re.compile("[\ud800-\udc7f\udd00-\udfff]")


def _replace_escape(match: re.Match[bytes]) -> bytes:
    body = match.group(1)
    if len(body) == 3:
        return bytes((int(body[1:], 16),))
    return _SIMPLE_ESCAPES.get(body, match.group(0))


def unescape(value: str) -> str:
    """Decode a logged field's backslash escapes and read the bytes as UTF-8.

    Args:
        value: the field as logged, from a line decoded as UTF-8 (with ``surrogateescape``
            when the line held invalid UTF-8).

    Returns:
        The field with ``\\"``, ``\\\\``, ``\\xHH`` and Apache's ``\\n``-style escapes decoded;
        byte sequences that are not UTF-8 become U+FFFD, as with ``errors="replace"``.
    """
    try:
        raw = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        # A lone surrogate that surrogateescape did not make (from a caller's str) stands for
        # no byte at all: it becomes U+FFFD, like a bad byte.
        raw = _FOREIGN_SURROGATE.sub("\ufffd", value).encode("utf-8", "surrogateescape")
    if b"\\" in raw:
        raw = _ESCAPE.sub(_replace_escape, raw)
    return raw.decode("utf-8", "replace")


def text_field(value: str | None, undecodable: bool) -> str | None:
    """A text field's value: None stays None, escapes are decoded when there are any.

    Args:
        value: the field as logged, or None when it was ``-``.
        undecodable: the line held bytes that are not UTF-8 (decoded with surrogateescape).
    """
    if value is not None and (undecodable or "\\" in value):
        return unescape(value)
    return value


# ---------------------------------------------------------------------------------------------
# Request lines

_REQUEST_LINE: Final = re.compile(r"([A-Z]+) ([^ ]+) (HTTP/[0-9]\.[0-9])", re.DOTALL)
_NO_SPLIT: Final = (None, None, None)


def split_request(request: str) -> tuple[str | None, str | None, str | None]:
    """Split a decoded request line into method, target and protocol.

    Args:
        request: the request line as logged, escapes decoded.

    Returns:
        ``(method, path, protocol)`` when the line is ``METHOD SP TARGET SP HTTP/d.d`` with the
        method in capitals A-Z; otherwise ``(None, None, None)``. A 408's ``-``, ``GET /`` from
        an HTTP/0.9 client and the bytes of a TLS handshake sent to a plain port are all real
        requests, logged as they came, so they are kept whole rather than rejected.
    """
    match = _REQUEST_LINE.fullmatch(request)
    if match is None:
        return _NO_SPLIT
    method, path, protocol = match.groups()
    return method, path, protocol


def request_fields(
    value: str | None, undecodable: bool
) -> tuple[str | None, str | None, str | None, str | None]:
    """A request field's ``request``, ``method``, ``path`` and ``protocol``.

    Args:
        value: the field as logged, or None when it was ``-``.
        undecodable: the line held bytes that are not UTF-8.
    """
    if value is None:
        return None, None, None, None
    request = text_field(value, undecodable)
    assert request is not None
    return (request, *split_request(request))


# ---------------------------------------------------------------------------------------------
# Numbers


def sum_times(value: str) -> float | None:
    """Read Nginx's ``$upstream_*_time``: one time, or several when a request was retried.

    Args:
        value: for example ``0.004``, ``-``, ``0.002, 0.004`` or ``0.001 : 0.003``.

    Returns:
        The total time in seconds spent on every upstream tried, or None when none answered.

    Raises:
        ParseError: a part is neither a number nor ``-``.
    """
    total = 0.0
    seen = False
    for part in value.replace(":", ",").split(","):
        part = part.strip()
        if part == "-":
            continue
        try:
            total += float(part)
        except ValueError:
            raise ParseError(f"bad upstream time {value!r}") from None
        seen = True
    # Nginx logs milliseconds; rounding keeps 0.05 + 0.07 from becoming 0.12000000000000001.
    return round(total, 6) if seen else None


# ---------------------------------------------------------------------------------------------
# Times

_CLF_TIME: Final = re.compile(
    r"([0-9]{2})/([A-Za-z]{3})/([0-9]{4}):([0-9]{2}):([0-9]{2}):([0-9]{2})"
    r" ([+-])([0-9]{2})([0-9]{2})"
)
_ISO_TIME: Final = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})"
    r"(?:(Z)|([+-])([0-9]{2}):([0-9]{2}))"
)
_DAYS_IN_MONTH: Final = (0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _iso(
    raw: str,
    year: str,
    month: int,
    day: str,
    hour: str,
    minute: str,
    second: str,
    sign: str,
    off_h: str,
    off_m: str,
) -> str:
    """Check a time's parts (ASCII digits of fixed width) and write it as ISO 8601.

    The checks and messages are datetime's, without building a datetime: this runs for every
    distinct time of a log, and a datetime plus isoformat() cost twice as much.
    """
    problem = None
    number = int(year)
    days = _DAYS_IN_MONTH[month] if 1 <= month <= 12 else 0
    if month == 2 and number % 4 == 0 and (number % 100 != 0 or number % 400 == 0):
        days = 29
    if number < 1:
        problem = f"year {number} is out of range"
    elif days == 0:
        problem = "month must be in 1..12"
    elif not 1 <= int(day) <= days:
        problem = "day is out of range for month"
    elif hour > "23":
        problem = "hour must be in 0..23"
    elif minute > "59":
        problem = "minute must be in 0..59"
    elif second > "59":
        problem = "second must be in 0..59"
    elif off_h > "23":
        problem = "UTC offset must be less than 24 hours"
    elif off_m > "59":
        problem = "UTC offset minutes must be in 0..59"
    if problem is not None:
        raise ParseError(f"bad timestamp {raw!r}: {problem}")
    if sign == "-" and off_h == "00" and off_m == "00":
        sign = "+"  # as datetime writes a zero offset
    return f"{year}-{month:02d}-{day}T{hour}:{minute}:{second}{sign}{off_h}:{off_m}"


def clf_time_to_iso(raw: str) -> str:
    """Convert Apache's ``%t`` / Nginx's ``$time_local`` to ISO 8601 in the same offset.

    Args:
        raw: the time without brackets, e.g. ``26/May/2024:10:30:45 +0000``.

    Returns:
        For example ``2024-05-26T10:30:45+00:00``.

    Raises:
        ParseError: the text is not of that form, or not a real time (30 February, hour 24,
            minute 60, an offset of +0175, ...).
    """
    match = _CLF_TIME.fullmatch(raw)
    if match is None:
        raise ParseError(f"bad timestamp {raw!r}: expected dd/Mon/yyyy:HH:MM:SS +hhmm")
    day, month_name, year, hour, minute, second, sign, off_h, off_m = match.groups()
    month = MONTHS.get(month_name)
    if month is None:
        raise ParseError(f"bad timestamp {raw!r}: unknown month {month_name!r}")
    iso = _iso(raw, year, month, day, hour, minute, second, sign, off_h, off_m)
    if len(_CLF_DATES) >= TIME_CACHE_SIZE:
        _CLF_DATES.clear()
    _CLF_DATES[raw[:11]] = iso[:10]
    _CLF_ZONES[raw[20:]] = iso[19:]
    return iso


# Checked parts of recent times: "26/May/2024" -> "2024-05-26", " +0530" -> "+05:30".
_CLF_DATES: Final[dict[str, str]] = {}
_CLF_ZONES: Final[dict[str, str]] = {}


def clf_shaped_time_to_iso(raw: str) -> str:
    """:func:`clf_time_to_iso` for a time already matched by ``CLF_TIME_PATTERN``.

    A line's time is new every second, but its date and offset hardly ever are: those come
    from small caches, and only the clock is checked, which makes a new second cost a quarter.

    Raises:
        ParseError: not a real time.
    """
    date = _CLF_DATES.get(raw[:11])
    zone = _CLF_ZONES.get(raw[20:])
    if date is None or zone is None or raw[12:14] > "23" or raw[15:17] > "59" or raw[18:20] > "59":
        return clf_time_to_iso(raw)
    return f"{date}T{raw[12:20]}{zone}"


def iso_time_to_iso(raw: str) -> str:
    """Check and normalize Nginx's ``$time_iso8601`` (``2024-05-26T10:30:45+00:00``).

    Args:
        raw: the time as logged; ``Z`` is accepted for UTC.

    Returns:
        The same time, with ``Z`` written as ``+00:00``.

    Raises:
        ParseError: not of that form, or not a real time.
    """
    match = _ISO_TIME.fullmatch(raw)
    if match is None:
        raise ParseError(f"bad timestamp {raw!r}: expected yyyy-mm-ddTHH:MM:SS+hh:mm")
    year, month, day, hour, minute, second, utc, sign, off_h, off_m = match.groups()
    if utc:
        sign, off_h, off_m = "+", "00", "00"
    return _iso(raw, year, int(month), day, hour, minute, second, sign, off_h, off_m)


def epoch_to_iso(per_second: int) -> Callable[[str], str]:
    """A converter for Apache's ``%{sec}t`` (1), ``%{msec}t`` (1000) and ``%{usec}t`` (10⁶).

    Returns:
        A function from the logged count to the time in UTC, ISO 8601.
    """

    def convert(raw: str) -> str:
        seconds, fraction = divmod(int(raw), per_second)
        try:
            moment = datetime.fromtimestamp(seconds, UTC)
        except (ValueError, OverflowError, OSError) as exc:
            raise ParseError(f"bad timestamp {raw!r}: {exc}") from None
        return moment.replace(microsecond=fraction * (1_000_000 // per_second)).isoformat()

    return convert


# strftime conversion -> (regex, component or None); %T, %F, %R and %D expand first.
_STRFTIME_EXPANSIONS: Final = {"T": "%H:%M:%S", "F": "%Y-%m-%d", "R": "%H:%M", "D": "%m/%d/%y"}
_STRFTIME: Final[dict[str, tuple[str, str | None]]] = {
    "Y": ("[0-9]{4}", "year"),
    "y": ("[0-9]{2}", "year2"),
    "m": ("[0-9]{2}", "month"),
    "d": ("[0-9]{2}", "day"),
    "e": ("[ 0-9][0-9]", "day"),
    "b": ("[A-Z][a-z]{2}", "month_name"),
    "h": ("[A-Z][a-z]{2}", "month_name"),
    "B": ("[A-Z][a-z]+", "month_name"),
    "H": ("[0-9]{2}", "hour"),
    "M": ("[0-9]{2}", "minute"),
    "S": ("[0-9]{2}", "second"),
    "z": ("[+-][0-9]{4}", "offset"),
    "a": ("[A-Z][a-z]{2}", None),
    "A": ("[A-Z][a-z]+", None),
}


def compile_strftime(fmt: str) -> tuple[str, Callable[[str], str]]:
    """Compile a ``strftime`` format, as in Apache's ``%{%Y-%m-%d %H:%M:%S %z}t``.

    Args:
        fmt: the format; ``%Y %y %m %d %e %b %h %B %H %M %S %z %a %A %T %F %R %D %%``.

    Returns:
        A regex (without capturing groups) of the text it writes, and a converter from that
        text to ISO 8601: in the logged offset, or without one when the format has no ``%z``
        (a local time whose offset the log does not say).

    Raises:
        ValueError: another conversion, or no full date (year, month and day).
    """
    expanded = fmt
    for short, long in _STRFTIME_EXPANSIONS.items():
        expanded = expanded.replace(f"%{short}", long)
    pieces: list[str] = []  # for the line's regex
    groups: list[str] = []  # the same, with a group around each conversion
    names: list[str | None] = []
    for index, part in enumerate(re.split(r"(%.?)", expanded, flags=re.DOTALL)):
        if index % 2 == 0 or part == "%%":
            pieces.append(re.escape(part[-1:] if index % 2 else part))
            groups.append(pieces[-1])
        elif part[1:] in _STRFTIME:
            conversion, name = _STRFTIME[part[1:]]
            pieces.append(conversion)
            groups.append(f"({conversion})")
            names.append(name)
        else:
            raise ValueError(f"strftime conversion {part} is not supported")
    given = {"year" if n == "year2" else "month" if n == "month_name" else n for n in names}
    if not {"year", "month", "day"} <= given:
        raise ValueError(f"time format {fmt!r} gives no full date")
    regex = re.compile("".join(groups))

    def convert(raw: str) -> str:
        match = regex.fullmatch(raw)
        if match is None:
            raise ParseError(f"bad timestamp {raw!r}: expected {fmt!r}")
        parts: dict[str, int] = {}
        zone = None
        for name, value in zip(names, match.groups(), strict=True):
            if name == "month_name":
                month = _FULL_MONTHS.get(value) or MONTHS.get(value)
                if month is None:
                    raise ParseError(f"bad timestamp {raw!r}: unknown month {value!r}")
                parts["month"] = month
            elif name == "year2":
                # POSIX strptime's pivot: 69-99 are 1969-1999, 00-68 are 2000-2068.
                parts["year"] = int(value) + (1900 if int(value) >= 69 else 2000)
            elif name == "offset":
                hours, minutes = int(value[1:3]), int(value[3:5])
                if hours > 23 or minutes > 59:
                    raise ParseError(f"bad timestamp {raw!r}: UTC offset out of range")
                offset = timedelta(hours=hours, minutes=minutes)
                zone = timezone(-offset if value[0] == "-" else offset)
            elif name is not None:
                parts[name] = int(value)
        try:
            moment = datetime(
                parts["year"],
                parts["month"],
                parts["day"],
                parts.get("hour", 0),
                parts.get("minute", 0),
                parts.get("second", 0),
                tzinfo=zone,
            )
        except ValueError as exc:
            raise ParseError(f"bad timestamp {raw!r}: {exc}") from None
        return moment.isoformat()

    return "".join(pieces), convert
