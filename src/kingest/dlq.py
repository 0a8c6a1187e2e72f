"""The dead-letter queue: durable JSON-lines files for records Kinesis will never take.

A record that cannot be delivered (non-retryable error, too large, expired time-to-live, bad
input, ...) is written here with its reason. Its source position is acknowledged as soon as
:meth:`DeadLetterQueue.write` returns, so that call only returns once the entries are on disk
(one ``fsync`` per file touched, plus the directory when a file is created).

Layout: ``<directory>/dlq-YYYYmmddTHHMMSS-<seq>.jsonl``, one :class:`DlqEntry` per line (see
:meth:`DlqEntry.to_json`). ``<seq>`` grows across restarts and gives the order of the files; the
timestamp (UTC, when the file was created) is for humans. One process writes a directory.

:func:`replay_files` sends entries back through a caller-supplied ``send`` and removes the ones
delivered (at-least-once), and :func:`summarize` describes the queue for ``kingest dlq list``.
"""

from __future__ import annotations

import base64
import binascii
import logging
import math
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson

from kingest.errors import ConfigError
from kingest.record import DlqReason

__all__ = [
    "NONE_KEY",
    "DeadLetterQueue",
    "DlqEntry",
    "ReplaySummary",
    "replay_files",
    "summarize",
]

logger = logging.getLogger(__name__)

# Format version written in every line ("v"), so a later reader can tell old lines apart.
FORMAT_VERSION = 1

# The key :func:`summarize` uses for entries whose source / error code is None (JSON object
# keys must be strings).
NONE_KEY = "(none)"

_FILE_RE = re.compile(r"^dlq-(\d{8}T\d{6})-(\d+)\.jsonl$")
# Replay writes the new version of a file here first; the leading dot and the suffix keep it out
# of :meth:`DeadLetterQueue.files` so a crash between write and rename never shows a half file.
_TMP_PREFIX = ".dlq-replay-"
_TMP_SUFFIX = ".tmp"

_STR_FIELDS = (
    "error_code",
    "error_message",
    "source",
    "stream",
    "partition_key",
    "explicit_hash_key",
)
_TIME_FIELDS = ("first_attempt_at", "last_attempt_at", "dead_lettered_at")
_MAX_ATTEMPTS = 2**63 - 1


