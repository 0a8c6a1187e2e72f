"""Simulated Apache combined-format access log lines, and a small parser for them.

This module's one job is the seed's web log source: :class:`WebLogSimulator` writes realistic
lines (IPv4 and IPv6 clients, a web shop's pages, API calls and static files, statuses, sizes,
referers, user agents) from a seeded random generator, and :func:`parse_combined` turns such a
line into the seed's fields. The full parser suite (other formats, escapes) lives elsewhere; this
one parses exactly the combined format the simulator writes.

Unlike the seed, timestamps keep the log's own UTC offset (a server in Seoul logs ``+0900``) and
month names never go through the locale (``%b`` is locale-dependent in ``strptime``).
"""

from __future__ import annotations

import ipaddress
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Final

__all__ = ["WebLogSimulator", "format_log_time", "parse_combined", "parse_log_time"]

MONTHS: Final = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTH_NUMBER: Final = {name: number for number, name in enumerate(MONTHS, start=1)}

# The seed's example line is from 26 May 2024 10:30:45 UTC; a fixed default start keeps a
# seeded simulator's output identical from run to run.
DEFAULT_START: Final = datetime(2024, 5, 26, 10, 30, 45, tzinfo=UTC)

# Offsets the simulated servers log in, with their weights. Most log UTC; the others include
# offsets with minutes (+0530, -0330) so that a parser dropping the minutes is caught.
_SERVER_OFFSETS: Final = (
    (timedelta(0), 60),
    (timedelta(hours=9), 12),
    (timedelta(hours=-5), 10),
    (timedelta(hours=2), 8),
    (timedelta(hours=5, minutes=30), 6),
    (timedelta(hours=-3, minutes=-30), 4),
)

_USER_AGENTS: Final = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4.1 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.6367.82 Mobile Safari/537.36",
    "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.80",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "curl/8.5.0",
    "python-requests/2.31.0",
    "okhttp/4.12.0",
)
_USER_AGENT_WEIGHTS: Final = (30, 15, 18, 14, 6, 6, 4, 3, 2, 2)

_SEARCH_TERMS: Final = ("shoes", "red+dress", "laptop", "coffee+beans", "usb-c+cable", "tent")
_SITE: Final = "https://shop.example.com"
_EXTERNAL_REFERERS: Final = (
    "https://www.google.com/",
    "https://www.bing.com/",
    "https://duckduckgo.com/",
    "https://t.co/",
    "https://www.facebook.com/",
)
_USERS: Final = ("alice", "bob", "carol", "dave")


@dataclass(frozen=True, slots=True)
class _Client:
    ip: str
    user_agent: str
    user: str


# A request kind: method, path maker, response kind, weight.
_Request = tuple[str, Callable[[random.Random], str], str, int]

_REQUESTS: Final[tuple[_Request, ...]] = (
    ("GET", lambda r: "/", "page", 12),
    ("GET", lambda r: "/index.html", "page", 3),
    ("GET", lambda r: f"/products/{r.randint(1, 5000)}", "page", 14),
    ("GET", lambda r: f"/search?q={r.choice(_SEARCH_TERMS)}&page={r.randint(1, 5)}", "page", 5),
    ("GET", lambda r: f"/api/users/{r.randint(1001, 9999)}", "api", 10),
    ("GET", lambda r: f"/api/orders?page={r.randint(1, 20)}&limit=20", "api", 8),
    ("GET", lambda r: "/api/cart", "api", 6),
    ("POST", lambda r: "/api/orders", "api_create", 4),
    ("POST", lambda r: "/api/cart/items", "api_create", 4),
    ("PUT", lambda r: f"/api/users/{r.randint(1001, 9999)}", "api", 2),
    ("DELETE", lambda r: f"/api/cart/items/{r.randint(1, 999)}", "api_delete", 2),
    ("GET", lambda r: f"/static/js/app.{r.getrandbits(32):08x}.js", "static", 7),
    ("GET", lambda r: f"/static/css/main.{r.getrandbits(32):08x}.css", "static", 5),
    ("GET", lambda r: f"/images/products/{r.randint(1, 5000)}.jpg", "image", 10),
    ("GET", lambda r: "/favicon.ico", "static", 2),
    ("GET", lambda r: "/robots.txt", "static", 1),
    ("HEAD", lambda r: "/health", "head", 3),
    ("GET", lambda r: "/wp-login.php", "probe", 1),
)
_REQUEST_WEIGHTS: Final = tuple(request[3] for request in _REQUESTS)

