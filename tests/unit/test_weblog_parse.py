"""Tests of the web access-log parsers: every format, every field rule, every rejection."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

import kingest.sources.weblog as weblog
from kingest.errors import ConfigError, KingestError
from kingest.sources.weblog.formats import (
    FORMAT_NAMES,
    STANDARD_KEYS,
    LineParser,
    ParseError,
    compile_format,
    detect_syntax,
)
from kingest.sources.weblog.parse import (
    MONTHS,
    TIME_CACHE_SIZE,
    clf_shaped_time_to_iso,
    clf_time_to_iso,
    unescape,
)

DATA = Path(__file__).parent.parent / "data" / "weblog"

SEED_LINE = (
    '192.168.1.1 - - [26/May/2024:10:30:45 +0000] "GET /api/users HTTP/1.1" 200 1234 '
    '"https://example.com" "Mozilla/5.0"'
)
SEED_RESULT = {
    "timestamp": "2024-05-26T10:30:45+00:00",
    "ip_address": "192.168.1.1",
    "remote_user": None,
    "method": "GET",
    "path": "/api/users",
    "protocol": "HTTP/1.1",
    "status_code": 200,
    "response_size": 1234,
    "referer": "https://example.com",
    "user_agent": "Mozilla/5.0",
    "request": "GET /api/users HTTP/1.1",
    "log_type": "web_access",
}
NGINX_TIMED = (
    '$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent '
    '"$http_referer" "$http_user_agent" "$http_x_forwarded_for" rt=$request_time '
    'uct="$upstream_connect_time" uht="$upstream_header_time" urt="$upstream_response_time"'
)


def combined(
    *,
    ip: str = "192.0.2.1",
    user: str = "-",
    time: str = "26/May/2024:10:30:45 +0000",
    request: str = "GET / HTTP/1.1",
    status: str = "200",
    size: str = "512",
    referer: str = "-",
    agent: str = "curl/8.5.0",
) -> str:
    return f'{ip} - {user} [{time}] "{request}" {status} {size} "{referer}" "{agent}"'


@pytest.fixture(scope="module")
def parse() -> LineParser:
    return compile_format("combined")


def rejection(parser: LineParser, line: bytes | str) -> str:
    with pytest.raises(ParseError) as info:
        parser(line)
    return str(info.value)


# --- the library API ---------------------------------------------------------------------------


def test_the_api_is_exported_from_the_package() -> None:
    assert weblog.compile_format is compile_format
    assert weblog.ParseError is ParseError
    assert weblog.LineParser is LineParser
    assert weblog.FORMAT_NAMES == FORMAT_NAMES
    assert {"common", "combined", "vhost_combined", "nginx", "json", "apache"} <= set(FORMAT_NAMES)
    assert issubclass(ParseError, ValueError)


@pytest.mark.parametrize("name", ["common", "combined", "vhost_combined", "nginx", "json"])
def test_every_builtin_format_compiles_to_a_named_callable_parser(name: str) -> None:
    parser = compile_format(name)
    assert isinstance(parser, LineParser)
    assert parser.name == name
    assert callable(parser)
    assert name in repr(parser)


@pytest.mark.parametrize(
    ("name", "log_format", "problem"),
    [
        ("zzz", None, "unknown log format 'zzz'"),
        ("apache", None, "needs a log format string"),
        ("auto", None, "needs a log format string"),
        ("combined", "%h %t", "needs the format 'apache' or 'nginx'"),
        ("json", "$remote_addr", "needs the format 'apache' or 'nginx'"),
        ("apache", "%h %Z", "unsupported directive %Z"),
        ("apache", "%h %{foo}X", "unsupported directive %{foo}X"),
        ("apache", "%h %{nope}p", "unsupported directive %{nope}p"),
        ("apache", "%h %^ti", "unsupported directive %^ti"),
        ("apache", "%h %", "bad directive '%' at position 4"),
        ("apache", "%h %{}i", "needs a name in braces"),
        ("apache", "%{%d/%b/%Y %Q}t %h", "strftime conversion %Q is not supported"),
        ("apache", "%{%H:%M:%S}t %h", "gives no full date"),
        ("apache", "%{msec_frac}t %h", "gives no full date"),
        ("apache", "plain text, no directives", "has no fields"),
        ("nginx", "$remote_addr $ $status", "bad variable at position 14"),
        ("nginx", "$remote_addr $status $", "bad variable at position 22"),
        ("nginx", "no variables at all", "has no fields"),
        ("auto", "hello", "no $variables nor % directives"),
        ("auto", "$remote_addr %h", "both $variables and % directives"),
    ],
)
def test_unusable_formats_raise_config_error(
    name: str, log_format: str | None, problem: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(problem)) as info:
        compile_format(name, log_format)
    assert isinstance(info.value, KingestError)


def test_detect_syntax() -> None:
    assert detect_syntax('$remote_addr [$time_local] "$request"') == "nginx"
    assert detect_syntax("${remote_addr} ${status}") == "nginx"
    assert detect_syntax('%h %l %u %t "%r" %>s %b') == "apache"
    assert detect_syntax("%{Referer}i 100%% done") == "apache"
    parser = compile_format("auto", '$remote_addr "$request" $status')
    assert parser.name == "nginx"
    assert compile_format("auto", '%h "%r" %>s').name == "apache"


# --- the built-in formats ----------------------------------------------------------------------


def test_the_seed_example_line(parse: LineParser) -> None:
    assert parse(SEED_LINE) == SEED_RESULT
    assert parse(SEED_LINE.encode()) == SEED_RESULT
    assert list(parse(SEED_LINE)) == [*STANDARD_KEYS, "log_type"]


@pytest.mark.parametrize("ending", [b"\r", b"\n", b"\r\n"])
def test_line_endings_are_stripped(parse: LineParser, ending: bytes) -> None:
    assert parse(SEED_LINE.encode() + ending) == SEED_RESULT
    assert parse(SEED_LINE + ending.decode()) == SEED_RESULT


def test_common_has_null_referer_and_user_agent() -> None:
    parser = compile_format("common")
    line = '127.0.0.1 - frank [10/Oct/2000:13:55:36 -0700] "GET /apache_pb.gif HTTP/1.0" 200 2326'
    assert parser(line) == {
        "timestamp": "2000-10-10T13:55:36-07:00",
        "ip_address": "127.0.0.1",
        "remote_user": "frank",
        "method": "GET",
        "path": "/apache_pb.gif",
        "protocol": "HTTP/1.0",
        "status_code": 200,
        "response_size": 2326,
        "referer": None,
        "user_agent": None,
        "request": "GET /apache_pb.gif HTTP/1.0",
        "log_type": "web_access",
    }
    assert "unexpected text after the last field" in rejection(parser, line + ' "-" "curl"')


def test_vhost_combined_gives_vhost_and_server_port() -> None:
    parser = compile_format("vhost_combined")
    result = parser("shop.example.com:8443 " + SEED_LINE)
    assert result == {**SEED_RESULT, "vhost": "shop.example.com", "server_port": 8443}
    assert list(result)[-3:] == ["vhost", "server_port", "log_type"]
    assert "expected a port (%p)" in rejection(parser, "shop.example.com:https " + SEED_LINE)


def test_nginx_default_format() -> None:
    parser = compile_format("nginx")
    line = (
        '93.180.71.3 - - [17/May/2015:08:05:32 +0000] "GET /downloads/product_1 HTTP/1.1" 304 0 '
        '"-" "Debian APT-HTTP/1.3 (0.8.16~exp12ubuntu10.21)"'
    )
    assert parser(line) == {
        "timestamp": "2015-05-17T08:05:32+00:00",
        "ip_address": "93.180.71.3",
        "remote_user": None,
        "method": "GET",
        "path": "/downloads/product_1",
        "protocol": "HTTP/1.1",
        "status_code": 304,
        "response_size": 0,
        "referer": None,
        "user_agent": "Debian APT-HTTP/1.3 (0.8.16~exp12ubuntu10.21)",
        "request": "GET /downloads/product_1 HTTP/1.1",
        "log_type": "web_access",
    }
    # Nginx escapes a quote as \x22 and a backslash as \x5C.
    escaped = parser(line.replace("product_1", r"\x22a\x5Cb\x22").replace("(0.8", r"\x22(0.8"))
    assert escaped["path"] == '/downloads/"a\\b"'
    assert escaped["user_agent"] == 'Debian APT-HTTP/1.3 "(0.8.16~exp12ubuntu10.21)'


# --- field rules -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"user": "alice"}, {"remote_user": "alice"}),
        ({"referer": "-"}, {"referer": None}),
        ({"agent": "-"}, {"user_agent": None}),
        ({"referer": ""}, {"referer": ""}),
        ({"agent": "--"}, {"user_agent": "--"}),
        ({"size": "-"}, {"response_size": 0}),
        ({"size": "0"}, {"response_size": 0}),
        ({"size": "123456789012345678"}, {"response_size": 123456789012345678}),
        ({"status": "404"}, {"status_code": 404}),
        ({"status": "000"}, {"status_code": 0}),
        ({"time": "26/May/2024:19:30:45 +0900"}, {"timestamp": "2024-05-26T19:30:45+09:00"}),
        ({"time": "26/May/2024:16:00:45 +0530"}, {"timestamp": "2024-05-26T16:00:45+05:30"}),
        ({"time": "26/May/2024:07:00:45 -0330"}, {"timestamp": "2024-05-26T07:00:45-03:30"}),
        ({"time": "26/May/2024:10:30:45 -0000"}, {"timestamp": "2024-05-26T10:30:45+00:00"}),
        ({"time": "29/Feb/2024:23:59:59 +1400"}, {"timestamp": "2024-02-29T23:59:59+14:00"}),
        ({"time": "29/Feb/2000:00:00:00 -1200"}, {"timestamp": "2000-02-29T00:00:00-12:00"}),
        ({"time": "01/Jan/0001:00:00:00 +0000"}, {"timestamp": "0001-01-01T00:00:00+00:00"}),
        ({"ip": "-"}, {"ip_address": None}),
    ],
)
def test_field_values(parse: LineParser, changes: dict[str, str], expected: dict[str, Any]) -> None:
    result = parse(combined(**changes))
    assert {key: result[key] for key in expected} == expected


@pytest.mark.parametrize(
    "ip",
    [
        "2001:db8::1",
        "::1",
        "::ffff:10.0.0.1",
        "2001:0db8:85a3:0000:0000:8a2e:0370:7334",
        "fe80::1ff:fe23:4567:890a%eth0",
        "10.0.0.1",
        "crawl-66-249-66-1.googlebot.com",
        "localhost",
    ],
)
def test_ipv6_addresses_and_host_names(parse: LineParser, ip: str) -> None:
    assert parse(combined(ip=ip))["ip_address"] == ip


@pytest.mark.parametrize(
    ("request_line", "expected"),
    [
        ("GET /a?b=c HTTP/1.1", ("GET /a?b=c HTTP/1.1", "GET", "/a?b=c", "HTTP/1.1")),
        ("OPTIONS * HTTP/1.0", ("OPTIONS * HTTP/1.0", "OPTIONS", "*", "HTTP/1.0")),
        ("PRI * HTTP/2.0", ("PRI * HTTP/2.0", "PRI", "*", "HTTP/2.0")),
        (
            "CONNECT a.example:443 HTTP/1.1",
            ("CONNECT a.example:443 HTTP/1.1", "CONNECT", "a.example:443", "HTTP/1.1"),
        ),
        # A 408: the client sent nothing.
        ("-", (None, None, None, None)),
        ("", ("", None, None, None)),
        # HTTP/0.9 style, lower-case and odd methods, extra words: kept whole, not split.
        ("GET /", ("GET /", None, None, None)),
        ("get / HTTP/1.1", ("get / HTTP/1.1", None, None, None)),
        ("SSTP_DUPLEX_POST /x HTTP/1.1", ("SSTP_DUPLEX_POST /x HTTP/1.1", None, None, None)),
        ("GET /a b HTTP/1.1", ("GET /a b HTTP/1.1", None, None, None)),
        ("GET / HTTP/1.1 x", ("GET / HTTP/1.1 x", None, None, None)),
        ("GET / HTTP/11", ("GET / HTTP/11", None, None, None)),
        ("GET  / HTTP/1.1", ("GET  / HTTP/1.1", None, None, None)),
        # A TLS handshake sent to a plain-HTTP port.
        (
            r"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",
            ("\x16\x03\x01\x00\ufffd\x01\x00\x00\ufffd\x03\x03", None, None, None),
        ),
        # Escapes are decoded before the line is split.
        (r"GET /a\"b HTTP/1.1", ('GET /a"b HTTP/1.1', "GET", '/a"b', "HTTP/1.1")),
        (r"\x47ET / HTTP/1.1", ("GET / HTTP/1.1", "GET", "/", "HTTP/1.1")),
        (r"GET /a\x20b HTTP/1.1", ("GET /a b HTTP/1.1", None, None, None)),
    ],
)
def test_request_lines(
    parse: LineParser, request_line: str, expected: tuple[str | None, ...]
) -> None:
    result = parse(combined(request=request_line, status="400"))
    assert (result["request"], result["method"], result["path"], result["protocol"]) == expected
    assert result["status_code"] == 400


@pytest.mark.parametrize(
    ("logged", "decoded"),
    [
        (r"a\"b", 'a"b'),
        (r"a\\b", "a\\b"),
        (r"a\\", "a\\"),
        (r"\\\"", '\\"'),
        (r"caf\xc3\xa9", "café"),
        (r"caf\xC3\xA9", "café"),
        (r"\xe4\xb8\xad\xe6\x96\x87", "中文"),
        # Invalid UTF-8 becomes U+FFFD, as with errors="replace".
        (r"bad\xff\xfe", "bad\ufffd\ufffd"),
        (r"cut\xe4\xb8", "cut\ufffd"),
        (r"\xc3(", "\ufffd("),
        # Apache's other escapes.
        (r"a\tb\nc\rd\be\vf", "a\tb\nc\rd\be\vf"),
        (r"\x00\x1b\x7f", "\x00\x1b\x7f"),
        # Anything else is kept as logged.
        (r"\q \x \x4 \u00e9", r"\q \x \x4 \u00e9"),
        ("plain", "plain"),
    ],
)
def test_escapes_in_quoted_fields(parse: LineParser, logged: str, decoded: str) -> None:
    result = parse(combined(agent=logged, referer=logged, request=f"GET /{logged} HTTP/1.1"))
    assert result["user_agent"] == decoded
    assert result["referer"] == decoded
    assert result["request"] == f"GET /{decoded} HTTP/1.1"
    assert unescape(logged) == decoded


def test_raw_bytes_are_read_as_utf8_with_replacement(parse: LineParser) -> None:
    line = combined(agent="Agent/\u00e9\u4e2d", request="GET /\u00fc HTTP/1.1").encode()
    result = parse(line)
    assert result["user_agent"] == "Agent/é中"
    assert result["path"] == "/ü"
    broken = line.replace("é".encode(), b"\xff").replace("ü".encode(), b"\xc3")
    result = parse(broken)
    assert result["user_agent"] == "Agent/\ufffd中"
    assert result["path"] == "/\ufffd"
    # A raw lead byte and an escaped continuation byte make one character.
    result = parse(combined(agent="X").encode().replace(b'"X"', b'"\xc3\\xa9"'))
    assert result["user_agent"] == "é"
    orjson.dumps(result)


def test_str_with_lone_surrogates_is_replaced_not_crashed(parse: LineParser) -> None:
    result = parse(combined(agent="a\udcffb\ud800c"))
    assert result["user_agent"] == "a\ufffdb\ufffdc"
    orjson.dumps(result)


def test_quoted_field_may_hold_escaped_quotes_and_brackets(parse: LineParser) -> None:
    result = parse(
        combined(
            referer=r"https://x.example/?q=\"a b\" [1]",
            agent=r"Mozilla/5.0 \"quoted\" \\ end\\",
            request=r"GET /\"x\" HTTP/1.1",
        )
    )
    assert result["referer"] == 'https://x.example/?q="a b" [1]'
    assert result["user_agent"] == 'Mozilla/5.0 "quoted" \\ end\\'
    assert result["path"] == '/"x"'


# --- rejections --------------------------------------------------------------------------------


def test_the_reason_for_a_bad_date_names_the_time_and_the_problem(parse: LineParser) -> None:
    reason = rejection(parse, combined(time="30/Feb/2024:10:00:00 +0000"))
    assert reason == "bad timestamp '30/Feb/2024:10:00:00 +0000': day is out of range for month"


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"time": "29/Feb/2023:10:00:00 +0000"}, "day is out of range for month"),
        ({"time": "29/Feb/1900:10:00:00 +0000"}, "day is out of range for month"),
        ({"time": "31/Apr/2024:10:00:00 +0000"}, "day is out of range for month"),
        ({"time": "00/May/2024:10:00:00 +0000"}, "day is out of range for month"),
        ({"time": "26/May/2024:24:00:00 +0000"}, "hour must be in 0..23"),
        ({"time": "26/May/2024:10:60:00 +0000"}, "minute must be in 0..59"),
        ({"time": "26/May/2024:10:00:60 +0000"}, "second must be in 0..59"),
        ({"time": "26/May/2024:10:00:00 +0060"}, "UTC offset minutes must be in 0..59"),
        ({"time": "26/May/2024:10:00:00 +2400"}, "UTC offset must be less than 24 hours"),
        ({"time": "26/Foo/2024:10:00:00 +0000"}, "unknown month 'Foo'"),
        ({"time": "26/MAY/2024:10:00:00 +0000"}, "unknown month 'MAY'"),
        ({"time": "26/May/0000:10:00:00 +0000"}, "year 0 is out of range"),
        ({"time": "26/May/2024:10:00 +0000"}, "expected a time like 26/May/2024:10:30:45 +0000"),
        ({"time": "26/May/2024:10:00:00"}, "expected a time like"),
        ({"time": "2024-05-26T10:00:00+00:00"}, "expected a time like"),
        ({"status": "20"}, "expected a three-digit status (%>s) at column"),
        ({"status": "2000"}, "found '2000'"),
        ({"status": "abc"}, "expected a three-digit status"),
        ({"status": "-"}, "expected a three-digit status"),
        ({"size": "12a"}, "expected a size in bytes or '-' (%b)"),
        ({"size": "1.5"}, "found '1.5'"),
        ({"size": "-1"}, "expected a size in bytes or '-'"),
        ({"size": "1234567890123456789"}, "expected a size in bytes"),
        ({"ip": "bad\u00e9host"}, "expected a client address or host name (%h) at column 1"),
        ({"request": 'GET / HTTP/1.1" 200 1 "x'}, "expected"),
        ({"referer": 'a"b'}, "expected"),
    ],
)
def test_lines_that_do_not_fit_are_rejected_with_a_reason(
    parse: LineParser, changes: dict[str, str], reason: str
) -> None:
    assert reason in rejection(parse, combined(**changes))


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("", "empty line"),
        (b"", "empty line"),
        ("\r", "empty line"),
        ("   ", "expected a client address or host name (%h) at column 1"),
        ("garbage", "expected ' ' at column 8, found end of line"),
        ("<html>", "expected a client address or host name (%h) at column 1, found '<html>'"),
        ("\x00\x01\x02", "expected a client address or host name"),
        (SEED_LINE[:60], "found end of line"),
        (SEED_LINE[:-1], "expected '\"' at column"),
        (SEED_LINE + " extra", f"after the last field at column {len(SEED_LINE) + 1}: ' extra'"),
        (SEED_LINE + ' "x"', "unexpected text after the last field"),
        (SEED_LINE + " ", "unexpected text after the last field"),
        (SEED_LINE.replace('"GET', "GET"), "expected ' \"' at column 45, found ' GET /api"),
        (SEED_LINE.replace("[", ""), "expected '['"),
        (SEED_LINE.replace("] ", " "), "expected ']' at column 44, found ' \"GET"),
        (SEED_LINE.replace(" - - ", " - "), "expected"),
        (b"\xff\xfe\xfd", "expected a client address or host name"),
        ('{"not": "a log line"}', "expected a client address"),
    ],
)
def test_malformed_lines_are_rejected(parse: LineParser, line: str | bytes, reason: str) -> None:
    assert reason in rejection(parse, line)


def test_a_bad_time_is_never_replaced(parse: LineParser) -> None:
    # The seed put "now" in place of a time it could not parse.
    for time in ("31/Jun/2024:10:00:00 +0000", "26/May/2024:25:00:00 +0000"):
        with pytest.raises(ParseError, match="bad timestamp"):
            parse(combined(time=time))


def test_time_cache_stays_bounded_and_correct() -> None:
    parser = compile_format("combined")
    start = datetime(2024, 1, 1, tzinfo=timezone(timedelta(hours=2)))
    for second in range(0, TIME_CACHE_SIZE * 2 + 100, 1):
        moment = start + timedelta(seconds=second * 7)
        logged = moment.strftime("%d/%b/%Y:%H:%M:%S %z")
        assert parser(combined(time=logged))["timestamp"] == moment.isoformat()
    caches = parser._caches  # type: ignore[attr-defined]
    assert caches and all(len(cache) <= TIME_CACHE_SIZE for cache in caches.values())


@settings(max_examples=500, deadline=None)
@given(
    day=st.integers(0, 32),
    month=st.sampled_from([*MONTHS, "Foo"]),
    year=st.sampled_from([0, 1, 1900, 2000, 2023, 2024, 2100, 9999]) | st.integers(0, 9999),
    clock=st.tuples(st.integers(0, 25), st.integers(0, 61), st.integers(0, 61)),
    sign=st.sampled_from("+-"),
    offset=st.tuples(st.integers(0, 25), st.integers(0, 61)),
)
def test_time_conversion_agrees_with_datetime(
    day: int,
    month: str,
    year: int,
    clock: tuple[int, int, int],
    sign: str,
    offset: tuple[int, int],
) -> None:
    hour, minute, second = clock
    raw = (
        f"{day:02d}/{month}/{year:04d}:{hour:02d}:{minute:02d}:{second:02d} "
        f"{sign}{offset[0]:02d}{offset[1]:02d}"
    )
    try:
        expected: str | None = datetime.strptime(raw, "%d/%b/%Y:%H:%M:%S %z").isoformat()
    except ValueError:
        expected = None
    # Twice through the shaped conversion: once to fill its caches, once to use them.
    for convert in (clf_time_to_iso, clf_shaped_time_to_iso, clf_shaped_time_to_iso):
        try:
            result: str | None = convert(raw)
        except ParseError as exc:
            assert str(exc).startswith(f"bad timestamp {raw!r}: ")
            result = None
        assert result == expected


# --- custom Apache formats ---------------------------------------------------------------------


def test_apache_custom_format_with_times_and_headers() -> None:
    parser = compile_format(
        "apache",
        '%h %l %u %t "%r" %>s %b "%{Referer}i" "%{User-Agent}i" %D %T "%{X-Forwarded-For}i" '
        "%{Host}i %X %k",
    )
    line = SEED_LINE + ' 1234 0 "198.51.100.1, 10.0.0.2" shop.example.com + 3'
    result = parser(line)
    assert result == {
        **{key: value for key, value in SEED_RESULT.items() if key != "log_type"},
        "request_time_us": 1234,
        "request_time_s": 0,
        "http_x_forwarded_for": "198.51.100.1, 10.0.0.2",
        "http_host": "shop.example.com",
        "connection_status": "+",
        "keepalive_requests": 3,
        "log_type": "web_access",
    }
    closed = parser(line.replace(" + 3", " - 0").replace('"198.51.100.1, 10.0.0.2"', '"-"'))
    assert closed["connection_status"] == "-"
    assert closed["http_x_forwarded_for"] is None


@pytest.mark.parametrize(
    ("log_format", "line", "expected"),
    [
        # A format pasted from a config file, with its \" escapes.
        (r"%h %l %u %t \"%r\" %>s %b", SEED_LINE.rsplit(' "', 2)[0], {"response_size": 1234}),
        (
            '%a %{c}a %A "%r" %s',
            '::1 10.0.0.9 10.0.0.1 "GET / HTTP/1.1" 200',
            {"ip_address": "::1", "peer_address": "10.0.0.9", "local_address": "10.0.0.1"},
        ),
        (
            '%h "%m %U%q %H" %>s %B',
            '::1 "GET /a?x=1 HTTP/1.1" 200 0',
            {
                "method": "GET",
                "url_path": "/a",
                "query_string": "?x=1",
                "protocol": "HTTP/1.1",
                "response_size": 0,
            },
        ),
        (
            "%h %I %O %S",
            "h 10 20 30",
            {"bytes_received": 10, "bytes_sent": 20, "bytes_transferred": 30},
        ),
        (
            "%h %{remote}p %{local}p %P %{tid}P",
            "h 51000 443 1234 5678",
            {"remote_port": 51000, "server_port": 443, "pid": 1234, "tid": 5678},
        ),
        (
            "%h %{ms}T %{us}T %{s}T",
            "h 12 12345 0",
            {"request_time_ms": 12, "request_time_us": 12345, "request_time_s": 0},
        ),
        (
            '%h "%{Cookie}i" %{SESSION}C %{UNIQUE_ID}e %{note}n "%{Content-Type}o"',
            'h "a=b; c=d" xyz - n1 "text/html"',
            {
                "http_cookie": "a=b; c=d",
                "cookie_session": "xyz",
                "env_unique_id": None,
                "note_note": "n1",
                "sent_http_content_type": "text/html",
            },
        ),
        (
            '%v %V %f %R %L "%r" 100%% %s',
            'v.example s.example /var/www/x handler-x LOGID "GET / HTTP/1.1" 100% 200',
            {
                "vhost": "v.example",
                "server_name": "s.example",
                "filename": "/var/www/x",
                "handler": "handler-x",
                "log_id": "LOGID",
            },
        ),
        # Conditions: the value is "-" when the status does not match.
        (
            "%h %!200,304{Referer}i %400,501{User-Agent}i %s",
            "h - - 200",
            {"referer": None, "user_agent": None},
        ),
        ("%h %<s %>s", "h 302 200", {"status_code": 200}),
    ],
)
def test_apache_directives(log_format: str, line: str, expected: dict[str, Any]) -> None:
    result = compile_format("apache", log_format)(line)
    assert {key: result[key] for key in expected} == expected


@pytest.mark.parametrize(
    ("log_format", "line", "timestamp"),
    [
        (
            "%h %{%d/%b/%Y:%H:%M:%S %z}t",
            "h 26/May/2024:10:30:45 +0200",
            "2024-05-26T10:30:45+02:00",
        ),
        (
            "%h [%{%Y-%m-%d %H:%M:%S %z}t]",
            "h [2024-05-26 10:30:45 -0700]",
            "2024-05-26T10:30:45-07:00",
        ),
        ("%h %{%FT%T%z}t", "h 2024-05-26T10:30:45+0000", "2024-05-26T10:30:45+00:00"),
        ("%h %{begin:%d %B %Y %T}t", "h 26 May 2024 10:30:45", "2024-05-26T10:30:45"),
        ("%h %{end:%a %b %e %T %y}t", "h Sun May  5 10:30:45 24", "2024-05-05T10:30:45"),
        ("%h %{%D %R}t", "h 05/26/99 10:30", "1999-05-26T10:30:00"),
        ("%h %{sec}t", "h 1716719445", "2024-05-26T10:30:45+00:00"),
        ("%h %{msec}t", "h 1716719445123", "2024-05-26T10:30:45.123000+00:00"),
        ("%h %{usec}t", "h 1716719445123456", "2024-05-26T10:30:45.123456+00:00"),
    ],
)
def test_apache_time_formats(log_format: str, line: str, timestamp: str) -> None:
    assert compile_format("apache", log_format)(line)["timestamp"] == timestamp


@pytest.mark.parametrize(
    ("log_format", "line", "reason"),
    [
        ("%h %{%d/%b/%Y %H:%M:%S}t", "h 30/Feb/2024 10:00:00", "day is out of range for month"),
        ("%h %{%d/%b/%Y %H:%M:%S}t", "h 26/Foo/2024 10:00:00", "unknown month 'Foo'"),
        ("%h %{%d/%b/%Y %H:%M:%S}t", "h 26/May/2024 24:00:00", "hour must be in 0..23"),
        ("%h %{%d/%b/%Y %H:%M:%S %z}t", "h 26/May/2024 10:00:00 +0099", "UTC offset"),
        ("%h %{%d/%b/%Y %H:%M:%S}t", "h 26/May/2024", "expected a time like"),
        ("%h %{sec}t", "h 99999999999999999", "bad timestamp"),
    ],
)
def test_apache_bad_times(log_format: str, line: str, reason: str) -> None:
    assert reason in rejection(compile_format("apache", log_format), line)


# --- custom Nginx formats ----------------------------------------------------------------------


def test_nginx_timing_variables() -> None:
    parser = compile_format("nginx", NGINX_TIMED)
    head = '203.0.113.9 - - [26/May/2024:10:30:45 +0000] "GET /api HTTP/1.1" 200 1532 "-" "ok"'
    result = parser(f'{head} "198.51.100.1, 10.0.0.5" rt=0.012 uct="0.001" uht="-" urt="0.011"')
    assert result["request_time"] == 0.012
    assert result["upstream_connect_time"] == 0.001
    assert result["upstream_header_time"] is None
    assert result["upstream_response_time"] == 0.011
    assert result["http_x_forwarded_for"] == "198.51.100.1, 10.0.0.5"
    assert list(result)[11:] == [
        "http_x_forwarded_for",
        "request_time",
        "upstream_connect_time",
        "upstream_header_time",
        "upstream_response_time",
        "log_type",
    ]
    # Several upstreams tried: their times add up.
    retried = parser(f'{head} "-" rt=3.002 uct="0.001, 0.002" uht="-, -" urt="3.000 : 0.001"')
    assert retried["upstream_connect_time"] == 0.003
    assert retried["upstream_header_time"] is None
    assert retried["upstream_response_time"] == 3.001
    assert retried["http_x_forwarded_for"] is None
    assert "bad upstream time '1.2.3'" in rejection(
        parser, f'{head} "-" rt=1 uct="-" uht="-" urt="1.2.3"'
    )
    assert "expected a time in seconds ($request_time)" in rejection(
        parser, f'{head} "-" rt=fast uct="-" uht="-" urt="-"'
    )


def test_nginx_variables_keep_their_names_and_types() -> None:
    parser = compile_format(
        "nginx",
        "$time_iso8601 ${remote_addr}:$remote_port $host $server_port $bytes_sent "
        '$request_length $connection $connection_requests $pid $msec $pipe "$request" $status '
        '"$http_cookie" $ssl_protocol/$ssl_cipher',
    )
    line = (
        "2024-05-26T10:30:45+09:00 2001:db8::1:51000 www.example.org 443 1024 512 42 3 1234 "
        '1716719445.123 p "GET / HTTP/2.0" 200 "a=1; b=2" TLSv1.3/TLS_AES_128_GCM_SHA256'
    )
    result = parser(line)
    assert result == {
        "timestamp": "2024-05-26T10:30:45+09:00",
        "ip_address": "2001:db8::1",
        "remote_user": None,
        "method": "GET",
        "path": "/",
        "protocol": "HTTP/2.0",
        "status_code": 200,
        "response_size": None,
        "referer": None,
        "user_agent": None,
        "request": "GET / HTTP/2.0",
        "remote_port": 51000,
        "host": "www.example.org",
        "server_port": 443,
        "bytes_sent": 1024,
        "request_length": 512,
        "connection": 42,
        "connection_requests": 3,
        "pid": 1234,
        "msec": 1716719445.123,
        "pipe": "p",
        "http_cookie": "a=1; b=2",
        "ssl_protocol": "TLSv1.3",
        "ssl_cipher": "TLS_AES_128_GCM_SHA256",
        "log_type": "web_access",
    }
    utc = parser(line.replace("+09:00", "Z", 1))
    assert utc["timestamp"] == "2024-05-26T10:30:45+00:00"
    assert "bad timestamp '2024-02-30T10:30:45+09:00': day is out of range for month" in (
        rejection(parser, line.replace("05-26", "02-30", 1))
    )


def test_nginx_json_style_format_and_escape_json() -> None:
    parser = compile_format(
        "nginx",
        '{"time":"$time_local","addr":"$remote_addr","req":"$request","status":$status,'
        '"rt":$request_time}',
    )
    result = parser(
        '{"time":"26/May/2024:10:30:45 +0000","addr":"::1","req":"GET / HTTP/1.1",'
        '"status":200,"rt":0.005}'
    )
    assert (result["timestamp"], result["ip_address"], result["path"]) == (
        "2024-05-26T10:30:45+00:00",
        "::1",
        "/",
    )
    assert (result["status_code"], result["request_time"]) == (200, 0.005)


# --- JSON lines --------------------------------------------------------------------------------


def test_json_lines_pass_objects_through() -> None:
    parser = compile_format("json")
    document = {"a": 1, "b": [1, 2], "c": {"d": None}, "e": "é"}
    assert parser(orjson.dumps(document)) == document
    assert parser(orjson.dumps(document).decode() + "\r\n") == document


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"", "empty line"),
        (b"\r", "empty line"),
        (b"[1, 2]", "not a JSON object but an array"),
        (b"42", "not a JSON object but a number"),
        (b"4.2", "not a JSON object but a number"),
        (b'"text"', "not a JSON object but a string"),
        (b"true", "not a JSON object but a boolean"),
        (b"null", "not a JSON object but null"),
        (b'{"a": 1', "not valid JSON"),
        (b'{"a": 1} {"b": 2}', "not valid JSON"),
        (b'{"a": "\xff"}', "not valid JSON"),
        (b"NaN", "not valid JSON"),
        (SEED_LINE.encode(), "not valid JSON"),
    ],
)
def test_json_lines_rejections(line: bytes, reason: str) -> None:
    assert reason in rejection(compile_format("json"), line)


# --- sample logs -------------------------------------------------------------------------------

SAMPLES = [
    ("apache_combined.log", "combined", None),
    ("apache_common.log", "common", None),
    ("apache_vhost_combined.log", "vhost_combined", None),
    ("nginx_access.log", "nginx", None),
    ("nginx_timed.log", "nginx", NGINX_TIMED),
    ("events.jsonl", "json", None),
]


def sample(name: str, format_name: str, log_format: str | None) -> list[dict[str, Any]]:
    parser = compile_format(format_name, log_format)
    return [parser(line) for line in (DATA / name).read_bytes().splitlines()]


@pytest.mark.parametrize(("name", "format_name", "log_format"), SAMPLES)
def test_every_sample_line_is_accepted(name: str, format_name: str, log_format: str | None) -> None:
    results = sample(name, format_name, log_format)
    assert len(results) >= 3
    for result in results:
        orjson.dumps(result)
        if format_name != "json":
            assert result["log_type"] == "web_access"
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", result["timestamp"])
            assert 100 <= result["status_code"] <= 599


def test_apache_combined_sample() -> None:
    results = sample("apache_combined.log", "combined", None)
    assert len(results) == 33
    assert results[0]["timestamp"] == "2004-03-07T16:05:49-08:00"
    assert results[0]["status_code"] == 401
    by_ip = {r["ip_address"]: r for r in results}
    assert by_ip["2001:db8:85a3::8a2e:370:7334"]["protocol"] == "HTTP/2.0"
    assert by_ip["198.51.100.23"]["request"] is None  # the 408
    assert by_ip["198.51.100.23"]["status_code"] == 408
    tls = by_ip["198.51.100.24"]
    assert tls["request"].startswith("\x16\x03\x01") and tls["method"] is None
    quoted = by_ip["192.0.2.77"]
    assert quoted["path"] == '/search?q="quoted"+term'
    assert quoted["user_agent"] == 'Mozilla/5.0 (X11; Linux x86_64) "Custom" Agent'
    assert by_ip["192.0.2.78"]["path"] == "/files/back\\slash.txt"
    assert by_ip["192.0.2.79"]["path"] == "/café/menü"
    assert by_ip["192.0.2.80"]["path"] == "/bad-utf8/\ufffd\ufffd"
    assert by_ip["crawler-7.search.example.net"]["user_agent"].startswith("Mozilla/5.0")
    assert by_ip["185.220.101.5"]["request"] == "GET /"
    assert by_ip["10.1.2.3"]["remote_user"] == "bob"
    assert by_ip["10.1.2.3"]["timestamp"].endswith("+09:00")
    assert by_ip["fe80::1ff:fe23:4567:890a%eth0"]["timestamp"] == "2024-02-29T23:59:59+00:00"
    bots = [r for r in results if r["user_agent"] and "bot" in r["user_agent"].lower()]
    assert len(bots) == 3


def test_common_and_nginx_samples() -> None:
    common = sample("apache_common.log", "common", None)
    assert common[0]["timestamp"] == "1995-07-01T00:00:01-04:00"
    assert all(r["referer"] is None and r["user_agent"] is None for r in common)
    assert {r["ip_address"] for r in common} >= {"unicomp6.unicomp.net", "2001:db8::42"}
    no_protocol = [r for r in common if r["request"] and r["protocol"] is None]
    assert [r["request"] for r in no_protocol] == ["GET /shuttle/countdown/video/livevideo.gif"]
    nginx = sample("nginx_access.log", "nginx", None)
    by_ip = {r["ip_address"]: r for r in nginx}
    assert by_ip["198.51.100.5"]["path"] == '/search?q="nginx"'
    assert by_ip["198.51.100.7"]["path"] == "/中文"
    assert by_ip["198.51.100.9"]["path"] == "/index.php?s=/Index/\\think\\app/invokefunction"
    assert by_ip["198.51.100.4"]["request"] == ""
    assert by_ip["unix:"]["status_code"] == 200
    timed = sample("nginx_timed.log", "nginx", NGINX_TIMED)
    assert [r["upstream_response_time"] for r in timed] == [0.011, 0.004, None, 3.001, 0.208, None]
    vhosts = sample("apache_vhost_combined.log", "vhost_combined", None)
    assert [(r["vhost"], r["server_port"]) for r in vhosts[:3]] == [
        ("www.example.com", 443),
        ("www.example.com", 80),
        ("shop.example.com", 443),
    ]


# --- properties --------------------------------------------------------------------------------

_TEXT = st.text(
    st.characters(exclude_categories=("Cs",), max_codepoint=0x2FFFF)
    | st.sampled_from('"\\ -[]\t\x00\x7f\u00e9\u4e2d\U0001f600'),
    max_size=30,
)


def apache_escape(value: str) -> str:
    """Escape a field as Apache's ap_escape_logitem does (bytes outside printable ASCII)."""
    out = []
    for byte in value.encode():
        char = chr(byte)
        if char in '"\\':
            out.append("\\" + char)
        elif char in "\b\n\r\t\v":
            out.append({"\b": r"\b", "\n": r"\n", "\r": r"\r", "\t": r"\t", "\v": r"\v"}[char])
        elif byte < 0x20 or byte >= 0x7F:
            out.append(f"\\x{byte:02x}")
        else:
            out.append(char)
    return "".join(out)