@dataclass(frozen=True, slots=True)
class DlqEntry:
    """One dead-lettered record with everything needed to understand it and send it again.

    Attributes:
        reason: why the record was dead-lettered.
        error_code: the AWS error code behind the reason, when there is one.
        error_message: a human explanation of the reason.
        attempts: how many PutRecords attempts carried the record.
        source: name of the source that produced it.
        stream: the Kinesis stream it was meant for.
        partition_key: the partition key it was (or would have been) sent with.
        explicit_hash_key: the explicit hash key it was sent with, if any.
        payload: the record's data exactly as it would have been sent.
        first_attempt_at: epoch seconds of the first PutRecords attempt, if any.
        last_attempt_at: epoch seconds of the last PutRecords attempt, if any.
        dead_lettered_at: epoch seconds when the record was dead-lettered.

    Raises:
        TypeError: ``payload`` is not bytes-like or ``attempts`` is not an int.
        ValueError: ``attempts`` is negative (or beyond 64 bits), ``reason`` is not a
            :class:`DlqReason` value, or a time is not a finite number (times become floats).
    """

    reason: DlqReason
    error_code: str | None
    error_message: str | None
    attempts: int
    source: str | None
    stream: str | None
    partition_key: str | None
    explicit_hash_key: str | None
    payload: bytes
    first_attempt_at: float | None
    last_attempt_at: float | None
    dead_lettered_at: float

    def __post_init__(self) -> None:
        # Checked here rather than in to_json: a bad entry should fail where it is built (in
        # the producer, under test), not later when the DLQ must make it durable.
        if not isinstance(self.payload, bytes):
            if not isinstance(self.payload, bytearray | memoryview):
                raise TypeError("DlqEntry.payload must be bytes")
            object.__setattr__(self, "payload", bytes(self.payload))
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int):
            raise TypeError("DlqEntry.attempts must be an int")
        # JSON writers (orjson) stop at 64-bit integers.
        if not 0 <= self.attempts <= _MAX_ATTEMPTS:
            raise ValueError(f"DlqEntry.attempts must be between 0 and {_MAX_ATTEMPTS}")
        if not isinstance(self.reason, DlqReason):
            object.__setattr__(self, "reason", DlqReason(self.reason))
        for name in _TIME_FIELDS:
            value = getattr(self, name)
            if value is None and name != "dead_lettered_at":
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"DlqEntry.{name} must be a number of epoch seconds")
            try:
                seconds = float(value)
            except OverflowError:
                seconds = math.inf
            # NaN and infinities have no JSON form; they would come back as something else.
            if not math.isfinite(seconds):
                raise ValueError(f"DlqEntry.{name} must be a finite number of epoch seconds")
            object.__setattr__(self, name, seconds)

    def to_json(self) -> dict[str, Any]:
        """Describe the entry as one JSON object (a dict ready for ``orjson.dumps``).

        ``payload_b64`` always holds the exact bytes. ``payload`` is a view for humans: the
        parsed value when the bytes are valid UTF-8 JSON (``payload_format: "json"``; numbers
        beyond 64 bits read as floats there), the text when they are other valid UTF-8
        (``"text"``), else null (``"binary"``). Times appear as epoch seconds under their field
        name and as ISO 8601 UTC strings with microseconds under ``<name>_iso``. Strings that
        are not valid Unicode (lone surrogates) are stored with backslash escapes.

        Returns:
            A dict of JSON-serializable values; :meth:`from_json` turns it back into the entry.
        """
        payload_format, payload_view = _payload_view(self.payload)
        obj: dict[str, Any] = {
            "v": FORMAT_VERSION,
            "reason": self.reason.value,
            "error_code": _json_text(self.error_code),
            "error_message": _json_text(self.error_message),
            "attempts": self.attempts,
            "source": _json_text(self.source),
            "stream": _json_text(self.stream),
            "partition_key": _json_text(self.partition_key),
            "explicit_hash_key": _json_text(self.explicit_hash_key),
        }
        for name in _TIME_FIELDS:
            value: float | None = getattr(self, name)
            obj[name] = value
            obj[f"{name}_iso"] = _iso(value)
        obj["payload_format"] = payload_format
        obj["payload_bytes"] = len(self.payload)
        obj["payload_b64"] = base64.b64encode(self.payload).decode("ascii")
        # Last, so a human reading a line sees the metadata before a large payload.
        obj["payload"] = payload_view
        return obj

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> DlqEntry:
        """Rebuild an entry from :meth:`to_json` output (the payload comes from ``payload_b64``).

        Args:
            obj: a decoded JSON object. Unknown keys are ignored (later format versions may add
                some).

        Returns:
            The entry.

        Raises:
            ValueError: the object is not a DLQ entry (missing or mistyped field, unknown
                reason, bad base64). Messages never quote the payload.
        """
        if not isinstance(obj, dict):
            raise ValueError("a DLQ entry must be a JSON object")
        try:
            reason = DlqReason(obj["reason"])
        except KeyError:
            raise ValueError("missing field 'reason'") from None
        except ValueError:
            raise ValueError("unknown reason") from None
        strings: dict[str, str | None] = {}
        for name in _STR_FIELDS:
            value = obj.get(name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"field {name!r} must be a string or null")
            strings[name] = value
        times: dict[str, float | None] = {}
        for name in _TIME_FIELDS:
            value = obj.get(name)
            if value is None and name != "dead_lettered_at":
                times[name] = None
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"field {name!r} must be a number")
            times[name] = value
        attempts = obj.get("attempts")
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 0:
            raise ValueError("field 'attempts' must be a non-negative integer")
        encoded = obj.get("payload_b64")
        if not isinstance(encoded, str):
            raise ValueError("field 'payload_b64' must be a string")
        try:
            payload = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("field 'payload_b64' is not valid base64") from None
        dead_lettered_at = times["dead_lettered_at"]
        assert dead_lettered_at is not None  # checked above
        return cls(
            reason=reason,
            error_code=strings["error_code"],
            error_message=strings["error_message"],
            attempts=attempts,
            source=strings["source"],
            stream=strings["stream"],
            partition_key=strings["partition_key"],
            explicit_hash_key=strings["explicit_hash_key"],
            payload=payload,
            first_attempt_at=times["first_attempt_at"],
            last_attempt_at=times["last_attempt_at"],
            dead_lettered_at=dead_lettered_at,
        )


