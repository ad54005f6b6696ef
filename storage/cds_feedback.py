"""CDS Hooks feedback: store each reported card outcome and count them.

Used by ``streams/cds_hooks.py``. Every function runs its own short transaction and does
not retry; database errors are classified as in :mod:`storage.access`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, func, insert, select

from storage.errors import classified as _classified
from storage.models import CdsFeedback


@dataclass(frozen=True, slots=True, kw_only=True)
class FeedbackRow:
    """One card outcome: ``outcome`` is ``accepted`` or ``overridden``."""

    service_id: str
    card_uuid: str
    outcome: str
    accepted_suggestions: int
    override_reason: str | None
    outcome_at: datetime
    received_at: datetime
    client: str


def record_feedback(engine: Engine, rows: Sequence[FeedbackRow]) -> int:
    """Store ``rows`` in one transaction; returns how many. Raises StorageUnavailable
    (retryable) or StoragePermanentError (e.g. an unknown outcome); not retried."""
    if not rows:
        return 0
    params = [
        {
            "service_id": r.service_id,
            "card_uuid": r.card_uuid[:200],
            "outcome": r.outcome,
            "accepted_suggestions": r.accepted_suggestions,
            "override_reason": None if r.override_reason is None else r.override_reason[:500],
            "outcome_at": r.outcome_at,
            "received_at": r.received_at,
            "client": r.client[:500],
        }
        for r in rows
    ]
    with _classified(), engine.begin() as conn:
        conn.execute(insert(CdsFeedback), params)
    return len(params)


def feedback_counts(engine: Engine, service_id: str) -> dict[str, Any]:
    """Outcome counts of one service: ``{"accepted": n, "overridden": m,
    "accepted_suggestions": k, "cards": c}`` (``cards``: distinct card uuids).
    Raises StorageUnavailable; not retried."""
    where = CdsFeedback.service_id == service_id
    by_outcome = (
        select(CdsFeedback.outcome, func.count()).where(where).group_by(CdsFeedback.outcome)
    )
    totals = select(
        func.coalesce(func.sum(CdsFeedback.accepted_suggestions), 0),
        func.count(func.distinct(CdsFeedback.card_uuid)),
    ).where(where)
    with _classified(), engine.connect() as conn:
        counts = {str(o): int(n) for o, n in conn.execute(by_outcome).all()}
        suggestions, cards = conn.execute(totals).one()
    return {
        "accepted": counts.get("accepted", 0),
        "overridden": counts.get("overridden", 0),
        "accepted_suggestions": int(suggestions),
        "cards": int(cards),
    }
