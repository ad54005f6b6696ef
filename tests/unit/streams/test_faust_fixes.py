"""The commit gate of :mod:`streams.faust_fixes` (never commit past an unprocessed offset),
its delivery order (each partition's records in offset order from its last seek) and its
processing order (nothing after a record a stream skipped is processed before it)."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from types import SimpleNamespace
from typing import Any

import pytest
from faust.exceptions import Skip
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaConsumer
from faust.types import TP
from faust.types.tuples import ConsumerMessage
from intervaltree import IntervalTree
from mode.utils.queues import FlowControlEvent, FlowControlQueue

from streams.faust_fixes import Consumer, admit_in_order

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
    c = SimpleNamespace(
        _next={},
        _reseeking={},
        _resume={},
        _hole={},
        _to_seek={},
        _unplaced={},
        _ordered=lambda tp: ordered,
    )
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


def fake_fetch(monkeypatch: Any, records: list[int]) -> list[int]:
    """Faust's fetch yields ``records`` (offsets of TOPIC); returns the seeks made."""
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
    return seeks


def test_getmany_hands_on_records_in_order_and_seeks_back_once(monkeypatch: Any) -> None:
    # Records 57, 58 of a fetch started before the seek back to 33, then 33 and 34.
    seeks = fake_fetch(monkeypatch, [57, 58, 33, 34])
    c = Consumer.__new__(Consumer)
    c._next, c._reseeking, c._read_offset = {TOPIC: 33}, {}, {TOPIC: 56}
    c._to_seek, c._watch_at = {}, float("inf")  # no stall watch here (tested below)
    monkeypatch.setattr(c, "_ordered", lambda tp: True, raising=False)

    async def run() -> list[int]:
        return [m.offset async for _, m in c.getmany(1.0)]

    assert asyncio.run(run()) == [33, 34]
    assert seeks == [33], "one seek back for the hole, not one per record"
    # Faust's fetch loop must not drop 33 as read (its read offset was 56).
    assert c._read_offset[TOPIC] == 34


def bare_consumer() -> Any:
    """A :class:`Consumer` with plain bookkeeping and no broker: every topic acknowledged,
    every partition ordered, one partition seeked to 53 (as at its assignment)."""
    c = Consumer.__new__(Consumer)
    c.app = SimpleNamespace(topics=SimpleNamespace(acks_enabled_for=lambda topic: True))
    c._fetch_start, c._next, c._reseeking, c._read_offset = {}, {}, {}, {}
    c._resume, c._hole, c._to_seek = {}, {}, {}
    c._committed_offset = defaultdict(lambda: None)
    c._acked, c._acked_index = defaultdict(list), defaultdict(set)
    c._unacked_messages, c._n_acked, c._waiting_for_ack = set(), 0, None
    c._ordered = lambda tp: True
    c._stall, c._watch_at, c._paused_partitions, c._unplaced = {}, 0.0, set(), {}
    c.suspend_flow = asyncio.Event()
    c.high = {TOPIC: 53}  # the broker's high watermark, as the last fetch reported it
    c.highwater = lambda tp: c.high[tp]
    c._expect(TOPIC, 53)
    return c


def taken(c: Any, offset: int) -> ConsumerMessage:
    """A record of TOPIC at ``offset`` as a stream takes it: tracked, pending its ack."""
    m = ConsumerMessage(TOPIC.topic, TOPIC.partition, offset, 0.0, 0, None, None, b"", None)
    m.tracked = True
    c._unacked_messages.add(m)
    return m


def skipped(offset: int) -> ConsumerMessage:
    """A record a stream skipped (stale generation or stopped flow): never tracked."""
    return ConsumerMessage(TOPIC.topic, TOPIC.partition, offset, 0.0, 0, None, None, b"", None)


def test_records_are_processed_from_the_resume_point_on() -> None:
    c = bare_consumer()
    msgs = [taken(c, o) for o in range(53, 56)]
    assert [c.admit(m) for m in msgs] == [True, True, True]
    assert c._resume[TOPIC] == 56 and c._to_seek == {}
    for m in msgs:
        assert m.ack(c) is True  # processed: acknowledged and recorded as usual
    assert c._acked[TOPIC] == [53, 54, 55] and not c._unacked_messages


