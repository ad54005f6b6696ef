"""Dead letters: a refused message, sealed, on the dead-letter topic with where it came
from and why; acknowledged only once it landed, and counted against the limit."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable
from typing import Any

import faust
from faust.types import EventT

from .. import dlq_headers as dlq_headers_of
from ..dead_letter_limit import DeadLetterLimit
from ..errors import WorkerStopError, reason_of
from ..observe import Metrics, event_fields, safe_reason
from ..sealing import KeyRing
from ..settings import Settings

log = logging.getLogger("wardwatch.stream")


def dlq_headers(event: EventT[Any], reason: str, stage: str) -> list[tuple[str, bytes]]:
    """Headers of a dead letter: where it came from and why it was refused."""
    msg = event.message
    # the reason can quote the refused input: at rest it says what was wrong, not the
    # value (the input itself is kept encrypted)
    return dlq_headers_of.build(
        safe_reason(reason, 1000), stage, str(msg.topic), int(msg.partition), int(msg.offset)
    )


def source_of(event: EventT[Any]) -> str:
    """``topic/partition/offset`` of an event: the core's name for its source."""
    msg = event.message
    return f"{msg.topic}/{msg.partition}/{msg.offset}"


class DeadLetters:
    """Sends dead letters (input sealed with ``ring``) and counts them against the
    dead-letter limit of each agent."""

    def __init__(
        self, topic: faust.TopicT, ring: KeyRing, settings: Settings, metrics: Metrics
    ) -> None:
        self.topic = topic
        self.ring = ring
        self.settings = settings
        self.metrics = metrics

    async def send(
        self, event: EventT[Any], reason: str, stage: str, sent: list[Awaitable[Any]]
    ) -> None:
        """Hand ``event`` to the dead-letter topic; its broker ack joins ``sent``, which
        the batch awaits together (with its scores) before acknowledging anything.

        If the send fails the event can be neither processed nor parked: the agent
        raises, the worker stops (exits non-zero) with the event unacknowledged, so its
        offset is never committed and it is read again after the cause is fixed. Not
        retried here.
        """
        sealed, seal_headers = self.ring.seal(
            event.value or b"", topic=self.settings.topic_dlq, stage=stage, key=event.key
        )
        fut = await self.topic.send(
            key=event.key, value=sealed, headers=[*dlq_headers(event, reason, stage), *seal_headers]
        )
        sent.append(self._parked(fut, event, reason, stage))

    async def _parked(
        self, fut: Awaitable[Any], event: EventT[Any], reason: str, stage: str
    ) -> None:
        """Await a dead letter's ack, then count and log it (only what landed)."""
        where = event_fields(event, stage=stage)
        try:
            await fut
        except Exception as exc:
            log.critical(
                "cannot dead-letter %s (%s): stopping without committing it",
                source_of(event),
                reason_of(exc),
                extra=where,
            )
            raise
        self.metrics.dead_letter(stage)
        # The reason can quote the refused input: the log gets it redacted, the dead
        # letter's headers (access-restricted, like the input itself) get it whole.
        log.warning(
            "dead-lettered %s at %s: %s", source_of(event), stage, safe_reason(reason), extra=where
        )

    def limit(self) -> DeadLetterLimit:
        """A fresh limit for one agent (the settings' ratio, window and minimum)."""
        s = self.settings
        return DeadLetterLimit(
            s.dead_letter_max_ratio, s.dead_letter_window_s, s.dead_letter_min_messages
        )

    def check(self, limit: DeadLetterLimit, agent: str, taken: int, dead: int) -> None:
        """Count a batch; raises :class:`WorkerStopError` (before the batch is
        acknowledged) when the agent's dead letters are over the limit."""
        now = time.monotonic()
        limit.record(taken, dead, now)
        why = limit.exceeded(now)
        if why is not None:
            self.metrics.dead_letter_limit.labels(agent).inc()
            raise WorkerStopError(f"dead-letter limit exceeded: {why}")
