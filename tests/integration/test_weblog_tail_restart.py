"""Real-time tests of the file tailer: restarts from checkpoints, and a large volume."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

from kingest.checkpoint import CheckpointStore
from kingest.sources.weblog.tail import FP_BYTES, FileTailer, TailLine
from tests.unit.test_weblog_tail import POLL, Tail, append, lines_of, run


def _commit(store: CheckpointStore, tailer: FileTailer, lines: list[TailLine], upto: int) -> None:
    """Commit every line up to index ``upto`` (inclusive), as the ack tracker would."""
    last: dict[str, int] = {}
    for line in lines[: upto + 1]:
        last[line.file_key] = line.end
    store.save("web", {k: tailer.checkpoint_value(k, end) for k, end in last.items()})


def test_restart_resumes_exactly_at_the_committed_offset(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    log.write_bytes(lines_of("l", 100))
    store = CheckpointStore(tmp_path / "cp.db")

    async def first() -> None:
        tailer = FileTailer([str(log)], start="beginning", poll_interval_s=POLL)
        async with Tail(tailer) as t:
            await t.lines_count(100)
            _commit(store, tailer, t.lines, 41)  # lines after 41 were read, never acked

    async def second() -> None:
        append(log, lines_of("l", 50, start=100))
        tailer = FileTailer(
            [str(log)], start="end", committed=store.load("web"), poll_interval_s=POLL
        )
        async with Tail(tailer) as t:
            await t.lines_count(108)
            await t.ticks()
            assert t.data() == [f"l-{i}".encode() for i in range(42, 150)]
            assert t.lines[0].line_number is None
            assert tailer.forget({}) == []

    run(first)
    run(second)
    store.close()


def test_file_renamed_away_while_down_is_read_to_its_end(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_bytes(lines_of("a", 10))
    store = CheckpointStore(tmp_path / "cp.db")
    pattern = str(tmp_path / "*.log")

    async def first() -> None:
        tailer = FileTailer([pattern], start="beginning", poll_interval_s=POLL)
        async with Tail(tailer) as t:
            await t.lines_count(10)
            _commit(store, tailer, t.lines, 6)

    async def second() -> None:
        append(log, lines_of("a", 5, start=10))
        log.rename(tmp_path / "access.log-20240101")  # no longer matches the pattern
        log.write_bytes(lines_of("b", 3))  # the successor, created while we were down
        tailer = FileTailer(
            [pattern],
            start="end",
            committed=store.load("web"),
            rotated_follow_s=0.1,
            poll_interval_s=POLL,
        )
        async with Tail(tailer) as t:
            await t.lines_count(11)
            await t.ticks()
            old = [x.data for x in t.lines if x.path.endswith("20240101")]
            new = [x.data for x in t.lines if x.path == str(log)]
            assert old == [f"a-{i}".encode() for i in range(7, 15)]
            assert new == [b"b-0", b"b-1", b"b-2"]
            await t.until(lambda: len(tailer._live) == 1, "renamed file closed")

    run(first)
    run(second)
    store.close()


def test_file_truncated_while_down_is_read_again_from_0(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    log.write_bytes(lines_of("x", 20))
    store = CheckpointStore(tmp_path / "cp.db")

    async def first() -> None:
        tailer = FileTailer([str(log)], start="beginning", poll_interval_s=POLL)
        async with Tail(tailer) as t:
            await t.lines_count(20)
            _commit(store, tailer, t.lines, 19)

    async def second() -> None:
        with log.open("r+b") as f:  # copytruncate while down, same first bytes
            f.truncate(0)
            f.write(lines_of("x", 3))
        tailer = FileTailer([str(log)], committed=store.load("web"), poll_interval_s=POLL)
        async with Tail(tailer) as t:
            await t.lines_count(3)
            assert t.data() == [b"x-0", b"x-1", b"x-2"] and t.lines[0].line_number == 1

    run(first)
    run(second)
    store.close()


def test_small_file_keeps_its_identity_while_its_fingerprint_grows(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    log.write_bytes(b"tiny\n")
    store = CheckpointStore(tmp_path / "cp.db")

    async def first() -> None:
        tailer = FileTailer([str(log)], start="beginning", poll_interval_s=POLL)
        async with Tail(tailer) as t:
            await t.lines_count(1)
            _commit(store, tailer, t.lines, 0)
            assert store.load("web")[t.lines[0].file_key]["fp_len"] == 5
            append(log, b"y" * 2000 + b"\n")
            await t.lines_count(2)
            await t.until(lambda: len(tailer._live[_ident(log)].head) == FP_BYTES, "fp grown")
            value = tailer.checkpoint_value(t.lines[1].file_key, t.lines[1].end)
            assert value["fp_len"] == FP_BYTES
            assert value["fp"] == hashlib.sha256(log.read_bytes()[:FP_BYTES]).hexdigest()

    async def second() -> None:
        # Restart from the checkpoint taken while the file was 5 bytes long.
        tailer = FileTailer(
            [str(log)], start="end", committed=store.load("web"), poll_interval_s=POLL
        )
        async with Tail(tailer) as t:
            await t.lines_count(1)
            assert t.lines[0].offset == 5 and len(t.lines[0].data) == 2000

    run(first)
    run(second)
    store.close()


def _ident(path: Path) -> tuple[int, int]:
    st = path.stat()
    return (st.st_dev, st.st_ino)


def test_large_volume_appended_while_tailing(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    log.write_bytes(b"")
    total = 200_000

    def write() -> None:
        with log.open("ab") as f:
            for start in range(0, total, 1000):
                f.write(lines_of("line", 1000, start=start))
                f.flush()

    async def go() -> None:
        async with Tail(FileTailer([str(log)], start="beginning", poll_interval_s=POLL)) as t:
            writer = threading.Thread(target=write)
            writer.start()
            try:
                await t.until(lambda: len(t.lines) >= total, "every line", timeout_s=20)
            finally:
                writer.join()
            await t.ticks()
            assert len(t.lines) == total
            assert t.data() == [f"line-{i}".encode() for i in range(total)]
            assert t.lines[-1].end == log.stat().st_size
            assert t.batches < total / 10  # batched, not a line at a time

    run(go)