def test_a_partition_not_seeked_since_its_assignment_processes_nothing_until_it_is() -> None:
    c = bare_consumer()
    other = TP("fhir.inbound", 0)

    def rec(offset: int) -> ConsumerMessage:
        m = ConsumerMessage(other.topic, other.partition, offset, 0.0, 0, None, None, b"", None)
        m.tracked = True
        c._unacked_messages.add(m)
        return m

    # 21 fetched before Faust's seek, 15..20 lost in the rebalance: not taken first.
    assert c.admit(rec(21)) is False and other not in c._resume
    assert c._unplaced == {other: 21} and not c._unacked_messages and not c._acked[other]
    c._expect(other, 15)  # Faust's seek to the committed offset
    assert c._unplaced == {}
    assert [c.admit(rec(o)) for o in (15, 16)] == [True, True]


def test_a_partition_never_seeked_is_read_again_from_its_committed_offset() -> None:
    c = bare_consumer()
    other = TP("fhir.inbound", 0)
    c._next[other], c.high[other] = 22, 22
    c._committed_offset[other] = 15
    m = ConsumerMessage(other.topic, other.partition, 21, 0.0, 0, None, None, b"", None)
    m.tracked = True
    assert c.admit(m) is False
    c._stalled(0.0)
    assert c._stalled(c.STALL_S) == [(other, 15)]


def test_later_records_wait_for_a_skipped_one() -> None:
    # The leave test's shape: the normaliser skipped 53..70 during a rebalance (acks
    # refused) and took 71..93; 71..93 must not be processed before 53..70.
    c = bare_consumer()
    for o in range(53, 71):
        assert skipped(o).ack(c) is False, "a skipped record is never acknowledged"
    assert c._to_seek == {TOPIC: 53}, "one seek back for the hole, not one per record"
    later = [taken(c, o) for o in range(71, 94)]
    assert not any(c.admit(m) for m in later)
    assert c._to_seek == {TOPIC: 53}
    # Released: not processed, not recorded for a commit, not waited for by a rebalance,
    # and an ack of it (Faust acks what a processor skips) records nothing.
    assert all(m.acked for m in later) and not c._unacked_messages
    assert not any(m.ack(c) for m in later)
    assert c._acked[TOPIC] == [] and c.released == 23
    # Read again from 53 (the seek back): all of them processed, in order.
    again = [taken(c, o) for o in range(53, 94)]
    assert all(c.admit(m) for m in again)
    assert c._hole == {} and c._resume[TOPIC] == 94


def test_a_record_past_the_resume_point_is_a_hole_even_without_a_refused_ack() -> None:
    c = bare_consumer()
    assert c.admit(taken(c, 53)) is True
    assert c.admit(taken(c, 57)) is False  # 54..56 never taken
    assert c.admit(taken(c, 58)) is False
    assert c._to_seek == {TOPIC: 54} and c._hole == {TOPIC: 54}
    assert c.admit(taken(c, 54)) is True
    assert c._hole == {}


def test_a_copy_of_a_record_already_taken_is_released_without_a_seek() -> None:
    c = bare_consumer()
    assert all(c.admit(taken(c, o)) for o in (53, 54, 55))
    dup = taken(c, 54)
    assert c.admit(dup) is False
    assert dup.acked and c._to_seek == {} and c._resume[TOPIC] == 56
    # A skipped stale copy of an offset already taken asks for nothing either.
    assert skipped(55).ack(c) is False
    assert c._to_seek == {}


def test_a_skip_before_any_seek_or_take_asks_for_nothing() -> None:
    # Nothing known about the partition (revoked, or not yet seeked): its next
    # assignment seeks it to the committed offset, which is not past the skipped record.
    c = bare_consumer()
    c._forget(TOPIC)
    assert skipped(60).ack(c) is False
    assert c._to_seek == {} and c._hole == {}


