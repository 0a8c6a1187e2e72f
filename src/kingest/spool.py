"""The spool: a durable on-disk FIFO of opaque items, for sources that cannot replay their input.

A source that has already told its client "accepted" (the HTTP source's ``202``) owns the data
from then on. It writes the items here and answers only once :meth:`Spool.write` returned: from
that moment the items survive a crash (``kill -9``, and a power loss as far as ``fsync`` gives
that) until :meth:`Spool.commit` marks them done. After a restart :meth:`Spool.pending` gives
back every item written and not committed, in order, once.

Layout of ``<directory>``::

    spool-000000000001.seg   items 1..N, named by the sequence number of the first one
    spool-000000000421.seg   items 421.. (the last segment is the one appended to)
    committed                the committed mark as decimal text, e.g. ``b"420\\n"``

Each item is one frame (:mod:`kingest.spool_format`: a 16-byte header with the payload's length,
its sequence number and a CRC, then the payload). Sequence numbers start at 1 and never repeat,
across restarts too: when every segment has been deleted, the committed mark carries the last one
forward.

Durability, per step:

- :meth:`Spool.write`: all the frames of the call in one ``write``, then one ``fsync`` of the
  segment; when the call created the segment (or is the first since the open), also one
  ``fsync`` of the directory. A write that fails is cut back off the segment, so none of its
  items counts as written.
- :meth:`Spool.commit`: the mark goes to ``committed.tmp`` (``fsync``), is renamed over
  ``committed`` and the directory is fsync'd; only then are segments holding nothing but done
  items unlinked (oldest first, no further ``fsync``: a segment that comes back after a crash
  holds only items the mark already covers, and the next open deletes it).

Repair on open: a frame cut short or failing its CRC at the tail of the last segment is a torn
write (a crash during a write that never returned); the segment is truncated there and
fsync'd. Any other damage (a bad frame followed by an intact one, a bad frame in an earlier
segment, a gap in the sequence numbers after the mark) is corruption: :class:`SpoolError`
names the file and the offset, and nothing is skipped silently.

One process uses a directory at a time (an exclusive ``flock`` on it while open).
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from kingest.errors import ConfigError, KingestError
from kingest.spool_format import (
    HEADER_BYTES,
    MAX_ITEM_BYTES,
    encode,
    frame_at,
    intact_frame_from,
)

__all__ = ["DEFAULT_SEGMENT_BYTES", "MAX_ITEM_BYTES", "Spool", "SpoolError"]

logger = logging.getLogger(__name__)

DEFAULT_SEGMENT_BYTES = 16 * 1024 * 1024


_SEGMENT_RE = re.compile(r"^spool-(\d+)\.seg$")
_MARK_NAME = "committed"
_MARK_TMP_NAME = "committed.tmp"
_MARK_RE = re.compile(rb"^(\d+)\n?$")


class SpoolError(KingestError):
    """The spool cannot be read or written: corruption before the tail of the last segment, a
    gap in the sequence numbers, an I/O error, a directory already in use, a closed spool.

    The message names the file and, for damage, the byte offset.
    """

    retriable = False


@dataclass(eq=False)  # compared by identity: a concurrent commit may have deleted it
class _Segment:
    """One segment file as the spool tracks it."""

    first: int  # sequence number of its first item (the number in its name)
    path: Path
    size: int  # bytes, as written and fsync'd


def _segment_name(first: int) -> str:
    return f"spool-{first:012d}.seg"


def _write_all(fd: int, data: bytes) -> None:
    """Write every byte (``os.write`` may write fewer than asked)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _make_directory(directory: Path) -> None:
    """Create ``directory`` and its missing parents, each made durable in its parent."""
    missing: list[Path] = []
    current = directory
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
        fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class Spool:
    """A durable FIFO of opaque items in segment files, each item with a sequence number.

    Thread-safe: :meth:`write` and :meth:`commit` may run in different threads; one internal
    lock serializes them (a commit waits for a write's ``fsync``). Usable as a context manager;
    :meth:`close` on exit.

    Args:
        directory: where the segments and the mark live; created with its parents if missing.
        segment_bytes: a write that would take the last segment past this size goes to a new
            segment. A write is never split, so a write larger than this fills a segment of its
            own.

    Raises:
        ConfigError: ``segment_bytes`` is below 1.
        SpoolError: the directory cannot be created, read or locked (another :class:`Spool` has
            it open), the mark is unreadable, or a segment is corrupt (see the module docstring
            for what is repaired and what is refused).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
    ) -> None:
        """Open (creating the directory if missing) or create a spool; repair a torn tail; read
        the committed mark."""
        if segment_bytes < 1:
            raise ConfigError(f"segment_bytes must be at least 1, got {segment_bytes}")
        self._directory = Path(directory)
        self._segment_bytes = segment_bytes
        self._lock = threading.Lock()
        self._segments: list[_Segment] = []
        self._fd: int | None = None  # the last segment, open for appending
        self._dir_fd: int | None = None
        self._dir_unsynced = False  # a segment was created and the directory not fsync'd since
        self._failed: SpoolError | None = None
        self._committed = 0
        self._last = 0
        self._bytes = 0
        try:
            _make_directory(self._directory)
            self._dir_fd = os.open(self._directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise SpoolError(f"cannot open spool directory {self._directory}: {exc}") from exc
        try:
            try:
                # Two writers on one directory would interleave frames and reuse numbers.
                fcntl.flock(self._dir_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise SpoolError(
                    f"spool directory {self._directory} is in use by another spool"
                ) from exc
            self._recover()
        except BaseException:
            self._close_files()
            raise

    def __enter__(self) -> Spool:
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
        """The directory holding the segments and the mark."""
        return self._directory

    @property
    def committed(self) -> int:
        """Highest sequence number committed as done (0: none)."""
        return self._committed

    @property
    def last(self) -> int:
        """Highest sequence number written (equal to :attr:`committed` when nothing pends)."""
        return self._last

    @property
    def bytes_on_disk(self) -> int:
        """Total size in bytes of the segment files still held."""
        return self._bytes

    # -- opening -------------------------------------------------------------------------------

    def _recover(self) -> None:
        """Read the mark, check every segment, repair a torn tail, delete done segments."""
        self._committed = self._read_mark()
        try:
            (self._directory / _MARK_TMP_NAME).unlink()  # a commit that crashed before rename
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise SpoolError(f"cannot remove {self._directory / _MARK_TMP_NAME}: {exc}") from exc

        segments = self._list_segments()
        ends: list[int] = []  # sequence number of the last item of each segment
        for index, segment in enumerate(segments):
            count = self._check_segment(segment, is_last=index == len(segments) - 1)
            ends.append(segment.first + count - 1)

        # Whatever is missing must be covered by the mark: before the first segment, or
        # between two segments (a commit unlinks oldest first, but a crash may keep any subset
        # of those unlinks). Anything above the mark that is missing is lost data.
        previous_end = 0
        for segment, end in zip(segments, ends, strict=True):
            if segment.first <= previous_end:
                raise SpoolError(
                    f"spool segment {segment.path} starts at item {segment.first}, which an "
                    f"earlier segment already holds"
                )
            expected = max(previous_end, self._committed) + 1
            if segment.first > expected:
                raise SpoolError(
                    f"spool segment {segment.path} starts at item {segment.first} but items "
                    f"{expected}..{segment.first - 1} are in no segment and not committed "
                    f"(mark {self._committed})"
                )
            previous_end = end
        self._segments = segments
        self._bytes = sum(segment.size for segment in segments)
        self._last = max(previous_end, self._committed)
        self._delete_done_segments()
        # The last segment's name may not be durable yet (a crash between its data fsync and
        # the directory fsync): the first write after an open fsyncs the directory again.
        self._dir_unsynced = True
        if self._segments:
            last_segment = self._segments[-1]
            try:
                self._fd = os.open(last_segment.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            except OSError as exc:
                raise SpoolError(f"cannot open spool segment {last_segment.path}: {exc}") from exc

    def _read_mark(self) -> int:
        path = self._directory / _MARK_NAME
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise SpoolError(f"cannot read spool mark {path}: {exc}") from exc
        match = _MARK_RE.match(raw)
        if match is None:
            raise SpoolError(f"spool mark {path} is not a sequence number: {raw[:40]!r}")
        return int(match.group(1))

    def _list_segments(self) -> list[_Segment]:
        try:
            names = os.listdir(self._directory)
        except OSError as exc:
            raise SpoolError(f"cannot list spool directory {self._directory}: {exc}") from exc
        segments: list[_Segment] = []
        for name in names:
            match = _SEGMENT_RE.match(name)
            if match is not None:
                segments.append(_Segment(int(match.group(1)), self._directory / name, 0))
        segments.sort(key=lambda segment: segment.first)
        return segments

    def _check_segment(self, segment: _Segment, *, is_last: bool) -> int:
        """Check every frame of a segment; truncate a torn tail of the last one.

        Returns:
            How many items the segment holds (after any repair).

        Raises:
            SpoolError: damage that is not a torn tail of the last segment, or an I/O error.
        """
        try:
            data = segment.path.read_bytes()
        except OSError as exc:
            raise SpoolError(f"cannot read spool segment {segment.path}: {exc}") from exc
        buf = memoryview(data)
        offset, seq = 0, segment.first
        while offset < len(buf):
            after = frame_at(buf, offset, seq)
            if after is None:
                break
            offset, seq = after, seq + 1
        count = seq - segment.first
        if offset < len(buf):
            where = f"spool segment {segment.path} at offset {offset} (item {seq})"
            if not is_last:
                raise SpoolError(f"corrupt {where}: a bad frame in a segment that is not the last")
            intact = intact_frame_from(buf, offset, seq)
            if intact is not None:
                raise SpoolError(
                    f"corrupt {where}: a bad frame followed by an intact one at offset {intact}"
                )
            self._truncate(segment.path, offset)
            logger.warning(
                "Truncated a torn write at the tail of a spool segment.",
                extra={
                    "path": str(segment.path),
                    "offset": offset,
                    "dropped_bytes": len(buf) - offset,
                },
            )
        segment.size = offset
        return count

    def _truncate(self, path: Path, size: int) -> None:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.ftruncate(fd, size)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise SpoolError(
                f"cannot truncate spool segment {path} at offset {size}: {exc}"
            ) from exc

    # -- reading -------------------------------------------------------------------------------

    def pending(self) -> Iterator[tuple[int, bytes]]:
        """Every item written and not committed, in order.

        Meant for the start, before new writes: it covers the items written when it is called,
        reads one segment at a time, and skips segments a concurrent commit deleted.

        Returns:
            An iterator of ``(sequence number, item)``.

        Raises:
            SpoolError: the spool is closed; while iterating, a segment cannot be read or no
                longer checks out.
        """
        with self._lock:
            self._check_open()
            segments = list(self._segments)
            last = self._last
        return self._iter_pending(segments, last)

    def _iter_pending(self, segments: list[_Segment], last: int) -> Iterator[tuple[int, bytes]]:
        for segment in segments:
            with self._lock:
                self._check_open()
                if segment not in self._segments:
                    continue  # deleted by a commit: every item in it is done
                committed = self._committed
                if segment.first > last:
                    return
                data = self._read_segment(segment)
            buf = memoryview(data)
            offset, seq = 0, segment.first
            while offset < len(buf) and seq <= last:
                after = frame_at(buf, offset, seq)
                if after is None:
                    raise SpoolError(
                        f"corrupt spool segment {segment.path} at offset {offset} (item {seq})"
                    )
                if seq > committed:
                    yield seq, bytes(buf[offset + HEADER_BYTES : after])
                offset, seq = after, seq + 1

    def _read_segment(self, segment: _Segment) -> bytes:
        """Read a segment's bytes as written so far (the caller holds the lock)."""
        try:
            with segment.path.open("rb") as file:
                data = file.read(segment.size)
        except OSError as exc:
            raise SpoolError(f"cannot read spool segment {segment.path}: {exc}") from exc
        if len(data) != segment.size:
            raise SpoolError(
                f"spool segment {segment.path} is {len(data)} bytes, {segment.size} were written"
            )
        return data

    # -- writing -------------------------------------------------------------------------------

    def write(self, items: Sequence[bytes]) -> int:
        """Append items, durably, with the next consecutive sequence numbers.

        One ``write`` and one ``fsync`` for the whole call (plus one ``fsync`` of the directory
        when the call starts a segment): callers batch many requests into one call.

        Args:
            items: the items, in order; an empty sequence does nothing and touches no file.

        Returns:
            The sequence number of the last item (:attr:`last` when ``items`` is empty).

        Raises:
            ValueError: an item is longer than :data:`MAX_ITEM_BYTES`; nothing was written.
            SpoolError: the items could not be made durable (disk full, I/O error, ...) and none
                of them counts as written; or the spool is closed or unusable after an earlier
                failure that could not be undone.
        """
        if not items:
            return self._last
        with self._lock:
            self._check_open()
            first = self._last + 1
            data = encode(first, items)
            if self._fd is None or (
                self._segments[-1].size > 0
                and self._segments[-1].size + len(data) > self._segment_bytes
            ):
                self._start_segment(first)
            assert self._fd is not None
            segment = self._segments[-1]
            try:
                _write_all(self._fd, data)
                os.fsync(self._fd)
                if self._dir_unsynced:
                    self._sync_directory()
                    self._dir_unsynced = False
            except OSError as exc:
                self._undo_write(segment)
                raise SpoolError(
                    f"cannot write {len(items)} items to spool segment {segment.path} at offset "
                    f"{segment.size}: {exc}"
                ) from exc
            segment.size += len(data)
            self._bytes += len(data)
            self._last = first + len(items) - 1
            return self._last

    def _start_segment(self, first: int) -> None:
        """Close the last segment and create the next, named ``first`` (the lock is held)."""
        self._close_segment()
        path = self._directory / _segment_name(first)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC)
        except OSError as exc:
            raise SpoolError(f"cannot create spool segment {path}: {exc}") from exc
        self._fd = fd
        self._segments.append(_Segment(first, path, 0))
        # The name is made durable with the first write to it, in the same call.
        self._dir_unsynced = True

    def _undo_write(self, segment: _Segment) -> None:
        """After a failed write: cut the segment back to what was durable before it.

        Once ``fsync`` failed the kernel may have dropped the pages and a second ``fsync``
        could pass without writing them (https://wiki.postgresql.org/wiki/Fsync_Errors), so the
        bytes are removed rather than retried. If even that fails, the spool refuses further
        writes; a reopen repairs the tail.
        """
        assert self._fd is not None
        try:
            os.ftruncate(self._fd, segment.size)
            os.fsync(self._fd)
        except OSError as exc:
            self._failed = SpoolError(
                f"spool segment {segment.path} could not be cut back to offset {segment.size} "
                f"after a failed write ({exc}); reopen the spool to repair it"
            )
            logger.error(
                "A spool write failed and could not be undone; the spool takes no more writes.",
                extra={"path": str(segment.path), "offset": segment.size},
            )

    # -- committing ----------------------------------------------------------------------------

    def commit(self, seq: int) -> None:
        """Mark every item up to ``seq`` as done, durably, and delete the segments that hold
        nothing else.

        Args:
            seq: the highest done sequence number. A number at or below :attr:`committed` is
                ignored.

        Raises:
            ValueError: ``seq`` is above :attr:`last`.
            SpoolError: the mark could not be made durable (the old mark stands), or the spool is
                closed or unusable.
        """
        with self._lock:
            self._check_open()
            if seq > self._last:
                raise ValueError(f"cannot commit item {seq}: the last item written is {self._last}")
            if seq <= self._committed:
                return
            self._write_mark(seq)
            self._committed = seq
            self._delete_done_segments()

    def _write_mark(self, seq: int) -> None:
        tmp = self._directory / _MARK_TMP_NAME
        path = self._directory / _MARK_NAME
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                _write_all(fd, b"%d\n" % seq)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
            # Durable rename before any unlink: a segment must never vanish while the mark on
            # disk still says its items are pending.
            self._sync_directory()
        except OSError as exc:
            raise SpoolError(f"cannot write spool mark {path} (mark {seq}): {exc}") from exc

    def _delete_done_segments(self) -> None:
        """Unlink the oldest segments while all their items are committed (the lock is held).

        Oldest first and stopping at the first failure, so the segments left are always the
        newest ones. A failure only delays the deletion to the next commit.
        """
        while self._segments:
            segment = self._segments[0]
            end = self._segments[1].first - 1 if len(self._segments) > 1 else self._last
            if end > self._committed:
                return
            if len(self._segments) == 1:
                if segment.size == 0 and segment.first == self._last + 1:
                    return  # an empty last segment is reused by the next write
                self._close_segment()
            try:
                segment.path.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                logger.warning(
                    "Could not delete a done spool segment; the next commit tries again.",
                    extra={"path": str(segment.path), "error": str(exc)},
                )
                return
            self._segments.pop(0)
            self._bytes -= segment.size

    # -- files ---------------------------------------------------------------------------------

    def _sync_directory(self) -> None:
        assert self._dir_fd is not None
        os.fsync(self._dir_fd)

    def _check_open(self) -> None:
        if self._dir_fd is None:
            raise SpoolError(f"spool {self._directory} is closed")
        if self._failed is not None:
            raise self._failed

    def _close_segment(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def _close_files(self) -> None:
        self._close_segment()
        fd, self._dir_fd = self._dir_fd, None
        if fd is not None:
            os.close(fd)  # also releases the flock

    def close(self) -> None:
        """Close the files and release the directory. Later calls raise :class:`SpoolError`;
        closing twice is fine."""
        with self._lock:
            self._close_files()