def nginx_escape(value: str) -> str:
    """Escape a field as Nginx's escape=default does."""
    return "".join(
        f"\\x{byte:02X}" if byte in b'"\\' or byte < 0x20 or byte >= 0x7F else chr(byte)
        for byte in value.encode()
    )


@st.composite
def log_times(draw: st.DrawFn) -> tuple[str, str]:
    minutes = draw(st.integers(-(23 * 60 + 59), 23 * 60 + 59))
    zone = timezone(timedelta(minutes=minutes))
    moment = draw(st.datetimes(datetime(1, 1, 2), datetime(9999, 12, 30))).replace(
        microsecond=0, tzinfo=zone
    )
    sign = "-" if minutes < 0 else "+"
    logged = (
        f"{moment.day:02d}/{moment.strftime('%b')}/{moment.year:04d}:"
        f"{moment.strftime('%H:%M:%S')} {sign}{abs(minutes) // 60:02d}{abs(minutes) % 60:02d}"
    )
    return logged, moment.isoformat()


_HOSTS = st.from_regex(r"[a-z][a-z0-9-]{0,10}(\.[a-z][a-z0-9-]{0,10}){0,3}", fullmatch=True)
_IPS = st.ip_addresses().map(str) | _HOSTS
_USERS = st.just("-") | st.from_regex(r"[A-Za-z0-9._@]{1,12}", fullmatch=True)
_METHODS = st.sampled_from(["GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH"])
_PATHS = st.text(
    st.characters(exclude_categories=("Cs", "Zs", "Zl", "Zp"), exclude_characters=" ")
    | st.sampled_from('"\\\u00e9\u4e2d'),
    min_size=1,
    max_size=30,
).map(lambda path: "/" + path)
_PROTOCOLS = st.sampled_from(["HTTP/1.0", "HTTP/1.1", "HTTP/2.0", "HTTP/3.0"])
_REQUESTS = st.one_of(
    st.tuples(_METHODS, _PATHS, _PROTOCOLS).map(" ".join),
    st.just("-"),
    _TEXT,
)
_SIZES = st.none() | st.integers(0, 10**18 - 1)


