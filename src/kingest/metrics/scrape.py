"""Reading a Prometheus endpoint: fetch ``/metrics`` and parse the text exposition format.

The format is version 0.0.4, the one every Prometheus client serves by default
(https://prometheus.io/docs/instrumenting/exposition_formats/#text-based-format)::

    # HELP kingest_dlq_records_total Records dead-lettered, by reason.
    # TYPE kingest_dlq_records_total counter
    kingest_dlq_records_total{source="web_logs",reason="invalid_input"} 2 1716719400000

Samples become :class:`~kingest.metrics.registry.MetricFamily` objects, the same the agent's
registry collects, so ``kingest top`` reads a remote agent with the code that would read a
local one. Timestamps are checked and dropped (a scrape is one instant). Untyped families read
as gauges; summaries are skipped, since kingest emits none and the registry has no type for
them.
"""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from kingest.addresses import parse_host_port
from kingest.errors import KingestError
from kingest.metrics.registry import Labels, MetricFamily, MetricType, Sample

__all__ = [
    "DEFAULT_METRICS_ADDRESS",
    "ExpositionError",
    "ScrapeError",
    "fetch",
    "metrics_url",
    "parse",
]

# Where an agent serves its metrics unless told otherwise (the agent commands' default).
DEFAULT_METRICS_ADDRESS = "127.0.0.1:9108"
# Ask for the text format by name: a server that also speaks OpenMetrics or protobuf then
# answers in the one this module reads.
ACCEPT = "text/plain;version=0.0.4;q=1.0, */*;q=0.1"
# An agent's page is some kilobytes; anything this large is not one.
MAX_BODY_BYTES = 64 * 1024 * 1024

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
# A quoted label value up to its closing quote: any character but a quote or a backslash, or
# a backslash and the character it escapes.
_LABEL_VALUE = re.compile(r'((?:[^"\\]|\\.)*)"', re.DOTALL)
_ESCAPE = re.compile(r"\\(.)", re.DOTALL)
_LABEL_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}
_HELP_ESCAPES = {"\\": "\\", "n": "\n"}
_BLANKS = re.compile(r"[ \t]+")
_TIMESTAMP = re.compile(r"-?[0-9]+")
_TYPES = {
    "counter": MetricType.COUNTER,
    "gauge": MetricType.GAUGE,
    "histogram": MetricType.HISTOGRAM,
    "untyped": MetricType.GAUGE,
}
_SKIPPED_TYPES = frozenset({"summary"})
_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


class ScrapeError(KingestError):
    """The metrics endpoint cannot be read: refused, timed out, or an HTTP error status."""

    retriable = True


class ExpositionError(ScrapeError):
    """The endpoint answered, but not in the Prometheus text format.

    Args:
        message: what is wrong.
        line_number: the offending line, counting from 1 (0 when not about one line).
        line: its text, shortened in the message.
    """

    retriable = False

    def __init__(self, message: str, line_number: int = 0, line: str = "") -> None:
        self.line_number = line_number
        if line_number:
            shown = line if len(line) <= 80 else line[:77] + "..."
            message = f"line {line_number}: {message}: {shown!r}"
        super().__init__(message)


def metrics_url(address: str) -> str:
    """The URL to scrape for an address given as ``HOST:PORT`` or as a URL.

    A URL without a path gets ``/metrics``.

    Args:
        address: ``HOST:PORT``, ``[v6]:PORT``, or ``http(s)://host:port[/path]``.

    Returns:
        An ``http`` or ``https`` URL.

    Raises:
        ValueError: neither a host and port nor an HTTP URL.
    """
    if "://" in address:
        parts = urlsplit(address)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected HOST:PORT or an http:// URL, not {address!r}")
        try:
            _ = parts.port  # reading it is what validates it
        except ValueError as exc:
            raise ValueError(f"bad port in {address!r}") from exc
        if parts.path in ("", "/"):
            parts = parts._replace(path="/metrics")
        return parts.geturl()
    host, port = parse_host_port(address)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/metrics"