_PROTOCOLS: Final = ("HTTP/1.1", "HTTP/2.0", "HTTP/1.0")
_PROTOCOL_WEIGHTS: Final = (60, 36, 4)


def format_log_time(moment: datetime, offset: timedelta) -> str:
    """Format a moment as Apache's ``%t`` does, in the given UTC offset, without the brackets.

    Args:
        moment: an aware datetime.
        offset: the server's UTC offset (whole minutes).

    Returns:
        For example ``26/May/2024:19:30:45 +0900``.
    """
    local = moment.astimezone(timezone(offset))
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    hours, mins = divmod(abs(minutes), 60)
    return (
        f"{local.day:02d}/{MONTHS[local.month - 1]}/{local.year:04d}:"
        f"{local.hour:02d}:{local.minute:02d}:{local.second:02d} {sign}{hours:02d}{mins:02d}"
    )


_LOG_TIME: Final = re.compile(
    r"(\d{2})/([A-Z][a-z]{2})/(\d{4}):(\d{2}):(\d{2}):(\d{2}) ([+-])(\d{2})(\d{2})"
)


def parse_log_time(text: str) -> datetime:
    """Parse Apache's ``%t`` (without brackets) into an aware datetime in the log's own offset.

    Raises:
        ValueError: not of the form ``26/May/2024:10:30:45 +0000``, or not a real time.
    """
    match = _LOG_TIME.fullmatch(text)
    month = _MONTH_NUMBER.get(match.group(2)) if match else None
    if match is None or month is None:
        raise ValueError(f"not an access log time: {text!r}")
    day, _, year, hour, minute, second, sign, off_h, off_m = match.groups()
    if int(off_m) > 59:
        raise ValueError(f"UTC offset out of range in {text!r}")
    offset = timedelta(hours=int(off_h), minutes=int(off_m))
    return datetime(
        int(year),
        month,
        int(day),
        int(hour),
        int(minute),
        int(second),
        tzinfo=timezone(-offset if sign == "-" else offset),
    )


# The seed's pattern, anchored at both ends and with named groups; ident and user are skipped.
_COMBINED: Final = re.compile(
    r"(?P<ip>\S+) \S+ \S+ \[(?P<time>[^\]]+)\] "
    r'"(?P<method>\S+) (?P<path>\S+) (?P<protocol>[^"\s]+)" '
    r'(?P<status>\d{3}) (?P<size>\d+|-) "(?P<referer>[^"]*)" "(?P<user_agent>[^"]*)"'
)


def parse_combined(line: str) -> dict[str, Any]:
    """Parse one Apache combined-format line into the seed's web log fields.

    Args:
        line: one log line, with or without its line ending.

    Returns:
        ``timestamp`` (ISO 8601 in the log's own offset, e.g. ``2024-05-26T19:30:45+09:00``),
        ``ip_address``, ``method``, ``path``, ``protocol``, ``status_code`` (int),
        ``response_size`` (int, 0 for ``-``), ``referer`` (None for ``-``), ``user_agent`` and
        ``log_type`` (``web_access``).

    Raises:
        ValueError: the line is not in combined format or its time is invalid. (The seed put
            the current time in place of a bad one, silently; a wrong time is worse than none.)
    """
    match = _COMBINED.fullmatch(line.rstrip("\r\n"))
    if match is None:
        raise ValueError("not an Apache combined-format line")
    size = match["size"]
    referer = match["referer"]
    return {
        "timestamp": parse_log_time(match["time"]).isoformat(),
        "ip_address": match["ip"],
        "method": match["method"],
        "path": match["path"],
        "protocol": match["protocol"],
        "status_code": int(match["status"]),
        "response_size": 0 if size == "-" else int(size),
        "referer": None if referer == "-" else referer,
        "user_agent": match["user_agent"],
        "log_type": "web_access",
    }


