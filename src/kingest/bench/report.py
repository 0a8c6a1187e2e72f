"""The text of a ``kingest bench`` report: the table, the ratios against their targets, the
memory check and the notes that say how each figure was measured.

Everything here reads the report dict that :mod:`kingest.bench.runner` builds (the same one
``--json`` prints), so the text and the machine output never disagree.
"""

from __future__ import annotations

from typing import Any

from kingest.bench.runner import CPU_RATIO_TARGET, LABELS

MIB = 1024 * 1024

COLUMNS = (
    "endpoint",
    "implementation",
    "records",
    "records/s",
    "CPU µs/record",
    "requests",
    "Kinesis records",
    "bytes sent",
    "peak RSS MiB",
    "lost",
)


def _fmt_int(value: int | None) -> str:
    return "n/a" if value is None else f"{value:,}"


def _fmt_float(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def _cells(row: dict[str, Any]) -> list[str]:
    lost = _fmt_int(row["lost"])
    if row["timed_out"]:
        lost += " (timed out)"
    if row["error"]:
        lost += " (error)"
    return [
        row["endpoint"],
        LABELS.get(row["implementation"], row["implementation"]),
        _fmt_int(row["accepted"]),
        _fmt_float(row["records_per_s"], 0),
        _fmt_float(row["cpu_us_per_record"], 1),
        _fmt_int(row["requests"]),
        _fmt_int(row["kinesis_records"]),
        _fmt_int(row["bytes_sent"]),
        _fmt_float(row["peak_rss_mib"], 1),
        lost,
    ]


def format_table(rows: list[dict[str, Any]]) -> str:
    """The rows as an aligned text table (text columns left, numbers right)."""
    table = [list(COLUMNS), *(_cells(row) for row in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    lines = []
    for index, line in enumerate(table):
        cells = [
            cell.ljust(widths[i]) if i < 2 or index == 0 else cell.rjust(widths[i])
            for i, cell in enumerate(line)
        ]
        lines.append(" | ".join(cells).rstrip())
        if index == 0:
            lines.append("-+-".join("-" * width for width in widths))
    return "\n".join(lines)


def _verdict(value: float | None, target: float, *, at_most: bool) -> str:
    if value is None:
        return "n/a"
    met = value <= target if at_most else value >= target
    return "met" if met else "NOT met"


def format_report(report: dict[str, Any]) -> str:
    """The human-readable report: settings, table, ratios, checks and notes."""
    settings = report["settings"]
    kingest = settings["kingest"]
    rows: list[dict[str, Any]] = report["rows"]
    out = []
    if report["mode"] == "memory-check":
        out.append(
            f"kingest bench --memory-check: kingest alone on the null endpoint, "
            f"~{settings['record_bytes']}-byte records, {settings['keys']:,} partition keys, "
            f"{settings['shards']}-shard stream"
        )
    else:
        stream = (
            f"the existing stream {settings['stream']} at {settings['endpoint_url']}"
            if settings["endpoint_url"]
            else f"a {settings['shards']}-shard stream"
        )
        out.append(
            f"kingest bench: {settings['records']:,} records of ~{settings['record_bytes']} bytes, "
            f"{settings['keys']:,} partition keys, {stream}"
        )
    rate_limit = kingest.get("rate_limit")
    if rate_limit is not False:
        why = "(--rate-limit)"
    elif settings["endpoint_url"]:
        why = "(neither baseline has a limiter; --rate-limit turns kingest's on)"
    else:
        why = "(the emulators enforce no shard limits and neither baseline has a limiter)"
    out.append(
        f"kingest settings: defaults except rate_limit={rate_limit} {why}"
        + (
            f"; aggregation={kingest['aggregation']}, linger_ms={kingest['linger_ms']}, "
            f"max_in_flight_requests={kingest['max_in_flight_requests']}, "
            f"max_buffer_bytes={kingest['max_buffer_bytes']:,}, "
            f"max_buffer_records={kingest['max_buffer_records']:,}; run as kingest's commands "
            "run (garbage collector tuned: kingest.runtime.tune_for_throughput)"
            if "aggregation" in kingest
            else ""
        )
    )
    out.append("")
    out.append(format_table(rows))
    out.append("")
    if report["mode"] == "memory-check":
        out.extend(_memory_lines(report["memory_check"]))
    else:
        out.extend(_ratio_lines(report["ratios"]))
    checks = _check_lines(rows)
    if checks:
        out.append("")
        out.append("checks:")
        out.extend(checks)
    out.append("")
    out.extend(_notes(settings))
    return "\n".join(out)


def _ratio_lines(ratios: list[dict[str, Any]]) -> list[str]:
    lines = []
    for entry in ratios:
        endpoint = entry["endpoint"]
        if "cpu_per_record_vs_boto3" in entry:
            cpu = entry["cpu_per_record_vs_boto3"]
            lines.append(
                f"{endpoint}: kingest CPU/record ÷ boto3 loop CPU/record = {_fmt_float(cpu, 2)} "
                f"(target ≤ {CPU_RATIO_TARGET}: {_verdict(cpu, CPU_RATIO_TARGET, at_most=True)})"
            )
            speed = entry["throughput_vs_boto3"]
            target = entry["throughput_target_min"]
            verdict = (
                f"target ≥ {target:g}: {_verdict(speed, target, at_most=False)}"
                if target is not None
                else "no target on this endpoint"
            )
            lines.append(
                f"{endpoint}: kingest records/s ÷ boto3 loop records/s = "
                f"{_fmt_float(speed, 2)} ({verdict})"
            )
        if "cpu_per_record_vs_seed" in entry:
            lines.append(
                f"{endpoint}: against the seed: CPU/record ratio "
                f"{_fmt_float(entry['cpu_per_record_vs_seed'], 2)}, records/s ratio "
                f"{_fmt_float(entry['throughput_vs_seed'], 2)}"
            )
        rss = entry["peak_rss_mib"]
        if rss:
            parts = ", ".join(
                f"{LABELS[name]} {_fmt_float(value, 1)} MiB" for name, value in rss.items()
            )
            buffer_bytes = entry.get("kingest_max_buffer_bytes")
            limit = (
                f" (kingest buffer limit: max_buffer_bytes {buffer_bytes / MIB:.0f} MiB, "
                f"max_buffer_records {entry['kingest_max_buffer_records']:,})"
                if isinstance(buffer_bytes, int)
                else ""
            )
            lines.append(f"{endpoint}: memory, peak RSS: {parts}{limit}")
    return lines


def _memory_lines(check: dict[str, Any]) -> list[str]:
    (n_small, n_large) = check["records"]
    (rss_small, rss_large) = check["peak_rss_mib"]
    (start_small, start_large) = check["startup_rss_mib"]
    buffer_bytes = check["max_buffer_bytes"]
    buffer_records = check["max_buffer_records"]
    lines = [
        f"peak RSS with {n_small:,} records: {_fmt_float(rss_small, 1)} MiB; "
        f"with {n_large:,} records: {_fmt_float(rss_large, 1)} MiB",
        f"RSS at the start of the run (interpreter and imports): "
        f"{_fmt_float(start_small, 1)} / {_fmt_float(start_large, 1)} MiB",
    ]
    if isinstance(buffer_bytes, int):
        lines.append(
            f"configured buffer limit: max_buffer_bytes {buffer_bytes / MIB:.0f} MiB "
            f"(max_buffer_records {buffer_records:,})"
        )
    if None not in (rss_small, rss_large, start_small, start_large):
        growth_small = rss_small - start_small
        growth_large = rss_large - start_large
        lines.append(
            f"growth over start-up: {growth_small:.1f} MiB with {n_small:,} records, "
            f"{growth_large:.1f} MiB with {n_large:,} (10× the records: "
            f"{rss_large - rss_small:+.1f} MiB of peak RSS)"
        )
    return lines


def _check_lines(rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    for row in rows:
        name = f"{row['endpoint']} {LABELS.get(row['implementation'], row['implementation'])}"
        lines.append(
            f"{name}: worker process in all {row['process_cpu_s']:.2f} s CPU (wait4) and "
            f"{row['process_wall_s']:.1f} s wall; measured phase {row['cpu_s']:.2f} s CPU, "
            f"{row['wall_s']:.1f} s to deliver"
        )
        found = row["read_back"]
        if found is not None:
            lines.append(
                f"{name}: read back {found['distinct']:,} of {row['records']:,} records "
                f"({found['duplicates']:,} duplicates) in {found['kinesis_records']:,} Kinesis "
                f"records of {found['kinesis_bytes']:,} bytes (data + key)"
            )
        counts = row["endpoint_counts"]
        if counts is not None:
            agree = (
                counts["put_records_requests"] == row["requests"]
                and counts["kinesis_records"] == row["kinesis_records"]
            )
            lines.append(
                f"{name}: the endpoint saw {counts['put_records_requests']:,} PutRecords "
                f"requests, {counts['kinesis_records']:,} Kinesis records, "
                f"{counts['body_bytes']:,} bytes of request bodies"
                + ("" if agree else " (differs from the client's count)")
            )
        if row["dropped"] or row["failed"] or row["unsent"]:
            lines.append(
                f"{name}: {row['dropped']:,} dropped before sending, {row['failed']:,} failed, "
                f"{row['unsent']:,} never sent" + (" (timed out)" if row["timed_out"] else "")
            )
        if row["error"]:
            lines.append(f"{name}: ERROR {row['error']}")
    return lines


def _notes(settings: dict[str, Any]) -> list[str]:
    return [
        "records: records accepted, as each implementation counts them; "
        "records/s: those over the time from creating the client until all were accepted.",
        "CPU: user + system time of the worker process (all threads) from creating the client "
        "until it is closed, per record accepted; interpreter start-up and imports are left out "
        "(whole-process figures from wait4 are in --json).",
        "requests, Kinesis records: PutRecords calls and the Kinesis records accepted in them "
        "(kingest aggregates many user records into one Kinesis record).",
        "bytes sent: data + partition key of the user records accepted (kingest: its "
        "stats()['bytes_sent']; boto3 loop and seed: counted client-side); the seed adds "
        "'source' and 'ingestion_timestamp' to every record.",
        "peak RSS: the worker process's own high-water mark (VmHWM).",
        "lost: records put but not in the stream when read back (embedded"
        + (", custom with --read-back" if settings.get("endpoint_url") else "")
        + "); else records not accepted. kingest must lose none.",
    ]
