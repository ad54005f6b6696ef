"""A fix to Faust's consumer that several workers in one consumer group need.

**The loss.** During a rebalance Faust stops the flow and bumps the consumer generation.
A stream that then reads a message fetched before (a stale generation) or while the
flow is stopped *skips* it — and acknowledges it (``faust/streams.py``, ``_py_aiter``:
"We want to ack the filtered out message otherwise the lag would increase"). The
consumer records that acknowledgement like any other (``Consumer.ack``), and the next
commit moves the group's offset past a message nobody processed:

* the partition moved to another worker: that worker starts at the committed offset, past
  the skipped message, which is never scored;
* the partition stayed: the worker seeks back to the committed offset, which is already
  past it.

Faust's own bookkeeping makes the window wide: on revocation it forgets the partition's
committed offset (``Consumer.on_partitions_revoked``), so ``_new_offset`` skips its gap
check and commits the first run of acknowledged offsets, however far ahead of what was
processed; and even with the committed offset known it lets one missing offset through
(``min(acked) - committed_offset > 1``).

**The fix.** A message a stream skipped was never *tracked* (``Message.tracked``: a
stream marks a message tracked, and adds it to the consumer's unacknowledged set, only
once it passes the generation and flow checks and is handed to the agent). Every message
our agents process is tracked first. So :class:`Consumer` refuses the acknowledgement of
an untracked message: its offset is never committed, and whoever owns the partition
after the rebalance reads it again from the committed offset. Acknowledgements of
tracked messages — including a batch that was in flight when its partition was revoked,
which Faust waits for (``stream_wait_empty``) and commits before it lets the partition
go — are unchanged.

**The commit gate.** The second way past an unprocessed message is Faust's
``_new_offset``: it commits the first run of acknowledged offsets without checking that
the run starts where the partition's committed offset is when that offset is unknown
(forgotten on revocation, and offset 0 is stored as "unknown" by ``perform_seek``), and
with it known it lets one missing offset through (``min(acked) - committed > 1``). Our
:meth:`Consumer._new_offset` commits a run only when it starts exactly at the committed
offset, or, while Faust holds that as unknown, at the offset the partition was seeked
to at its assignment; with neither known it commits
nothing, and the messages are read again by whoever owns the partition next. And a
partition whose committed offset is 0 or unknown is seeked on assignment too (aiokafka
seeks only to a positive committed offset), so what a stream skipped is read again. Every
acknowledged run is consecutive, so nothing is committed that a stream did not process.

**Gaps are not trusted.** Faust counts a "gap" in the offsets it delivers (a message
whose offset jumps past the partition's read offset) as processed, meant for offsets
Kafka never delivers (transaction markers, compacted records). Our input topics have
neither (plain, idempotent producers, delete policy), and Faust's read offset is
itself reset to the committed offset by ``perform_seek`` after a rebalance, so a jump
there means messages fetched before the seek were delivered after it: the offsets in
between were skipped by the stream, never processed. In a leave test (one of three
workers SIGTERMed, another SIGKILLed) ``clinical.events`` partition 1 was committed at 58
with only offsets 33 and 57 of its last patient ever scored: refused acknowledgements are
never recorded and every other committed run is consecutive, so only gap offsets can
have filled 34..56 (23 messages lost). So :meth:`Consumer._new_offset` never fills a run with gap
offsets (the commit waits at the gap, and whoever owns the partition next reads it
again), and :meth:`Consumer._add_gap` logs each gap on an acknowledged topic.

**Delivery in offset order.** Faust's fetch loop goes on yielding the records of a fetch
it started before a seek after the seek (``Consumer._drain_messages`` iterates a batch
from ``getmany`` while ``perform_seek`` moves the partition back to its committed
offset): records past the new position reach the stream first, Faust's read offset
jumps past the seek position, and the records from that position, fetched again, are
then dropped as already read ("DROPPED MESSAGE ROFF"). The stream processes later
messages of a partition before earlier ones, which it reads again only at the
partition's next assignment. For a per-patient state that is a wrong score, not just a
late one: an hour scored before an earlier hour reached the state is scored on an
incomplete state, and the database keeps that first score. In a leave test, a patient's
hours 2-12 were scored with hour 1 missing (bit-exactly what the offline scorer gives
with hour 1 applied after hour 12). So :meth:`Consumer.getmany` hands the stream each
partition's records strictly in offset order from where the partition was last seeked:
a record before that position is a stale duplicate and dropped; a record past it
(something in between not delivered) is dropped and the partition seeked back to it;
and Faust's read offset is set to each record handed on, so its fetch loop never drops
one as already read (a leave test stalled that way: a partition read again from its
committed offset 59 after records 62.. had moved the read offset past it).

**Processing in offset order.** Delivered in order is not processed in order: a stream
can still *skip* records it was handed in order (a stale generation, or the flow stopped
during a rebalance; their acknowledgements are refused, see above) and then go on with
later records of the same partition. In a leave test the normaliser skipped offsets
53..70 of an inbound partition, processed 71..93, and got 53..70 again only later, so
the envelopes reached ``clinical.events`` out of order and 46 scores were computed on an
incomplete state. So each source partition has a *resume point*: where it was last
seeked to, or the offset after the last record a stream took. :func:`admit_in_order`
puts a processor on an agent's stream that asks :meth:`Consumer.admit` for every record
it takes (an int compare): the record at the resume point is processed; a later one
means a hole (records skipped before it) and is *released* — never processed,
acknowledged or committed, and not waited for by a rebalance — and the partition is
seeked back to the hole once (:meth:`Consumer.getmany` does the seek); an earlier one is
a copy of a record already taken and is released too. A skipped record at or after the
resume point asks for the same seek back, so a hole at the end of a partition (nothing
after it to reveal it) is read again as well. A partition with no resume point yet
(assigned, not yet seeked to its committed offset) processes nothing: a leave test
applied offset 21 of a partition, fetched before the rebalance, before 15..20.

**Seeking after an assignment.** aiokafka seeks a newly assigned partition to its
committed offset on the consumer thread, while Faust's recovery awaits it, and fetches
from there at once; those records can reach a stream before
:meth:`Consumer.seek_to_committed` has set the partition's resume point, and are then
released, with aiokafka's position already past them. In leave tests the last records
of such partitions were never fetched again (their committed offsets stayed before
them, nothing logged); with a broker-side fetch wait of 20 ms instead of Faust's 1.5 s
the refetch lands inside that window almost every time (the stall watch below fired in
5 of 6 runs). So ``seek_to_committed`` seeks every partition once more itself. Every
seek runs on the consumer thread (:meth:`Consumer._seek`: Faust's runs aiokafka's seek
on the event loop's thread, racing aiokafka's ``fetched_records``, which crashed
workers with a KeyError), and the new position is expected before the seek is made.

**Queues emptied after a rebalance.** Right after those seeks Faust's recovery calls
``flow_control.resume()``, which empties every stream's queue: records delivered and not
yet taken by a stream (the agent busy with a batch) are dropped there, never tracked, and
aiokafka's position is past them. In leave tests that stalled a partition whenever
nothing came after the dropped records to reveal the hole. :meth:`Consumer._queues_cleared`
runs after every such clear and seeks each partition with records delivered past its
resume point back to it, as for a hole.

**The stall watch.** Should records still go missing with nothing after them to reveal
the hole, :meth:`Consumer._stalled` reads a partition again when its records wait 15 s
while no stream takes any; re-reading is harmless (copies are released, and the scoring
agent skips a message its record already holds).

:func:`install` puts the fixed consumer into an app; ``streams/worker/app.py`` calls it right
after building the app.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from typing import Any, Final, cast

import faust
from faust.exceptions import Skip
from faust.streams import Stream
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaConsumer
from faust.types import TP, EventT, Message, StreamT
from mode.utils.futures import notify

log = logging.getLogger("wardwatch.faust_fixes")


class ConsumerThread(AIOKafkaConsumerThread):
    """Faust's consumer thread with the broker-side fetch wait set by WardWatch.

    Faust hard-codes ``fetch_min_bytes=1`` (and a 1.5 s wait that therefore never
    applies): at a steady trickle every fetch comes back with one or two records and
    the next is sent at once, so the consumer thread spends its time on fetch round
    trips (py-spy at 500 events/s offered: 40 % of the worker's CPU in that thread,
    most of it request encoding and socket writes). Asking the broker to hold a fetch
    until ``fetch_min_bytes`` have arrived, or ``fetch_max_wait_ms`` passed, bounds the
    fetch rate and adds at most that wait to an event's latency.
    """

    fetch_min_bytes: int = 1
    fetch_max_wait_ms: int = 1500

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka reads these when the consumer starts (it builds its Fetcher then);
        # Faust offers no setting for them.
        consumer._fetch_min_bytes = self.fetch_min_bytes
        consumer._fetch_max_wait_ms = self.fetch_max_wait_ms
        return consumer


class Consumer(AIOKafkaConsumer):
    """Faust's aiokafka consumer that never commits past a message nobody processed."""

    #: The consumer thread class (:func:`install` sets one with the fetch settings).
    thread_class: type[ConsumerThread] = ConsumerThread

    def _new_consumer_thread(self) -> AIOKafkaConsumerThread:
        return self.thread_class(self, loop=self.loop, beacon=self.beacon)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._fetch_start: dict[TP, int] = {}
        # Per source partition: the offset the stream must get next (see getmany), and
        # the offset a re-seek was asked for (one seek per hole, not one per record).
        self._next: dict[TP, int] = {}
        self._reseeking: dict[TP, int] = {}
        # Per source partition: the offset a stream must take next (see admit), the hole
        # a seek back was asked for (until a stream takes it: one seek per hole), and
        # the seeks back not yet done (getmany does them; admit and ack cannot await).
        self._resume: dict[TP, int] = {}
        self._hole: dict[TP, int] = {}
        self._to_seek: dict[TP, int] = {}
        # Per source partition: its resume point and committed offset when last seen to
        # move, and when (see _stalled); and when the watch runs next.
        self._stall: dict[TP, tuple[tuple[int | None, int | None], float]] = {}
        # Per source partition with no resume point yet: the first offset released for it.
        self._unplaced: dict[TP, int] = {}
        self._watch_at = 0.0
        self._watch_queue_clears(self.app.flow_control)

    def _watch_queue_clears(self, flow_control: Any) -> None:
        """Call :meth:`_queues_cleared` whenever Faust empties the streams' queues.

        ``FlowControlEvent.resume`` (after every rebalance's seeks) calls ``self.clear()``,
        which empties every channel queue: records this consumer delivered and no stream
        has taken yet are dropped there, untracked, with nothing left to fetch them again.
        Wrapping the instance's ``clear`` catches both ``resume`` and direct calls."""
        clear = flow_control.clear

        def clear_then_read_again() -> None:
            clear()
            self._queues_cleared()

        flow_control.clear = clear_then_read_again

    #: Called with the kind of each re-read (see _reposition); :func:`install` sets it.
    on_reread: Callable[[str], None] | None = None

    #: Seconds a source partition may hold records nobody takes (waiting on the broker
    #: or delivered and lost on the way to the stream) before it is read again.
    STALL_S: float = 15.0

    #: Acknowledgements refused (messages skipped by a stream during a rebalance).
    refused_acks: int = 0
    #: Records a stream took out of order and released unprocessed (see admit).
    released: int = 0

    def ack(self, message: Message) -> bool:
        """Record ``message`` as processed, unless no stream ever took it.

        Returns True when the offset now counts towards the next commit. Raises nothing.
        """
        if not message.tracked and self.app.topics.acks_enabled_for(message.topic):
            # Skipped for a stale generation or a stopped flow: leave the offset
            # uncommitted so the partition's owner reads it again.
            self.refused_acks += 1
            log.info(
                "not committing %s/%s/%s: skipped by its stream during a rebalance",
                message.topic,
                message.partition,
                message.offset,
            )
            self._skipped(message.tp, message.offset)
            return False
        return bool(super().ack(message))

    def _skipped(self, tp: TP, offset: int) -> None:
        """A stream skipped ``offset`` of ``tp``: at or past the resume point it must be
        read again before anything after it is processed, so ask for a seek back to the
        resume point. An offset before it is a stale copy of one already taken. Raises
        nothing."""
        resume = self._resume.get(tp)
        if resume is not None and offset >= resume:
            self._want_seek(tp, resume)

    def _want_seek(self, tp: TP, hole: int) -> None:
        """Ask :meth:`getmany` to seek ``tp`` back to ``hole``, once per hole."""
        if self._hole.get(tp) != hole:
            self._hole[tp] = hole
            self._to_seek[tp] = hole
            log.warning(
                "%s/%s: offset %s not processed; holding back later offsets until it is",
                tp.topic,
                tp.partition,
                hole,
            )

    def _queues_cleared(self) -> None:
        """The streams' queues were emptied: each source partition with records delivered
        past its resume point (handed on, never taken) is seeked back to it (by getmany,
        as for a hole). Copies of records that were on their way and are taken anyway
        are released by :meth:`admit`. Raises nothing."""
        for tp, delivered in self._next.items():
            resume = self._resume.get(tp)
            if resume is not None and delivered > resume:
                self._want_seek(tp, resume)

    def admit(self, message: Message) -> bool:
        """Whether a stream may process ``message``, which it has just taken (tracked):
        True when it is the partition's next offset (its resume point). Otherwise it is
        released (see :meth:`release`) and False returned; a record past the resume point
        (a hole before it) also asks for a seek back to the resume point. A partition
        with no resume point (assigned and not yet seeked) processes nothing: Faust seeks
        every assigned partition to its committed offset once the tables are recovered
        (:meth:`seek_to_committed`), and what a stream takes before comes from where a
        fetch stood before the rebalance, possibly past records lost during it (a leave
        test applied offset 21 of a partition before 15..20 that way). Such records are
        read again after the seek (or, should none come, by the stall watch from the
        committed offset). Called for every record of the agents' source topics (see
        :func:`admit_in_order`), so it stays an int compare on the common path. Raises
        nothing."""
        tp = message.tp
        offset = message.offset
        resume = self._resume.get(tp)
        if offset == resume:
            self._resume[tp] = offset + 1
            if self._hole:
                self._hole.pop(tp, None)  # a hole is always at the resume point: filled
            return True
        if resume is None:
            self._unplaced.setdefault(tp, offset)
        elif offset > resume:
            self._want_seek(tp, resume)
        self.release(message)
        return False

    def release(self, message: Message) -> None:
        """Let go of a tracked ``message`` without processing it: it is marked acknowledged
        (so nothing records it again, and a rebalance does not wait for it) but its
        offset is not recorded, so it is never committed, and it is read again after the
        seek back. Raises nothing."""
        message.acked = True
        self._unacked_messages.discard(message)
        self.released += 1
        notify(self._waiting_for_ack)  # a rebalance may be waiting for it (wait_empty)
        log.debug(
            "%s/%s/%s released: taken out of order",
            message.topic,
            message.partition,
            message.offset,
        )

    async def seek_to_committed(self) -> Mapping[TP, int]:
        """Seek every assigned partition to its committed offset, including the ones
        aiokafka leaves alone, and remember where each source partition starts.

        aiokafka seeks only to a *positive* committed offset: a partition with none (or
        0) kept its position from before the rebalance, past the messages a stream
        skipped during it, which nobody would then read again. Here such a partition is
        seeked to 0, or to its earliest offset when nothing was ever committed (the
        app's reset policy is earliest). A partition aiokafka did seek is seeked again
        here: aiokafka's seek runs on the consumer thread, and records it fetched before
        this method resumes can reach a stream while the partition has no resume point
        yet; they are released, and without a second seek aiokafka's position stays past
        them (see the module docstring). Raises what the broker calls raise; Faust
        retries a rebalance that fails.
        """
        offsets = await super().seek_to_committed()
        starts: dict[TP, int] = {}
        never: list[TP] = []
        for raw_tp, committed in offsets.items():
            tp = TP(raw_tp.topic, raw_tp.partition)
            if self._is_changelog_tp(tp) or not self.app.topics.acks_enabled_for(tp.topic):
                continue  # tables recover from their changelogs by their own seeks
            if committed is not None and committed > 0:
                starts[tp] = committed  # seeked again (see the docstring)
            elif committed is None:
                never.append(tp)
            else:
                starts[tp] = 0
        if never:
            # One request for all of them: each request waits behind the consumer's
            # in-flight fetch on the broker connection (up to fetch_max_wait_ms when the
            # fetched partitions are idle), so one per partition took 1.5 s each: a worker
            # with 40 never-committed partitions was ready 60 s after its table was.
            earliest = await self.earliest_offsets(*never)
            starts.update({tp: earliest.get(tp, 0) for tp in never})
        for tp, start in starts.items():
            await self.seek(tp, start)
            self._fetch_start[tp] = start
        return offsets

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        """Forget where revoked partitions started, then Faust's handling."""
        for tp in revoked:
            self._forget(tp)
        await super().on_partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TP], generation_id: int = 0) -> None:
        """Partitions are seeked again on assignment: forget where they started, and
        everything known of a partition not assigned any more. Why the latter: while a
        revocation waits for the streams, Faust's fetch loop runs with the flow stopped
        and seeks every partition still held to its committed offset (``perform_seek``),
        which records the revoked ones here again after :meth:`on_partitions_revoked`
        forgot them (seen by the rebalance contract test)."""
        for tp in set(assigned) | self._known():
            self._forget(tp)
        await super().on_partitions_assigned(assigned, generation_id)

    def _state(self) -> tuple[dict[TP, Any], ...]:
        """The overrides' per-partition state."""
        return (self._stall, self._unplaced, self._fetch_start, self._next,
                self._reseeking, self._resume, self._hole, self._to_seek)  # fmt: skip

    def _known(self) -> set[TP]:
        """Every partition the overrides hold state of."""
        return {tp for held in self._state() for tp in held}

    def _forget(self, tp: TP) -> None:
        for held in self._state():
            held.pop(tp, None)

    def _ordered(self, tp: TP) -> bool:
        """True for a source partition whose records a stream acknowledges."""
        return not self._is_changelog_tp(tp) and bool(self.app.topics.acks_enabled_for(tp.topic))

    def _expect(self, tp: TP, offset: int) -> None:
        """The partition is seeked to ``offset``: its records start there again (those
        fetched before the seek and past it are dropped until it arrives), and its
        processing resumes there (any hole before is read again from there)."""
        if self._ordered(tp):
            self._next[tp] = offset
            self._reseeking[tp] = offset
            self._resume[tp] = offset
            self._hole.pop(tp, None)
            self._to_seek.pop(tp, None)
            self._unplaced.pop(tp, None)

    async def seek(self, partition: TP, offset: int) -> None:
        """Deliver ``partition`` from ``offset`` on (see getmany), then Faust's seek.
        Raises what the broker call raises.

        The expectation comes first because the seek waits for the consumer thread (see
        :meth:`_seek`): records fetched before it can reach a stream meanwhile, and are
        judged against the new position (past it: dropped, the seek being under way;
        before it: dropped as copies)."""
        self._expect(TP(partition.topic, partition.partition), offset)
        await super().seek(partition, offset)

    async def _seek(self, partition: TP, offset: int) -> None:
        """aiokafka's seek, run on the consumer thread that owns aiokafka's state. Faust
        calls it on this (the event loop's) thread, while the consumer thread may be in
        aiokafka's ``fetched_records``, which deletes the same ``_records`` entries as the
        seek: a leave-test worker crashed with a KeyError there. Raises what aiokafka's
        seek raises."""
        thread = self._thread
        await thread.call_thread(thread._ensure_consumer().seek, partition, offset)

    def in_order(self, tp: TP, offset: int) -> bool | None:
        """Whether the record at ``offset`` of ``tp`` is the next one to deliver: True
        (deliver it), False (a stale duplicate: drop it) or None (records before it were
        not delivered: drop it and seek back to :attr:`_next`). Partitions never seeked
        since their assignment deliver the first record they get (:meth:`admit` holds it
        back until the seek). Raises nothing."""
        if not self._ordered(tp):
            return True
        expected = self._next.get(tp)
        if expected is None or offset == expected:
            self._next[tp] = offset + 1
            self._reseeking.pop(tp, None)
            return True
        return False if offset < expected else None

    # Faust's signature, timeout parameter included.
    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Message]]:  # noqa: ASYNC109
        """Faust's records, each source partition's strictly in offset order from where it
        was last seeked (see the module docstring), after the seeks back to holes a
        stream left (see :meth:`admit`). Raises what Faust's getmany raises; a seek back
        that fails is logged and tried again at the next out-of-order record.
        """
        if self._to_seek:
            await self._seek_holes()
        now = time.monotonic()
        if now >= self._watch_at:
            self._watch_at = now + 1.0
            for tp, at in self._stalled(now):
                why = f"no progress for {self.STALL_S:.0f} s while records wait"
                seeked = await self._reposition(tp, at, why, "stall")
                if seeked is not None:  # processing resumes there (taken ones included)
                    self._expect(tp, seeked)
        async for tp, message in super().getmany(timeout):
            if self._to_seek:
                await self._seek_holes()
            verdict = self.in_order(tp, message.offset)
            if verdict:
                if self._ordered(tp):
                    # This decides the order: Faust's fetch loop must neither drop the
                    # record as already read (its read offset can be ahead after a
                    # seek back) nor count a gap before it.
                    self._read_offset[tp] = message.offset
                yield tp, message
            elif verdict is None:
                await self._seek_back(tp, message.offset)

    def _stalled(self, now: float) -> list[tuple[TP, int]]:
        """Source partitions to read again, with the offset to read from: for
        :attr:`STALL_S` seconds the flow ran, the partition was not paused, neither its
        resume point nor its committed offset moved, and records were waiting all the
        while: on the broker past what was delivered (high watermark), delivered and
        never taken, or taken and never committed (lost between the stream and its
        acknowledgement). Each is read again from the earliest of those. Checked about
        once a second, and never while a stream of the topic holds unacknowledged
        records (a slow batch, a database outage), so it fires only when nothing of the
        topic is being processed.

        Why: the hold-backs above notice a lost record only when a later record of the
        partition arrives (see the module docstring). Re-reading is harmless: copies are
        released by :meth:`admit`, and the scoring agent skips a message its patient's
        record already holds. Raises nothing.
        """
        out: list[tuple[TP, int]] = []
        if self.suspend_flow.is_set():  # a rebalance: it seeks every partition anyway
            self._stall.clear()
            return out
        busy = {m.tp.topic for m in self._unacked_messages}
        for tp, delivered in list(self._next.items()):
            resume = self._resume.get(tp)
            try:
                high: int | None = self.highwater(tp)
            except Exception:  # not assigned any more, or nothing fetched yet
                high = None
            committed = self._committed_offset.get(tp)
            if committed is None:
                committed = self._fetch_start.get(tp)
            uncommitted = resume is not None and committed is not None and committed < resume
            unplaced = self._unplaced.get(tp) if resume is None else None
            waiting = (
                (high is not None and high > delivered)
                or (resume is not None and resume < delivered)
                or uncommitted
                or unplaced is not None
            )
            if not waiting or tp in self._paused_partitions:
                self._stall.pop(tp, None)
                continue
            mark = (resume, committed)
            seen = self._stall.get(tp)
            if seen is None or seen[0] != mark:
                self._stall[tp] = (mark, now)  # moved: the clock starts again
                continue
            if now - seen[1] >= self.STALL_S and tp.topic not in busy:
                del self._stall[tp]
                if committed is not None and (resume is None or committed < resume):
                    at = committed  # taken and never committed, or never seeked
                elif resume is not None:
                    at = resume
                else:  # offset 0 is an offset: not "or"
                    at = delivered if unplaced is None else unplaced
                out.append((tp, at))
        return out

    async def _seek_holes(self) -> None:
        """Seek each partition a stream left a hole in back to the hole (see
        :meth:`admit`). Raises nothing: a seek that fails is logged, and asked for again
        by the next record taken past the hole."""
        todo, self._to_seek = self._to_seek, {}
        for tp, hole in todo.items():
            if self._hole.get(tp) != hole:
                continue  # taken, or the partition seeked elsewhere, since
            at = await self._reposition(tp, hole, "a stream skipped it", "hole")
            if at is None:
                self._hole.pop(tp, None)
            elif at != hole:  # deleted by retention: processing resumes at the earliest
                self._hole.pop(tp, None)
                self._resume[tp] = at

    async def _seek_back(self, tp: TP, got: int) -> None:
        """``got`` arrived while ``tp`` should deliver :attr:`_next` first: seek there (once
        per hole). Raises nothing: a failed seek is retried at the next record."""
        expected = self._next[tp]
        if self._reseeking.get(tp) == expected:
            return  # the seek back is under way; records fetched before it are dropped
        await self._reposition(tp, expected, f"got offset {got} first", "out_of_order")

    async def _reposition(self, tp: TP, expected: int, why: str, kind: str) -> int | None:
        """Seek ``tp`` to ``expected`` and deliver its records from there; the offset
        seeked to, or None if the seek failed (logged). A hole the log no longer holds
        (deleted by retention) is skipped with an error log. Each re-read is counted by
        :attr:`on_reread` under ``kind`` (hole, out_of_order, stall). Raises nothing."""
        try:
            earliest = (await self.earliest_offsets(tp)).get(tp)
            if earliest is not None and earliest > expected:
                log.error(
                    "%s/%s: offsets %s..%s were deleted before they were processed",
                    tp.topic,
                    tp.partition,
                    expected,
                    earliest - 1,
                )
                expected = earliest
            log.warning("%s/%s: reading again from %s (%s)", tp.topic, tp.partition, expected, why)
            # Faust's seek, which waits for the consumer thread (see _seek); only getmany
            # calls this, so nothing is delivered meanwhile.
            await super().seek(tp, expected)
            self._next[tp] = expected
            self._reseeking[tp] = expected
            if self.on_reread is not None:
                self.on_reread(kind)
        except Exception as exc:
            log.warning("%s/%s: seek back to %s failed: %r", tp.topic, tp.partition, expected, exc)
            return None
        return expected

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        """Faust saw offsets ``offset_from..offset_to - 1`` of ``tp`` skipped while
        fetching: logged, never counted as processed (see :meth:`_new_offset`). Raises
        nothing."""
        log.warning(
            "%s/%s: offsets %s..%s skipped while fetching; not committing past them",
            tp.topic,
            tp.partition,
            offset_from,
            offset_to - 1,
        )

    def _new_offset(self, tp: TP) -> int | None:
        """The offset to commit for ``tp``: one past the run of acknowledged offsets that
        starts exactly at the partition's committed offset (or, while Faust holds that as
        unknown, where :meth:`seek_to_committed` put it at assignment); None when there is
        no such run. Unlike Faust, gaps Faust recorded while fetching do not count as
        acknowledged (see the module docstring). Raises nothing."""
        acked = self._acked[tp]
        if not acked:
            return None
        # Gap offsets are not counted as processed (see the module docstring): a run
        # stops at the first offset no stream acknowledged.
        self._gap.pop(tp, None)
        acked.sort()
        # Faust keeps a committed offset of 0 as None: fall back to where the partition
        # was seeked at its assignment.
        start = self._committed_offset[tp]
        if start is None:
            start = self._fetch_start.get(tp)
        if start is None or acked[0] > start:
            return None  # the head of the partition is not processed yet
        end = acked[0]
        n = 1
        while n < len(acked) and acked[n] <= end + 1:
            end = max(end, acked[n])
            n += 1
        done = acked[:n]
        del acked[:n]
        self._acked_index[tp].difference_update(done)
        return end + 1


