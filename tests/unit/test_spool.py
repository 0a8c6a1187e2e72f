"""Tests for the spool: round trips, segments, torn-tail repair, corruption, crashes, threads."""

from __future__ import annotations

import os
import random
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from kingest import spool_format
from kingest.errors import ConfigError, KingestError
from kingest.spool import Spool, SpoolError
from kingest.spool_format import HEADER_BYTES, encode


def segments(directory: Path) -> list[Path]:
    """The segment files of a spool directory, oldest first."""
    return sorted(directory.glob("spool-*.seg"), key=lambda path: int(path.stem[6:]))


def disk_bytes(directory: Path) -> int:
    return sum(path.stat().st_size for path in segments(directory))


def frame_bytes(item: bytes) -> int:
    return HEADER_BYTES + len(item)


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


# -- round trips -------------------------------------------------------------------------------


def test_write_pending_commit_round_trip(tmp_path: Path) -> None:
    with Spool(tmp_path / "spool") as spool:
        assert (spool.committed, spool.last, spool.bytes_on_disk) == (0, 0, 0)
        assert spool.write([b"a", b"", b"c" * 1000]) == 3
        assert spool.write([b"d"]) == 4
        assert list(spool.pending()) == [(1, b"a"), (2, b""), (3, b"c" * 1000), (4, b"d")]
        spool.commit(2)
        assert spool.committed == 2
        assert list(spool.pending()) == [(3, b"c" * 1000), (4, b"d")]
        spool.commit(4)
        assert list(spool.pending()) == []
        assert spool.last == spool.committed == 4


def test_frame_layout_is_the_documented_one(tmp_path: Path) -> None:
    with Spool(tmp_path) as spool:
        spool.write([b"hello", b"world!"])
    (path,) = segments(tmp_path)
    assert path.name == "spool-000000000001.seg"
    data = path.read_bytes()
    offset = 0
    for seq, item in ((1, b"hello"), (2, b"world!")):
        length, found_seq, crc = struct.unpack_from("<IQI", data, offset)
        assert (length, found_seq) == (len(item), seq)
        assert crc == zlib.crc32(struct.pack("<Q", seq) + item)
        assert data[offset + 16 : offset + 16 + length] == item
        offset += 16 + length
    assert offset == len(data)


def test_reopen_keeps_pending_items_and_numbers_continue(tmp_path: Path) -> None:
    with Spool(tmp_path) as spool:
        spool.write([b"1", b"2", b"3"])
        spool.commit(1)
    with Spool(tmp_path) as spool:
        assert (spool.committed, spool.last) == (1, 3)
        assert list(spool.pending()) == [(2, b"2"), (3, b"3")]
        assert spool.write([b"4"]) == 4
    with Spool(tmp_path) as spool:
        assert list(spool.pending()) == [(2, b"2"), (3, b"3"), (4, b"4")]


def test_numbers_continue_when_every_segment_was_deleted(tmp_path: Path) -> None:
    with Spool(tmp_path) as spool:
        spool.write([b"1", b"2", b"3"])
        spool.commit(3)
        assert segments(tmp_path) == []
        assert spool.bytes_on_disk == 0
    assert (tmp_path / "committed").read_bytes() == b"3\n"
    with Spool(tmp_path) as spool:
        assert (spool.committed, spool.last) == (3, 3)
        assert list(spool.pending()) == []
        assert spool.write([b"4"]) == 4
    assert [path.name for path in segments(tmp_path)] == ["spool-000000000004.seg"]


def test_creates_missing_parent_directories(tmp_path: Path) -> None:
    with Spool(tmp_path / "a" / "b" / "spool") as spool:
        assert spool.write([b"x"]) == 1
    assert len(segments(tmp_path / "a" / "b" / "spool")) == 1


def test_empty_write_returns_last_and_touches_no_file(tmp_path: Path) -> None:
    with Spool(tmp_path) as spool:
        assert spool.write([]) == 0
        assert segments(tmp_path) == []
        spool.write([b"x"])
        before = {path.name: path.stat().st_mtime_ns for path in tmp_path.iterdir()}
        assert spool.write([]) == 1
        assert {path.name: path.stat().st_mtime_ns for path in tmp_path.iterdir()} == before


