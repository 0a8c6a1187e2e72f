"""Tests for the file tailer on real files: start, append, rotation, truncation, checkpoints."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from kingest.errors import ConfigError
from kingest.sources.weblog.tail import FileTailer, TailLine

POLL = 0.02  # seconds between scans: quick tests


class Tail:
    """Runs a tailer in a task and collects what it yields."""

    def __init__(self, tailer: FileTailer) -> None:
        self.tailer = tailer
        self.lines: list[TailLine] = []
        self.batches = 0
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Tail:
        self.task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        assert self.task is not None
        await asyncio.wait_for(self.task, 5)

    async def _run(self) -> None:
        async for batch in self.tailer.batches(self.stop):
            assert batch
            self.batches += 1
            self.lines.extend(batch)

    def data(self) -> list[bytes]:
        return [line.data for line in self.lines]

    async def until(self, check: Callable[[], bool], what: str, timeout_s: float = 5.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not check():
            assert self.task is not None
            if self.task.done():
                self.task.result()
                raise AssertionError(f"tailer stopped before {what}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; got {self.data()[-5:]}")
            await asyncio.sleep(0.005)

    async def lines_count(self, n: int) -> None:
        await self.until(lambda: len(self.lines) >= n, f"{n} lines")

    async def ticks(self, n: int = 3) -> None:
        """Let the tailer poll a few times (to show that something does *not* happen)."""
        interval = self.tailer._poll
        start = time.monotonic()
        await self.until(lambda: time.monotonic() - start > n * interval, f"{n} polls")


def run(factory: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(factory())


def append(path: Path, data: bytes) -> None:
    with path.open("ab") as f:
        f.write(data)


def lines_of(prefix: str, n: int, start: int = 0) -> bytes:
    return b"".join(f"{prefix}-{i}\n".encode() for i in range(start, start + n))


def test_start_beginning_reads_existing_lines_with_positions(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    log.write_bytes(b"one\ntwo\nthree\n")

    async def go() -> None:
        async with Tail(FileTailer([str(log)], start="beginning", poll_interval_s=POLL)) as t:
            await t.lines_count(3)
            assert t.data() == [b"one", b"two", b"three"]
            assert [(x.offset, x.end, x.line_number) for x in t.lines] == [
                (0, 4, 1),
                (4, 8, 2),
                (8, 14, 3),
            ]
            st = log.stat()
            assert {x.file_key for x in t.lines} == {f"{st.st_dev}:{st.st_ino}"}
            assert t.lines[0].path == str(log) and not t.lines[0].truncated
            append(log, b"four\n")
            await t.lines_count(4)
            assert t.lines[3] == TailLine(t.lines[0].file_key, str(log), 14, 19, b"four", 4)

    run(go)


def test_start_end_skips_history_but_reads_the_line_being_written(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    log.write_bytes(b"old-1\nold-2\npar")

    async def go() -> None:
        async with Tail(FileTailer([str(log)], start="end", poll_interval_s=POLL)) as t:
            await t.ticks()
            assert t.lines == []
            append(log, b"tial\nnew\n")
            await t.lines_count(2)
            assert t.data() == [b"partial", b"new"]
            assert t.lines[0].offset == 12 and t.lines[0].line_number is None

    run(go)


def test_start_end_inside_an_overlong_line_yields_it_as_truncated(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    log.write_bytes(b"old\n" + b"x" * 70_000)  # no newline in the last 64 KiB

    async def go() -> None:
        async with Tail(FileTailer([str(log)], max_line_bytes=100, poll_interval_s=POLL)) as t:
            await t.ticks()
            assert t.lines == []
            append(log, b"xxxx\nnext\n")
            await t.lines_count(2)
            big, nxt = t.lines
            assert big.truncated and big.data == b"x" * 100 and big.line_number is None
            assert (big.offset, big.end) == (70_004 - 101, 70_009)  # from where reading began
            assert nxt.data == b"next" and not nxt.truncated

    run(go)


def test_start_end_in_a_file_of_one_unfinished_line_reads_it_whole(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    log.write_bytes(b"still being writ")

    async def go() -> None:
        async with Tail(FileTailer([str(log)], poll_interval_s=POLL)) as t:
            await t.ticks()
            append(log, b"ten\n")
            await t.lines_count(1)
            assert t.lines[0].data == b"still being written" and t.lines[0].offset == 0

    run(go)


def test_partial_line_is_held_until_its_newline(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    log.write_bytes(b"")

    async def go() -> None:
        async with Tail(FileTailer([str(log)], start="beginning", poll_interval_s=POLL)) as t:
            append(log, b"hel")
            await t.ticks()
            append(log, b"lo wor")
            await t.ticks()
            assert t.lines == []
            append(log, b"ld\r\nsecond")
            await t.lines_count(1)
            await t.ticks()
            assert t.data() == [b"hello world\r"]  # CR kept for the parser
            assert (t.lines[0].offset, t.lines[0].end) == (0, 13)
            append(log, b"\n")
            await t.lines_count(2)
            assert t.lines[1].data == b"second" and t.lines[1].offset == 13

    run(go)


def test_several_patterns_and_files_appearing_later(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    a, b = tmp_path / "x" / "a.log", tmp_path / "y" / "b.txt"
    a.write_bytes(b"a-old\n")
    b.write_bytes(b"b-old\n")
    (tmp_path / "x" / "ignored.gz").write_bytes(b"nope\n")
    patterns = [str(tmp_path / "x" / "*.log"), str(tmp_path / "y" / "*.txt")]

    async def go() -> None:
        async with Tail(FileTailer(patterns, start="end", poll_interval_s=POLL)) as t:
            await t.ticks()
            append(a, b"a-1\n")
            append(b, b"b-1\n")
            await t.lines_count(2)
            late = tmp_path / "x" / "late.log"
            late.write_bytes(b"late-0\nlate-1\n")  # appeared later: read from its start
            await t.lines_count(4)
            assert sorted(t.data()) == [b"a-1", b"b-1", b"late-0", b"late-1"]
            assert [x.line_number for x in t.lines if x.path == str(late)] == [1, 2]
            paths = {x["path"] for x in t.tailer.files()}
            assert paths == {str(a), str(b), str(late)}

    run(go)


def test_rotation_by_rename(tmp_path: Path) -> None:
    log, rotated = tmp_path / "access.log", tmp_path / "access.log.1"
    log.write_bytes(b"")

    async def go() -> None:
        tailer = FileTailer(
            [str(log)], start="beginning", rotated_follow_s=0.3, poll_interval_s=POLL
        )
        async with Tail(tailer) as t:
            writer = log.open("ab", buffering=0)
            writer.write(lines_of("old", 3))
            await t.lines_count(3)
            old_key = t.lines[0].file_key
            log.rename(rotated)
            writer.write(b"old-3\nold-tail")  # the writer has not reopened yet
            await t.lines_count(4)
            await t.until(
                lambda: [x["path"] for x in tailer.files()] == [str(rotated)], "new name seen"
            )
            log.write_bytes(lines_of("new", 2))
            writer.write(b"-end")
            writer.close()
            await t.lines_count(7)
            old = [x for x in t.lines if x.file_key == old_key]
            new = [x for x in t.lines if x.file_key != old_key]
            assert [x.data for x in old] == [
                b"old-0",
                b"old-1",
                b"old-2",
                b"old-3",
                b"old-tail-end",
            ]
            assert [x.data for x in new] == [b"new-0", b"new-1"] and new[0].offset == 0
            # The unterminated last line came after the follow window, without a newline.
            last = old[-1]
            assert last.path == str(rotated)  # followed under its new name
            assert last.end - last.offset == len(last.data) and last.end == rotated.stat().st_size
            await t.until(lambda: len(tailer._live) == 1, "the rotated file closed")
            assert tailer.forget({}) == []  # its last line is not committed yet
            assert tailer.forget({old_key: last.end}) == [old_key]
            assert [x["key"] for x in tailer.files()] == [new[0].file_key]

    run(go)


def test_rotation_to_a_name_that_still_matches_keeps_identity(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_bytes(b"a\n")

    async def go() -> None:
        tailer = FileTailer([str(tmp_path / "app.log*")], start="beginning", poll_interval_s=POLL)
        async with Tail(tailer) as t:
            await t.lines_count(1)
            log.rename(tmp_path / "app.log.1")
            await t.until(lambda: tailer.files()[0]["path"].endswith(".1"), "rename seen")
            append(tmp_path / "app.log.1", b"b\n")
            await t.lines_count(2)
            assert t.lines[1].file_key == t.lines[0].file_key
            assert t.lines[1].path == str(tmp_path / "app.log.1")
            assert [x["state"] for x in tailer.files()] == ["active"]

    run(go)


def test_copytruncate(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_bytes(lines_of("before", 5))

    async def go() -> None:
        tailer = FileTailer([str(log)], start="beginning", poll_interval_s=POLL)
        async with Tail(tailer) as t:
            await t.lines_count(5)
            key = t.lines[0].file_key
            (tmp_path / "access.log.1").write_bytes(log.read_bytes())
            os.truncate(log, 0)
            await t.until(lambda: tailer.files()[0]["truncations"] == 1, "truncation noticed")
            append(log, lines_of("after", 2))
            await t.lines_count(7)
            after = t.lines[5:]
            assert [x.data for x in after] == [b"after-0", b"after-1"]
            assert after[0].file_key == key and after[0].offset == 0
            assert after[0].line_number == 1

    run(go)


def test_truncate_and_rewrite_past_the_offset_is_noticed(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    log.write_bytes(b"short-1\nshort-2\n")

    async def go() -> None:
        tailer = FileTailer([str(log)], start="beginning", poll_interval_s=POLL)
        async with Tail(tailer) as t:
            await t.lines_count(2)
            # Between two polls: the size never drops below our offset, the first bytes change.
            log.write_bytes(lines_of("rewritten", 4))
            await t.lines_count(6)
            assert t.data()[2:] == [f"rewritten-{i}".encode() for i in range(4)]
            assert tailer.files()[0]["truncations"] == 1

    run(go)


def test_checkpoint_value_after_truncation_never_skips_new_content(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    log.write_bytes(lines_of("old", 10))

    async def go() -> None:
        tailer = FileTailer([str(log)], start="beginning", poll_interval_s=POLL)
        async with Tail(tailer) as t:
            await t.lines_count(10)
            old = t.lines[:10]
            os.truncate(log, 0)
            await t.until(lambda: tailer.files()[0]["truncations"] == 1, "truncation noticed")
            append(log, lines_of("new", 10))
            await t.lines_count(20)
            new = t.lines[10:]
            key = old[0].file_key
            # Commits in yield order: old ends that could belong to either content store 0.
            assert tailer.checkpoint_value(key, old[4].end)["offset"] == 0
            assert tailer.checkpoint_value(key, old[9].end)["offset"] == 0
            # Going down proves the new content is being committed.
            assert tailer.checkpoint_value(key, new[0].end)["offset"] == new[0].end
            assert tailer.checkpoint_value(key, new[5].end)["offset"] == new[5].end

    run(go)


def test_deletion_while_open_reads_the_rest_then_forgets(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    log.write_bytes(b"")

    async def go() -> None:
        tailer = FileTailer([str(log)], start="beginning", poll_interval_s=POLL)
        async with Tail(tailer) as t:
            writer = log.open("ab", buffering=0)
            writer.write(b"one\n")
            await t.lines_count(1)
            key = t.lines[0].file_key
            log.unlink()
            writer.write(b"two\nthree")
            writer.close()
            await t.lines_count(3)
            assert t.data() == [b"one", b"two", b"three"]
            await t.until(lambda: tailer.files()[0]["state"] == "closed", "closed")
            assert tailer.forget({key: 4}) == []
            assert tailer.forget({key: t.lines[-1].end}) == [key]
            assert tailer.files() == []

    run(go)


def test_checkpoint_without_a_file_is_forgotten(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    log.write_bytes(b"x\n")
    committed = {
        "gone": {"dev": 1, "ino": 2, "fp": "00", "fp_len": 1, "offset": 5, "path": "/nope"},
        "junk": {"offset": "seven"},
    }

    async def go() -> None:
        tailer = FileTailer([str(log)], committed=committed, poll_interval_s=POLL)
        async with Tail(tailer) as t:
            await t.ticks()
            assert sorted(tailer.forget({})) == ["gone", "junk"]
            assert tailer.forget({}) == []

    run(go)


def test_inode_with_other_content_is_a_new_file(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    log.write_bytes(b"new-0\nnew-1\n")
    st = log.stat()
    key = f"{st.st_dev}:{st.st_ino}"
    # What a checkpoint of an earlier file that had the same inode looks like.
    stale = {
        "dev": st.st_dev,
        "ino": st.st_ino,
        "fp": hashlib.sha256(b"old-0\n").hexdigest(),
        "fp_len": 6,
        "offset": 6,
        "path": str(log),
    }

    async def go() -> None:
        tailer = FileTailer([str(log)], start="end", committed={key: stale}, poll_interval_s=POLL)
        async with Tail(tailer) as t:
            await t.lines_count(2)
            assert t.data() == [b"new-0", b"new-1"]  # from 0, not from 6, not from the end
            assert t.lines[0].file_key == key  # takes the key over: no stale entry is left
            assert tailer.forget({}) == []

    run(go)


def test_successor_at_a_checkpointed_path_is_read_from_the_start(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    log.write_bytes(b"fresh\n")
    gone = {"dev": 0, "ino": 1, "fp": "00", "fp_len": 1, "offset": 9, "path": str(log)}

    async def go() -> None:
        tailer = FileTailer([str(log)], start="end", committed={"k": gone}, poll_interval_s=POLL)
        async with Tail(tailer) as t:
            await t.lines_count(1)
            assert t.data() == [b"fresh"]

    run(go)


def test_oversize_lines_are_marked_and_cut(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    log.write_bytes(b"a" * 250 + b"\nok\n")

    async def go() -> None:
        tailer = FileTailer(
            [str(log)],
            start="beginning",
            max_line_bytes=100,
            read_chunk_bytes=64,
            poll_interval_s=POLL,
        )
        async with Tail(tailer) as t:
            await t.lines_count(2)
            big, ok = t.lines
            assert big.truncated and big.data == b"a" * 100 and (big.offset, big.end) == (0, 251)
            assert not ok.truncated and ok.data == b"ok" and ok.offset == 251
            append(log, b"b" * 150)  # arrives in pieces, no newline yet
            await t.ticks()
            append(log, b"b" * 150 + b"\r\nlast\n")
            await t.lines_count(4)
            big2, last = t.lines[2:]
            assert big2.truncated and big2.data == b"b" * 100 and big2.end == 254 + 302
            assert last.data == b"last" and last.line_number == 4

    run(go)


def test_backpressure_reads_no_further_than_taken(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    log.write_bytes(lines_of("l", 10_000))

    async def go() -> None:
        tailer = FileTailer([str(log)], start="beginning", max_batch_lines=10, poll_interval_s=POLL)
        stop = asyncio.Event()
        gen = tailer.batches(stop)
        batch = await anext(gen)
        assert len(batch) == 10
        assert tailer.files()[0]["read"] == batch[-1].end  # the rest stays in the file
        batch = await anext(gen)
        assert batch[0].data == b"l-10"
        stop.set()
        with pytest.raises(StopAsyncIteration):
            await anext(gen)
        assert tailer.files()[0]["state"] == "closed"

    run(go)


def test_bad_arguments_are_reported_together() -> None:
    with pytest.raises(ConfigError) as info:
        FileTailer([], start="middle", poll_interval_s=0, max_batch_lines=0)  # type: ignore[arg-type]
    message = str(info.value)
    assert "patterns" in message and "start" in message
    assert "poll_interval_s" in message and "max_batch_lines" in message


def test_batches_runs_once(tmp_path: Path) -> None:
    async def go() -> None:
        tailer = FileTailer([str(tmp_path / "*.log")], poll_interval_s=POLL)
        stop = asyncio.Event()
        stop.set()
        assert [b async for b in tailer.batches(stop)] == []
        with pytest.raises(RuntimeError):
            await anext(tailer.batches(stop))

    run(go)


def test_unmatched_file_at_a_checkpointed_inode_with_other_data_is_not_read(
    tmp_path: Path,
) -> None:
    other = tmp_path / "unrelated.dat"
    other.write_bytes(b"not a log line\n")
    st = other.stat()
    committed = {
        "k": {
            "dev": st.st_dev,
            "ino": st.st_ino,
            "fp": hashlib.sha256(b"a log").hexdigest(),
            "fp_len": 5,
            "offset": 5,
            "path": str(tmp_path / "access.log"),
        }
    }

    async def go() -> None:
        tailer = FileTailer([str(tmp_path / "*.log")], committed=committed, poll_interval_s=POLL)
        async with Tail(tailer) as t:
            await t.ticks()
            assert t.lines == [] and tailer.files() == []
            assert tailer.forget({}) == ["k"]

    run(go)


def test_batches_are_bounded_in_bytes(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    log.write_bytes((b"y" * 99 + b"\n") * 100)

    async def go() -> None:
        tailer = FileTailer(
            [str(log)],
            start="beginning",
            read_chunk_bytes=500,
            max_batch_bytes=1000,
            poll_interval_s=POLL,
        )
        async with Tail(tailer) as t:
            await t.lines_count(100)
            assert t.batches == 10

    run(go)


def test_checkpoint_value_of_an_unknown_key(tmp_path: Path) -> None:
    tailer = FileTailer([str(tmp_path / "*.log")])
    with pytest.raises(KeyError):
        tailer.checkpoint_value("1:2", 10)
