"""The ``kingest dlq`` command: describes the dead-letter queue and replays it into a stream.

``kingest dlq list`` summarizes a dead-letter directory (counts by reason, source and error
code, oldest and newest entry, files). ``kingest dlq replay`` sends its entries to a stream
again, each with its partition key, explicit hash key and source, and removes the ones
delivered; entries that fail again stay where they are. The replaying producer dead-letters its
own failures into ``<DIR>/replay-failures`` (a record of the failed attempt, never read by a
later replay of DIR), so a replay never writes into the files it is replaying.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from kingest.cli.common import add_aws_arguments
from kingest.config import ProducerConfig
from kingest.dlq import DeadLetterQueue, DlqEntry
from kingest.dlq_replay import ReplaySummary, replay_files, summarize
from kingest.errors import KingestError
from kingest.producer.producer import Producer
from kingest.record import DlqReason

log = logging.getLogger(__name__)

DEFAULT_DIR: str = ProducerConfig.model_fields["dlq_dir"].default
REPLAY_FAILURES = "replay-failures"  # subdirectory of DIR for the replaying producer's own DLQ
_REASONS = tuple(reason.value for reason in DlqReason)


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``dlq`` subcommand with its ``list`` and ``replay`` actions."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "dlq",
        help="inspect or replay the dead-letter queue",
        description="Inspect the dead-letter queue, or send its entries to a stream again.",
    )
    actions = parser.add_subparsers(dest="dlq_action", metavar="ACTION")

    def usage(args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    parser.set_defaults(handler=usage)

    list_parser = actions.add_parser(
        "list",
        help="summarize the dead-lettered records",
        description=(
            "Summarize a dead-letter directory: entries by reason, source and error code, the "
            "oldest and newest, and the files."
        ),
    )
    _add_dir_argument(list_parser)
    list_parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object (also when the queue is empty) instead of tables",
    )
    list_parser.set_defaults(handler=run_list)

    replay_parser = actions.add_parser(
        "replay",
        help="send dead-lettered records to a stream again",
        description=(
            "Send dead-lettered records to STREAM again with their partition keys, explicit "
            "hash keys and sources. Delivered entries are removed; entries that fail again "
            f"stay in DIR, and the failed attempt is also recorded in DIR/{REPLAY_FAILURES}. "
            "Prints a one-line JSON summary; exits 1 if any entry failed again."
        ),
    )
    replay_parser.add_argument(
        "--stream",
        required=True,
        help="stream name or ARN to send to (whatever stream an entry was meant for)",
    )
    _add_dir_argument(replay_parser)
    replay_parser.add_argument(
        "--reason",
        dest="reasons",
        action="extend",
        nargs="+",
        choices=_REASONS,
        metavar="REASON",
        help=f"replay only entries with these reasons (repeatable; one of: {', '.join(_REASONS)})",
    )
    replay_parser.add_argument(
        "--dry-run",
        action="store_true",
        help="count what would be replayed; send nothing, change nothing, contact nobody",
    )
    add_aws_arguments(replay_parser)
    replay_parser.set_defaults(handler=run_replay)
    return parser


def _add_dir_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dir",
        dest="directory",
        default=DEFAULT_DIR,
        metavar="DIR",
        help=f"dead-letter directory (default: {DEFAULT_DIR}, the producer's default)",
    )


# --- list ----------------------------------------------------------------------------------------


def run_list(args: argparse.Namespace) -> int:
    """Print the summary of a dead-letter directory.

    Returns:
        0.

    Raises:
        KingestError: the directory cannot be read.
    """
    try:
        summary = summarize(DeadLetterQueue(args.directory))
    except OSError as exc:
        raise KingestError(f"cannot read dead-letter directory {args.directory}: {exc}") from exc
    if args.json:
        sys.stdout.buffer.write(orjson.dumps(summary, option=orjson.OPT_APPEND_NEWLINE))
        sys.stdout.buffer.flush()
        return 0
    if not summary["total_entries"] and not summary["unreadable_lines"]:
        print(f"no dead-lettered records in {args.directory}")
        return 0
    print(format_summary(summary), end="")
    return 0


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _table(title: str, counts: dict[str, int]) -> list[str]:
    width = max([len(title), *(len(key) for key in counts)])
    count_width = max([len("entries"), *(len(str(n)) for n in counts.values())])
    lines = [f"{title:<{width}}  {'entries':>{count_width}}"]
    lines += [f"{key:<{width}}  {n:>{count_width}}" for key, n in counts.items()]
    return lines


def format_summary(summary: dict[str, Any]) -> str:
    """Render :func:`kingest.dlq.summarize` output as the human tables of ``dlq list``.

    Args:
        summary: the dict summarize() returned.

    Returns:
        Text ending with a newline.
    """
    files: list[dict[str, Any]] = summary["files"]
    total_bytes = sum(int(item["bytes"]) for item in files)
    plural = "entry" if summary["total_entries"] == 1 else "entries"
    lines = [
        f"{summary['directory']}: {summary['total_entries']} {plural} in {len(files)} "
        f"file{'' if len(files) == 1 else 's'} ({_size(total_bytes)})",
        f"oldest: {summary['oldest_dead_lettered_at_iso'] or '-'}",
        f"newest: {summary['newest_dead_lettered_at_iso'] or '-'}",
    ]
    if summary["unreadable_lines"]:
        lines.append(f"unreadable lines: {summary['unreadable_lines']} (left in place)")
    for title, key in (
        ("reason", "by_reason"),
        ("source", "by_source"),
        ("error code", "by_error_code"),
    ):
        lines.append("")
        lines += _table(title, summary[key])
    lines.append("")
    path_width = max([len("file"), *(len(item["path"]) for item in files)])
    lines.append(f"{'file':<{path_width}}  size")
    lines += [f"{item['path']:<{path_width}}  {_size(int(item['bytes']))}" for item in files]
    return "\n".join(lines) + "\n"


# --- replay --------------------------------------------------------------------------------------


def _summary_json(summary: ReplaySummary, *, dry_run: bool) -> bytes:
    return orjson.dumps(
        {
            "files": summary.files,
            "entries_seen": summary.entries_seen,
            "replayed": summary.replayed,
            "failed_again": summary.failed_again,
            "skipped": summary.skipped,
            "unreadable_lines": summary.unreadable_lines,
            "files_removed": summary.files_removed,
            "dry_run": dry_run,
        },
        option=orjson.OPT_APPEND_NEWLINE,
    )


def _dry_run(dlq: DeadLetterQueue, reasons: set[DlqReason] | None) -> ReplaySummary:
    """Count what a replay would do, touching nothing."""
    summary = ReplaySummary()
    errors: list[tuple[Path, int, str]] = []
    for _, _, entry in dlq.entries(errors=errors):
        summary.entries_seen += 1
        if reasons is not None and entry.reason not in reasons:
            summary.skipped += 1
    summary.files = len(dlq.files())
    summary.unreadable_lines = len(errors)
    return summary


def run_replay(args: argparse.Namespace) -> int:
    """Replay a dead-letter directory into a stream (or, with --dry-run, count what would be).

    Returns:
        0 when no entry failed again, else 1.

    Raises:
        StreamNotFoundError: the stream does not exist (nothing is changed).
        KingestError: the producer cannot start, or a file cannot be read or rewritten (the
            file being replayed is left as it was).
    """
    reasons = {DlqReason(value) for value in args.reasons} if args.reasons else None
    directory = Path(args.directory)
    dlq = DeadLetterQueue(directory)
    if args.dry_run:
        try:
            summary = _dry_run(dlq, reasons)
        except OSError as exc:
            raise KingestError(f"cannot read dead-letter directory {directory}: {exc}") from exc
        # In a dry run "replayed" is what would be sent: every readable entry not filtered out.
        summary.replayed = summary.entries_seen - summary.skipped
        sys.stdout.buffer.write(_summary_json(summary, dry_run=True))
        sys.stdout.buffer.flush()
        return 0
    other_streams: Counter[str] = Counter()
    with Producer(
        args.stream,
        endpoint_url=args.endpoint_url,
        region=args.region,
        profile=args.profile,
        dlq=DeadLetterQueue(directory / REPLAY_FAILURES),
    ) as producer:

        def send(entries: Sequence[DlqEntry]) -> list[bool]:
            futures = []
            for entry in entries:
                if entry.stream is not None and entry.stream != args.stream:
                    other_streams[entry.stream] += 1
                futures.append(
                    producer.put(
                        entry.payload,
                        partition_key=entry.partition_key,
                        explicit_hash_key=entry.explicit_hash_key,
                        source=entry.source,
                    )
                )
            # Every future resolves (delivered or dead-lettered) within the record time-to-live.
            return [future.result().delivered for future in futures]

        try:
            summary = replay_files(dlq, send, reasons=reasons)
        except OSError as exc:
            raise KingestError(f"cannot replay dead-letter directory {directory}: {exc}") from exc
    for stream, count in other_streams.items():
        log.warning(
            "Sent %d entries dead-lettered from stream %s to stream %s.",
            count,
            stream,
            args.stream,
        )
    sys.stdout.buffer.write(_summary_json(summary, dry_run=False))
    sys.stdout.buffer.flush()
    return 0 if summary.failed_again == 0 else 1