def test_commit_below_the_mark_is_ignored_above_last_raises(tmp_path: Path) -> None:
    with Spool(tmp_path) as spool:
        spool.write([b"1", b"2", b"3"])
        spool.commit(2)
        spool.commit(1)
        spool.commit(0)
        assert spool.committed == 2
        assert list(spool.pending()) == [(3, b"3")]
        with pytest.raises(ValueError, match="last item written is 3"):
            spool.commit(4)
        assert spool.committed == 2
    with Spool(tmp_path) as spool:
        assert spool.committed == 2


def test_commit_deletes_only_whole_done_segments(tmp_path: Path) -> None:
    item = b"x" * 34  # a 50-byte frame: two per 100-byte segment
    with Spool(tmp_path, segment_bytes=100) as spool:
        for _ in range(3):
            spool.write([item, item])
        names = [path.name for path in segments(tmp_path)]
        assert names == [
            "spool-000000000001.seg",
            "spool-000000000003.seg",
            "spool-000000000005.seg",
        ]
        spool.commit(3)  # the first segment is done, the second only half
        assert [path.name for path in segments(tmp_path)] == names[1:]
        assert spool.bytes_on_disk == disk_bytes(tmp_path) == 200
        assert [seq for seq, _ in spool.pending()] == [4, 5, 6]
        spool.commit(6)  # everything, the segment being appended to included
        assert segments(tmp_path) == []
        assert spool.bytes_on_disk == 0
        assert spool.write([item]) == 7
        assert [path.name for path in segments(tmp_path)] == ["spool-000000000007.seg"]


def test_segments_roll_and_an_oversized_write_gets_its_own(tmp_path: Path) -> None:
    with Spool(tmp_path, segment_bytes=100) as spool:
        spool.write([b"a" * 10])  # 26 bytes
        spool.write([b"b" * 10, b"c" * 10])  # 52 more: 78 fits
        spool.write([b"d" * 10])  # 104 would not fit: new segment
        spool.write([b"e" * 300, b"f"])  # larger than a segment: one of its own
        spool.write([b"g"])
        sizes = [(path.name, path.stat().st_size) for path in segments(tmp_path)]
        assert sizes == [
            ("spool-000000000001.seg", 78),
            ("spool-000000000004.seg", 26),
            ("spool-000000000005.seg", 316 + 17),
            ("spool-000000000007.seg", 17),
        ]
        assert spool.bytes_on_disk == disk_bytes(tmp_path)
        expected = [b"a" * 10, b"b" * 10, b"c" * 10, b"d" * 10, b"e" * 300, b"f", b"g"]
        assert [item for _, item in spool.pending()] == expected
    with Spool(tmp_path, segment_bytes=100) as spool:
        assert [item for _, item in spool.pending()] == expected
        assert spool.bytes_on_disk == disk_bytes(tmp_path)


def test_an_item_too_large_for_the_frame_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spool_format, "MAX_ITEM_BYTES", 10)
    with Spool(tmp_path) as spool:
        with pytest.raises(ValueError, match="at most 10 bytes"):
            spool.write([b"ok", b"x" * 11])
        assert spool.last == 0
        assert segments(tmp_path) == []


def test_bad_segment_bytes_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="segment_bytes"):
        Spool(tmp_path, segment_bytes=0)


def test_one_spool_per_directory(tmp_path: Path) -> None:
    with Spool(tmp_path), pytest.raises(SpoolError, match="in use"):
        Spool(tmp_path)
    with Spool(tmp_path) as spool:
        assert spool.last == 0


