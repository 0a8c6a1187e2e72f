"""The demo's proof: the stream read back, each record matched to what was produced.

A record belongs to the run when it carries the run's tag: the ``rid`` query parameter of a
logged request, the ``event_id`` of a reading, an application event or a simulated change, or,
for captured changes, one of the run's own tables. Each is counted once per source (a retried
request may store a record twice; the duplicate is reported, not counted), and captured changes
are checked to come back in commit order per row.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson

from kingest.demo.run import DemoRun
from kingest.producer.transport import KinesisTransport
from kingest.reader import iter_batches

__all__ = ["ReadBack", "build_report", "format_report", "read_back"]

# How long the stream must stay quiet, every shard caught up, before the read-back ends.
READ_IDLE_S = 1.0


@dataclass(slots=True)
class ReadBack:
    """What the read-back found of one run."""

    ids: dict[str, set[str]] = field(default_factory=dict)
    duplicates: Counter[str] = field(default_factory=Counter)
    out_of_order: int = 0
    others: int = 0
    total: int = 0


def _identify(obj: Any, run: DemoRun) -> tuple[str, str] | None:
    """The source and item id of a record of the run, or None."""
    if not isinstance(obj, dict):
        return None
    source = obj.get("source")
    if isinstance(source, dict):  # a captured change: the envelope's source block
        if source.get("name") == "database_cdc" and source.get("table") in run.cdc_tables:
            return "database_cdc", f"{source.get('txId')}:{obj['transaction']['total_order']}"
        return None
    if source == "web_logs":
        rid = str(obj.get("path", "")).rpartition("rid=")[2]
        return ("web_logs", rid) if rid.startswith(f"{run.run_id}-w-") else None
    event_id = obj.get("event_id")
    if isinstance(event_id, str) and event_id.startswith(f"{run.run_id}-"):
        return str(source), event_id
    return None


async def read_back(transport: KinesisTransport, stream: str, run: DemoRun) -> ReadBack:
    """Read the whole stream and find the run's records."""
    found = ReadBack()
    last_lsn: dict[str, int] = {}
    batches = iter_batches(transport, stream, until_idle_s=READ_IDLE_S)
    async with contextlib.aclosing(batches):
        async for batch in batches:
            for record in batch:
                found.total += 1
                try:
                    obj = orjson.loads(record.data)
                except orjson.JSONDecodeError:
                    found.others += 1
                    continue
                identity = _identify(obj, run)
                if identity is None:
                    found.others += 1
                    continue
                source, item = identity
                seen = found.ids.setdefault(source, set())
                if item in seen:
                    found.duplicates[source] += 1
                    continue
                seen.add(item)
                lsn = obj["source"].get("lsn") if isinstance(obj["source"], dict) else None
                if isinstance(lsn, int):
                    # One row's changes share a key, hence a shard: commit order is LSN order.
                    if lsn < last_lsn.get(record.partition_key, -1):
                        found.out_of_order += 1
                    last_lsn[record.partition_key] = lsn
    return found


def build_report(run: DemoRun, found: ReadBack, read_seconds: float) -> dict[str, Any]:
    """The per-source figures and the verdict, as a JSON-able dict."""
    producer: dict[str, Any] = next(iter(run.stats["streams"].values()), {})
    by_source = producer.get("by_source", {})
    sources: dict[str, dict[str, Any]] = {}
    for name, sent in run.produced.items():
        read = len(found.ids.get(name, ()))
        invalid = run.stats["sources"].get(name, {}).get("invalid", 0)
        dead = by_source.get(name, {}).get("failed", 0)
        sources[name] = {
            "sent": sent,
            "read_back": read,
            "lost": max(sent - read, 0),
            "dead_lettered": dead,
            "rejected": invalid,
            "duplicates": found.duplicates.get(name, 0),
            "throughput_per_s": read / run.seconds if run.seconds else 0.0,
            "input": run.inputs.notes.get(name, ""),
        }
    lost = sum(row["lost"] for row in sources.values())
    dead = sum(row["dead_lettered"] for row in sources.values())
    return {
        "run_id": run.run_id,
        "seconds": run.seconds,
        "read_seconds": read_seconds,
        "sources": sources,
        "notes": {k: v for k, v in run.inputs.notes.items() if k not in sources},
        "lost": lost,
        "dead_lettered": dead,
        "out_of_order": found.out_of_order,
        "kinesis_records": producer.get("kinesis_records", 0),
        "requests": producer.get("requests", 0),
        "dlq_dir": str(run.dlq_dir) if dead else None,
        "ok": lost == 0 and dead == 0 and found.out_of_order == 0,
    }


def format_report(report: dict[str, Any], where: str) -> str:
    """The report as a per-source table and the verdict."""
    header = ("source", "input", "sent", "read back", "lost", "dead-lettered", "records/s")
    rows = [
        (name, row["input"], f"{row['sent']:,}", f"{row['read_back']:,}", f"{row['lost']:,}",
         f"{row['dead_lettered']:,}", f"{row['throughput_per_s']:,.0f}")
        for name, row in report["sources"].items()
    ]  # fmt: skip
    widths = [max(len(line[i]) for line in (header, *rows)) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        head = [cells[0].ljust(widths[0]), cells[1].ljust(widths[1])]
        rest = [cell.rjust(width) for cell, width in zip(cells[2:], widths[2:], strict=True)]
        return " | ".join(head + rest)

    sent = sum(row["sent"] for row in report["sources"].values())
    out = [
        f"kingest demo: {where}; produced for {report['seconds']:.1f} s, read back in "
        f"{report['read_seconds']:.1f} s",
        "",
        line(header),
        "-+-".join("-" * width for width in widths),
        *(line(row) for row in rows),
        "",
    ]
    out.extend(f"{name}: {note}" for name, note in report["notes"].items())
    if report["lost"] == 0:
        out.append(
            f"0 lost: every one of {sent:,} records was read back from the stream "
            f"({report['kinesis_records']:,} Kinesis records in {report['requests']:,} requests)"
        )
    else:
        out.append(f"{report['lost']:,} lost of {sent:,}")
    if report["dead_lettered"]:
        out.append(f"{report['dead_lettered']:,} dead-lettered: see {report['dlq_dir']}")
    if report["out_of_order"]:
        out.append(f"{report['out_of_order']:,} captured changes came back out of row order")
    elif report["sources"].get("database_cdc", {}).get("read_back"):
        out.append("database_cdc: every row's changes came back in commit order")
    return "\n".join(out)
