"""Reads of stored scores for site validation (``wardwatch validate-site``).

One ordered query over ``scores`` (patient, scored_at, id), read in chunks
(``yield_per``) and handed out one patient at a time, so memory holds one patient's
scores, not the table. Only the columns the validation uses are read: the pseudonym, the
time, the risk, NEWS2 and the stored alert state.

Database errors are classified by :func:`storage.errors.classify` into
:class:`~storage.errors.StorageUnavailable` (retryable) and
:class:`~storage.errors.StoragePermanentError`; nothing here retries.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, func, select

from storage.errors import classified as _classified
from storage.models import Score

CHUNK_ROWS = 5000


@dataclass(frozen=True, slots=True)
class SiteScore:
    """One stored score, as the validation needs it (``risk`` None = degraded)."""

    scored_at: datetime
    risk: float | None
    news2: int | None
    alert: bool


def model_versions(engine: Engine) -> dict[tuple[str, str], int]:
    """How many scores each (model, model_version) has. Raises StorageUnavailable when
    the database is unreachable or not migrated; not retried."""
    stmt = select(Score.model, Score.model_version, func.count()).group_by(
        Score.model, Score.model_version
    )
    with _classified(), engine.connect() as conn:
        return {(m, v): int(n) for m, v, n in conn.execute(stmt).all()}


def iter_patient_scores(
    engine: Engine,
    *,
    model: str | None = None,
    model_version: str | None = None,
    chunk: int = CHUNK_ROWS,
) -> Iterator[tuple[str, list[SiteScore]]]:
    """``(patient, scores)`` for every patient with scores (of ``model`` and
    ``model_version`` when given), patients in pseudonym order and each patient's scores
    oldest first (ties by row id, the order they were stored).

    One query, read ``chunk`` rows at a time; the connection stays open until the
    iterator is exhausted or closed. Raises StorageUnavailable when the database is
    unreachable or not migrated (StoragePermanentError for a data error); not retried.
    """
    stmt = select(Score.patient, Score.scored_at, Score.risk, Score.news2, Score.alert).order_by(
        Score.patient, Score.scored_at, Score.id
    )
    if model is not None:
        stmt = stmt.where(Score.model == model)
    if model_version is not None:
        stmt = stmt.where(Score.model_version == model_version)
    with _classified(), engine.connect() as conn:
        result = conn.execution_options(yield_per=chunk).execute(stmt)
        current: str | None = None
        scores: list[SiteScore] = []
        for patient, scored_at, risk, news2, alert in result:
            if patient != current:
                if current is not None:
                    yield current, scores
                current, scores = patient, []
            scores.append(SiteScore(scored_at, risk, news2, bool(alert)))
        if current is not None:
            yield current, scores