def test_a_closed_spool_refuses_everything(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.write([b"x"])
    spool.close()
    spool.close()
    for call in (lambda: spool.write([b"y"]), lambda: spool.commit(1), spool.pending):
        with pytest.raises(SpoolError, match="closed"):
            call()
    error = SpoolError("x")
    assert isinstance(error, KingestError) and not error.retriable


def test_a_failed_fsync_writes_nothing_and_the_spool_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fsync = os.fsync
    with Spool(tmp_path) as spool:
        spool.write([b"1"])
        size = disk_bytes(tmp_path)

        def failing_fsync(fd: int) -> None:
            monkeypatch.setattr(os, "fsync", real_fsync)  # only the first one fails
            raise OSError(5, "Input/output error")

        monkeypatch.setattr(os, "fsync", failing_fsync)
        with pytest.raises(SpoolError, match=r"spool-000000000001\.seg at offset 17"):
            spool.write([b"2", b"3"])
        assert spool.last == 1
        assert disk_bytes(tmp_path) == spool.bytes_on_disk == size
        assert spool.write([b"2 again"]) == 2
    with Spool(tmp_path) as spool:
        assert list(spool.pending()) == [(1, b"1"), (2, b"2 again")]


def test_which_fsyncs_each_step_makes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_fsync = os.fsync
    calls: list[str] = []

    def spy(fd: int) -> None:
        calls.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    def step(action: Callable[[], object]) -> list[str]:
        calls.clear()
        action()
        return list(calls)

    spool = Spool(tmp_path / "spool", segment_bytes=120)
    monkeypatch.setattr(os, "fsync", spy)
    assert step(lambda: spool.write([b"a" * 30])) == ["file", "dir"]  # a new segment
    assert step(lambda: spool.write([b"b" * 30, b"c"])) == ["file"]  # one per call
    assert step(lambda: spool.write([])) == []
    assert step(lambda: spool.write([b"d" * 30])) == ["file", "dir"]  # rolled
    assert step(lambda: spool.commit(1)) == ["file", "dir"]  # temp mark, then the rename
    assert step(lambda: spool.commit(1)) == []
    assert step(spool.close) == []
    spool = Spool(tmp_path / "spool", segment_bytes=120)
    # The last segment's name may never have been made durable: fsync'd again, once.
    assert step(lambda: spool.write([b"e"])) == ["file", "dir"]
    assert step(lambda: spool.write([b"f"])) == ["file"]
    spool.close()


def test_leftover_mark_temp_file_is_removed(tmp_path: Path) -> None:
    with Spool(tmp_path) as spool:
        spool.write([b"1", b"2"])
        spool.commit(1)
    (tmp_path / "committed.tmp").write_bytes(b"2\n")  # a commit that crashed before its rename
    with Spool(tmp_path) as spool:
        assert spool.committed == 1
        assert list(spool.pending()) == [(2, b"2")]
    assert not (tmp_path / "committed.tmp").exists()


# -- torn tails --------------------------------------------------------------------------------


def test_torn_tail_at_every_offset_of_the_last_item(tmp_path: Path) -> None:
    base = tmp_path / "base"
    items = [b"first", b"second item", b"the last item, written by a call that never returned"]
    with Spool(base) as spool:
        spool.write(items[:2])
        spool.write(items[2:])
    (segment,) = segments(base)
    size = segment.stat().st_size
    start = size - frame_bytes(items[-1])
    for cut in range(start, size):
        directory = tmp_path / f"cut-{cut}"
        shutil.copytree(base, directory)
        os.truncate(directory / segment.name, cut)
        with Spool(directory) as spool:
            assert spool.last == 2
            assert list(spool.pending()) == [(1, items[0]), (2, items[1])]
            assert (directory / segment.name).stat().st_size == start
            assert spool.write([b"after"]) == 3
        with Spool(directory) as spool:
            assert list(spool.pending()) == [(1, items[0]), (2, items[1]), (3, b"after")]


def test_torn_first_item_of_a_new_segment_leaves_it_empty(tmp_path: Path) -> None:
    base = tmp_path / "base"
    with Spool(base, segment_bytes=40) as spool:
        spool.write([b"a" * 20])
        spool.write([b"b" * 20])  # 72 bytes would not fit: a segment of its own
    first, last = segments(base)
    assert last.name == "spool-000000000002.seg"
    for cut in range(frame_bytes(b"b" * 20)):
        directory = tmp_path / f"cut-{cut}"
        shutil.copytree(base, directory)
        os.truncate(directory / last.name, cut)
        with Spool(directory, segment_bytes=40) as spool:
            assert list(spool.pending()) == [(1, b"a" * 20)]
            assert (directory / last.name).stat().st_size == 0
            assert spool.write([b"c"]) == 2
        with Spool(directory, segment_bytes=40) as spool:
            assert list(spool.pending()) == [(1, b"a" * 20), (2, b"c")]
        assert [path.name for path in segments(directory)] == [first.name, last.name]


def test_an_empty_last_segment_is_fine(tmp_path: Path) -> None:
    with Spool(tmp_path) as spool:
        spool.write([b"1"])
        spool.commit(1)
    (tmp_path / "spool-000000000002.seg").touch()  # created, crashed before the write
    with Spool(tmp_path) as spool:
        assert (spool.committed, spool.last, list(spool.pending())) == (1, 1, [])
        assert spool.write([b"2"]) == 2
    with Spool(tmp_path) as spool:
        assert list(spool.pending()) == [(2, b"2")]


def test_an_empty_segment_left_behind_by_commits_is_removed(tmp_path: Path) -> None:
    with Spool(tmp_path) as spool:
        spool.write([b"1", b"2", b"3", b"4", b"5"])
        spool.commit(5)
    stale = tmp_path / "spool-000000000003.seg"
    stale.touch()  # holds nothing; its name is not where the next item goes
    with Spool(tmp_path) as spool:
        assert not stale.exists()
        assert spool.write([b"6"]) == 6
    assert [path.name for path in segments(tmp_path)] == ["spool-000000000006.seg"]
    with Spool(tmp_path) as spool:
        assert list(spool.pending()) == [(6, b"6")]


@pytest.mark.parametrize(
    "tail",
    [
        pytest.param(bytes(random.Random(7).randrange(256) for _ in range(300)), id="garbage"),
        pytest.param(b"\0" * 4096, id="zeros"),  # a file grown by a power loss, data not in
        pytest.param(b"\xff" * 7, id="short"),
    ],
)
def test_garbage_at_the_tail_is_cut_off(tmp_path: Path, tail: bytes) -> None:
    with Spool(tmp_path) as spool:
        spool.write([b"1", b"2"])
    (segment,) = segments(tmp_path)
    size = segment.stat().st_size
    with segment.open("ab") as file:
        file.write(tail)
    with Spool(tmp_path) as spool:
        assert list(spool.pending()) == [(1, b"1"), (2, b"2")]
        assert segment.stat().st_size == size == spool.bytes_on_disk
        assert spool.write([b"3"]) == 3
    with Spool(tmp_path) as spool:
        assert list(spool.pending()) == [(1, b"1"), (2, b"2"), (3, b"3")]


def test_a_bad_crc_in_the_last_item_is_a_torn_write(tmp_path: Path) -> None:
    with Spool(tmp_path) as spool:
        spool.write([b"1", b"2", b"3"])
    (segment,) = segments(tmp_path)
    flip(segment, segment.stat().st_size - 1)
    with Spool(tmp_path) as spool:
        assert list(spool.pending()) == [(1, b"1"), (2, b"2")]


# -- corruption --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offset", "what"),
    [(0, "length"), (5, "sequence number"), (13, "crc"), (17, "payload")],
)
def test_damage_before_the_tail_of_the_last_segment_is_refused(
    tmp_path: Path, offset: int, what: str
) -> None:
    with Spool(tmp_path) as spool:
        spool.write([b"first!", b"second", b"third"])
    (segment,) = segments(tmp_path)
    flip(segment, offset)
    with pytest.raises(SpoolError, match="corrupt") as caught:
        Spool(tmp_path)
    assert segment.name in str(caught.value)
    assert "offset 0" in str(caught.value)
    assert segment.stat().st_size == 3 * frame_bytes(b"first!") - 1, "nothing was truncated"


