"""Follow log files the way ``tail -F`` and the Kinesis Agent do, with committable positions.

:class:`FileTailer` yields batches of complete lines of every file matching its glob patterns,
each with its byte range, so a file's position is committed (:meth:`FileTailer.checkpoint_value`)
only once every line before it is done. A file is known by identity, not name: device + inode,
checked against a fingerprint of its first ``FP_BYTES`` bytes (extended while a small file
grows). A checkpoint value::

    {"dev": 2049, "ino": 1835012, "fp": "9f86d08...", "fp_len": 1024, "offset": 53211,
     "path": "/var/log/nginx/access.log"}

The contract around rotation, truncation and restarts:

- Rename rotation: the renamed file is read through its open handle and followed for
  ``rotated_follow_s`` (default 300 s: a writer keeps writing to the old file until it reopens
  its log, which some daemons only do at their next reload), counted from when a new file
  appears under its old name (or from when it left the glob, if none appears). A deleted file is
  closed once fully read and idle for one poll. A file renamed to a name that still matches a
  pattern is simply followed under that name.
- copytruncate / truncation: the size drops below our offset or the first bytes change, so
  reading restarts at 0 on the same file key; :meth:`FileTailer.files` counts ``truncations``.
- Partial last line: never yielded while the file may grow. When a rotated-out or deleted file
  is closed, or before a truncation, an unterminated last line is yielded with ``end`` at the end
  of the data (``end - offset == len(data)``), so no byte vanishes silently.
- Restart: a checkpointed file the patterns no longer match is searched by inode in the pattern
  directories and its recorded directory, checked against its fingerprint, and read from its
  committed offset to its end. A fingerprint mismatch (inode reuse, truncate-and-rewrite) means
  new data: read from 0. So is a file without a checkpoint sitting at a checkpoint's recorded
  path (the successor a rotation created while we were down). Other files present at start
  without a checkpoint begin per ``start`` (:meth:`FileTailer.take_start_positions` lists those
  started at their end); files appearing later are read from 0.

I/O: ``os.pread`` on the event loop (page-cache reads are short; parsing holds the GIL in any
thread anyway); directory scans (glob, scandir) can be slow and run in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import hashlib
import logging
import os
import stat
import time
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from kingest.errors import ConfigError
from kingest.sources.weblog.position import FP_BYTES, FilePosition

__all__ = ["FP_BYTES", "FileTailer", "TailLine"]

logger = logging.getLogger(__name__)

_Ident = tuple[int, int]  # (st_dev, st_ino)


_new_line = tuple.__new__


class TailLine(NamedTuple):
    """One line of a followed file (a tuple: built for every line, it must be cheap).

    Attributes:
        file_key: the file's identity string; the checkpoint key.
        path: the file's current name (its last known one once it is rotated away).
        offset: byte offset of the line's first byte.
        end: byte offset just after its newline: commit this. For a final unterminated line
            (see the module docs) it is the end of the data.
        data: the line without its newline (a trailing ``\\r`` is kept).
        line_number: 1-based number counted from where the tailer started reading this file's
            current content; None when it started mid-file (``start="end"`` or resumed).
        truncated: the line was longer than ``max_line_bytes``; ``data`` holds its first
            ``max_line_bytes`` bytes, the rest was skipped.
    """

    file_key: str
    path: str
    offset: int
    end: int
    data: bytes
    line_number: int | None
    truncated: bool = False


@dataclass(slots=True, eq=False)
class _File:
    """Read state of one file identity."""

    key: str
    ident: _Ident
    path: str  # current name, for lines and status
    followed_path: str  # the matched name it was followed under (checkpointed)
    fd: int  # -1 once closed
    head: bytes  # first up to FP_BYTES bytes seen
    pos: int = 0  # next byte to read
    buf: bytes = b""  # bytes of an incomplete line, ending at pos
    skip: bool = False  # discarding the rest of an over-long line
    over: bytes = b""  # the head of that line, yielded once its newline comes
    over_start: int = 0
    line_no: int | None = None
    emitted_end: int = 0  # end of the last yielded line (or where reading started)
    floor: int = 0  # where reading of the current content started
    size: int = 0
    mtime_ns: int = 0
    dropped_at: float | None = None  # when it left the glob matches
    successor_at: float | None = None  # when another file appeared under its name
    deleted: bool = False
    done: bool = False  # closed for good (deleted or rotated out, and read to the end)
    truncations: int = 0
    # Commits of lines yielded before a truncation may still arrive (see checkpoint_value).
    trunc_pending: int = 0
    trunc_max_end: int = 0
    last_commit: int | None = None

    def state(self) -> str:
        if self.fd < 0:
            return "closed"
        return "deleted" if self.deleted else "active" if self.dropped_at is None else "rotated"


class FileTailer:
    """Follow every file matching glob patterns and yield batches of lines with positions.

    Not thread-safe: use it from the event loop thread that iterates :meth:`batches`.
    """

    def __init__(
        self,
        patterns: Sequence[str],
        *,
        start: Literal["beginning", "end"] = "end",
        committed: Mapping[str, Any] | None = None,
        poll_interval_s: float = 0.25,
        rotated_follow_s: float = 300.0,
        max_line_bytes: int = 1 << 20,
        max_batch_lines: int = 5000,
        read_chunk_bytes: int = 256 << 10,
        max_batch_bytes: int = 8 << 20,
    ) -> None:
        """Set up the tailer; no file is touched until :meth:`batches` runs.

        Args:
            patterns: glob patterns (``~`` expanded, ``**`` allowed); made absolute.
            start: where to start a file present at start-up that has no checkpoint.
            committed: what ``CheckpointStore.load(source)`` returned for this source.
            poll_interval_s: how often the patterns are globbed again and files checked for
                rotation, truncation and deletion; also the wait when everything is read.
            rotated_follow_s: how long a rotated-out file is still followed (module docs).
            max_line_bytes: longer lines are yielded cut, with ``truncated=True``.
            max_batch_lines: most lines per batch.
            read_chunk_bytes: bytes per read call.
            max_batch_bytes: a batch stops growing once this many bytes were read for it.

        Raises:
            ConfigError: an argument is out of range (every problem is listed).
        """
        positive = {
            "poll_interval_s": poll_interval_s,
            "max_line_bytes": max_line_bytes,
            "max_batch_lines": max_batch_lines,
            "read_chunk_bytes": read_chunk_bytes,
            "max_batch_bytes": max_batch_bytes,
        }
        problems = [f"{n} must be positive, not {v!r}" for n, v in positive.items() if not v > 0]
        if not patterns or not all(patterns):
            problems.append("patterns must be a non-empty list of non-empty globs")
        if start not in ("beginning", "end"):
            problems.append(f"start must be 'beginning' or 'end', not {start!r}")
        if not rotated_follow_s >= 0:
            problems.append(f"rotated_follow_s must not be negative, not {rotated_follow_s!r}")
        if problems:
            raise ConfigError("; ".join(problems))
        self._patterns = [os.path.abspath(os.path.expanduser(p)) for p in patterns]
        self._start, self._poll, self._follow = start, poll_interval_s, rotated_follow_s
        self._max_line, self._max_lines = max_line_bytes, max_batch_lines
        self._chunk, self._max_bytes = read_chunk_bytes, max_batch_bytes
        self._live: dict[_Ident, _File] = {}  # open files
        self._by_key: dict[str, _File] = {}  # every file not yet forgotten, open or closed
        self._ready: list[TailLine] = []  # final partial lines, yielded before anything else
        self._stale: list[str] = []  # committed keys whose file is gone
        self._pending: dict[_Ident, list[FilePosition]] = {}  # committed, file not opened yet
        self._reserved: set[str] = set(committed or ())  # committed keys: not for new files
        self._started, self._rr = False, 0
        self._started_at_end: dict[str, int] = {}  # see take_start_positions
        self._warned: set[str] = set()
        for key, value in (committed or {}).items():
            cp = FilePosition.from_json(key, value)
            if cp is None:
                logger.warning("Ignoring an unreadable file checkpoint %r: %r.", key, value)
                self._stale.append(key)
            else:
                self._pending.setdefault(cp.ident, []).append(cp)
        self._checkpoint_paths = {cp.path for cps in self._pending.values() for cp in cps}

    async def batches(self, stop: asyncio.Event) -> AsyncIterator[list[TailLine]]:
        """Yield batches of lines until ``stop`` is set.

        Reads only as fast as the batches are taken (back-pressure), at most
        ``max_batch_lines`` lines per batch. Returns promptly once ``stop`` is set, without
        draining what is left. Open files are closed when the iteration ends.

        Args:
            stop: set it to end the iteration.

        Yields:
            Non-empty lists of :class:`TailLine`.

        Raises:
            RuntimeError: called a second time.
        """
        if self._started:
            raise RuntimeError("FileTailer.batches() can be iterated only once")
        self._started = True
        next_tick, initial = 0.0, True
        try:
            while not stop.is_set():
                if time.monotonic() >= next_tick:
                    await self._tick(initial)
                    initial, next_tick = False, time.monotonic() + self._poll
                    if stop.is_set():
                        return
                batch = self._read_batch()
                if batch:
                    yield batch
                    await asyncio.sleep(0)  # let the loop run even if the consumer never waits
                    continue
                timeout = next_tick - time.monotonic()
                if timeout > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout)
        finally:
            self.close()

    def checkpoint_value(self, file_key: str, end: int) -> Any:
        """The JSON value to store under ``file_key`` once every line before ``end`` is done.

        Call it in the order the lines were yielded (as an ack tracker commits): that order
        tells an ``end`` from before a truncation from one after it. An ``end`` that may predate
        it is stored as offset 0, so a restart reads the new content again, never skips it.

        Args:
            file_key: ``TailLine.file_key``.
            end: ``TailLine.end`` of the last done line.

        Returns:
            A dict of dev, ino, fp, fp_len, offset, path (see the module docs).

        Raises:
            KeyError: the key is unknown or already forgotten.
        """
        f = self._by_key[file_key]
        if f.trunc_pending:
            if f.last_commit is not None and end < f.last_commit:
                f.trunc_pending -= 1  # went down: crossed into a later content
            if end > f.trunc_max_end:
                f.trunc_pending = 0  # beyond anything yielded before the truncation
        offset = 0 if f.trunc_pending else end
        f.last_commit = end
        dev, ino = f.ident
        fp = hashlib.sha256(f.head).hexdigest()
        value = {"dev": dev, "ino": ino, "fp": fp, "fp_len": len(f.head), "offset": offset}
        value["path"] = f.followed_path
        return value

    def take_start_positions(self) -> dict[str, int]:
        """Files opened at their end (no checkpoint) since the last call: key -> offset.

        Commit these before any line of theirs, so a restart knows the files.
        """
        positions, self._started_at_end = self._started_at_end, {}
        return positions

    def forget(self, committed_ends: Mapping[str, int]) -> list[str]:
        """Keys whose checkpoints may be deleted; the tailer forgets them.

        These are files closed for good (deleted, or rotated out and past the follow window)
        whose last yielded line is committed, and checkpoints of files not found at start.

        Args:
            committed_ends: file key -> the ``end`` last committed for it.

        Returns:
            The keys to delete from the checkpoint store.
        """
        out, self._stale = self._stale, []
        for key, f in list(self._by_key.items()):
            # Only files finished for good: close() at shutdown must not lose their checkpoints.
            if f.done and (f.emitted_end == f.floor or committed_ends.get(key) == f.emitted_end):
                del self._by_key[key]
                out.append(key)
        self._reserved.difference_update(out)
        return out

    def files(self) -> list[dict[str, Any]]:
        """Status of every known file, for operators.

        Returns:
            One dict per file: path, key, state (active, rotated, deleted, closed), offset (end
            of the last yielded line), read (bytes consumed), size, truncations.
        """
        return [
            {"path": f.path, "key": f.key, "state": f.state(), "offset": f.emitted_end}
            | {"read": f.pos, "size": f.size, "truncations": f.truncations}
            for f in self._by_key.values()
        ]

    def close(self) -> None:
        """Close every open file; what checkpoint_value and forget need is kept."""
        for f in self._live.values():
            os.close(f.fd)
            f.fd = -1
        self._live.clear()

    # -- scanning ------------------------------------------------------------------------

    async def _tick(self, initial: bool) -> None:
        """Glob, open new files, notice rotations, then check every open file."""
        # Where to look for files that left the matches: their directory, by inode.
        wanted = {i: {os.path.dirname(cp.path) for cp in cps} for i, cps in self._pending.items()}
        for f in self._live.values():
            if f.dropped_at is not None and not f.deleted:
                wanted[f.ident] = {os.path.dirname(f.path)}
        matches, found = await asyncio.to_thread(_discover, self._patterns, wanted, initial)
        now = time.monotonic()
        paths_of: dict[_Ident, list[str]] = {}
        for path, st in matches:
            paths_of.setdefault((st.st_dev, st.st_ino), []).append(path)
        matched_paths = {path for path, _ in matches}
        for ident, paths in paths_of.items():
            known = self._live.get(ident)
            if known is None:
                self._open(ident, paths[0], initial, rotated=False)
            else:
                if known.path not in paths:  # renamed to a name that still matches
                    known.path = known.followed_path = paths[0]
                known.dropped_at = known.successor_at = None
        for ident, path in found.items():
            if ident in self._pending:  # renamed away while we were down
                self._open(ident, path, initial, rotated=True)
        for ident in [i for i in self._pending if i not in paths_of]:
            self._stale.extend(cp.key for cp in self._pending.pop(ident))
        for f in list(self._live.values()):
            if f.ident not in paths_of:
                if f.dropped_at is None:
                    f.dropped_at = now
                    logger.info("File left the patterns (rotated or deleted): %s.", f.path)
                f.path = found.get(f.ident, f.path)
                if f.successor_at is None and f.followed_path in matched_paths:
                    f.successor_at = now
            self._check(f, now)

    def _open(self, ident: _Ident, path: str, initial: bool, *, rotated: bool) -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as exc:
            if path not in self._warned:  # retried every poll: say it once
                self._warned.add(path)
                logger.warning("Cannot open %s: %s.", path, exc)
            return
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != ident or not stat.S_ISREG(st.st_mode):
                os.close(fd)  # replaced since the scan; the next scan sees the new one
                return
            head = os.pread(fd, FP_BYTES, 0)
        except OSError as exc:
            os.close(fd)
            logger.warning("Cannot read %s: %s.", path, exc)
            return
        cps = self._pending.pop(ident, [])
        match = next((cp for cp in cps if cp.matches(head)), None)
        if rotated and match is None:
            os.close(fd)  # an unmatched name holding other data: not ours to read
            self._stale.extend(cp.key for cp in cps)
            return
        if match is not None:
            key, offset = match.key, match.offset
            if st.st_size < offset:
                logger.warning("File was truncated while stopped, reading it again: %s.", path)
                offset = 0
        elif cps:
            key, offset = cps[0].key, 0  # other data in a checkpointed inode: a new file
        else:
            key, offset = self._new_key(ident), 0
            if initial and self._start == "end" and path not in self._checkpoint_paths:
                offset = self._started_at_end[key] = self._end_offset(fd, st.st_size)
        self._stale.extend(cp.key for cp in cps if cp.key != key)
        f = _File(key, ident, path, match.path if rotated and match else path, fd, head)
        f.pos = f.emitted_end = f.floor = offset
        f.line_no = 1 if offset == 0 else None
        f.size, f.mtime_ns = st.st_size, st.st_mtime_ns
        f.dropped_at = time.monotonic() if rotated else None
        self._live[ident] = self._by_key[key] = f
        logger.info("Following %s from offset %d (key %s).", path, offset, key)

    def _new_key(self, ident: _Ident) -> str:
        base, n = f"{ident[0]}:{ident[1]}", 0
        # A key still in use (its inode held another file) gets a suffix: keys never collide.
        while (key := f"{base}#{n}" if n else base) in self._by_key or key in self._reserved:
            n += 1
        return key

    def _end_offset(self, fd: int, size: int) -> int:
        """Just after the last complete line, so that a line being written is read whole."""
        span = min(size, 1 << 16)  # most files end with a newline: read little
        nl = os.pread(fd, span, size - span).rfind(b"\n")
        if nl < 0 and size > span:  # inside an over-long line: it will be yielded truncated
            span = min(size, self._max_line + 1)
            nl = os.pread(fd, span, size - span).rfind(b"\n")
        return size - span + nl + 1

    def _check(self, f: _File, now: float) -> None:
        """Notice truncation, a small file's growing fingerprint, deletion, end of follow."""
        try:
            st = os.fstat(f.fd)
            changed = st.st_size != f.size or st.st_mtime_ns != f.mtime_ns
            if st.st_size < f.pos:
                self._truncated(f, self._ready)
            elif changed:
                head = os.pread(f.fd, FP_BYTES, 0)
                if not head.startswith(f.head):
                    self._truncated(f, self._ready)  # rewritten in place past our offset
                elif len(head) > len(f.head):
                    f.head = head
        except OSError as exc:
            logger.warning("Cannot check %s, closing it: %s.", f.path, exc)
            self._close(f)
            return
        f.size, f.mtime_ns, f.deleted = st.st_size, st.st_mtime_ns, st.st_nlink == 0
        if f.dropped_at is None or f.pos < st.st_size:
            return
        # A deleted file is done once fully read and idle for one poll; a rotated one once its
        # follow window is over.
        if not changed if f.deleted else now >= (f.successor_at or f.dropped_at) + self._follow:
            self._close(f)

    def _truncated(self, f: _File, out: list[TailLine]) -> None:
        logger.warning("File truncated or rewritten, rereading it: %s (had %d).", f.path, f.pos)
        self._flush(f, out)
        if f.emitted_end > f.floor:
            f.trunc_pending += 1
            f.trunc_max_end = max(f.trunc_max_end, f.emitted_end)
        f.pos, f.emitted_end, f.floor, f.line_no = 0, 0, 0, 1
        f.head = os.pread(f.fd, FP_BYTES, 0)
        f.truncations += 1

    def _close(self, f: _File) -> None:
        self._flush(f, self._ready)
        self._live.pop(f.ident, None)
        os.close(f.fd)
        f.fd, f.done = -1, True
        logger.info("Done with %s (key %s) at offset %d.", f.path, f.key, f.emitted_end)

    def _flush(self, f: _File, out: list[TailLine]) -> None:
        """Yield a final unterminated (or over-long) line; see the module docs."""
        if f.skip:
            line = TailLine(f.key, f.path, f.over_start, f.pos, f.over, f.line_no, True)
        elif f.buf:
            line = TailLine(f.key, f.path, f.pos - len(f.buf), f.pos, f.buf, f.line_no)
        else:
            return
        out.append(line)
        f.emitted_end, f.buf, f.skip, f.over = f.pos, b"", False, b""
        if f.line_no is not None:
            f.line_no += 1

    # -- reading -------------------------------------------------------------------------

    def _read_batch(self) -> list[TailLine]:
        out, self._ready = self._ready, []
        budget, nbytes = self._max_lines - len(out), 0
        files = list(self._live.values())
        self._rr += 1  # a different file goes first each batch, so none starves
        first = self._rr % len(files) if files else 0
        for f in files[first:] + files[:first]:
            if budget <= 0 or nbytes >= self._max_bytes:
                break
            try:
                budget, nbytes = self._read(f, out, budget, nbytes)
            except OSError as exc:
                logger.warning("Cannot read %s, closing it: %s.", f.path, exc)
                self._close(f)
        return out

    def _read(self, f: _File, out: list[TailLine], budget: int, nbytes: int) -> tuple[int, int]:
        """Append up to ``budget`` complete lines of ``f`` to ``out``. The hot path."""
        key, path, maxlen, append = f.key, f.path, self._max_line, out.append
        checked = not f.head
        while budget > 0 and nbytes < self._max_bytes:
            data = os.pread(f.fd, self._chunk, f.pos)
            if not data:
                break
            if not checked:  # before trusting new data: was the file rewritten since the poll?
                checked = True
                if os.pread(f.fd, len(f.head), 0) != f.head:
                    before = len(out)
                    self._truncated(f, out)
                    budget -= len(out) - before  # its unterminated last line, if any
                    continue
            base, f.pos = f.pos, f.pos + len(data)
            nbytes += len(data)
            if f.skip:
                nl = data.find(b"\n")
                if nl < 0:
                    continue
                end = base + nl + 1
                append(TailLine(key, path, f.over_start, end, f.over, f.line_no, True))
                budget -= 1
                if f.line_no is not None:
                    f.line_no += 1
                f.skip, f.over, f.emitted_end = False, b"", end
                data, base = data[nl + 1 :], end
            text, start = (f.buf + data, base - len(f.buf)) if f.buf else (data, base)
            parts = text.split(b"\n")
            rest: bytes | None = parts.pop()
            if len(parts) > budget:
                del parts[budget:]
                rest = None  # the lines left in this chunk are read again next time
            pos, ln = start, f.line_no
            if len(text) <= maxlen:
                # The usual chunk: no line in it can be too long. Tuples are built directly,
                # without the Python-level TailLine.__new__.
                if ln is None:
                    for p in parts:
                        end = pos + len(p) + 1
                        append(_new_line(TailLine, (key, path, pos, end, p, None, False)))
                        pos = end
                else:
                    for number, p in enumerate(parts, ln):
                        end = pos + len(p) + 1
                        append(_new_line(TailLine, (key, path, pos, end, p, number, False)))
                        pos = end
                    ln += len(parts)
            else:
                for p in parts:
                    end = pos + len(p) + 1
                    if len(p) > maxlen:
                        append(TailLine(key, path, pos, end, p[:maxlen], ln, True))
                    else:
                        append(TailLine(key, path, pos, end, p, ln))
                    pos = end
                    if ln is not None:
                        ln += 1
            f.line_no = ln
            budget -= len(parts)
            if parts:
                f.emitted_end = pos
            if rest is None:
                f.pos, f.buf = pos, b""
                break
            if len(rest) > maxlen:
                f.skip, f.over, f.over_start, f.buf = True, rest[:maxlen], pos, b""
            else:
                f.buf = rest
        return budget, nbytes


