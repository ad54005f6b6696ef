"""Sending what a scored batch produced, and writing the records that follow from it.

Order matters only for durability: every send's ack joins one list the agent awaits
before it writes a record or acknowledges an event (see :func:`write_records`).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any

import faust
import orjson
from faust.streams import _current_event
from faust.types import EventT

from inference.scoring.batch import BatchResult, Message

from ..observe import Metrics
from .deadletters import DeadLetters, source_of

log = logging.getLogger("wardwatch.stream")


def message_of(event: EventT[Any], inbound_topic: str) -> Message:
    """The core's view of an event: FHIR from the inbound topic, else an envelope."""
    return Message(
        value=event.value,
        source=source_of(event),
        inbound_ts_ms=int(event.message.timestamp * 1000),
        kind="fhir" if event.message.topic == inbound_topic else "envelope",
    )


@dataclass(frozen=True, slots=True)
class Outputs:
    """The score agent's output topics."""

    events: faust.TopicT
    scores: faust.TopicT
    alerts: faust.TopicT
    dead_letters: DeadLetters
    metrics: Metrics

    async def send(self, batch: Sequence[EventT[Any]], result: BatchResult) -> list[Awaitable[Any]]:
        """Hand every output of ``result`` to the producer: forwarded envelopes, dead
        letters, scores, alerts. Returns the acks to await (all together). Raises the
        producer's error for a send that cannot be queued (the worker stops)."""
        sent: list[Awaitable[Any]] = []
        for _, env in result.forward:
            sent.append(await self.events.send(key=env.patient.encode(), value=env.to_bytes()))
        self.metrics.routed(result.kept, len(result.forward))
        for dead in result.dead_letters:
            await self.dead_letters.send(batch[dead.index], dead.reason, dead.stage, sent)
        for s in result.scored:
            key = s.pending.patient.encode()
            sent.append(await self.scores.send(key=key, value=orjson.dumps(s.score)))
        for patient, alert in result.alerts:
            sent.append(await self.alerts.send(key=patient.encode(), value=orjson.dumps(alert)))
        return sent

    def count(self, result: BatchResult) -> None:
        """Metrics and a log line for a durable batch's scores and skipped replays."""
        if result.replayed:
            self.metrics.replayed.inc(len(result.replayed))
            log.info(
                "skipped %d envelopes read again whose effects their records hold (first at %s)",
                len(result.replayed),
                result.replayed[0].source,
            )
        for s in result.scored:
            self.metrics.scored(s.score, None if s.decision is None else s.decision.severity)


def write_records(patients: Any, batch: Sequence[EventT[Any]], result: BatchResult) -> None:
    """Write the batch's new records to the state table. Call only once its outputs are
    durable: if the changelog (new alert state) landed and an alert did not, a replay
    after a crash would find the alert already raised and never send it. Raises
    nothing of its own."""
    for patient, rec in result.records.items():
        # A table write goes to the changelog partition of the "current event"; in a
        # batch that must be an event of this patient's own partition.
        _current_event.set(weakref.ref(batch[result.last_index[patient]]))
        patients[patient] = rec.to_json()