@pytest.mark.parametrize("where", ["first byte", "last byte", "truncated"])
def test_damage_in_a_segment_that_is_not_the_last_is_refused(tmp_path: Path, where: str) -> None:
    with Spool(tmp_path, segment_bytes=50) as spool:
        for n in range(3):
            spool.write([b"item %d" % n, b"more %d" % n])
    first = segments(tmp_path)[0]
    size = first.stat().st_size
    if where == "first byte":
        flip(first, 0)
    elif where == "last byte":
        flip(first, size - 1)
    else:
        os.truncate(first, size - 1)
    with pytest.raises(SpoolError, match="not the last") as caught:
        Spool(tmp_path, segment_bytes=50)
    assert first.name in str(caught.value) and "offset" in str(caught.value)


def test_a_gap_between_segments_is_refused(tmp_path: Path) -> None:
    with Spool(tmp_path, segment_bytes=50) as spool:
        for n in range(3):
            spool.write([b"item %d" % n, b"more %d" % n])
        spool.commit(1)
    middle = segments(tmp_path)[1]
    middle.unlink()
    with pytest.raises(SpoolError, match=r"items 3\.\.4 are in no segment") as caught:
        Spool(tmp_path, segment_bytes=50)
    assert "spool-000000000005.seg" in str(caught.value)