def test_a_seek_to_committed_resets_the_resume_point_and_holes() -> None:
    c = bare_consumer()
    assert skipped(53).ack(c) is False
    assert c._to_seek == {TOPIC: 53}
    c._expect(TOPIC, 40)  # a rebalance seeks the partition to its committed offset
    assert c._to_seek == {} and c._hole == {} and c._resume[TOPIC] == 40
    assert c.admit(taken(c, 40)) is True


def test_getmany_seeks_back_to_a_hole_and_drops_what_was_fetched_before(
    monkeypatch: Any,
) -> None:
    # 53 was skipped; 71.. were fetched before the seek back to 53 could be done.
    seeks = fake_fetch(monkeypatch, [71, 72, 53, 54])
    c = bare_consumer()
    c._next[TOPIC] = 71  # the stream was handed 53..70 and skipped them
    assert skipped(53).ack(c) is False

    async def run() -> list[int]:
        return [m.offset async for _, m in c.getmany(1.0)]

    assert asyncio.run(run()) == [53, 54]
    assert seeks == [53], "one seek for the hole; 71, 72 dropped without another"
    assert c._to_seek == {} and c._hole == {TOPIC: 53}, "the hole stays until taken"


def test_a_hole_taken_before_its_seek_is_not_seeked(monkeypatch: Any) -> None:
    seeks: list[int] = []

    async def fetched(self: Any, *_: Any) -> Any:
        for o in ():
            yield TOPIC, SimpleNamespace(offset=o)

    async def seek(self: Any, tp: TP, offset: int) -> None:
        seeks.append(offset)

    monkeypatch.setattr(AIOKafkaConsumer, "getmany", fetched, raising=False)
    monkeypatch.setattr(AIOKafkaConsumer, "seek", seek)
    c = bare_consumer()
    assert c.admit(taken(c, 54)) is False  # asks for a seek back to 53
    assert c.admit(taken(c, 53)) is True  # ... which came anyway

    async def run() -> list[int]:
        return [m.offset async for _, m in c.getmany(1.0)]

    assert asyncio.run(run()) == []
    assert seeks == [] and c._to_seek == {}


def test_admit_in_order_skips_released_records_in_the_stream() -> None:
    c = bare_consumer()
    processors: list[Any] = []
    stream = SimpleNamespace(
        app=SimpleNamespace(consumer=c), current_event=None, add_processor=processors.append
    )
    admit_in_order(stream)  # type: ignore[arg-type]
    admit_in_order(stream)  # type: ignore[arg-type]
    assert len(processors) == 1, "one processor per stream"
    (in_order,) = processors
    stream.current_event = SimpleNamespace(message=taken(c, 53))
    assert in_order("value") == "value"
    stream.current_event = SimpleNamespace(message=taken(c, 55))
    with pytest.raises(Skip):
        in_order("value")
    stream.current_event = None  # not an event (a value sent to the channel): passed on
    assert in_order("value") == "value"


def test_admit_in_order_leaves_other_consumers_alone() -> None:
    processors: list[Any] = []
    stream = SimpleNamespace(
        app=SimpleNamespace(consumer=object()), current_event=None, add_processor=processors.append
    )
    admit_in_order(stream)  # type: ignore[arg-type]
    assert processors == []


def test_the_worker_consumer_fetches_with_the_configured_broker_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Faust builds aiokafka's consumer with fetch_min_bytes=1 and no setting to change
    # it; the app's consumer thread must hand aiokafka the settings' values instead.
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    from streams.settings import Settings
    from streams.worker.app import create_app

    made = SimpleNamespace(_fetch_min_bytes=1, _fetch_max_wait_ms=1500)
    monkeypatch.setattr(
        AIOKafkaConsumerThread, "_create_worker_consumer", lambda self, transport: made
    )
    app = create_app(Settings(fetch_min_bytes=12345, fetch_max_wait_ms=7))
    consumer_cls: Any = app.transport.Consumer
    assert issubclass(consumer_cls, Consumer)
    thread_cls = consumer_cls.thread_class
    assert issubclass(thread_cls, AIOKafkaConsumerThread)
    thread = object.__new__(thread_cls)  # the method reads only class attributes
    assert thread._create_worker_consumer(None) is made
    assert (made._fetch_min_bytes, made._fetch_max_wait_ms) == (12345, 7)
    # Each re-read reaches the app's metrics (wardwatch_partition_rereads_total).
    report = object.__new__(consumer_cls).on_reread
    report("stall")
    metrics = report.__self__
    assert metrics.value("wardwatch_partition_rereads_total", {"kind": "stall"}) == 1.0


