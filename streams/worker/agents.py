"""The worker's agents, thin: take a batch, call the core (or the writer), send what it
produced, wait until that is durable, acknowledge.

score      fhir.inbound, clinical.events -> risk.scores, risk.alerts, clinical.events
           (envelopes for another home partition), fhir.inbound.dlq; records in a table
persist_*  risk.scores, risk.alerts, the dead-letter topic -> the SQL database
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, cast

from faust.streams import Stream
from faust.types import EventT, StreamT

from inference.scoring.batch import score_batch
from inference.scoring.model_info import LoadedModel
from inference.scoring.model_port import RiskPort
from inference.scoring.record import PatientRecord
from storage.errors import StoragePermanentError

from .. import faust_fixes, persist
from ..dead_letter_limit import DeadLetterLimit
from ..errors import reason_of
from ..observe import Metrics
from ..settings import Settings
from .deadletters import DeadLetters
from .outputs import Outputs, message_of, write_records
from .partitions import copartitioned, router
from .supervision import retry_transient

log = logging.getLogger("wardwatch.stream")
Agent = Callable[[StreamT[Any]], Awaitable[None]]
Writer = Callable[[Sequence[Any]], Awaitable[int]]  # a Sink's write of rows
# Events per short wait that mean a backlog rather than live traffic: at 2,000 events/s
# offered (278 messages/s) a 5 ms wait gathers one or two messages; draining a backlog
# Faust buffers about 150.
BUSY_AT: Final = 16


def batches(stream: StreamT[Any]) -> Any:
    """``noack_take`` (missing from Faust's StreamT type): batches acknowledged by hand,
    holding each source partition's records contiguously in offset order (a record taken
    after a skipped one is released unprocessed and read again after it; see
    :func:`streams.faust_fixes.admit_in_order`), so no agent sees a later message of a
    partition before an earlier one."""
    faust_fixes.admit_in_order(stream)
    return cast(Stream[Any], stream).noack_take


def adaptive_batches(
    stream: StreamT[Any], max_: int, within: float, busy_within: float
) -> AsyncGenerator[Sequence[EventT[Any]], None]:
    """:func:`batches` with a wait that extends itself while a backlog pours in
    (:func:`streams.faust_fixes.adaptive_take`, :data:`BUSY_AT` events per wait)."""
    faust_fixes.admit_in_order(stream)
    return faust_fixes.adaptive_take(stream, max_, within, busy_within, BUSY_AT)


@dataclass(frozen=True, slots=True)
class Scoring:
    """What the score agent works with."""

    settings: Settings
    model: LoadedModel
    port: RiskPort
    patients: Any  # the Faust table of records (str -> str)
    outputs: Outputs
    metrics: Metrics

    def load(self, patient: str) -> PatientRecord:
        """A patient's record from the table; raises ``ValueError``/``KeyError``/
        ``TypeError`` for a malformed one (permanent: the worker stops)."""
        return PatientRecord.from_json(self.patients.get(patient))


def score_agent(w: Scoring) -> Agent:
    """The score agent: batches through :func:`inference.scoring.batch.score_batch`.
    Scores, alerts and dead letters are durable (their acks awaited) before the state
    that follows from them is written and the batch acknowledged, so a crash at any
    point replays the batch from the old state, re-emitting the same records."""

    async def score(stream: StreamT[Any]) -> None:
        # What is imported and built by now lives as long as the worker (about 335,000
        # objects): freeze it out of the collector, whose full passes otherwise walk it
        # all, stopping the loop each time (200-230 ms at 2,000 events/s offered, three
        # times a run; 10 ms frozen), which was the longest stall on the alert path.
        gc.freeze()
        s, partitions = w.settings, await copartitioned(w.settings)
        limit = w.outputs.dead_letters.limit()
        async for batch in adaptive_batches(
            stream, s.batch_size, s.batch_within_s, s.batch_busy_within_s
        ):
            w.metrics.batch("score", len(batch))
            messages = [message_of(e, s.topic_inbound) for e in batch]
            result = await score_batch(
                messages,
                w.load,
                w.port,
                w.model,
                staleness_hours=s.staleness_hours,
                chunk=s.predict_chunk,
                here=router(batch, partitions),
            )
            await asyncio.gather(*await w.outputs.send(batch, result))
            dead = sum(d.whole for d in result.dead_letters)
            w.outputs.dead_letters.check(limit, "score", len(batch), dead)
            w.outputs.count(result)  # durable now: count them
            write_records(w.patients, batch, result)
            for event in batch:
                await stream.ack(event)

    return score


@dataclass(frozen=True, slots=True)
class Writing:
    """What the persist agents work with."""

    settings: Settings
    sink: persist.Sink
    dead_letters: DeadLetters
    metrics: Metrics

    async def retry(self, fn: Callable[[], Awaitable[Any]], what: str) -> Any:
        """Transient failures retried for the settings' budget, then raised."""
        return await retry_transient(fn, what, self.settings.retry_budget_s)


