"""How ``kingest top`` draws a frame: a :class:`~kingest.metrics.top.View` as lines of text.

:func:`render` writes the header, the per-source table, the buffer and aggregation lines, the
retry and dead-letter breakdowns and the shard heat bars, cut to the screen's width and height
and styled with ANSI only when asked. :func:`human` and the smaller formatters here keep each
number within its column. What the view holds, and how it is computed, is
:mod:`kingest.metrics.top`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

from kingest.metrics.top import Count, View

__all__ = ["count", "human", "render"]

BAR_WIDTH = 20
_NUMBER_WIDTH = 7
_NAME_WIDTH = (6, 24)  # narrowest and widest name column
_COLUMNS = ("RECV/S", "RECV", "ACC/S", "ACC", "RETRY", "THROTL", "DLQ", "INVAL", "P50", "P99")
_STYLES = {"header": "\x1b[7m", "title": "\x1b[1m", "error": "\x1b[31;1m"}
_RESET = "\x1b[0m"
_EIGHTHS = " ▏▎▍▌▋▊▉"


def render(
    view: View,
    width: int = 100,
    height: int | None = None,
    *,
    color: bool = False,
    unicode: bool = True,
    hint: str = "",
) -> list[str]:
    """Lay a view out as lines of text.

    Args:
        view: the frame's content.
        width: columns; longer lines are cut.
        height: rows; later lines are dropped (None: all).
        color: wrap headings and errors in ANSI styles.
        unicode: draw shard bars with block characters (else ``#``).
        hint: shown at the right of the header (the keys, in the live view).

    Returns:
        The lines, without line ends.
    """
    lines: list[tuple[str, str]] = []  # (style, text)

    def out(text: str = "", style: str = "") -> None:
        lines.append((style, text))

    header = ["kingest top", view.address]
    if view.uptime_s is not None:
        header.append(f"up {_duration(view.uptime_s)}")
    header.append(time.strftime("%H:%M:%S", time.localtime(view.wall_s)))
    if view.interval_s is not None:
        header.append(f"rates over {view.interval_s:.1f}s")
    text = "  ".join(header)
    if hint:
        text = text + " " * max(2, width - len(text) - len(hint)) + hint
    out(text, "header")
    out()
    if view.error is not None:
        out(view.error, "error")
        return _finish(lines, width, height, color)

    _sources_table(view, out)
    out()
    out(
        "BUFFER       "
        + "   ".join(
            (
                f"{count(view.buffered_records)} records",
                _bytes(view.buffered_bytes),
                f"{_percent(view.buffer_fill_ratio)} full",
            )
        ),
        "title",
    )
    mean = view.records_per_kinesis_record
    shown = "-" if mean is None else f"{mean:.1f}" if mean < 1000 else human(mean)
    out(f"AGGREGATION  {shown} user records per Kinesis record", "title")
    # Shown only when there is something to see: most agents never wait, few capture changes.
    waiting = [(name, count.rate) for name, count in view.blocked or () if count.total > 0]
    if waiting:
        shares = "   ".join(f"{name} {_percent(rate)}" for name, rate in waiting)
        out(f"BLOCKED      {shares} of the time waiting for buffer room", "title")
    if view.lag_s:
        lags = "   ".join(f"{name} {_seconds(lag)}" for name, lag in view.lag_s)
        out(f"LAG          {lags} behind the database", "title")
    if view.spooled:
        sizes = dict(view.spool_bytes or ())
        spools = "   ".join(
            f"{name} {count(events)} events {_bytes(sizes.get(name))}"
            for name, events in view.spooled
        )
        out(f"SPOOL        {spools} on disk, not yet delivered", "title")
    _breakdown_table("RETRIES BY ERROR CODE", view.retries_by_code, out)
    _breakdown_table("DLQ BY REASON", view.dlq_by_reason, out)
    _shard_table(view, out, unicode)
    return _finish(lines, width, height, color)


def count(value: float | None) -> str:
    """A counter's total exactly while it fits a column (below a million), else :func:`human`:
    totals are compared with what was sent, so they must not be rounded when they can help it.
    """
    if value is not None and not math.isnan(value) and value == int(value) and abs(value) < 1e6:
        return str(int(value))
    return human(value)


def human(value: float | None) -> str:
    """A number in at most six characters: ``950``, ``0.25``, ``12.5``, ``1.2k``, ``34M``.

    Returns:
        The text; ``-`` for None or NaN.
    """
    if value is None or math.isnan(value):
        return "-"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    magnitude = abs(value)
    if magnitude < 999.95:
        if value == int(value):
            return str(int(value))
        return f"{value:.2g}" if magnitude < 1 else f"{value:.1f}"
    for unit in "kMGTP":
        value /= 1000
        magnitude /= 1000
        if magnitude < 999.5 or unit == "P":
            return f"{value:.1f}{unit}" if magnitude < 99.95 else f"{value:.0f}{unit}"
    raise AssertionError("unreachable")


def _line(cells: Sequence[str], first_width: int) -> str:
    """Fixed-width columns: the first left-aligned, the rest right-aligned."""
    first = _cut(cells[0], first_width).ljust(first_width)
    return first + "".join(cell.rjust(_NUMBER_WIDTH) for cell in cells[1:])


def _sources_table(view: View, out: Callable[[str, str], None]) -> None:
    names = [row.name for row in view.sources] + ["TOTAL", "SOURCE"]
    first = min(max([_NAME_WIDTH[0], *(len(n) for n in names)]), _NAME_WIDTH[1]) + 1
    out(_line(("SOURCE", *_COLUMNS), first), "title")
    if not view.sources:
        out("(no sources yet)", "")
    rows = list(view.sources) + ([view.total] if view.total is not None else [])
    for row in rows:
        cells = (
            row.name or "-",
            _rate(row.received),
            count(row.received.total if row.received else None),
            _rate(row.accepted),
            count(row.accepted.total if row.accepted else None),
            count(row.retried),
            count(row.throttled),
            count(row.dlq),
            count(row.invalid),
            _seconds(row.p50_s),
            _seconds(row.p99_s),
        )
        out(_line(cells, first), "title" if row is view.total else "")


def _breakdown_table(
    title: str,
    rows: tuple[tuple[str, Count], ...] | None,
    out: Callable[[str, str], None],
) -> None:
    out("", "")
    names = [name for name, _ in rows or ()]
    first = min(max([len(title), *(len(n) for n in names)]), 44) + 1
    out(_line((title, "TOTAL", "/S"), first), "title")
    if rows is None:
        out("-", "")
    elif not rows:
        out("none", "")
    for name, counter in rows or ():
        out(_line((name or "-", count(counter.total), human(counter.rate)), first), "")


def _shard_table(view: View, out: Callable[[str, str], None], unicode: bool) -> None:
    out("", "")
    shards = view.shards
    if not shards:
        out("SHARD HEAT", "title")
        out("-" if shards is None else "none", "")
        return
    out(f"SHARD HEAT ({len(shards)} of {view.shard_count} shards)", "title")
    width = max(len(row.shard) for row in shards) + 1
    # Bars by rate, or by total before there is a rate (the first scrape).
    by_rate = any(row.rate for row in shards)
    peak = max((row.rate or 0.0) if by_rate else row.total for row in shards)
    for row in shards:
        amount = (row.rate or 0.0) if by_rate else row.total
        bar = _bar(amount / peak if peak > 0 else 0.0, unicode)
        rate = f"{human(row.rate)}/s"
        out(f"{row.shard:<{width}}{bar} {rate:>8} {_percent(row.share):>6}  {row.stream}", "")


def _bar(fraction: float, unicode: bool) -> str:
    if not unicode:
        return ("#" * round(fraction * BAR_WIDTH)).ljust(BAR_WIDTH)
    eighths = round(fraction * BAR_WIDTH * 8)
    full, rest = divmod(eighths, 8)
    return ("█" * full + (_EIGHTHS[rest] if rest else "")).ljust(BAR_WIDTH)


def _finish(lines: list[tuple[str, str]], width: int, height: int | None, color: bool) -> list[str]:
    if height is not None:
        lines = lines[:height]
    result = []
    for style, text in lines:
        text = text[:width].rstrip()
        if color and style and text:
            text = f"{_STYLES[style]}{text}{_RESET}"
        result.append(text)
    return result


def _cut(text: str, width: int) -> str:
    return text if len(text) < width else text[: width - 2] + "~"


def _rate(count: Count | None) -> str:
    return "-" if count is None else human(count.rate)


def _percent(ratio: float | None) -> str:
    return "-" if ratio is None or math.isnan(ratio) else f"{ratio * 100:.1f}%"


def _bytes(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "- bytes"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _seconds(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    if value < 0.001:
        return f"{value * 1e6:.0f}us"
    if value < 1:
        return f"{value * 1e3:.1f}ms" if value < 0.01 else f"{value * 1e3:.0f}ms"
    return f"{value:.2f}s" if value < 10 else f"{value:.0f}s"


def _duration(seconds: float) -> str:
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"