def test_keep_filling_only_while_a_backlog_pours_in() -> None:
    from streams.faust_fixes import keep_filling

    # A backlog: every 5 ms wait adds many events, so the batch keeps filling ...
    assert keep_filling(150, 0.005, busy_at=16, busy_within=0.1)
    assert keep_filling(16, 0.095, busy_at=16, busy_within=0.1)
    # ... up to the cap; live traffic (a message or two per wait) goes at once.
    assert not keep_filling(150, 0.1, busy_at=16, busy_within=0.1)
    assert not keep_filling(2, 0.005, busy_at=16, busy_within=0.1)
    assert not keep_filling(0, 0.005, busy_at=16, busy_within=0.1)


def test_never_committed_partitions_get_their_earliest_offsets_in_one_request(
    monkeypatch: Any,
) -> None:
    # Each offsets request waits behind the consumer's in-flight fetch (up to its 1.5 s
    # broker-side wait): one request per never-committed partition made a new worker
    # ready a minute after its table. One request for all of them.
    never = [TP("fhir.inbound", p) for p in range(8)]
    zero, done = TP("fhir.inbound.dlq", 0), TP("clinical.events", 1)
    committed: dict[Any, int | None] = {**dict.fromkeys(never), zero: 0, done: 17}
    calls: list[tuple[TP, ...]] = []
    seeks: dict[TP, int] = {}

    async def base_seek_to_committed(self: Any) -> dict[Any, int | None]:
        return committed

    async def earliest(self: Any, *tps: TP) -> dict[TP, int]:
        calls.append(tps)
        return {tp: 100 + tp.partition for tp in tps}

    async def seek(self: Any, tp: TP, offset: int) -> None:
        seeks[tp] = offset

    monkeypatch.setattr(AIOKafkaConsumer, "seek_to_committed", base_seek_to_committed)
    monkeypatch.setattr(AIOKafkaConsumer, "earliest_offsets", earliest)
    monkeypatch.setattr(AIOKafkaConsumer, "seek", seek)
    c = bare_consumer()
    c._is_changelog_tp = lambda tp: False
    assert asyncio.run(c.seek_to_committed()) == committed
    assert calls == [tuple(never)]
    assert seeks == {**{tp: 100 + tp.partition for tp in never}, zero: 0, done: 17}
    assert c._fetch_start[done] == 17 and c._fetch_start[never[3]] == 103


def test_records_dropped_from_the_stream_queues_are_read_again() -> None:
    # A leave test's stall: 52..56 delivered after the seek to committed, 52 taken, then
    # Faust's flow_control.resume() emptied the queues; 53..56 were gone, untracked,
    # aiokafka already at 57, nothing after them to reveal the hole.
    c = bare_consumer()
    flow = FlowControlEvent()
    queue: FlowControlQueue = FlowControlQueue(maxsize=10, flow_control=flow, clear_on_resume=True)
    c._watch_queue_clears(flow)
    c._resume[TOPIC], c._next[TOPIC] = 53, 57
    idle = TP("fhir.inbound", 7)
    c._resume[idle] = c._next[idle] = 12  # everything delivered was taken
    unplaced = TP("fhir.inbound", 6)
    c._next[unplaced] = 30  # no resume point yet: seek_to_committed places it
    for offset in range(53, 57):
        queue.put_nowait(offset)
    flow.suspend()
    flow.resume()
    assert queue.empty(), "Faust's clear still runs"
    assert c._to_seek == {TOPIC: 53}, "read again from the first record not taken"
    assert c.admit(taken(c, 57)) is False, "later records wait for 53"
    assert c.admit(taken(c, 53)) is True