def admit_in_order(stream: StreamT[Any]) -> None:
    """Make ``stream`` process each source partition's records contiguously in offset
    order: a processor asks :meth:`Consumer.admit` for every record the stream takes and
    skips (never hands to the agent) the ones it releases. Call it before the agent
    starts iterating, so the processor runs before a ``take``'s buffering; calling it
    again is a no-op, and so is an app without :class:`Consumer`. Raises nothing."""
    s = cast(Stream[Any], stream)
    consumer = s.app.consumer
    if not isinstance(consumer, Consumer) or getattr(s, "_wardwatch_in_order", False):
        return
    admit = consumer.admit

    def in_order(value: Any) -> Any:
        # Faust sets current_event (the record just taken and tracked) before processors.
        event = s.current_event
        if event is not None and not admit(event.message):
            raise Skip()  # Faust acks it, a no-op: released already
        return value

    s.add_processor(in_order)
    s._wardwatch_in_order = True  # type: ignore[attr-defined]


def keep_filling(grew: int, waited: float, *, busy_at: int, busy_within: float) -> bool:
    """Whether :func:`adaptive_take` waits once more before handing a batch over: while
    each short wait adds at least ``busy_at`` events (a backlog: they arrive as fast as
    Faust buffers them), up to ``busy_within`` seconds in all; a trickle (fewer per wait)
    goes at once. The batch's maximum ends the wait anyway. Pure; raises nothing."""
    return grew >= busy_at and waited < busy_within