async def persist_batch(
    w: Writing,
    stream: StreamT[Any],
    batch: Sequence[EventT[Any]],
    to_row: Callable[[dict[str, Any]], Any],
    write: Writer,
    limit: DeadLetterLimit,
    agent: str,
) -> None:
    """Write a batch idempotently, then acknowledge it.

    Transient failures are retried (backpressure: the stream waits), then raise. A
    permanent failure of the batch is narrowed down row by row, so one bad row is
    dead-lettered and the others are still written; too many dead letters raise
    :class:`WorkerStopError`. Either stops the worker with the batch unacknowledged.
    """
    sent: list[Awaitable[Any]] = []
    pairs, bad = persist.decode_batch(batch, to_row)
    dead = len(bad)
    for event, reason in bad:
        await w.dead_letters.send(event, reason, "persist", sent)
    if pairs:
        rows = [row for _, row in pairs]
        try:
            await w.retry(functools.partial(write, rows), "database write")
        except StoragePermanentError:
            for event, row in pairs:
                try:
                    await w.retry(functools.partial(write, [row]), "database write")
                except StoragePermanentError as exc:
                    await w.dead_letters.send(event, reason_of(exc), "persist", sent)
                    dead += 1
    await asyncio.gather(*sent)
    w.dead_letters.check(limit, agent, len(batch), dead)
    for event in batch:
        await stream.ack(event)


async def persist_rows(
    w: Writing,
    agent: str,
    to_row: Callable[[dict[str, Any]], Any],
    write: Writer,
    stream: StreamT[Any],
) -> None:
    """The body of a writer agent of scores or alerts: batches of ``stream`` through
    :func:`persist_batch`. Raises what it raises."""
    limit = w.dead_letters.limit()
    async for batch in batches(stream)(w.settings.batch_size, within=w.settings.persist_within_s):
        w.metrics.batch(agent, len(batch))
        await persist_batch(w, stream, batch, to_row, write, limit, agent)


async def persist_dead_letters(w: Writing, stream: StreamT[Any]) -> None:
    # The dead-letter index: where each dead letter came from, which stage refused it
    # and why (the bytes stay in Kafka). Transient errors are retried; a permanent one
    # cannot be dead-lettered again, so it is logged and the batch acknowledged.
    async for batch in batches(stream)(w.settings.batch_size, within=w.settings.persist_within_s):
        w.metrics.batch("persist_dead_letters", len(batch))
        rows = [
            persist.dead_letter_row(
                e.message.headers,
                (str(e.message.topic), int(e.message.partition), int(e.message.offset)),
            )
            for e in batch
        ]
        try:
            write = functools.partial(w.sink.write_dead_letters, rows)
            await w.retry(write, "dead-letter index write")
        except StoragePermanentError as exc:
            log.error("dead-letter index: %d entries not stored: %s", len(rows), exc)
        for event in batch:
            await stream.ack(event)


def persist_agents(w: Writing) -> dict[str, Agent]:
    """The writer agents by name, each bound to ``w``."""
    rows: dict[str, tuple[Callable[[dict[str, Any]], Any], Writer]] = {
        "persist_scores": (persist.score_row, w.sink.write_scores),
        "persist_alerts": (persist.alert_row, w.sink.write_alerts),
    }
    agents: dict[str, Agent] = {
        name: functools.partial(persist_rows, w, name, to_row, write)
        for name, (to_row, write) in rows.items()
    }
    agents["persist_dead_letters"] = functools.partial(persist_dead_letters, w)
    return agents