def fetch(url: str, timeout_s: float = 5.0) -> list[MetricFamily]:
    """Scrape one endpoint.

    Args:
        url: the metrics URL (see :func:`metrics_url`).
        timeout_s: the longest wait to connect, and then for each read.

    Returns:
        The families the endpoint serves, in its order.

    Raises:
        ScrapeError: the endpoint cannot be reached or answered an error status.
        ExpositionError: the answer is not the text format.
    """
    request = urllib.request.Request(url, headers={"Accept": ACCEPT})
    try:
        with _OPENER.open(request, timeout=timeout_s) as response:
            body: bytes = response.read(MAX_BODY_BYTES + 1)
    except urllib.error.HTTPError as exc:
        raise ScrapeError(f"{url} answered HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        raise ScrapeError(f"cannot reach {url}: {_reason(exc.reason)}") from exc
    except (OSError, ValueError) as exc:
        # A reset or timeout mid-answer, or an answer that is not HTTP at all.
        raise ScrapeError(f"cannot reach {url}: {_reason(exc)}") from exc
    if len(body) > MAX_BODY_BYTES:
        raise ExpositionError(f"{url} answered more than {MAX_BODY_BYTES} bytes")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ExpositionError(f"{url} answered something that is not UTF-8 text") from exc
    return parse(text)


def parse(text: str) -> list[MetricFamily]:
    """Parse the text exposition format.

    Args:
        text: a whole page, lines separated by ``\\n``.

    Returns:
        One family per metric name, in the order the page first mentions them; histograms
        gather their ``_bucket``, ``_sum`` and ``_count`` samples. A family with HELP or TYPE
        and no samples is returned empty.

    Raises:
        ExpositionError: a line that is not a comment, HELP, TYPE or sample, or breaks the
            format's rules (a second TYPE, a TYPE after the metric's samples, a bucket
            without ``le``, an unknown escape).
    """
    families: dict[str, MetricFamily] = {}
    typed: set[str] = set()
    helped: set[str] = set()
    skipped: set[str] = set()  # summaries
    for number, line in enumerate(text.split("\n"), start=1):
        stripped = line.lstrip(" \t")
        if not stripped:
            continue
        if stripped.startswith("#"):
            _comment(stripped, number, line, families, typed, helped, skipped)
            continue
        name, labels, value = _sample(line, number)
        family = _family_of(name, families, skipped)
        if family is None:
            continue
        if family.name not in families:
            families[family.name] = family
        if family.type is MetricType.HISTOGRAM:
            if name == family.name:
                raise ExpositionError(
                    f"histogram {family.name} has a sample without a suffix", number, line
                )
            if name.endswith("_bucket") and not any(key == "le" for key, _ in labels):
                raise ExpositionError("histogram bucket without an le label", number, line)
        family.samples.append(Sample(name, labels, value))
    return list(families.values())


_OPENER = urllib.request.build_opener(
    # Metrics endpoints are on the agent's own network: a web proxy from the environment
    # would only be in the way (and would turn "connection refused" into a proxy's 502).
    urllib.request.ProxyHandler({})
)


def _reason(reason: object) -> str:
    if isinstance(reason, TimeoutError):
        return "timed out"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason) or type(reason).__name__


def _comment(
    stripped: str,
    number: int,
    line: str,
    families: dict[str, MetricFamily],
    typed: set[str],
    helped: set[str],
    skipped: set[str],
) -> None:
    """Take a HELP or TYPE line into the families; ignore any other comment."""
    words = stripped[1:].lstrip(" \t").split(None, 1) if stripped != "#" else []
    keyword = words[0] if words else ""
    if keyword not in ("HELP", "TYPE"):
        return
    rest = stripped[1:].lstrip(" \t")[len(keyword) :]
    if rest[:1] not in (" ", "\t"):
        raise ExpositionError(f"{keyword} without a metric name", number, line)
    rest = rest.lstrip(" \t")
    match = _METRIC_NAME.match(rest)
    if match is None or (match.end() < len(rest) and rest[match.end()] not in " \t"):
        raise ExpositionError(f"{keyword} without a valid metric name", number, line)
    name = match.group()
    argument = rest[match.end() :].lstrip(" \t")
    if keyword == "HELP":
        if name in helped:
            raise ExpositionError(f"a second HELP for {name}", number, line)
        helped.add(name)
        help_text = _ESCAPE.sub(lambda m: _HELP_ESCAPES.get(m.group(1), m.group()), argument)
        if name not in skipped:
            families.setdefault(name, MetricFamily(name, MetricType.GAUGE, "")).help = help_text
        return
    kind = argument.strip(" \t")
    if kind not in _TYPES and kind not in _SKIPPED_TYPES:
        raise ExpositionError(f"unknown metric type {kind!r}", number, line)
    if name in typed:
        raise ExpositionError(f"a second TYPE for {name}", number, line)
    typed.add(name)
    known = families.get(name)
    if known is not None and known.samples:
        raise ExpositionError(f"TYPE for {name} after its samples", number, line)
    if kind in _SKIPPED_TYPES:
        families.pop(name, None)
        skipped.add(name)
        return
    if known is None:
        families[name] = MetricFamily(name, _TYPES[kind], "")
    else:
        known.type = _TYPES[kind]