def _discover(
    patterns: Sequence[str], wanted: Mapping[_Ident, Collection[str]], initial: bool
) -> tuple[list[tuple[str, os.stat_result]], dict[_Ident, str]]:
    """In a worker thread: the regular files matched, and where ``wanted`` identities went.

    Identities not matched are looked for by inode in their directories, and on the first scan
    in the pattern directories too (a rotation while we were down may have renamed one there).
    """
    matches: list[tuple[str, os.stat_result]] = []
    globbed = (p for pattern in patterns for p in sorted(glob.glob(pattern, recursive=True)))
    for path in dict.fromkeys(globbed):  # each path once, in order
        with contextlib.suppress(OSError):  # vanished between glob and stat
            st = os.stat(path)
            if stat.S_ISREG(st.st_mode):
                matches.append((path, st))
    lost = set(wanted) - {(st.st_dev, st.st_ino) for _, st in matches}
    if not lost:
        return matches, {}
    dirs = {d for ident in lost for d in wanted[ident] if d}
    if initial:
        for pattern in patterns:
            dirs.update(glob.glob(os.path.dirname(pattern), recursive=True))
    inodes = {ino for _, ino in lost}
    found: dict[_Ident, str] = {}
    for directory in sorted(dirs):
        with contextlib.suppress(OSError), os.scandir(directory) as entries:
            for entry in entries:
                if entry.inode() not in inodes:  # from the listing itself: no stat call
                    continue
                with contextlib.suppress(OSError):
                    st = entry.stat(follow_symlinks=False)
                    ident = (st.st_dev, st.st_ino)
                    if ident in lost and stat.S_ISREG(st.st_mode):
                        found.setdefault(ident, entry.path)
    return matches, found
