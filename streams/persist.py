"""The persist agents' logic: score and alert messages to database rows, written safely;
dead letters to the dead-letter index (where and why, no payload).

Decoding is pure (:func:`score_rows`, :func:`alert_rows`); :class:`Sink` runs the
blocking SQLAlchemy writes in a thread so the event loop keeps serving Kafka.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson
from faust.types import EventT
from sqlalchemy.engine import Engine

from inference.scoring.alert_card import alert_fields
from storage.access import DeadLetterRow, write_dead_letters
from storage.db import AlertRow, ScoreRow, make_engine, migrate, write_alerts, write_scores
from storage.errors import classify
from storage.outbox import enqueue

from . import dlq_headers


def score_row(score: dict[str, Any]) -> ScoreRow:
    """A ``risk.scores`` record as a ``scores`` row. Raises KeyError/ValueError if malformed."""
    return ScoreRow(
        patient=score["patient"],
        scored_at=datetime.fromisoformat(score["time"]),
        model=score["model"],
        model_version=score["model_version"],
        risk=score["risk"],
        degraded=bool(score["degraded"]),
        news2=score["news2"],
        news2_breakdown=score.get("news2_breakdown") or {},
        qsofa=score["qsofa"],
        sirs=score["sirs"],
        alert=bool(score["alert"]),
        features=score.get("features"),
        event_offset=score.get("source"),
    )


def alert_row(resource: dict[str, Any]) -> AlertRow:
    """A ``risk.alerts`` RiskAssessment as an ``alerts`` row. Raises on a foreign resource."""
    f = alert_fields(resource)
    return AlertRow(
        alert_id=f["alert_id"],
        patient=f["patient"],
        raised_at=f["raised_at"],
        severity=f["severity"],
        reason=f["reason"],
        risk=f["risk"],
        news2=f["news2"],
        explanation={"risk_assessment": resource},
    )


def dead_letter_row(headers: Any, fallback: tuple[str, int, int]) -> DeadLetterRow:
    """The dead-letter index entry of a ``fhir.inbound.dlq`` record, from its headers
    (``wardwatch.source.*``, ``wardwatch.stage``, ``wardwatch.reason``,
    ``wardwatch.dead_lettered_at`` in ms). ``fallback`` is the dead letter's own
    (topic, partition, offset), used when the source headers are missing. Never raises
    on odd headers: missing values become "unknown" / now."""
    h = dlq_headers.as_text(headers)

    def as_int(name: str, default: int) -> int:
        try:
            return int(h[name])
        except (KeyError, ValueError):
            return default

    has_source = dlq_headers.SOURCE_TOPIC in h
    topic = h[dlq_headers.SOURCE_TOPIC] if has_source else fallback[0]
    ms = as_int(dlq_headers.DEAD_LETTERED_AT, -1)
    partition = as_int(dlq_headers.SOURCE_PARTITION, fallback[1]) if has_source else fallback[1]
    return DeadLetterRow(
        topic=topic,
        partition=partition,
        offset=as_int(dlq_headers.SOURCE_OFFSET, fallback[2]) if has_source else fallback[2],
        stage=h.get(dlq_headers.STAGE, "unknown"),
        reason=h.get(dlq_headers.REASON, "unknown"),
        received_at=datetime.fromtimestamp(ms / 1000, UTC) if ms >= 0 else datetime.now(UTC),
    )


R = TypeVar("R", ScoreRow, AlertRow)


def decode_batch(
    batch: Sequence[EventT[Any]], to_row: Callable[[dict[str, Any]], R]
) -> tuple[list[tuple[EventT[Any], R]], list[tuple[EventT[Any], str]]]:
    """Decode a batch: (event, row) pairs, and the events that cannot be rows with why."""
    rows: list[tuple[EventT[Any], R]] = []
    bad: list[tuple[EventT[Any], str]] = []
    for event in batch:
        try:
            rows.append((event, to_row(orjson.loads(event.value))))
        except (KeyError, ValueError, TypeError, StopIteration) as exc:
            bad.append((event, f"undecodable record: {type(exc).__name__}: {exc}"))
    return rows, bad


class Sink:
    """The database, opened and migrated on first use (so a worker starts without it)."""

    def __init__(self, url: str, connect_args: Mapping[str, str] | None = None) -> None:
        """``connect_args``: libpq parameters (TLS) for ``storage.db.make_engine``."""
        self._url = url
        self._connect_args = dict(connect_args or {})
        self._engine: Engine | None = None
        self._lock = threading.Lock()

    def engine(self) -> Engine:
        """The migrated engine. Raises StorageUnavailable (transient) if unreachable."""
        with self._lock:
            if self._engine is None:
                try:
                    engine = make_engine(self._url, connect_args=self._connect_args)
                    migrate(engine)
                except Exception as exc:
                    classified = classify(exc)
                    if classified is exc:
                        raise
                    raise classified from exc
                self._engine = engine
            return self._engine

    async def write_scores(self, rows: Sequence[ScoreRow]) -> int:
        """Insert, idempotently; raises StorageUnavailable (retry) or StoragePermanentError."""
        return await asyncio.to_thread(lambda: write_scores(self.engine(), rows))

    async def write_alerts(self, rows: Sequence[AlertRow]) -> int:
        """Insert, idempotently; raises as :meth:`write_scores`."""
        # The outbox rows of the alert deliveries go in the same transaction (issue 19).
        return await asyncio.to_thread(lambda: write_alerts(self.engine(), rows, enqueue))

    async def write_dead_letters(self, rows: Sequence[DeadLetterRow]) -> int:
        """Index dead letters, idempotently; raises as :meth:`write_scores`."""
        return await asyncio.to_thread(lambda: write_dead_letters(self.engine(), rows))