def test_a_seek_runs_on_the_consumer_thread_after_the_new_position_is_expected() -> None:
    # Faust seeks from the event loop's thread while the consumer thread may be inside
    # aiokafka's fetched_records, which deletes the same entries (a worker crashed with
    # a KeyError). The seek goes to the consumer thread; records delivered while it is
    # under way are judged against the new position already.
    c = bare_consumer()
    calls: list[Any] = []

    class Thread:
        def _ensure_consumer(self) -> Any:
            return SimpleNamespace(seek=lambda tp, offset: calls.append(("seek", tp, offset)))

        async def call_thread(self, fun: Any, *args: Any) -> Any:
            calls.append(("on the consumer thread", c._next[TOPIC], c._reseeking[TOPIC]))
            return fun(*args)

    c._thread = Thread()
    c.log = SimpleNamespace(dev=lambda *args: None)  # Faust's seek logs
    asyncio.run(c.seek(TOPIC, 40))
    assert calls == [("on the consumer thread", 40, 40), ("seek", TOPIC, 40)]
    assert c.in_order(TOPIC, 57) is None and c._reseeking[TOPIC] == 40, "fetched before"
    assert c.in_order(TOPIC, 39) is False, "a copy"
    assert c.in_order(TOPIC, 40) is True and TOPIC not in c._reseeking


def test_records_released_before_the_seek_to_committed_are_fetched_again(
    monkeypatch: Any,
) -> None:
    # The leave test's stall: aiokafka seeks an assigned partition to its committed
    # offset 33 on its own thread and fetches 33..48, which reach the stream before the
    # resume point is set and are released; its position is 49 by then. Without a seek
    # of our own nothing would fetch 33..48 again.
    seeks: list[int] = []

    async def base_seek_to_committed(self: Any) -> dict[Any, int | None]:
        for offset in range(33, 49):  # delivered while aiokafka's seek was awaited
            assert self.in_order(TOPIC, offset) is True
            assert self.admit(taken(self, offset)) is False
        return {TOPIC: 33}

    async def seek(self: Any, tp: TP, offset: int) -> None:
        seeks.append(offset)

    monkeypatch.setattr(AIOKafkaConsumer, "seek_to_committed", base_seek_to_committed)
    monkeypatch.setattr(AIOKafkaConsumer, "seek", seek)
    c = bare_consumer()
    c._is_changelog_tp = lambda tp: False
    c._forget(TOPIC)  # assigned again: no resume point, nothing delivered yet
    asyncio.run(c.seek_to_committed())
    assert seeks == [33], "fetched again from the committed offset"
    assert c._resume[TOPIC] == 33 and c._next[TOPIC] == 33
    assert c.in_order(TOPIC, 33) is True and c.admit(taken(c, 33)) is True


def test_records_delivered_and_never_taken_are_read_again_after_a_while() -> None:
    # The leave test's silent loss: 53..60 delivered after a rebalance, never taken by
    # the stream, nothing after them to reveal the hole.
    c = bare_consumer()
    c._next[TOPIC], c.high[TOPIC] = 61, 61
    assert c._stalled(0.0) == [], "the clock starts"
    assert c._stalled(c.STALL_S - 0.1) == []
    assert c._stalled(c.STALL_S) == [(TOPIC, 53)], "read again from the resume point"
    assert c._stalled(c.STALL_S + 1) == [], "once; the clock starts again"


def test_records_waiting_on_the_broker_are_read_again_too() -> None:
    c = bare_consumer()
    c.high[TOPIC] = 80  # nothing delivered past 53 although the log holds 53..79
    c._stalled(0.0)
    assert c._stalled(c.STALL_S) == [(TOPIC, 53)]