class WebLogSimulator:
    """Writes Apache combined-format lines of a simulated web shop.

    The output is a function of ``seed`` (and ``start``) alone unless ``clock`` is given:
    ``lines(10)`` twice gives the same lines as ``lines(20)`` once.

    Args:
        seed: seed of the random generator; None seeds from the system.
        clients: how many distinct clients (IP address and user agent) send requests; about
            one in seven has an IPv6 address.
        start: time of the first line (default: 26 May 2024 10:30:45 UTC, the seed's example).
        clock: when given, each line's time is ``clock()`` instead of the simulated time.
        requests_per_s: mean request rate of the simulated time.
    """

    def __init__(
        self,
        seed: int | None = None,
        *,
        clients: int = 500,
        start: datetime | None = None,
        clock: Callable[[], datetime] | None = None,
        requests_per_s: float = 20.0,
    ) -> None:
        if clients < 1:
            raise ValueError(f"clients must be at least 1, not {clients}")
        if not requests_per_s > 0:
            raise ValueError(f"requests_per_s must be positive, not {requests_per_s}")
        self._rng = random.Random(seed)
        self._now = start or DEFAULT_START
        self._clock = clock
        self._mean_gap_s = 1.0 / requests_per_s
        self._clients = [self._new_client() for _ in range(clients)]
        self._offsets = [offset for offset, _ in _SERVER_OFFSETS]
        self._offset_weights = [weight for _, weight in _SERVER_OFFSETS]

    def _new_client(self) -> _Client:
        rng = self._rng
        if rng.random() < 0.15:
            # Global unicast space (2000::/3); str() writes the compressed form Apache logs.
            ip = str(ipaddress.IPv6Address((0x2 << 125) | rng.getrandbits(125)))
        else:
            while True:
                address = ipaddress.IPv4Address(rng.getrandbits(32))
                if address.is_global:
                    break
            ip = str(address)
        user_agent = rng.choices(_USER_AGENTS, _USER_AGENT_WEIGHTS)[0]
        user = rng.choice(_USERS) if rng.random() < 0.05 else "-"
        return _Client(ip, user_agent, user)

    def lines(self, n: int) -> list[str]:
        """The next ``n`` log lines, without line endings."""
        return [self._line() for _ in range(n)]

    def _line(self) -> str:
        rng = self._rng
        self._now += timedelta(seconds=rng.expovariate(1.0 / self._mean_gap_s))
        moment = self._clock() if self._clock is not None else self._now
        offset = rng.choices(self._offsets, self._offset_weights)[0]
        client = rng.choice(self._clients)
        method, make_path, kind, _ = rng.choices(_REQUESTS, _REQUEST_WEIGHTS)[0]
        path = make_path(rng)
        protocol = rng.choices(_PROTOCOLS, _PROTOCOL_WEIGHTS)[0]
        status, size = self._response(kind, method)
        referer = self._referer()
        return (
            f"{client.ip} - {client.user} [{format_log_time(moment, offset)}] "
            f'"{method} {path} {protocol}" {status} {size} "{referer}" "{client.user_agent}"'
        )

    def _response(self, kind: str, method: str) -> tuple[int, str]:
        rng = self._rng
        roll = rng.random()
        if kind == "probe":
            return 404, str(rng.randint(150, 400))
        if kind == "head":
            return 200, "-"
        if roll < 0.02:
            return 500, str(rng.randint(200, 600))
        if roll < 0.03:
            return 503, str(rng.randint(200, 400))
        if roll < 0.07:
            return rng.choice((400, 401, 403, 404)), str(rng.randint(100, 500))
        if kind == "api_create":
            return 201, str(rng.randint(80, 900))
        if kind == "api_delete":
            return 204, "-"
        if kind in ("static", "image") and roll < 0.35:
            return 304, "-"
        if kind == "page" and roll < 0.09:
            return rng.choice((301, 302)), str(rng.randint(180, 260))
        sizes = {
            "page": (4_000, 90_000),
            "api": (60, 12_000),
            "static": (300, 400_000),
            "image": (5_000, 900_000),
        }
        low, high = sizes.get(kind, (100, 5_000))
        return 200, str(rng.randint(low, high))

    def _referer(self) -> str:
        rng = self._rng
        roll = rng.random()
        if roll < 0.4:
            return "-"
        if roll < 0.8:
            return f"{_SITE}{rng.choice(('/', f'/products/{rng.randint(1, 5000)}', '/cart'))}"
        return rng.choice(_EXTERNAL_REFERERS)