def test_a_gap_after_the_mark_is_refused(tmp_path: Path) -> None:
    with Spool(tmp_path, segment_bytes=50) as spool:
        for n in range(2):
            spool.write([b"item %d" % n, b"more %d" % n])
    segments(tmp_path)[0].unlink()  # items 1..2, never committed
    with pytest.raises(SpoolError, match=r"items 1\.\.2 are in no segment"):
        Spool(tmp_path, segment_bytes=50)


def test_missing_segments_the_mark_covers_are_fine(tmp_path: Path) -> None:
    with Spool(tmp_path, segment_bytes=50) as spool:
        for n in range(3):
            spool.write([b"item %d" % n, b"more %d" % n])
    first, middle, _ = segments(tmp_path)
    # A commit of 4 that crashed after its rename and the unlink of the middle segment only.
    (tmp_path / "committed").write_bytes(b"4\n")
    middle.unlink()
    with Spool(tmp_path, segment_bytes=50) as spool:
        assert spool.committed == 4
        assert list(spool.pending()) == [(5, b"item 2"), (6, b"more 2")]
        assert not first.exists()


def test_overlapping_segments_are_refused(tmp_path: Path) -> None:
    with Spool(tmp_path) as spool:
        spool.write([b"1", b"2", b"3", b"4"])
    (tmp_path / "spool-000000000003.seg").write_bytes(encode(3, [b"3", b"4", b"5"]))
    with pytest.raises(SpoolError, match="already holds") as caught:
        Spool(tmp_path)
    assert "spool-000000000003.seg" in str(caught.value)


def test_an_unreadable_mark_is_refused(tmp_path: Path) -> None:
    with Spool(tmp_path) as spool:
        spool.write([b"1"])
        spool.commit(1)
    (tmp_path / "committed").write_bytes(b"one\n")
    with pytest.raises(SpoolError, match="committed"):
        Spool(tmp_path)


# -- a writer killed at a random moment --------------------------------------------------------

CHILD = r"""
import sys
from kingest.spool import Spool

def item(seq):
    return b"%d;" % seq * (1 + seq % 9)

spool = Spool(sys.argv[1], segment_bytes=int(sys.argv[2]))
print("open", spool.last, flush=True)
batch = 0
while True:
    batch += 1
    first = spool.last + 1
    last = spool.write([item(seq) for seq in range(first, first + 1 + batch % 11)])
    print("w", last, flush=True)
    if batch % 4 == 0:
        spool.commit(last - batch % 5)
        print("c", last - batch % 5, flush=True)
"""


def item_for(seq: int) -> bytes:
    return b"%d;" % seq * (1 + seq % 9)


def run_and_kill(directory: Path, segment_bytes: int, lines_before_kill: int) -> list[str]:
    """Run the writer until it printed that many lines, SIGKILL it, return its complete lines."""
    command = [sys.executable, "-c", CHILD, str(directory), str(segment_bytes)]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdout is not None
        lines: list[str] = []
        while len(lines) < lines_before_kill:
            line = proc.stdout.readline()
            assert line, f"the writer exited early: {proc.stderr.read() if proc.stderr else ''}"
            lines.append(line)
        proc.kill()
        rest, _ = proc.communicate(timeout=30)
    assert proc.returncode == -9
    lines.extend(rest.splitlines(keepends=True))
    return [line.rstrip("\n") for line in lines if line.endswith("\n")]


def test_every_write_that_returned_survives_kill_9(tmp_path: Path) -> None:
    rng = random.Random(20240611)
    directory = tmp_path / "spool"
    expected_last = 0
    for _ in range(6):
        segment_bytes = rng.choice([64, 512, 4096, 1 << 20])
        lines = run_and_kill(directory, segment_bytes, rng.randint(2, 80))
        assert lines[0] == f"open {expected_last}", "numbers continue across restarts"
        written = [int(line.split()[1]) for line in lines if line.startswith("w ")]
        committed = [int(line.split()[1]) for line in lines if line.startswith("c ")]
        with Spool(directory, segment_bytes=segment_bytes) as spool:
            assert spool.committed >= max(committed, default=0)
            assert spool.last >= max(written, default=0), "a write that returned was lost"
            pending = list(spool.pending())
            seqs = [seq for seq, _ in pending]
            assert seqs == list(range(spool.committed + 1, spool.last + 1))
            assert all(item == item_for(seq) for seq, item in pending)
            assert spool.bytes_on_disk == disk_bytes(directory)
            expected_last = spool.last
    assert expected_last > 0