def _payload_view(payload: bytes) -> tuple[str, Any]:
    """Return (payload_format, human-readable value) for the ``payload`` key."""
    try:
        value = orjson.loads(payload)
        # Parsing is not enough: orjson writes at most 254 levels of nesting.
        orjson.dumps(value)
    except (orjson.JSONDecodeError, orjson.JSONEncodeError):
        pass
    else:
        return "json", value
    try:
        return "text", payload.decode("utf-8")
    except UnicodeDecodeError:
        return "binary", None


def _json_text(value: str | None) -> str | None:
    """Return ``value`` unchanged, or with lone surrogates escaped so JSON can hold it."""
    if value is None:
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        # Refusing the entry would lose the record; an escaped name is still readable.
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def _iso(value: float | None) -> str | None:
    """Format epoch seconds as ``YYYY-mm-ddTHH:MM:SS.ffffffZ`` (None outside datetime's range)."""
    if value is None:
        return None
    try:
        moment = datetime.fromtimestamp(value, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return None
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _file_sort_key(path: Path) -> tuple[int, str]:
    match = _FILE_RE.match(path.name)
    assert match is not None  # only called on names that matched
    return int(match.group(2)), match.group(1)


def _fsync_directory(directory: Path) -> None:
    """Make a created, renamed or removed directory entry durable."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    """Write every byte (``os.write`` may write fewer than asked)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _count_lines(path: Path) -> int:
    """Count the non-blank lines of a file (what it holds, readable or not)."""
    count = 0
    with path.open("rb") as file:
        for line in file:
            if line.strip():
                count += 1
    return count


class _Line:
    """One line of a DLQ file as read: its raw bytes and the entry, or why it is unreadable."""

    __slots__ = ("entry", "error", "number", "raw")

    def __init__(self, number: int, raw: bytes, entry: DlqEntry | None, error: str | None) -> None:
        self.number = number
        self.raw = raw
        self.entry = entry
        self.error = error


def _read_lines(path: Path) -> Iterator[_Line]:
    """Read a DLQ file line by line, skipping blank lines.

    Raises:
        FileNotFoundError: the file does not exist (any more).
    """
    with path.open("rb") as file:
        for number, raw in enumerate(file, start=1):
            if not raw.strip():
                continue
            try:
                obj = orjson.loads(raw)
                entry = DlqEntry.from_json(obj)
            except ValueError as exc:  # orjson.JSONDecodeError is a ValueError
                if not raw.endswith(b"\n"):
                    message = f"truncated last line (likely a crash mid-write): {exc}"
                else:
                    message = f"unreadable line: {exc}"
                yield _Line(number, raw, None, message)
            else:
                yield _Line(number, raw, entry, None)


class DeadLetterQueue:
    """Rotating JSON-lines files in a directory: ``dlq-YYYYmmddTHHMMSS-<seq>.jsonl``.

    Nothing is created (not even the directory) until the first entry is written. Every
    instance starts a new file on its first write rather than appending to an old one: the last
    line of an old file may be a partial line from a crash, and appending after it would glue a
    good entry onto it.

    Args:
        directory: where the files live; created with its parents on first write.
        max_file_bytes: start a new file when the current one would grow past this size (a
            single entry larger than this gets a file of its own).
        max_files: when set, starting a new file deletes the oldest files beyond this many and
            counts the entries they held in :attr:`dropped_entries` (with a warning log). Those
            records were already acknowledged, so this loses them: the default None keeps
            every file.

    Raises:
        ConfigError: ``max_file_bytes`` or ``max_files`` is below 1.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        max_file_bytes: int = 64 * 1024 * 1024,
        max_files: int | None = None,
    ) -> None:
        if max_file_bytes < 1:
            raise ConfigError(f"max_file_bytes must be at least 1, got {max_file_bytes}")
        if max_files is not None and max_files < 1:
            raise ConfigError(f"max_files must be at least 1 or None, got {max_files}")
        self._directory = Path(directory)
        self._max_file_bytes = max_file_bytes
        self._max_files = max_files
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._path: Path | None = None
        self._size = 0
        self._next_seq: int | None = None
        self._total_written = 0
        self._dropped_entries = 0
        self._dropped_files = 0

    def __enter__(self) -> DeadLetterQueue:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def directory(self) -> Path:
        """The directory holding the files."""
        return self._directory

    @property
    def total_written(self) -> int:
        """Entries this instance has durably written."""
        return self._total_written

    @property
    def dropped_entries(self) -> int:
        """Entries deleted by ``max_files`` rotation (non-blank lines of the deleted files)."""
        return self._dropped_entries

    @property
    def dropped_files(self) -> int:
        """Files deleted by ``max_files`` rotation."""
        return self._dropped_files

    def write(self, entries: Sequence[DlqEntry]) -> None:
        """Append entries and return only once they are durable.

        Thread-safe. One ``fsync`` covers the whole call per file touched; creating a file also
        fsyncs the directory. Entries are never split across lines or lost on rotation.

        Args:
            entries: the entries to append, in order. An empty sequence does nothing.

        Raises:
            OSError: the entries could not be made durable (disk full, I/O error, ...). None of
                them may be treated as dead-lettered. The file in use is closed and the next
                write starts a new one, so a partial line never prefixes a later entry.
        """
        if not entries:
            return
        # Serialize outside the lock: it is the costly part and needs no shared state.
        lines = [orjson.dumps(e.to_json(), option=orjson.OPT_APPEND_NEWLINE) for e in entries]
        with self._lock:
            try:
                self._write_locked(lines)
            except BaseException:
                self._abandon_current_file()
                raise
            self._total_written += len(lines)

    def _write_locked(self, lines: list[bytes]) -> None:
        chunk: list[bytes] = []
        chunk_bytes = 0
        for line in lines:
            if self._fd is None:
                self._open_new_file()
            elif self._size + chunk_bytes > 0 and (
                self._size + chunk_bytes + len(line) > self._max_file_bytes
            ):
                self._flush_chunk(chunk)
                chunk, chunk_bytes = [], 0
                self._close_current_file()
                self._open_new_file()
            chunk.append(line)
            chunk_bytes += len(line)
        self._flush_chunk(chunk)

    def _flush_chunk(self, chunk: list[bytes]) -> None:
        if not chunk:
            return
        assert self._fd is not None
        data = b"".join(chunk)
        _write_all(self._fd, data)
        self._size += len(data)
        os.fsync(self._fd)

    def _open_new_file(self) -> None:
        if not self._directory.is_dir():
            self._make_directory()
        if self._next_seq is None:
            existing = self._list_files()
            self._next_seq = _file_sort_key(existing[-1])[0] + 1 if existing else 1
        while True:
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
            path = self._directory / f"dlq-{stamp}-{self._next_seq:06d}.jsonl"
            self._next_seq += 1
            try:
                fd = os.open(
                    path,
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC,
                    0o644,
                )
            except FileExistsError:
                continue
            break
        # Durable name before any entry in it counts as dead-lettered: fsync the directory now,
        # while the file is empty, so the data fsync that follows is all a write needs.
        try:
            _fsync_directory(self._directory)
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._path, self._size = fd, path, 0
        logger.debug("Started dead-letter file %s.", path)
        if self._max_files is not None:
            self._delete_oldest(self._max_files)

    def _make_directory(self) -> None:
        # Create missing parents one by one so each new entry can be fsynced in its parent.
        missing: list[Path] = []
        current = self._directory
        while not current.exists():
            missing.append(current)
            if current.parent == current:
                break
            current = current.parent
        for path in reversed(missing):
            try:
                path.mkdir()
            except FileExistsError:
                if not path.is_dir():
                    raise
                continue
            _fsync_directory(path.parent)

    def _delete_oldest(self, keep: int) -> None:
        files = self._list_files()
        excess = [path for path in files[: max(0, len(files) - keep)] if path != self._path]
        for path in excess:
            try:
                lines = _count_lines(path)
                path.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                # Trimming is housekeeping: it must never make a dead-letter write fail.
                logger.warning("Could not delete old dead-letter file %s: %s.", path, exc)
                continue
            self._dropped_files += 1
            self._dropped_entries += lines
            logger.warning(
                "Deleted dead-letter file %s holding %d entries because max_files is %d; "
                "%d entries dropped so far.",
                path,
                lines,
                keep,
                self._dropped_entries,
            )

    def _close_current_file(self) -> None:
        fd, self._fd, self._path, self._size = self._fd, None, None, 0
        if fd is not None:
            os.close(fd)

    def _abandon_current_file(self) -> None:
        """After a failed write: drop the file so the next write starts clean."""
        if self._fd is None:
            return
        logger.warning(
            "A dead-letter write to %s failed; the next write starts a new file.", self._path
        )
        try:
            self._close_current_file()
        except OSError as exc:
            logger.warning("Closing dead-letter file failed: %s.", exc)

    def _list_files(self) -> list[Path]:
        try:
            names = os.listdir(self._directory)
        except FileNotFoundError:
            return []
        paths = [self._directory / name for name in names if _FILE_RE.match(name)]
        return sorted(paths, key=_file_sort_key)

    def _seal(self) -> list[Path]:
        """Close the current file and list every file; none of them will be appended again."""
        with self._lock:
            self._close_current_file()
            return self._list_files()

    def files(self) -> list[Path]:
        """List the DLQ files, oldest first (by sequence number).

        Returns:
            Paths of the files; empty when the directory does not exist.
        """
        return self._list_files()

    def entries(
        self, errors: list[tuple[Path, int, str]] | None = None
    ) -> Iterator[tuple[Path, int, DlqEntry]]:
        """Read every entry of every file, oldest first.

        A line that cannot be read (corrupt, or the truncated last line of a crash mid-write)
        never stops the reading: it is reported and skipped. Blank lines are skipped silently.
        A file deleted while being listed is skipped.

        Args:
            errors: when given, ``(path, line number, message)`` is appended for each unreadable
                line; when None they are logged as warnings instead.

        Yields:
            ``(path, line number from 1, entry)``.
        """
        for path in self._list_files():
            try:
                for line in _read_lines(path):
                    if line.entry is not None:
                        yield path, line.number, line.entry
                        continue
                    assert line.error is not None
                    if errors is not None:
                        errors.append((path, line.number, line.error))
                    else:
                        logger.warning(
                            "Skipped line %d of dead-letter file %s: %s.",
                            line.number,
                            path,
                            line.error,
                        )
            except FileNotFoundError:
                continue

    def count(self) -> int:
        """Count the readable entries in every file (unreadable lines are not counted).

        Returns:
            The number of entries :meth:`entries` would yield.
        """
        return sum(1 for _ in self.entries(errors=[]))

    def close(self) -> None:
        """Close the current file. A later :meth:`write` starts a new file rather than failing,
        so a record dead-lettered during shutdown is never refused."""
        with self._lock:
            self._close_current_file()


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
