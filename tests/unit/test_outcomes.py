"""How records end: each is released from the buffer and counted exactly once."""

from __future__ import annotations

from pathlib import Path

from kingest.dlq import DeadLetterQueue
from kingest.producer.batch import Pending
from kingest.producer.buffer import BufferGate
from kingest.producer.outcomes import Outcomes
from kingest.producer.stats import ProducerStats
from kingest.record import DlqReason, Outcome


def admitted(gate: BufferGate, n: int, generation: int, source: str = "s") -> list[Pending]:
    """Records as the producer holds them: admitted, drained into a shard queue."""
    records = []
    for i in range(n):
        record = Pending(b"x" * 10, f"k{i}", None, i, source, 12, 1e9, True)
        assert gate.try_acquire(record.size, record)
        record.generation = generation
        records.append(record)
    gate.take_inbound()
    return records


def outcomes(tmp_path: Path) -> tuple[Outcomes, BufferGate, ProducerStats]:
    gate = BufferGate(100, 10_000)
    stats = ProducerStats()
    return Outcomes("stream", DeadLetterQueue(tmp_path), stats, gate), gate, stats


def test_in_order_entry_of_one_generation_is_settled_at_once(tmp_path: Path) -> None:
    ends, gate, _ = outcomes(tmp_path)
    records = admitted(gate, 5, generation=3)
    ends.undone[3] += 5
    sources: dict[str, int] = {}
    sizes: dict[str, int] = {}
    ends.deliver(
        records, True, "shard-0", "42", sources, sizes, source="s", user_bytes=60, in_order=True
    )
    assert (gate.records, gate.bytes) == (0, 0)
    assert ends.undone[3] == 0
    assert (sources, sizes) == ({"s": 5}, {"s": 60})
    results = [r.result(0) for r in records]
    assert all(r.outcome is Outcome.DELIVERED for r in results)
    assert [r.sub_sequence_number for r in results] == [0, 1, 2, 3, 4]


def test_mixed_generations_and_sources_are_counted_one_by_one(tmp_path: Path) -> None:
    ends, gate, _ = outcomes(tmp_path)
    records = admitted(gate, 2, generation=1, source="a") + admitted(gate, 3, 2, source="b")
    ends.undone[1] += 2
    ends.undone[2] += 3
    sources: dict[str, int] = {}
    sizes: dict[str, int] = {}
    ends.deliver(records, True, "shard-0", "42", sources, sizes, user_bytes=60, in_order=True)
    assert (gate.records, gate.bytes) == (0, 0)
    assert (ends.undone[1], ends.undone[2]) == (0, 0)
    assert sources == {"a": 2, "b": 3}


def test_a_record_ends_once_and_gives_its_room_back_once(tmp_path: Path) -> None:
    ends, gate, stats = outcomes(tmp_path)
    records = admitted(gate, 4, generation=0)
    ends.undone[0] += 4
    sources: dict[str, int] = {}
    sizes: dict[str, int] = {}
    ends.deliver(records[:2], True, "shard-0", "1", sources, sizes, source="s", user_bytes=24)
    # Dead-lettered afterwards (a cancelled request's records, say): only the two not done.
    ends.dead_letter(records, DlqReason.SHUTDOWN, None, "closing")
    assert (gate.records, gate.bytes) == (0, 0)
    assert ends.undone[0] == 0
    assert [r.result(0).outcome for r in records] == [Outcome.DELIVERED] * 2 + [
        Outcome.DEAD_LETTERED
    ] * 2
    assert stats.snapshot(0, 0)["by_source"]["s"]["failed"] == 2
    # Delivered again (a duplicate answer): nothing changes.
    ends.deliver(records, True, "shard-0", "2", sources, sizes, source="s", user_bytes=48)
    assert (gate.records, gate.bytes) == (0, 0)
    assert ends.undone[0] == 0
    assert sources == {"s": 2}
    assert records[0].result(0).sequence_number == "1"


def test_in_order_entry_spanning_generations_counts_each(tmp_path: Path) -> None:
    ends, gate, _ = outcomes(tmp_path)
    records = admitted(gate, 3, 4) + admitted(gate, 1, 5) + admitted(gate, 4, 7)
    for generation, n in ((4, 3), (5, 1), (7, 4)):
        ends.undone[generation] += n
    sources: dict[str, int] = {}
    sizes: dict[str, int] = {}
    ends.deliver(
        records, True, "shard-0", "9", sources, sizes, source="s", user_bytes=96, in_order=True
    )
    assert (gate.records, gate.bytes) == (0, 0)
    assert all(ends.undone[g] == 0 for g in (4, 5, 7))
    assert sources == {"s": 8}
