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

:func:`install` puts the fixed consumer into an app; ``streams/app.py`` calls it right
after building the app.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import faust
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaConsumer
from faust.types import TP, Message

log = logging.getLogger("wardwatch.faust_fixes")


class Consumer(AIOKafkaConsumer):
    """Faust's aiokafka consumer that never commits past a message nobody processed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._fetch_start: dict[TP, int] = {}

    #: Acknowledgements refused (messages skipped by a stream during a rebalance).
    refused_acks: int = 0

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
            return False
        return bool(super().ack(message))

    async def seek_to_committed(self) -> Mapping[TP, int]:
        """Seek every assigned partition to its committed offset, including the ones
        aiokafka leaves alone, and remember where each source partition starts.

        aiokafka seeks only to a *positive* committed offset: a partition with none (or
        0) kept its position from before the rebalance, past the messages a stream
        skipped during it, which nobody would then read again. Here such a partition is
        seeked to 0, or to its earliest offset when nothing was ever committed (the
        app's reset policy is earliest). Raises what the broker calls raise; Faust
        retries a rebalance that fails.
        """
        offsets = await super().seek_to_committed()
        for raw_tp, committed in offsets.items():
            tp = TP(raw_tp.topic, raw_tp.partition)
            if self._is_changelog_tp(tp) or not self.app.topics.acks_enabled_for(tp.topic):
                continue  # tables recover from their changelogs by their own seeks
            if committed is not None and committed > 0:
                self._fetch_start[tp] = committed
                continue
            start = 0
            if committed is None:
                start = (await self.earliest_offsets(tp)).get(tp, 0)
            await self.seek(tp, start)
            self._fetch_start[tp] = start
        return offsets

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        """Forget where revoked partitions started, then Faust's handling."""
        for tp in revoked:
            self._fetch_start.pop(tp, None)
        await super().on_partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TP], generation_id: int = 0) -> None:
        """Partitions are seeked again on assignment: forget where they started."""
        for tp in assigned:
            self._fetch_start.pop(tp, None)
        await super().on_partitions_assigned(assigned, generation_id)

    def _new_offset(self, tp: TP) -> int | None:
        """The offset to commit for ``tp``: one past the run of acknowledged offsets that
        starts exactly at the partition's committed offset (or, while Faust holds that as
        unknown, where :meth:`seek_to_committed` put it at assignment); None when there is
        no such run. Offsets Kafka never delivers (gaps Faust recorded while fetching) count as
        acknowledged, as in Faust. Raises nothing."""
        acked = self._acked[tp]
        if not acked:
            return None
        gaps = self._gap[tp]
        if gaps:
            top = max(acked)
            spans = sorted(gaps.overlap(0, top), key=lambda iv: iv.begin)
            if spans:
                filler = [o for iv in spans for o in range(iv.begin, iv.end)]
                acked.extend(filler)
                gaps.chop(0, max(filler[-1], top + 1))
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


def install(app: faust.App) -> None:
    """Make ``app`` create :class:`Consumer` instead of Faust's own. Raises nothing.

    Must run before the worker starts (the consumer is created when it is first used).
    """
    transport: Any = app.transport
    transport.Consumer = Consumer
