"""The commit gate of :mod:`streams.faust_fixes` (never commit past an unprocessed offset)
and its delivery order (each partition's records in offset order from its last seek)."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from types import SimpleNamespace
from typing import Any

from faust.transport.drivers.aiokafka import Consumer as AIOKafkaConsumer
from faust.types import TP
from intervaltree import IntervalTree

from streams.faust_fixes import Consumer

TOPIC = TP("clinical.events", 3)


def gate(
    acked: list[int], committed: int | None, start: int | None = None, gaps: Any = ()
) -> tuple[int | None, list[int]]:
    """Run ``Consumer._new_offset`` on plain bookkeeping; (offset to commit, acks left)."""
    c = SimpleNamespace(
        _acked=defaultdict(list, {TOPIC: list(acked)}),
        _acked_index=defaultdict(set, {TOPIC: set(acked)}),
        _gap=defaultdict(IntervalTree, {TOPIC: IntervalTree.from_tuples(gaps)}),
        _committed_offset=defaultdict(lambda: None, {TOPIC: committed}),
        _fetch_start={} if start is None else {TOPIC: start},
    )
    offset = Consumer._new_offset(c, TOPIC)  # type: ignore[arg-type]
    assert set(c._acked[TOPIC]) == c._acked_index[TOPIC], "index kept in step"
    return offset, c._acked[TOPIC]


def test_commits_the_run_that_starts_at_the_committed_offset() -> None:
    assert gate([10, 11, 12, 14], committed=10) == (13, [14])
    assert gate([12, 10, 11], committed=10) == (13, [])


def test_a_missing_head_blocks_the_commit() -> None:
    # Faust lets one missing offset through (min(acked) - committed > 1); not here.
    assert gate([11, 12, 13], committed=10) == (None, [11, 12, 13])
    assert gate([58, 59], committed=51) == (None, [58, 59])


def test_unknown_committed_offset_uses_the_assignment_seek() -> None:
    # Faust forgets the committed offset on revocation and keeps 0 as None: without a
    # known start nothing is committed; with the seek position the run must start there.
    assert gate([30, 31], committed=None) == (None, [30, 31])
    assert gate([30, 31], committed=None, start=0) == (None, [30, 31])
    assert gate([0, 1, 2], committed=None, start=0) == (3, [])


def test_a_gap_faust_recorded_while_fetching_blocks_the_commit() -> None:
    # Faust would count offsets 12 and 13 as processed; after a rebalance's seek they are
    # messages the stream skipped (a leave test lost 23 that way), so the run stops there.
    assert gate([10, 11, 14], committed=10, gaps=[(12, 14)]) == (12, [14])
    assert gate([33, 57], committed=33, gaps=[(34, 57)]) == (34, [57])


def test_nothing_acked_commits_nothing() -> None:
    assert gate([], committed=5) == (None, [])


def orderer(ordered: bool = True) -> Any:
    """Plain bookkeeping for ``Consumer.in_order`` / ``Consumer._expect``."""
    c = SimpleNamespace(_next={}, _reseeking={}, _ordered=lambda tp: ordered)
    c.in_order = lambda tp, offset: Consumer.in_order(c, tp, offset)  # type: ignore[arg-type]
    c.expect = lambda tp, offset: Consumer._expect(c, tp, offset)  # type: ignore[arg-type]
    return c


def test_records_are_delivered_in_offset_order() -> None:
    c = orderer()
    # Never seeked since the assignment: the first record sets the pace.
    assert [c.in_order(TOPIC, o) for o in (5, 6, 7)] == [True, True, True]
    assert c.in_order(TOPIC, 7) is False  # a duplicate
    assert c.in_order(TOPIC, 9) is None  # 8 never came: drop 9, read again from 8
    assert c._next[TOPIC] == 8
    assert c.in_order(TOPIC, 8) is True


def test_records_fetched_before_a_seek_back_are_dropped() -> None:
    # The leave test's shape: the partition was read up to 56, then a rebalance seeked it
    # back to its committed offset 33; records 57.. of the old fetch still come first.
    c = orderer()
    for o in range(30, 57):
        assert c.in_order(TOPIC, o) is True
    c.expect(TOPIC, 33)
    assert c.in_order(TOPIC, 57) is None, "not before 33..56"
    assert c.in_order(TOPIC, 58) is None
    assert c.in_order(TOPIC, 20) is False
    assert [c.in_order(TOPIC, o) for o in range(33, 60)] == [True] * 27


def test_changelogs_and_unacked_topics_are_left_alone() -> None:
    c = orderer(ordered=False)
    c.expect(TOPIC, 10)
    assert [c.in_order(TOPIC, o) for o in (3, 12, 11)] == [True, True, True]
    assert c._next == {}


def test_getmany_hands_on_records_in_order_and_seeks_back_once(monkeypatch: Any) -> None:
    # Records 57, 58 of a fetch started before the seek back to 33, then 33 and 34.
    records = [57, 58, 33, 34]
    seeks: list[int] = []

    async def fetched(self: Any, *_: Any) -> Any:
        for o in records:
            yield TOPIC, SimpleNamespace(offset=o)

    async def seek(self: Any, tp: TP, offset: int) -> None:
        seeks.append(offset)

    async def earliest(self: Any, *tps: TP) -> dict[TP, int]:
        return {TOPIC: 0}

    monkeypatch.setattr(AIOKafkaConsumer, "getmany", fetched, raising=False)
    monkeypatch.setattr(AIOKafkaConsumer, "seek", seek)
    monkeypatch.setattr(AIOKafkaConsumer, "earliest_offsets", earliest)
    c = Consumer.__new__(Consumer)
    c._next, c._reseeking, c._read_offset = {TOPIC: 33}, {}, {TOPIC: 56}
    monkeypatch.setattr(c, "_ordered", lambda tp: True, raising=False)

    async def run() -> list[int]:
        return [m.offset async for _, m in c.getmany(1.0)]

    assert asyncio.run(run()) == [33, 34]
    assert seeks == [33], "one seek back for the hole, not one per record"
    # Faust's fetch loop must not drop 33 as read (its read offset was 56).
    assert c._read_offset[TOPIC] == 34
