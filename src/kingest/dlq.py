"""The dead-letter queue: durable JSON-lines files for records Kinesis will never take.

A record that cannot be delivered (non-retryable error, too large, expired time-to-live, bad
input, ...) is written here with its reason. Its source position is acknowledged as soon as
:meth:`DeadLetterQueue.write` returns, so that call only returns once the entries are on disk
(one ``fsync`` per file touched, plus the directory when a file is created).

Layout: ``<directory>/dlq-YYYYmmddTHHMMSS-<seq>.jsonl``, one :class:`DlqEntry` per line (see
:meth:`DlqEntry.to_json`). ``<seq>`` grows across restarts and gives the order of the files; the
timestamp (UTC, when the file was created) is for humans. One process writes a directory.

Replaying entries and describing the queue are :mod:`kingest.dlq_replay`'s job.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType

import orjson

from kingest.dlq_entry import DlqEntry
from kingest.errors import ConfigError

__all__ = [
    "NONE_KEY",
    "DeadLetterQueue",
    "DlqEntry",
]

logger = logging.getLogger(__name__)

# The key :func:`kingest.dlq_replay.summarize` uses for entries whose source / error code is
# None (JSON object keys must be strings).
NONE_KEY = "(none)"

_FILE_RE = re.compile(r"^dlq-(\d{8}T\d{6})-(\d+)\.jsonl$")


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