def test_a_partition_that_moves_or_rests_is_never_read_again() -> None:
    c = bare_consumer()
    assert all(c._stalled(float(t)) == [] for t in range(60)), "idle: nothing waits"
    c.high[TOPIC] = 1000
    for t in range(60):  # a backlog taken steadily
        c._next[TOPIC] = 54 + t
        assert c.admit(taken(c, 53 + t)) is True
        c._unacked_messages.clear()
        assert c._stalled(float(t)) == []


def test_no_watch_while_the_topic_is_busy_paused_or_the_flow_stopped() -> None:
    c = bare_consumer()
    c._next[TOPIC], c.high[TOPIC] = 61, 61
    c._stalled(0.0)
    m = taken(c, 999)  # a batch of the topic in progress (a database outage, say)
    assert c._stalled(100.0) == []
    c._unacked_messages.discard(m)
    assert c._stalled(101.0) == [(TOPIC, 53)], "fires once the topic is idle"
    c._stalled(200.0)
    c._paused_partitions.add(TOPIC)  # table recovery pauses partitions
    assert c._stalled(300.0) == [] and TOPIC not in c._stall
    c._paused_partitions.clear()
    c.suspend_flow.set()  # a rebalance: it seeks every partition itself
    assert c._stalled(400.0) == [] and c._stall == {}


def test_getmany_reads_a_stalled_partition_again(monkeypatch: Any) -> None:
    seeks = fake_fetch(monkeypatch, [])
    c = bare_consumer()
    c._next[TOPIC], c.high[TOPIC] = 61, 61
    c._stall[TOPIC] = ((53, None), -100.0)  # stalled since long ago
    kinds: list[str] = []
    c.on_reread = kinds.append

    async def run() -> list[int]:
        return [m.offset async for _, m in c.getmany(1.0)]

    assert asyncio.run(run()) == []
    assert seeks == [53] and c._next[TOPIC] == 53 and c._resume[TOPIC] == 53
    assert kinds == ["stall"], "counted (wardwatch_partition_rereads_total)"


def test_records_taken_and_never_committed_are_read_again() -> None:
    # 53..60 taken (the resume point moved to 61) but lost before their acknowledgement:
    # the committed offset stays at 53 with nothing of the topic in progress.
    c = bare_consumer()
    c._committed_offset[TOPIC] = 53
    c._next[TOPIC] = c.high[TOPIC] = c._resume[TOPIC] = 61
    c._stalled(0.0)
    assert c._stalled(c.STALL_S) == [(TOPIC, 53)]
    # Committed in time (the usual case): nothing to do.
    c._stalled(100.0)
    c._committed_offset[TOPIC] = 61
    assert c._stalled(100.0 + c.STALL_S) == [] and TOPIC not in c._stall


def test_a_never_seeked_partition_released_from_offset_0_is_read_again_from_0() -> None:
    c = bare_consumer()
    other = TP("fhir.inbound", 1)  # a new partition: nothing committed, never seeked
    c._next[other], c.high[other] = 5, 5
    m = ConsumerMessage(other.topic, other.partition, 0, 0.0, 0, None, None, b"", None)
    m.tracked = True
    assert c.admit(m) is False
    c._stalled(0.0)
    assert c._stalled(c.STALL_S) == [(other, 0)], "not from 5: records 0..4 would be lost"


def test_the_fixes_refuse_other_faust_mode_or_aiokafka_versions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import faust

    import streams.faust_fixes as ff

    assert ff.version_problems() == []  # the locked environment is the tested one
    other = {**ff.TESTED_VERSIONS, "aiokafka": "0.99.0"}
    wrong = ff.version_problems(other.__getitem__)
    assert wrong == ["aiokafka 0.99.0 (these fixes are for 0.14.0)"]
    monkeypatch.setattr(ff, "version_problems", lambda installed=None: wrong)
    with pytest.raises(RuntimeError, match=r"aiokafka 0\.99\.0"):
        ff.install(faust.App("wardwatch-version-guard", broker="kafka://127.0.0.1:1"))
