"""Score reads for the FHIR and CDS Hooks interfaces: one score by id, a patient's
latest score and open alert, and a FHIR-style search (time bounds, either order,
offset pages, total).

Used by ``streams/fhir_read.py`` and ``streams/cds_hooks.py``. Every function runs its
own short transaction and does not retry; database errors are classified as in
:mod:`storage.access` (StorageUnavailable: retryable).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, Select, func, select

from storage.access import SCORE_COLUMNS
from storage.errors import classified as _classified
from storage.models import Alert, Score

# Features are the model's input window: not part of a RiskAssessment.
_COLUMNS = [Score.__table__.c[n] for n in SCORE_COLUMNS if n != "features"]


@dataclass(frozen=True, slots=True)
class TimeBound:
    """``scored_at`` compared with ``at``: one of ``ge``, ``gt``, ``le``, ``lt``."""

    op: str
    at: datetime


def _bounded(stmt: Select[Any], patient: str | None, bounds: list[TimeBound]) -> Select[Any]:
    if patient is not None:
        stmt = stmt.where(Score.patient == patient)
    for b in bounds:
        col = Score.scored_at
        if b.op == "ge":
            stmt = stmt.where(col >= b.at)
        elif b.op == "gt":
            stmt = stmt.where(col > b.at)
        elif b.op == "le":
            stmt = stmt.where(col <= b.at)
        elif b.op == "lt":
            stmt = stmt.where(col < b.at)
        else:
            raise ValueError(f"unknown time comparison {b.op!r}")
    return stmt


def search_scores(
    engine: Engine,
    *,
    patient: str | None,
    bounds: list[TimeBound],
    newest_first: bool,
    limit: int,
    offset: int = 0,
) -> tuple[list[dict[str, Any]], int]:
    """Scores (without features) of ``patient`` (None: all) within ``bounds``, ordered by
    (scored_at, id) ascending or descending, ``limit`` from ``offset``, and how many
    match in all. Raises ValueError for an unknown comparison; StorageUnavailable."""
    stmt = _bounded(select(*_COLUMNS), patient, bounds)
    count = _bounded(select(func.count()).select_from(Score), patient, bounds)
    order = (
        (Score.scored_at.desc(), Score.id.desc()) if newest_first else (Score.scored_at, Score.id)
    )
    stmt = stmt.order_by(*order).offset(offset).limit(limit)
    with _classified(), engine.connect() as conn:
        rows = [dict(m) for m in conn.execute(stmt).mappings()]
        total = int(conn.execute(count).scalar_one())
    return rows, total


def get_score(engine: Engine, score_id: int) -> dict[str, Any] | None:
    """The score with row id ``score_id`` (without features), or None. Raises
    StorageUnavailable; not retried."""
    stmt = select(*_COLUMNS).where(Score.id == score_id)
    with _classified(), engine.connect() as conn:
        row = conn.execute(stmt).mappings().first()
    return None if row is None else dict(row)


def latest_score(engine: Engine, patient: str) -> dict[str, Any] | None:
    """The patient's newest score (without features), or None. Raises StorageUnavailable."""
    rows, _ = search_scores(engine, patient=patient, bounds=[], newest_first=True, limit=1)
    return rows[0] if rows else None


def open_alert(engine: Engine, patient: str) -> dict[str, Any] | None:
    """The patient's newest open alert with its ``explanation`` (the RiskAssessment the
    worker published), or None. Raises StorageUnavailable; not retried."""
    cols = [
        Alert.alert_id,
        Alert.raised_at,
        Alert.severity,
        Alert.risk,
        Alert.news2,
        Alert.reason,
        Alert.explanation,
    ]
    stmt = (
        select(*cols)
        .where(Alert.patient == patient, Alert.status == "open")
        .order_by(Alert.raised_at.desc(), Alert.id.desc())
        .limit(1)
    )
    with _classified(), engine.connect() as conn:
        row = conn.execute(stmt).mappings().first()
    return None if row is None else dict(row)