async def adaptive_take(
    stream: StreamT[Any], max_: int, within: float, busy_within: float, busy_at: int
) -> AsyncGenerator[Sequence[EventT[Any]], None]:
    """Faust's ``Stream.noack_take`` (faust-streaming 0.11: buffered events, acknowledged
    by the caller) whose wait extends itself while a backlog pours in (:func:`keep_filling`).

    A fixed wait is a trade: 5 ms kept the alert path short at a trickle but cut a
    backlog's batches to ~150 events and the burst rate by a quarter (288 against 391
    messages/s with 0.2 s); 0.2 s holds every event at a trickle. Here each batch waits
    ``within``, then again for as long as every wait adds ``busy_at`` events or more (up
    to ``busy_within``). The rest is Faust's body. Raises what the stream raises.
    """
    s = cast(Any, stream)
    buffer: list[EventT[Any]] = []
    buffer_full = asyncio.Event()
    buffer_consumed = asyncio.Event()
    buffer_consuming: asyncio.Future[None] | None = None
    enable_acks = s.enable_acks
    channel_it = s.channel.__aiter__()

    async def add_to_buffer(value: Any) -> Any:
        nonlocal buffer_consuming
        try:
            # The caller is working on the previous batch: wait until it is done.
            if buffer_consuming is not None:
                try:
                    await buffer_consuming
                finally:
                    buffer_consuming = None
            event = s.current_event
            if event is None:
                raise RuntimeError("Take buffer found current_event is None")
            buffer.append(event)
            if len(buffer) >= max_:
                buffer_full.set()
                buffer_consumed.clear()
                await s.wait(buffer_consumed)  # never more than max_ events
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("Error adding to take buffer: %r", exc)
            await s.crash(exc)
        return value

    s.enable_acks = False  # the caller acknowledges
    s.add_processor(add_to_buffer)
    s._enable_passive(channel_it)
    try:
        while not s.should_stop:
            seen, waited = 0, 0.0
            while True:
                await s.wait_for_stopped(buffer_full, timeout=within)
                waited += within
                grew, seen = len(buffer) - seen, len(buffer)
                if buffer_full.is_set() or s.should_stop:
                    break
                if not keep_filling(grew, waited, busy_at=busy_at, busy_within=busy_within):
                    break
            if buffer:
                buffer_consuming = asyncio.get_running_loop().create_future()
                try:
                    yield list(buffer)
                finally:
                    buffer.clear()
                    notify(buffer_consuming)
                    buffer_full.clear()
                    buffer_consumed.set()
    finally:
        s.enable_acks = enable_acks
        s._processors.remove(add_to_buffer)


