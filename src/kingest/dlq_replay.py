"""Replaying the dead-letter queue and describing it: ``kingest dlq replay`` and ``dlq list``.

:func:`replay_files` sends entries back through a caller-supplied ``send`` and removes the ones
delivered (at-least-once: a crash mid-replay may send some twice, never loses one), and
:func:`summarize` describes the queue.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kingest.dlq import (
    NONE_KEY,
    DeadLetterQueue,
    DlqEntry,
    _fsync_directory,
    _read_lines,
    _write_all,
)
from kingest.dlq_entry import _iso
from kingest.errors import ConfigError
from kingest.record import DlqReason

__all__ = ["ReplaySummary", "replay_files", "summarize"]

logger = logging.getLogger(__name__)

# Replay writes the new version of a file here first; the leading dot and the suffix keep it out
# of :meth:`DeadLetterQueue.files` so a crash between write and rename never shows a half file.
_TMP_PREFIX = ".dlq-replay-"
_TMP_SUFFIX = ".tmp"


@dataclass(slots=True)
class ReplaySummary:
    """What :func:`replay_files` did.

    Attributes:
        files: files processed.
        files_removed: files deleted because every entry in them was delivered.
        entries_seen: readable entries read (replayed + failed_again + skipped).
        replayed: entries delivered and removed from the DLQ.
        failed_again: entries sent but not delivered; they stay in the DLQ.
        skipped: entries left out by the ``reasons`` filter; they stay in the DLQ.
        unreadable_lines: lines that could not be read; they stay in their file untouched.
    """

    files: int = 0
    files_removed: int = 0
    entries_seen: int = 0
    replayed: int = 0
    failed_again: int = 0
    skipped: int = 0
    unreadable_lines: int = 0


def replay_files(
    dlq: DeadLetterQueue,
    send: Callable[[Sequence[DlqEntry]], Sequence[bool]],
    *,
    reasons: set[DlqReason] | None = None,
    batch_size: int = 500,
) -> ReplaySummary:
    """Send dead-lettered entries again and remove the ones delivered (at-least-once).

    The files present when the call starts are processed oldest first, after closing the file
    ``dlq`` is writing (later writes go to new files, which this call leaves alone). Once a file
    has been fully processed it is replaced atomically (temporary file, fsync, rename, fsync of
    the directory) by one holding only what was not delivered: entries that failed again,
    entries filtered out, and unreadable lines byte for byte; it is deleted when nothing
    remains. A crash or an exception mid-file leaves that file unchanged, so nothing is lost; at
    worst entries already delivered are sent again on the next replay.

    This helper knows nothing about the producer. ``send`` decides what "delivered" means;
    whatever it does with a failure (e.g. a producer dead-lettering the entry again) is its
    business. The CLI gives it a producer whose own DLQ is another directory (or disabled), so a
    failed replay never writes into the directory being replayed.

    Args:
        dlq: the dead-letter queue to replay.
        send: takes a batch of at most ``batch_size`` entries and returns, for each entry in
            order, True when it was delivered. It may raise; the current file is then left as
            it was and the exception propagates.
        reasons: only replay entries with one of these reasons (others are kept); None replays
            every reason.
        batch_size: the largest batch given to ``send``.

    Returns:
        Counts of what was seen, delivered, kept and skipped.

    Raises:
        ConfigError: ``batch_size`` is below 1.
        ValueError: ``send`` returned a different number of results than entries it was given
            (the current file is left unchanged).
        OSError: a file could not be read, rewritten or deleted.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    summary = ReplaySummary()
    files = dlq._seal()
    _remove_stale_temporaries(dlq.directory)
    for path in files:
        try:
            _replay_file(path, send, reasons, batch_size, summary)
        except FileNotFoundError:
            # Deleted meanwhile (max_files rotation or a concurrent replay): nothing to keep.
            continue
    if summary.unreadable_lines:
        logger.warning(
            "Dead-letter replay kept %d unreadable lines in place.", summary.unreadable_lines
        )
    return summary


