"""Access-log formats compiled to line parsers.

This module's one job is :func:`compile_format`: it turns a format name (``common``,
``combined``, ``vhost_combined``, ``nginx``, ``json``) or a server's own format string (an Apache
``LogFormat`` or an Nginx ``log_format``) into a :class:`LineParser`, a callable that turns one
line into a dict or raises :class:`ParseError` with the reason.

Every text format gives the same fields (the seed's names), null when the format lacks them:
``timestamp``, ``ip_address``, ``remote_user``, ``method``, ``path``, ``protocol``,
``status_code``, ``response_size``, ``referer``, ``user_agent``, ``request``, then whatever else
the format logs (``vhost``, ``server_port``, ``request_time``, ``http_x_forwarded_for``, ...),
then ``log_type`` (``web_access``). The ``common`` format therefore has ``referer`` and
``user_agent`` null. ``-`` is null, except in ``response_size`` where it means 0 bytes. When a
format has a field twice (``%h`` and ``%a``), the later one wins. The ``json`` format passes each
line's object through unchanged.

Apache's ``vhost_combined`` logs ``%O`` (bytes sent, headers included) where ``combined`` logs
``%b``; the built-in ``vhost_combined`` reports that number as ``response_size`` all the same, so
that both formats give one schema. In a custom format, ``%O`` is ``bytes_sent``.

A time in a format with several (``%t`` and ``%{sec}t``) comes from the last one. ``%{...}t``
takes ``strftime`` conversions (see :func:`compile_strftime`), ``sec``, ``msec`` and ``usec``;
without ``%z`` the time has no offset. Escapes decoded are Apache's and Nginx's default ones;
Nginx's ``escape=json`` ``\\u00XX`` sequences stay as logged.

Speed: one regex per format matches the whole line, and a function written for the format turns
its groups into the dict; each distinct logged time is converted once (neighbouring lines share
their second); escapes are decoded only in fields holding a backslash.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from kingest.errors import ConfigError
from kingest.sources.weblog.parse import (
    BARE_TEXT,
    BARE_TEXT_FAST,
    CLF_TIME_PATTERN,
    ISO_TIME_PATTERN,
    KIND_PATTERNS,
    QUOTED_TEXT,
    QUOTED_TEXT_FAST,
    JsonLineParser,
    Kind,
    LineParser,
    ParseError,
    clf_shaped_time_to_iso,
    compile_strftime,
    epoch_to_iso,
    has_surrogates,
    iso_time_to_iso,
    remember_time,
    request_fields,
    snippet,
    sum_times,
    text_field,
)

__all__ = [
    "BUILTIN_FORMATS",
    "FORMAT_NAMES",
    "STANDARD_KEYS",
    "LineParser",
    "ParseError",
    "compile_format",
    "detect_syntax",
]

# Built-in formats, in the syntax of the server that defines them. Apache's documentation gives
# common and combined; vhost_combined is Debian's (see the module docstring about %O).
BUILTIN_FORMATS: Final[dict[str, tuple[str, str]]] = {
    "common": ("apache", '%h %l %u %t "%r" %>s %b'),
    "combined": ("apache", '%h %l %u %t "%r" %>s %b "%{Referer}i" "%{User-Agent}i"'),
    "vhost_combined": ("apache", '%v:%p %h %l %u %t "%r" %>s %b "%{Referer}i" "%{User-Agent}i"'),
    # Nginx's predefined "log_format combined".
    "nginx": (
        "nginx",
        '$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent '
        '"$http_referer" "$http_user_agent"',
    ),
}

FORMAT_NAMES: Final = ("common", "combined", "vhost_combined", "nginx", "json", "apache")

STANDARD_KEYS: Final = (
    *("timestamp", "ip_address", "remote_user", "method", "path", "protocol"),
    *("status_code", "response_size", "referer", "user_agent", "request"),
)

# Kinds whose "-" is matched outside the capturing group, so the regex itself makes it None.
_NULLABLE: Final = frozenset({Kind.TEXT, Kind.HOST, Kind.REQUEST, Kind.SIZE, Kind.INT, Kind.FLOAT})
# A request line in quotes, split by the regex (no backslash, so nothing to decode first).
_REQUEST_SPLIT_FAST: Final = r'(?:-|(([A-Z]+) ([^ "]+) (HTTP/[0-9]\.[0-9])|[^"]*))'
# Kinds with a pattern of their own: when the text after one fails, the field is to blame.
_TYPED: Final = frozenset(KIND_PATTERNS) | {Kind.TIME}
_TIMESTAMP: Final = "timestamp"


@dataclass(frozen=True, slots=True)
class _Field:
    key: str | None
    kind: Kind
    label: str  # as written in the format string, e.g. %>s or $status
    what: str  # what the text should look like, for error messages
    quoted: bool  # inside a pair of double quotes of the format string
    pattern: str | None = None  # for Kind.TIME
    convert: Callable[[str], str] | None = None  # for Kind.TIME


def _pattern(token: _Field, fast: bool) -> str:
    pattern = token.pattern or KIND_PATTERNS.get(token.kind)
    if pattern is not None:
        return pattern
    if token.quoted:
        return QUOTED_TEXT_FAST if fast else QUOTED_TEXT
    return BARE_TEXT_FAST if fast else BARE_TEXT


def _wrap(token: _Field, pattern: str, capture: bool = True) -> str:
    group = "(" if capture else "(?:"
    if token.kind == Kind.IGNORED:
        return f"(?:{pattern})"
    if token.kind in _NULLABLE:
        return f"(?:-|{group}{pattern}))"
    return f"{group}{pattern})"


_LINE_ENDS: Final = (b"\n", b"\r")
_ParseFunction = Callable[[str, bool], "dict[str, Any] | None"]


class _PatternParser(LineParser):
    """A text format: one regex over the whole line, then a function made for the format.

    A line without a backslash takes the fast regex and function: ``-`` is already None in the
    regex's groups, the request line is split by the regex, and nothing needs decoding. Any
    other line takes the exact regex, and its text fields go through the escape decoder.
    """

    def __init__(self, name: str, log_format: str, tokens: list[str | _Field]) -> None:
        super().__init__(name, log_format)
        if not any(isinstance(token, _Field) for token in tokens):
            raise ConfigError(f"log format {log_format!r} has no fields")
        self._tokens = tokens
        self._prefixes: dict[int, re.Pattern[str]] = {}
        self._caches: dict[int, dict[str, str]] = {}
        keys = [t.key for t in tokens if isinstance(t, _Field) and t.key is not None]
        extras = dict.fromkeys(key for key in keys if key not in STANDARD_KEYS)
        self._keys = (*STANDARD_KEYS, *extras, "log_type")
        self._fast = self._generate(fast=True)
        self._exact = self._generate(fast=False)

    def _generate(self, fast: bool) -> _ParseFunction:
        """Write and compile the function that turns a match into the line's dict.

        A loop over the fields spent more time dispatching on each one's kind than the regex
        spent matching; this function unpacks the groups into locals and returns one dict
        display, which halves the time per line. Only numbers and ``repr()`` of the output
        keys go into its source.
        """
        tokens = self._tokens
        pieces: list[str] = []
        statements: list[str] = []
        values = dict.fromkeys(self._keys, "None")
        values["log_type"] = repr("web_access")
        namespace: dict[str, Any] = {
            "_text": text_field,
            "_request": request_fields,
            "_sum_times": sum_times,
            "_remember": remember_time,
        }
        group = 0
        for position, token in enumerate(tokens):
            if isinstance(token, str):
                pieces.append(re.escape(token))
                continue
            following = tokens[position + 1] if position + 1 < len(tokens) else ""
            if fast and token.kind == Kind.REQUEST and token.quoted and str(following)[:1] == '"':
                pieces.append(_REQUEST_SPLIT_FAST)
                for offset, key in enumerate(("request", "method", "path", "protocol")):
                    values[key] = f"v{group + offset}"
                group += 4
                continue
            pieces.append(_wrap(token, _pattern(token, fast)))
            if token.kind == Kind.IGNORED or token.key is None:
                continue
            key, kind, v = token.key, token.kind, f"v{group}"
            group += 1
            if kind == Kind.TIME:
                namespace[f"_cache{position}"] = self._caches.setdefault(position, {})
                namespace[f"_convert{position}"] = token.convert
                statements += [
                    "try:",
                    f"    t{position} = _cache{position}[{v}]",
                    "except KeyError:",
                    f"    t{position} = _remember(_cache{position}, {v}, _convert{position}({v}))",
                ]
                values[key] = f"t{position}"
            elif kind == Kind.REQUEST:
                names = [f"{prefix}{position}" for prefix in "rmph"]
                statements.append(f"{', '.join(names)} = _request({v}, undecodable)")
                values.update(zip(("request", "method", "path", "protocol"), names, strict=True))
            elif kind in (Kind.TEXT, Kind.RAW):
                values[key] = v if fast else f"_text({v}, undecodable)"
            elif kind == Kind.STATUS:
                values[key] = f"int({v})"
            elif kind == Kind.SIZE:
                values[key] = f"0 if {v} is None else int({v})"
            elif kind in (Kind.INT, Kind.FLOAT):
                values[key] = (
                    f"None if {v} is None else {'int' if kind == Kind.INT else 'float'}({v})"
                )
            elif kind == Kind.UPSTREAM_TIME:
                values[key] = f"_sum_times({v})"
            else:
                values[key] = v
        body = ["match = _fullmatch(text)", "if match is None:", "    return None"]
        if group:
            body.append(f"({', '.join(f'v{i}' for i in range(group))},) = match.groups()")
        body += statements
        body.append(f"return {{{', '.join(f'{k!r}: {v}' for k, v in values.items())}}}")
        source = "def parse(text, undecodable=False):\n" + "".join(f"    {s}\n" for s in body)
        namespace["_fullmatch"] = re.compile("".join(pieces), re.DOTALL).fullmatch
        mode = "fast" if fast else "exact"
        exec(compile(source, f"<kingest weblog format {self.name}, {mode}>", "exec"), namespace)
        function: _ParseFunction = namespace["parse"]
        return function

    def __call__(self, line: bytes | str) -> dict[str, Any]:
        """See :meth:`LineParser.__call__`."""
        undecodable = False
        if isinstance(line, bytes):
            if line[-1:] in _LINE_ENDS:
                if line.endswith(b"\n"):
                    line = line[:-1]
                if line.endswith(b"\r"):
                    line = line[:-1]
            try:
                text = line.decode()
            except UnicodeDecodeError:
                # Kept byte for byte, so that an escape next to a raw byte decodes as one
                # sequence; every text field then goes through the escape decoder.
                text = line.decode("utf-8", "surrogateescape")
                undecodable = True
        else:
            text = line[:-1] if line.endswith("\n") else line
            if text.endswith("\r"):
                text = text[:-1]
            undecodable = not text.isascii() and has_surrogates(text)
        if undecodable or "\\" in text:
            out = self._exact(text, undecodable)
        else:
            # Without a backslash, the exact regex matches exactly when the fast one does.
            out = self._fast(text, False)
        if out is None:
            raise ParseError(self._explain(text))
        return out

    def _prefix(self, count: int) -> re.Pattern[str]:
        pattern = self._prefixes.get(count)
        if pattern is None:
            pieces = (
                re.escape(token)
                if isinstance(token, str)
                else _wrap(token, _pattern(token, fast=False), capture=False)
                for token in self._tokens[:count]
            )
            pattern = self._prefixes[count] = re.compile("".join(pieces), re.DOTALL)
        return pattern

    def _explain(self, text: str) -> str:
        """Why ``text`` does not fit: where the first token that cannot match is."""
        if not text:
            return "empty line"
        tokens = self._tokens
        position = previous_start = 0
        for index, token in enumerate(tokens):
            match = self._prefix(index + 1).match(text)
            if match is not None:
                previous_start, position = position, match.end()
                continue
            before = tokens[index - 1] if index else None
            if (
                isinstance(token, str)
                and isinstance(before, _Field)
                and before.kind in _TYPED
                and text[position : position + 1] not in ("", " ", '"', "[", "]")
            ):
                # "2000" for a status: the field matched "200" and the space after it failed.
                end = text.find(" ", position)
                word = text[previous_start : end if end >= 0 else None]
                return (
                    f"expected {before.what} ({before.label}) at column {previous_start + 1}, "
                    f"found {snippet(word)}"
                )
            what = repr(token) if isinstance(token, str) else f"{token.what} ({token.label})"
            return f"expected {what} at column {position + 1}, found {snippet(text[position:])}"
        tail = snippet(text[position:])
        return f"unexpected text after the last field at column {position + 1}: {tail}"


# ---------------------------------------------------------------------------------------------
# Apache LogFormat

_APACHE_DIRECTIVE: Final = re.compile(
    r"%(?P<condition>!?[0-9]{3}(?:,[0-9]{3})*)?[<>]?(?:\{(?P<arg>[^}]*)\})?"
    r"(?P<letter>\^t[io]|[A-Za-z%])"
)
# mod_log_config unescapes these in a format string's literal text; \" comes from the quoting
# of the LogFormat line itself, so a string pasted from a config file works as it is.
_APACHE_LITERAL_ESCAPE: Final = re.compile(r'\\(["\\ntr])')
_APACHE_LITERAL_CHARS: Final = {'"': '"', "\\": "\\", "n": "\n", "t": "\t", "r": "\r"}

# Directive letter (no argument) -> output key, kind, what it looks like.
_APACHE_FIELDS: Final[dict[str, tuple[str | None, Kind, str]]] = {
    "a": ("ip_address", Kind.HOST, "a client address"),
    "A": ("local_address", Kind.HOST, "a local address"),
    "b": ("response_size", Kind.SIZE, "a size in bytes or '-'"),
    "B": ("response_size", Kind.SIZE, "a size in bytes"),
    "D": ("request_time_us", Kind.INT, "a duration in microseconds"),
    "f": ("filename", Kind.TEXT, "a file name"),
    "h": ("ip_address", Kind.HOST, "a client address or host name"),
    "H": ("protocol", Kind.TEXT, "a protocol"),
    "I": ("bytes_received", Kind.INT, "a byte count"),
    "k": ("keepalive_requests", Kind.INT, "a request count"),
    "l": (None, Kind.IGNORED, "an identd name or '-'"),
    "L": ("log_id", Kind.TEXT, "a log id"),
    "m": ("method", Kind.TEXT, "a method"),
    "O": ("bytes_sent", Kind.INT, "a byte count"),
    "p": ("server_port", Kind.INT, "a port"),
    "P": ("pid", Kind.INT, "a process id"),
    "q": ("query_string", Kind.TEXT, "a query string"),
    "r": ("request", Kind.REQUEST, "a request line"),
    "R": ("handler", Kind.TEXT, "a handler name"),
    "s": ("status_code", Kind.STATUS, "a three-digit status"),
    "S": ("bytes_transferred", Kind.INT, "a byte count"),
    "T": ("request_time_s", Kind.INT, "a duration in seconds"),
    "u": ("remote_user", Kind.TEXT, "a user name or '-'"),
    "U": ("url_path", Kind.TEXT, "a URL path"),
    "v": ("vhost", Kind.TEXT, "a server name"),
    "V": ("server_name", Kind.TEXT, "a server name"),
    "X": ("connection_status", Kind.RAW, "a connection status (X, + or -)"),
}
# %U stops where %q starts, so that "%U%q" splits the target as Apache wrote it.
_APACHE_PATTERNS: Final = {
    "U": r'[^"\\ ?]*(?:\\.[^"\\ ?]*)*',
    "q": r'(?:\?[^"\\ ]*(?:\\.[^"\\ ]*)*)?',
}
# (letter, argument) -> key, kind, what, for the arguments that change the field.
_APACHE_ARGUMENT_FIELDS: Final[dict[tuple[str, str], tuple[str, Kind, str]]] = {
    ("a", "c"): ("peer_address", Kind.HOST, "a peer address"),
    ("h", "c"): ("peer_host", Kind.HOST, "a peer address or host name"),
    ("p", "canonical"): ("server_port", Kind.INT, "a port"),
    ("p", "local"): ("server_port", Kind.INT, "a port"),
    ("p", "remote"): ("remote_port", Kind.INT, "a port"),
    ("P", "pid"): ("pid", Kind.INT, "a process id"),
    ("P", "tid"): ("tid", Kind.INT, "a thread id"),
    ("P", "hextid"): ("tid_hex", Kind.TEXT, "a thread id"),
    ("T", "s"): ("request_time_s", Kind.INT, "a duration in seconds"),
    ("T", "ms"): ("request_time_ms", Kind.INT, "a duration in milliseconds"),
    ("T", "us"): ("request_time_us", Kind.INT, "a duration in microseconds"),
}
# Letters whose argument names a header, cookie, variable or note -> key prefix.
_APACHE_NAMED: Final = {"i": "http_", "o": "sent_http_", "C": "cookie_", "e": "env_", "n": "note_"}
_EPOCHS: Final = {"sec": 1, "msec": 1000, "usec": 1_000_000}
_NOT_NAME: Final = re.compile(r"[^0-9a-z]+")


def _apache_time(label: str, arg: str | None, quoted: bool) -> _Field:
    if arg is None:
        return _clf_time_field(label, quoted)
    spec = arg.removeprefix("begin:").removeprefix("end:")
    if spec in _EPOCHS:
        pattern, convert = "[0-9]{1,18}", epoch_to_iso(_EPOCHS[spec])
    else:
        try:
            pattern, convert = compile_strftime(spec)
        except ValueError as exc:
            raise ConfigError(f"directive {label}: {exc}") from None
    return _Field(_TIMESTAMP, Kind.TIME, label, f"a time like {spec!r}", quoted, pattern, convert)


def _clf_time_field(label: str, quoted: bool) -> _Field:
    what = "a time like 26/May/2024:10:30:45 +0000"
    convert = clf_shaped_time_to_iso
    return _Field(_TIMESTAMP, Kind.TIME, label, what, quoted, CLF_TIME_PATTERN, convert)


def _apache_field(label: str, letter: str, arg: str | None, quoted: bool) -> _Field:
    if letter in _APACHE_NAMED:
        if not arg:
            raise ConfigError(f"directive {label} needs a name in braces, as in %{{Referer}}i")
        name = _NOT_NAME.sub("_", arg.lower()).strip("_")
        key = _APACHE_NAMED[letter] + name
        if letter == "i" and name in ("referer", "user_agent"):
            key = name
        return _Field(key, Kind.TEXT, label, "a quoted string" if quoted else "a value", quoted)
    if letter == "t":
        return _apache_time(label, arg, quoted)
    found = (
        _APACHE_FIELDS.get(letter) if arg is None else _APACHE_ARGUMENT_FIELDS.get((letter, arg))
    )
    if found is None:
        raise ConfigError(f"unsupported directive {label} in the log format")
    key_or_none, kind, what = found
    pattern = _APACHE_PATTERNS.get(letter) if arg is None else None
    return _Field(key_or_none, kind, label, what, quoted, pattern)


def _compile_apache(name: str, log_format: str) -> _PatternParser:
    tokens: list[str | _Field] = []
    literal = ""
    quotes = 0
    position = 0
    while position < len(log_format):
        start = log_format.find("%", position)
        end = len(log_format) if start < 0 else start
        literal += _APACHE_LITERAL_ESCAPE.sub(
            lambda m: _APACHE_LITERAL_CHARS[m.group(1)], log_format[position:end]
        )
        if start < 0:
            break
        match = _APACHE_DIRECTIVE.match(log_format, start)
        if match is None:
            raise ConfigError(
                f"bad directive {log_format[start : start + 12]!r} at position {start + 1} "
                "of the log format"
            )
        position = match.end()
        letter, arg = match["letter"], match["arg"]
        if letter == "%":
            literal += "%"
            continue
        if literal:
            tokens.append(literal)
            quotes += literal.count('"')
            literal = ""
        field = _apache_field(match.group(0), letter, arg, quotes % 2 == 1)
        # %t writes its own brackets.
        tokens += ["[", field, "]"] if letter == "t" and arg is None else [field]
    if literal:
        tokens.append(literal)
    return _PatternParser(name, log_format, tokens)


# ---------------------------------------------------------------------------------------------
# Nginx log_format

_NGINX_VARIABLE: Final = re.compile(r"\$(?:\{([A-Za-z0-9_]+)\}|([A-Za-z0-9_]+))")
_UPSTREAM: Final = (Kind.UPSTREAM_TIME, "upstream times")
# Variables with a seed name or a type; any other variable is text under its own name.
_NGINX_FIELDS: Final[dict[str, tuple[str, Kind, str]]] = {
    "remote_addr": ("ip_address", Kind.HOST, "a client address"),
    "remote_user": ("remote_user", Kind.TEXT, "a user name or '-'"),
    "request": ("request", Kind.REQUEST, "a request line"),
    "status": ("status_code", Kind.STATUS, "a three-digit status"),
    "body_bytes_sent": ("response_size", Kind.SIZE, "a size in bytes"),
    "http_referer": ("referer", Kind.TEXT, "a referer"),
    "http_user_agent": ("user_agent", Kind.TEXT, "a user agent"),
    "request_time": ("request_time", Kind.FLOAT, "a time in seconds"),
    "msec": ("msec", Kind.FLOAT, "a time since the epoch"),
    "upstream_response_time": ("upstream_response_time", *_UPSTREAM),
    "upstream_connect_time": ("upstream_connect_time", *_UPSTREAM),
    "upstream_header_time": ("upstream_header_time", *_UPSTREAM),
    "bytes_sent": ("bytes_sent", Kind.INT, "a byte count"),
    "request_length": ("request_length", Kind.INT, "a byte count"),
    "connection": ("connection", Kind.INT, "a connection serial number"),
    "connection_requests": ("connection_requests", Kind.INT, "a request count"),
    "pid": ("pid", Kind.INT, "a process id"),
    "remote_port": ("remote_port", Kind.INT, "a port"),
    "server_port": ("server_port", Kind.INT, "a port"),
}


def _nginx_field(variable: str, label: str, quoted: bool) -> _Field:
    if variable == "time_local":
        return _clf_time_field(label, quoted)
    if variable == "time_iso8601":
        what = "a time like 2024-05-26T10:30:45+00:00"
        return _Field(_TIMESTAMP, Kind.TIME, label, what, quoted, ISO_TIME_PATTERN, iso_time_to_iso)
    key, kind, what = _NGINX_FIELDS.get(variable, (variable, Kind.TEXT, "a value"))
    return _Field(key, kind, label, what, quoted)


def _compile_nginx(name: str, log_format: str) -> _PatternParser:
    tokens: list[str | _Field] = []
    quotes = 0
    position = 0
    for match in [*_NGINX_VARIABLE.finditer(log_format), None]:
        end = len(log_format) if match is None else match.start()
        literal = log_format[position:end]
        if "$" in literal:
            at = position + literal.index("$") + 1
            raise ConfigError(f"bad variable at position {at} of the log format")
        if literal:
            tokens.append(literal)
            quotes += literal.count('"')
        if match is None:
            break
        position = match.end()
        tokens.append(_nginx_field(match[1] or match[2], match[0], quotes % 2 == 1))
    return _PatternParser(name, log_format, tokens)


# ---------------------------------------------------------------------------------------------
# Entry point

_HAS_NGINX_VARIABLE: Final = re.compile(r"\$\{?[A-Za-z_]")
_HAS_APACHE_DIRECTIVE: Final = re.compile(r"%[!<>{0-9A-Za-z]")


def detect_syntax(log_format: str) -> str:
    """Tell which server's syntax a format string is in.

    Args:
        log_format: an Apache ``LogFormat`` or Nginx ``log_format`` string.

    Returns:
        ``nginx`` when it holds ``$variables``, ``apache`` when it holds ``%`` directives.

    Raises:
        ConfigError: it holds both, or neither.
    """
    nginx = _HAS_NGINX_VARIABLE.search(log_format) is not None
    apache = _HAS_APACHE_DIRECTIVE.search(log_format.replace("%%", "")) is not None
    if nginx != apache:
        return "nginx" if nginx else "apache"
    if nginx:
        raise ConfigError(
            f"log format {log_format!r} has both $variables and % directives; "
            "say whether it is apache or nginx"
        )
    raise ConfigError(f"log format {log_format!r} has no $variables nor % directives")


def compile_format(format_name: str, log_format: str | None = None) -> LineParser:
    """Compile a log format into a parser of its lines.

    Args:
        format_name: one of :data:`FORMAT_NAMES`. ``apache`` and ``nginx`` with ``log_format``
            name the syntax of that string (``nginx`` alone is Nginx's default format);
            ``auto`` with ``log_format`` detects the syntax (see :func:`detect_syntax`).
        log_format: an Apache ``LogFormat`` or Nginx ``log_format`` string, for example
            ``'%h %l %u %t "%r" %>s %b %D'`` or ``'$remote_addr [$time_local] "$request"
            $status $request_time'``.

    Returns:
        A parser; each call parses one line and raises :class:`ParseError` on a bad one.

    Raises:
        ConfigError: an unknown format name, a format string with an unsupported or malformed
            directive, or a format string given with a built-in format name.
    """
    if log_format is not None:
        syntax = detect_syntax(log_format) if format_name == "auto" else format_name
        if syntax == "apache":
            return _compile_apache("apache", log_format)
        if syntax == "nginx":
            return _compile_nginx("nginx", log_format)
        raise ConfigError(
            f"a custom log format needs the format 'apache' or 'nginx', not {format_name!r}"
        )
    if format_name == "json":
        return JsonLineParser()
    if format_name in BUILTIN_FORMATS:
        syntax, string = BUILTIN_FORMATS[format_name]
        compile_syntax = _compile_apache if syntax == "apache" else _compile_nginx
        return compile_syntax(format_name, string)
    if format_name in ("apache", "auto"):
        raise ConfigError(f"the format {format_name!r} needs a log format string")
    raise ConfigError(
        f"unknown log format {format_name!r}; choose one of {', '.join(FORMAT_NAMES)}"
    )