def expected_split(request: str) -> tuple[str | None, str | None, str | None]:
    match = re.fullmatch(r"([A-Z]+) ([^ ]+) (HTTP/[0-9]\.[0-9])", request, re.DOTALL)
    return match.groups() if match else (None, None, None)  # type: ignore[return-value]


def none_if_dash(value: str) -> str | None:
    return None if value == "-" else value


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ip=_IPS,
    user=_USERS,
    time=log_times(),
    request=_REQUESTS,
    status=st.integers(100, 599),
    size=_SIZES,
    referer=st.just("-") | _TEXT,
    agent=st.just("-") | _TEXT,
    escape=st.sampled_from([apache_escape, nginx_escape]),
    raw_bytes=st.booleans(),
)
@example(
    ip="::1",
    user="-",
    time=("26/May/2024:10:30:45 +0000", "2024-05-26T10:30:45+00:00"),
    request='GET /"x"\\ HTTP/1.1',
    status=200,
    size=None,
    referer="\\",
    agent='"',
    escape=apache_escape,
    raw_bytes=False,
)
def test_round_trip_of_generated_combined_lines(
    ip: str,
    user: str,
    time: tuple[str, str],
    request: str,
    status: int,
    size: int | None,
    referer: str,
    agent: str,
    escape: Any,
    raw_bytes: bool,
) -> None:
    logged_time, iso = time

    def quoted(value: str) -> str:
        # A raw-bytes writer leaves non-ASCII alone and escapes only what must be.
        if raw_bytes:
            return value.replace("\\", "\\\\").replace('"', '\\"')
        return str(escape(value))

    line = (
        f'{ip} - {user} [{logged_time}] "{quoted(request)}" {status} '
        f'{"-" if size is None else size} "{quoted(referer)}" "{quoted(agent)}"'
    )
    for parser in (compile_format("combined"), compile_format("nginx")):
        result = parser(line.encode())
        method, path, protocol = expected_split(request)
        assert result == {
            "timestamp": iso,
            "ip_address": ip,
            "remote_user": none_if_dash(user),
            "method": None if request == "-" else method,
            "path": None if request == "-" else path,
            "protocol": None if request == "-" else protocol,
            "status_code": status,
            "response_size": size or 0,
            "referer": none_if_dash(referer),
            "user_agent": none_if_dash(agent),
            "request": none_if_dash(request),
            "log_type": "web_access",
        }
        orjson.dumps(result)