def _replay_file(
    path: Path,
    send: Callable[[Sequence[DlqEntry]], Sequence[bool]],
    reasons: set[DlqReason] | None,
    batch_size: int,
    summary: ReplaySummary,
) -> None:
    # Raw bytes of every line, in order; a kept line is written back exactly as it was read.
    raws: list[bytes] = []
    delivered_lines: set[int] = set()
    batch: list[DlqEntry] = []
    batch_lines: list[int] = []
    seen = failed = skipped = unreadable = 0

    def flush() -> None:
        nonlocal failed
        if not batch:
            return
        results = list(send(list(batch)))
        if len(results) != len(batch):
            raise ValueError(
                f"send returned {len(results)} results for a batch of {len(batch)} entries"
            )
        for index, ok in zip(batch_lines, results, strict=True):
            if ok:
                delivered_lines.add(index)
            else:
                failed += 1
        batch.clear()
        batch_lines.clear()

    for line in _read_lines(path):
        # A truncated last line gets its newline back so nothing written after it is glued on.
        raws.append(line.raw if line.raw.endswith(b"\n") else line.raw + b"\n")
        if line.entry is None:
            unreadable += 1
            continue
        seen += 1
        if reasons is not None and line.entry.reason not in reasons:
            skipped += 1
            continue
        batch_lines.append(len(raws) - 1)
        batch.append(line.entry)
        if len(batch) >= batch_size:
            flush()
    flush()

    # Only now, with the whole file decided, does anything on disk change.
    delivered = len(delivered_lines)
    if delivered:
        remaining = [raw for index, raw in enumerate(raws) if index not in delivered_lines]
        if remaining:
            _atomic_rewrite(path, remaining)
        else:
            path.unlink()
            _fsync_directory(path.parent)
            summary.files_removed += 1
    summary.files += 1
    summary.entries_seen += seen
    summary.replayed += delivered
    summary.failed_again += failed
    summary.skipped += skipped
    summary.unreadable_lines += unreadable
    logger.info(
        "Replayed dead-letter file %s: %d delivered, %d failed again, %d skipped.",
        path,
        delivered,
        failed,
        skipped,
    )


def _atomic_rewrite(path: Path, lines: list[bytes]) -> None:
    """Replace ``path`` with ``lines`` so a crash leaves either the old or the new file."""
    tmp = path.with_name(f"{_TMP_PREFIX}{path.name}{_TMP_SUFFIX}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        _write_all(fd, b"".join(lines))
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)
    _fsync_directory(path.parent)


def _remove_stale_temporaries(directory: Path) -> None:
    """Delete replay temporaries left by a crash; the file each one was replacing is intact."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return
    for name in names:
        if name.startswith(_TMP_PREFIX) and name.endswith(_TMP_SUFFIX):
            (directory / name).unlink(missing_ok=True)


def summarize(dlq: DeadLetterQueue) -> dict[str, Any]:
    """Describe the queue's contents, for ``kingest dlq list``.

    Args:
        dlq: the dead-letter queue to describe.

    Returns:
        A JSON-serializable dict: ``directory``, ``total_entries``, ``by_reason``,
        ``by_source``, ``by_error_code`` (counts, largest first; None appears as
        :data:`NONE_KEY`), ``oldest_dead_lettered_at`` / ``newest_dead_lettered_at`` (epoch
        seconds or None) with ``_iso`` twins, ``unreadable_lines``, and ``files`` (each
        ``{"path", "bytes"}``, oldest first).
    """
    by_reason: Counter[str] = Counter()
    by_source: Counter[str] = Counter()
    by_error_code: Counter[str] = Counter()
    oldest: float | None = None
    newest: float | None = None
    total = 0
    errors: list[tuple[Path, int, str]] = []
    for _, _, entry in dlq.entries(errors=errors):
        total += 1
        by_reason[entry.reason.value] += 1
        by_source[entry.source if entry.source is not None else NONE_KEY] += 1
        by_error_code[entry.error_code if entry.error_code is not None else NONE_KEY] += 1
        at = entry.dead_lettered_at
        oldest = at if oldest is None else min(oldest, at)
        newest = at if newest is None else max(newest, at)
    files: list[dict[str, Any]] = []
    for path in dlq.files():
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            continue
        files.append({"path": str(path), "bytes": size})
    return {
        "directory": str(dlq.directory),
        "total_entries": total,
        "by_reason": dict(by_reason.most_common()),
        "by_source": dict(by_source.most_common()),
        "by_error_code": dict(by_error_code.most_common()),
        "oldest_dead_lettered_at": oldest,
        "oldest_dead_lettered_at_iso": _iso(oldest),
        "newest_dead_lettered_at": newest,
        "newest_dead_lettered_at_iso": _iso(newest),
        "unreadable_lines": len(errors),
        "files": files,
    }