# -- random programs ---------------------------------------------------------------------------

payloads = st.lists(st.binary(max_size=60), max_size=6)


class SpoolMachine(RuleBasedStateMachine):
    """Writes, commits, reopens and torn writes against a list of the items still pending."""

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory()
        self.directory = Path(self.tmp.name)
        self.segment_bytes = 120
        self.spool = Spool(self.directory, segment_bytes=self.segment_bytes)
        self.model: list[tuple[int, bytes]] = []
        self.last = 0
        self.committed = 0

    def reopen(self) -> None:
        self.spool.close()
        self.spool = Spool(self.directory, segment_bytes=self.segment_bytes)

    def append_model(self, items: list[bytes]) -> None:
        for item in items:
            self.last += 1
            self.model.append((self.last, item))

    @rule(items=payloads)
    def write(self, items: list[bytes]) -> None:
        assert self.spool.write(items) == self.last + len(items)
        self.append_model(items)

    @rule(data=st.data())
    def commit(self, data: st.DataObject) -> None:
        seq = data.draw(st.integers(0, self.last), label="seq")
        self.spool.commit(seq)
        self.committed = max(self.committed, seq)
        self.model = [(s, item) for s, item in self.model if s > self.committed]

    @rule()
    def close_and_reopen(self) -> None:
        self.reopen()

    @rule(items=payloads.filter(bool), data=st.data())
    def crash_during_a_write(self, items: list[bytes], data: st.DataObject) -> None:
        """A prefix of a write's frames reached the disk; the write never returned."""
        frames = encode(self.last + 1, items)
        cut = data.draw(st.integers(0, len(frames) - 1), label="cut")
        self.spool.close()
        files = segments(self.directory)
        new_name = self.directory / f"spool-{self.last + 1:012d}.seg"
        if files and (files[-1] == new_name or data.draw(st.booleans(), label="append")):
            target = files[-1]
        else:
            target = new_name
        with target.open("ab") as file:
            file.write(frames[:cut])
        self.spool = Spool(self.directory, segment_bytes=self.segment_bytes)
        # Frames that reached the disk whole come back, as after a real crash.
        whole, offset = [], 0
        for item in items:
            offset += frame_bytes(item)
            if offset > cut:
                break
            whole.append(item)
        self.append_model(whole)

    @invariant()
    def pending_is_the_model(self) -> None:
        assert list(self.spool.pending()) == self.model
        assert (self.spool.last, self.spool.committed) == (self.last, self.committed)
        assert self.spool.bytes_on_disk == disk_bytes(self.directory)

    def teardown(self) -> None:
        self.spool.close()
        self.tmp.cleanup()


TestSpoolMachine = SpoolMachine.TestCase
TestSpoolMachine.settings = settings(max_examples=40, stateful_step_count=25, deadline=None)


# -- threads -----------------------------------------------------------------------------------


def test_writes_and_commits_from_many_threads(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_bytes=2048)
    written: dict[int, bytes] = {}
    written_lock = threading.Lock()
    errors: list[BaseException] = []
    stop = threading.Event()

    def writer(name: int) -> None:
        try:
            for n in range(60):
                batch = [b"%d-%d-%d" % (name, n, k) for k in range(1 + n % 4)]
                last = spool.write(batch)
                with written_lock:
                    for seq, item in enumerate(batch, start=last - len(batch) + 1):
                        assert seq not in written
                        written[seq] = item
        except BaseException as exc:
            errors.append(exc)

    def committer() -> None:
        try:
            while not stop.wait(0.0005):
                spool.commit(max(0, spool.last - 5))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(name,)) for name in range(4)]
    commit_thread = threading.Thread(target=committer)
    commit_thread.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    stop.set()
    commit_thread.join(timeout=120)
    assert errors == []
    committed, last = spool.committed, spool.last
    spool.close()

    assert sorted(written) == list(range(1, last + 1))
    assert len(set(written.values())) == last
    with Spool(tmp_path, segment_bytes=2048) as spool:
        assert (spool.committed, spool.last) == (committed, last)
        assert list(spool.pending()) == [
            (seq, written[seq]) for seq in range(committed + 1, last + 1)
        ]
        assert spool.bytes_on_disk == disk_bytes(tmp_path)