_PARSERS = {
    "common": compile_format("common"),
    "combined": compile_format("combined"),
    "vhost_combined": compile_format("vhost_combined"),
    "nginx": compile_format("nginx"),
    "json": compile_format("json"),
    "nginx_timed": compile_format("nginx", NGINX_TIMED),
    "apache_times": compile_format(
        "apache", '%a %{%Y-%m-%d %H:%M:%S %z}t "%r" %>s %B %D %{msec}t "%{X-Forwarded-For}i" %X'
    ),
}
_VALID = [
    line
    for name, _, _ in SAMPLES
    for line in (DATA / name).read_bytes().splitlines()
    if name != "events.jsonl"
] + [SEED_LINE.encode(), b'{"a": 1}']


def parses_or_rejects(parser: LineParser, line: bytes | str) -> None:
    try:
        result = parser(line)
    except ParseError as exc:
        assert str(exc)
        return
    assert isinstance(result, dict)
    orjson.dumps(result)


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(sorted(_PARSERS)), line=st.binary(max_size=300) | st.text(max_size=300))
def test_garbage_is_parsed_or_rejected_never_crashes(name: str, line: bytes | str) -> None:
    parses_or_rejects(_PARSERS[name], line)


@st.composite
def mutated_lines(draw: st.DrawFn) -> bytes:
    line = bytearray(draw(st.sampled_from(_VALID)))
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, len(line)))
        action = draw(st.sampled_from(["delete", "insert", "replace", "truncate", "duplicate"]))
        if action == "delete":
            del line[position : position + draw(st.integers(1, 5))]
        elif action == "insert":
            line[position:position] = draw(
                st.binary(min_size=1, max_size=4) | st.sampled_from([b'"', b"\\", b" ", b"-"])
            )
        elif action == "replace" and position < len(line):
            line[position] = draw(st.integers(0, 255))
        elif action == "truncate":
            del line[position:]
        else:
            line[position:position] = line[max(0, position - 8) : position]
    return bytes(line)


@settings(max_examples=500, deadline=None)
@given(name=st.sampled_from(sorted(_PARSERS)), line=mutated_lines())
def test_mutated_lines_are_parsed_or_rejected_never_crash(name: str, line: bytes) -> None:
    parses_or_rejects(_PARSERS[name], line)


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(sorted(set(_PARSERS) - {"json"})), line=mutated_lines())
def test_fast_and_exact_paths_agree_on_lines_without_backslashes(name: str, line: bytes) -> None:
    # Lines without a backslash take the fast regex; the exact one must say the same.
    text = line.decode("utf-8", "replace")
    assume("\\" not in text)
    parser: Any = _PARSERS[name]
    try:
        fast = parser._fast(text, False)
    except ParseError as exc:
        fast = str(exc)
    try:
        exact = parser._exact(text, False)
    except ParseError as exc:
        exact = str(exc)
    assert fast == exact