def _family_of(
    name: str, families: dict[str, MetricFamily], skipped: set[str]
) -> MetricFamily | None:
    """The family a sample belongs to (new and untyped when the page declared none), or None
    for a sample of a skipped family."""
    for suffix in _HISTOGRAM_SUFFIXES:
        if name.endswith(suffix):
            base = name[: -len(suffix)]
            if base in skipped:
                return None
            family = families.get(base)
            if family is not None and family.type is MetricType.HISTOGRAM:
                return family
    if name in skipped:
        return None
    return families.get(name) or MetricFamily(name, MetricType.GAUGE, "")


def _sample(line: str, number: int) -> tuple[str, Labels, float]:
    """Parse ``name{labels} value [timestamp]``."""
    match = _METRIC_NAME.match(line, len(line) - len(line.lstrip(" \t")))
    if match is None:
        raise ExpositionError("not a sample, comment or blank line", number, line)
    name = match.group()
    position = match.end()
    while position < len(line) and line[position] in " \t":
        position += 1
    labels: Labels = ()
    if position < len(line) and line[position] == "{":
        labels, position = _labels(line, position + 1, number)
    elif position == match.end() and position < len(line):
        raise ExpositionError(f"unexpected {line[position]!r} after the metric name", number, line)
    words = _BLANKS.split(line[position:].strip(" \t"))
    if not words[0]:
        raise ExpositionError("a sample without a value", number, line)
    if len(words) > 2:
        raise ExpositionError("unexpected text after the sample", number, line)
    value = _value(words[0], number, line)
    if len(words) == 2 and _TIMESTAMP.fullmatch(words[1]) is None:
        raise ExpositionError("the timestamp is not an integer", number, line)
    return name, labels, value


def _labels(line: str, position: int, number: int) -> tuple[Labels, int]:
    """Parse the label pairs after ``{``; returns them and the position after ``}``."""
    pairs: list[tuple[str, str]] = []
    seen: set[str] = set()
    while True:
        position = _skip_blanks(line, position)
        if position < len(line) and line[position] == "}":
            return tuple(pairs), position + 1
        match = _LABEL_NAME.match(line, position)
        if match is None:
            raise ExpositionError("expected a label name or '}'", number, line)
        label = match.group()
        position = _skip_blanks(line, match.end())
        if line[position : position + 1] != "=":
            raise ExpositionError(f"expected '=' after label {label}", number, line)
        position = _skip_blanks(line, position + 1)
        if line[position : position + 1] != '"':
            raise ExpositionError(f"expected a quoted value for label {label}", number, line)
        quoted = _LABEL_VALUE.match(line, position + 1)
        if quoted is None:
            raise ExpositionError(f"unterminated value of label {label}", number, line)
        value = _unescape_label(quoted.group(1), number, line)
        if label in seen:
            raise ExpositionError(f"label {label} given twice", number, line)
        seen.add(label)
        pairs.append((label, value))
        position = _skip_blanks(line, quoted.end())
        if line[position : position + 1] == ",":
            position += 1
        elif line[position : position + 1] != "}":
            raise ExpositionError("expected ',' or '}' after a label", number, line)


def _unescape_label(raw: str, number: int, line: str) -> str:
    if "\\" not in raw:
        return raw

    def replace(match: re.Match[str]) -> str:
        escaped = _LABEL_ESCAPES.get(match.group(1))
        if escaped is None:
            raise ExpositionError(
                f"unknown escape {match.group()!r} in a label value", number, line
            )
        return escaped

    return _ESCAPE.sub(replace, raw)


def _value(word: str, number: int, line: str) -> float:
    # float() also takes "1_000" and non-ASCII digits; the format (Go's ParseFloat) does not.
    if not word.isascii() or "_" in word:
        raise ExpositionError(f"{word!r} is not a number", number, line)
    try:
        return float(word)
    except ValueError:
        raise ExpositionError(f"{word!r} is not a number", number, line) from None


def _skip_blanks(line: str, position: int) -> int:
    while position < len(line) and line[position] in " \t":
        position += 1
    return position