# The versions these overrides were written and contract-tested against. They replace
# private Faust and aiokafka internals: another version may rename or reorder what they
# rely on, and then they would fail silently. Upgrading means re-reading the overridden
# code, re-running the integration tests, and adding the new versions here.
TESTED_VERSIONS: Final = {
    "faust-streaming": "0.15.3",
    "mode-streaming": "0.7.1",
    "aiokafka": "0.14.0",
}


def version_problems(installed: Callable[[str], str] | None = None) -> list[str]:
    """The packages installed at another version than :data:`TESTED_VERSIONS` says
    (empty: none). ``installed`` looks a version up (default ``importlib.metadata``)."""
    look = installed or importlib.metadata.version
    return [
        f"{name} {look(name)} (these fixes are for {want})"
        for name, want in TESTED_VERSIONS.items()
        if look(name) != want
    ]


def install(
    app: faust.App,
    *,
    fetch_min_bytes: int = 1,
    fetch_max_wait_ms: int = 1500,
    on_reread: Callable[[str], None] | None = None,
) -> None:
    """Make ``app`` create :class:`Consumer` instead of Faust's own, fetching with the
    given broker-side wait (see :class:`ConsumerThread`) and reporting each partition
    read again to ``on_reread`` (with its kind). Raises nothing.

    Must run before the worker starts (the consumer is created when it is first used).
    Raises ``RuntimeError`` (permanent: the worker must not start) when faust-streaming,
    mode-streaming or aiokafka is not at the version these overrides were written for.
    """
    wrong = version_problems()
    if wrong:
        raise RuntimeError(
            "streams/faust_fixes.py overrides private internals of other versions: "
            + "; ".join(wrong)
        )
    thread = type(
        "ConsumerThread",
        (ConsumerThread,),
        {"fetch_min_bytes": fetch_min_bytes, "fetch_max_wait_ms": fetch_max_wait_ms},
    )
    transport: Any = app.transport
    transport.Consumer = type(
        "Consumer",
        (Consumer,),
        {"thread_class": thread, "on_reread": staticmethod(on_reread) if on_reread else None},
    )
