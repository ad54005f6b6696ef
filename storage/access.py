"""Reads and workflow writes for analysts and alerting systems.

API tokens (only their SHA-256 is stored), the audit log, score and alert queries with
keyset (cursor) pagination, the alert workflow (acknowledge, resolve), the dead-letter
index, and retention (purge). Used by ``streams/api.py`` and ``streams/cli_analyst.py``.

Every function runs its own short transaction and does not retry: database errors are
classified by :func:`storage.errors.classify` into
:class:`~storage.errors.StorageUnavailable` (retryable: the caller may retry or answer
503) and :class:`~storage.errors.StoragePermanentError` (the data is wrong).
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, Select, and_, delete, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from inference.scoring.alert_card import workflow_update
from storage import outbox
from storage.errors import classified as _classified
from storage.models import ROLES, Alert, ApiToken, AuditEntry, DeadLetter, Patient, Score

TOKEN_PREFIX = "ww_"  # noqa: S105 (a prefix, not a secret)


def _now() -> datetime:
    return datetime.now(UTC)


# ------------------------------------------------------------------ tokens


class TokenError(ValueError):
    """A token cannot be created or revoked as asked (bad role, name taken, unknown)."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the token's name and role."""

    name: str
    role: str


def hash_token(token: str) -> str:
    """SHA-256 hex digest of a token (what the database keeps). Raises nothing."""
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(engine: Engine, name: str, role: str) -> str:
    """Create a token for ``name`` with ``role`` and return it (the only time it exists
    in clear; only its hash is stored).

    Raises :class:`TokenError` for an unknown role, an empty name or a name already used
    (names stay unique, revoked or not, so the audit log is unambiguous);
    StorageUnavailable if the database is unreachable. Not retried.
    """
    if role not in ROLES:
        raise TokenError(f"role {role!r} is not one of {', '.join(ROLES)}")
    if not name.strip():
        raise TokenError("the token name is empty")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with _classified(), engine.begin() as conn:
        taken = conn.execute(select(ApiToken.id).where(ApiToken.name == name)).first()
        if taken is not None:
            raise TokenError(f"a token named {name!r} already exists (names are never reused)")
        conn.execute(
            insert(ApiToken).values(
                name=name, role=role, token_sha256=hash_token(token), created_at=_now()
            )
        )
    return token


def revoke_token(engine: Engine, name: str) -> None:
    """Revoke the token named ``name`` (it stops working at once).

    Raises :class:`TokenError` if there is no such active token; StorageUnavailable if
    the database is unreachable. Not retried.
    """
    with _classified(), engine.begin() as conn:
        res = conn.execute(
            update(ApiToken)
            .where(ApiToken.name == name, ApiToken.revoked_at.is_(None))
            .values(revoked_at=_now())
        )
        if res.rowcount != 1:
            raise TokenError(f"no active token named {name!r}")


def list_tokens(engine: Engine) -> list[dict[str, Any]]:
    """Every token's name, role, created_at and revoked_at (never the hash).
    Raises StorageUnavailable if the database is unreachable; not retried."""
    cols = (ApiToken.name, ApiToken.role, ApiToken.created_at, ApiToken.revoked_at)
    with _classified(), engine.connect() as conn:
        return [dict(m) for m in conn.execute(select(*cols).order_by(ApiToken.id)).mappings()]


def authenticate(engine: Engine, token: str) -> Principal | None:
    """The principal of an active token, or None for an unknown or revoked one.
    Raises StorageUnavailable if the database is unreachable; not retried."""
    if not token.startswith(TOKEN_PREFIX):
        return None
    stmt = select(ApiToken.name, ApiToken.role).where(
        ApiToken.token_sha256 == hash_token(token), ApiToken.revoked_at.is_(None)
    )
    with _classified(), engine.connect() as conn:
        row = conn.execute(stmt).first()
    return None if row is None else Principal(row.name, row.role)


# ------------------------------------------------------------------ audit


# An audit row names at most this many distinct patients (sorted); a read that returned
# more keeps only their count and the query's hash (its resource names the parameters).
# 100 covers a ward's worth of patients, the typical list read, and keeps a row small.
AUDIT_MAX_PATIENTS = 100


def _normalised(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def query_sha256(kind: str, params: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of a read's normalised query: ``kind`` (e.g. ``"scores"``) and the
    parameters, those that are None left out, keys sorted, times as UTC ISO 8601, as
    compact JSON. The same query gives the same hash whether it came through the API or
    the CLI, whatever the order or time zone its parameters were written in. Raises
    nothing."""
    doc = {"query": kind, "params": {k: _normalised(v) for k, v in params.items() if v is not None}}
    raw = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(raw.encode()).hexdigest()


def audit(
    engine: Engine,
    who: Principal,
    action: str,
    resource: str,
    patient: str | None = None,
    *,
    patients: Iterable[str] | None = None,
    query: str | None = None,
) -> None:
    """Append one audit entry (who, role, action, resource, patient, now).

    ``patients``: the pseudonyms the read returned (repeats allowed): their distinct
    count is stored, and the sorted list when there are at most
    :data:`AUDIT_MAX_PATIENTS`; ``patient`` defaults to the only one when there is
    exactly one. ``query``: the :func:`query_sha256` of the read. Raises
    StorageUnavailable if the database is unreachable; not retried (the caller then
    refuses the request rather than serve unaudited data).
    """
    distinct = None if patients is None else sorted(set(patients))
    if patient is None and distinct is not None and len(distinct) == 1:
        patient = distinct[0]
    with _classified(), engine.begin() as conn:
        conn.execute(
            insert(AuditEntry).values(
                at=_now(),
                who=who.name,
                role=who.role,
                action=action,
                resource=resource[:2000],
                patient=patient,
                patients=distinct
                if distinct is None or len(distinct) <= AUDIT_MAX_PATIENTS
                else None,
                patient_count=None if distinct is None else len(distinct),
                query_sha256=query,
            )
        )


def fetch_audit(engine: Engine, limit: int = 1000) -> list[dict[str, Any]]:
    """The newest audit entries, newest first. Raises StorageUnavailable; not retried."""
    cols = [c for c in AuditEntry.__table__.c if c.name != "id"]
    stmt = select(*cols).order_by(AuditEntry.id.desc()).limit(limit)
    with _classified(), engine.connect() as conn:
        return [dict(m) for m in conn.execute(stmt).mappings()]


# ------------------------------------------------------------------ scores

SCORE_COLUMNS = (
    "id",
    "patient",
    "scored_at",
    "model",
    "model_version",
    "risk",
    "degraded",
    "news2",
    "news2_breakdown",
    "qsofa",
    "sirs",
    "alert",
    "features",
    "event_offset",
)
ALERT_COLUMNS = (
    "id",
    "alert_id",
    "patient",
    "raised_at",
    "severity",
    "risk",
    "news2",
    "reason",
    "status",
    "acknowledged_by",
    "acknowledged_at",
    "resolved_by",
    "resolved_at",
)


class CursorError(ValueError):
    """A pagination cursor that this server did not hand out."""


def encode_cursor(at: datetime, row_id: int) -> str:
    """An opaque cursor for the row after (at, id). Raises nothing."""
    raw = f"{at.astimezone(UTC).isoformat()}|{row_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    """Inverse of :func:`encode_cursor`. Raises :class:`CursorError` if malformed."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, row_id = raw.split("|")
        when = datetime.fromisoformat(at)
        if when.tzinfo is None:
            raise ValueError("naive")
        return when, int(row_id)
    except (ValueError, UnicodeDecodeError) as e:
        raise CursorError(f"malformed cursor {cursor!r}") from e


def _scores_stmt(
    patient: str | None,
    start: datetime | None,
    end: datetime | None,
    min_risk: float | None,
    model: str | None,
    *,
    with_features: bool,
) -> Select[Any]:
    names = SCORE_COLUMNS if with_features else tuple(c for c in SCORE_COLUMNS if c != "features")
    stmt = select(*[Score.__table__.c[n] for n in names])
    if patient is not None:
        stmt = stmt.where(Score.patient == patient)
    if start is not None:
        stmt = stmt.where(Score.scored_at >= start)
    if end is not None:
        stmt = stmt.where(Score.scored_at < end)
    if min_risk is not None:
        stmt = stmt.where(Score.risk >= min_risk)
    if model is not None:
        stmt = stmt.where(or_(Score.model == model, Score.model_version == model))
    return stmt


def query_scores(
    engine: Engine,
    *,
    patient: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    min_risk: float | None = None,
    model: str | None = None,
    cursor: str | None = None,
    limit: int = 100,
    with_features: bool = True,
    newest: bool = False,
) -> tuple[list[dict[str, Any]], str | None]:
    """Scores matching the filters, oldest first (scored_at, id), at most ``limit``, and
    the cursor of the next page (None on the last page). ``end`` is exclusive; ``model``
    matches the model name or its version. With ``newest``, the newest ``limit`` rows
    (still returned oldest first) and no cursor.

    Raises :class:`CursorError` for a bad cursor; StorageUnavailable when the database
    is unreachable (not retried).
    """
    stmt = _scores_stmt(patient, start, end, min_risk, model, with_features=with_features)
    if cursor is not None:
        at, row_id = decode_cursor(cursor)
        stmt = stmt.where(or_(Score.scored_at > at, and_(Score.scored_at == at, Score.id > row_id)))
    if newest:
        stmt = stmt.order_by(Score.scored_at.desc(), Score.id.desc()).limit(limit)
        with _classified(), engine.connect() as conn:
            return [dict(m) for m in conn.execute(stmt).mappings()][::-1], None
    stmt = stmt.order_by(Score.scored_at, Score.id).limit(limit + 1)
    with _classified(), engine.connect() as conn:
        rows = [dict(m) for m in conn.execute(stmt).mappings()]
    nxt = None
    if len(rows) > limit:
        rows = rows[:limit]
        nxt = encode_cursor(rows[-1]["scored_at"], rows[-1]["id"])
    return rows, nxt


def iter_scores(
    engine: Engine,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    patient: str | None = None,
    chunk: int = 5000,
) -> Iterator[list[dict[str, Any]]]:
    """Scores in chunks, oldest first, for exports (keyset pages, bounded memory).
    Raises StorageUnavailable when the database is unreachable; not retried."""
    cursor: str | None = None
    while True:
        rows, cursor = query_scores(
            engine, patient=patient, start=start, end=end, cursor=cursor, limit=chunk
        )
        if rows:
            yield rows
        if cursor is None:
            return


def get_patient(engine: Engine, patient: str) -> dict[str, Any] | None:
    """The ``patients`` row of a pseudonym, or None. Raises StorageUnavailable; not
    retried."""
    stmt = select(*Patient.__table__.c).where(Patient.patient == patient)
    with _classified(), engine.connect() as conn:
        row = conn.execute(stmt).mappings().first()
    return None if row is None else dict(row)


def timeline(
    engine: Engine,
    patient: str,
    start: datetime | None = None,
    end: datetime | None = None,
    limit: int = 5000,
) -> dict[str, Any]:
    """A patient's state, scores (the newest ``limit``, oldest first, without features)
    and alerts in [start, end). Raises StorageUnavailable (not retried)."""
    cols = [
        Score.id,
        Score.scored_at,
        Score.model,
        Score.model_version,
        Score.risk,
        Score.degraded,
        Score.news2,
        Score.news2_breakdown,
        Score.qsofa,
        Score.sirs,
        Score.alert,
    ]
    s = select(*cols).where(Score.patient == patient)
    a = select(*[Alert.__table__.c[n] for n in ALERT_COLUMNS]).where(Alert.patient == patient)
    if start is not None:
        s, a = s.where(Score.scored_at >= start), a.where(Alert.raised_at >= start)
    if end is not None:
        s, a = s.where(Score.scored_at < end), a.where(Alert.raised_at < end)
    s = s.order_by(Score.scored_at.desc(), Score.id.desc()).limit(limit)
    a = a.order_by(Alert.raised_at, Alert.id).limit(limit)
    with _classified(), engine.connect() as conn:
        scores = [dict(m) for m in conn.execute(s).mappings()][::-1]
        alerts = [dict(m) for m in conn.execute(a).mappings()]
    return {"patient": get_patient(engine, patient), "scores": scores, "alerts": alerts}


# ------------------------------------------------------------------ alerts


def query_alerts(
    engine: Engine,
    *,
    status: str | None = None,
    severity: str | None = None,
    since: datetime | None = None,
    patient: str | None = None,
    after_id: int | None = None,
    limit: int = 100,
    newest_first: bool = True,
) -> list[dict[str, Any]]:
    """Alerts matching the filters (``since`` on raised_at; ``after_id`` on the row id,
    for streaming). Raises StorageUnavailable (not retried)."""
    stmt = select(*[Alert.__table__.c[n] for n in ALERT_COLUMNS])
    if status is not None:
        stmt = stmt.where(Alert.status == status)
    if severity is not None:
        stmt = stmt.where(Alert.severity == severity)
    if since is not None:
        stmt = stmt.where(Alert.raised_at >= since)
    if patient is not None:
        stmt = stmt.where(Alert.patient == patient)
    if after_id is not None:
        stmt = stmt.where(Alert.id > after_id)
    order = (Alert.raised_at.desc(), Alert.id.desc()) if newest_first else (Alert.id,)
    stmt = stmt.order_by(*order).limit(limit)
    with _classified(), engine.connect() as conn:
        return [dict(m) for m in conn.execute(stmt).mappings()]


def max_alert_id(engine: Engine) -> int:
    """The largest alert row id (0 when there is none). Raises StorageUnavailable; not
    retried."""
    with _classified(), engine.connect() as conn:
        return int(conn.execute(select(func.coalesce(func.max(Alert.id), 0))).scalar_one())


class AlertNotFound(LookupError):  # noqa: N818
    """No alert with that id."""


class AlertStateError(ValueError):
    """The alert is not in a state that allows the transition (e.g. already resolved)."""


def transition_alert(engine: Engine, alert_id: str, action: str, who: str) -> dict[str, Any]:
    """Acknowledge (``action="acknowledge"``, from open) or resolve (``"resolve"``, from
    open or acknowledged) an alert, recording by whom and when; acknowledging an
    acknowledged alert again is a no-op that keeps the first acknowledgement. A change
    is queued to every live subscriber in the same transaction, as the alert's
    RiskAssessment updated (:func:`storage.outbox.enqueue_update`); a no-op is not.

    Returns the alert after the change. Raises :class:`AlertNotFound`,
    :class:`AlertStateError` (e.g. acknowledging a resolved alert), ValueError for an
    unknown action, StorageUnavailable when the database is unreachable (not retried).
    """
    now = _now()
    if action == "acknowledge":
        allowed: Sequence[str] = ("open",)
        values: dict[str, Any] = {
            "status": "acknowledged",
            "acknowledged_by": who,
            "acknowledged_at": now,
        }
    elif action == "resolve":
        allowed = ("open", "acknowledged")
        values = {"status": "resolved", "resolved_by": who, "resolved_at": now}
    else:
        raise ValueError(f"unknown alert action {action!r}")
    cols = [Alert.__table__.c[n] for n in ALERT_COLUMNS]
    with _classified(), engine.begin() as conn:
        changed = conn.execute(
            update(Alert)
            .where(Alert.alert_id == alert_id, Alert.status.in_(allowed))
            .values(**values)
            .returning(Alert.id, Alert.explanation, Alert.status)
        ).first()
        if changed is not None:
            resource = (changed.explanation or {}).get("risk_assessment") or {}
            updated = workflow_update(resource, changed.status, now)
            outbox.enqueue_update(conn, changed.id, changed.status, updated)
        row = conn.execute(select(*cols).where(Alert.alert_id == alert_id)).mappings().first()
    if row is None:
        raise AlertNotFound(f"no alert {alert_id!r}")
    if changed is None and not (action == "acknowledge" and row["status"] == "acknowledged"):
        raise AlertStateError(f"alert {alert_id!r} is {row['status']}: cannot {action} it")
    return dict(row)


# ------------------------------------------------------------------ dead letters


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadLetterRow:
    """One entry of the dead-letter index (no payload: it stays in Kafka)."""

    topic: str
    partition: int
    offset: int
    stage: str
    reason: str
    received_at: datetime


def write_dead_letters(engine: Engine, rows: Sequence[DeadLetterRow]) -> int:
    """Index dead letters idempotently (key: topic, partition, offset, stage); returns
    rows newly inserted. Raises StorageUnavailable (retry) or StoragePermanentError;
    does not retry by itself."""
    if not rows:
        return 0
    params = sorted(
        (
            {
                "topic": r.topic,
                "partition": r.partition,
                "offset": r.offset,
                "stage": r.stage,
                "reason": r.reason[:2000],
                "received_at": r.received_at,
            }
            for r in rows
        ),
        key=lambda d: (d["topic"], d["partition"], d["offset"], d["stage"]),
    )
    ins: Any = (
        postgresql.insert(DeadLetter)
        if engine.dialect.name == "postgresql"
        else sqlite.insert(DeadLetter)
    )
    stmt = ins.on_conflict_do_nothing(
        index_elements=["topic", "partition", "offset", "stage"]
    ).returning(DeadLetter.id)
    with _classified(), engine.begin() as conn:
        return len(conn.execute(stmt, params).all())


# ------------------------------------------------------------------ retention


def purge(engine: Engine, older_than_days: float, *, dry_run: bool = False) -> dict[str, int]:
    """Delete scores, alerts, dead-letter entries and patients not seen for more than
    ``older_than_days`` days (by scored_at, raised_at, received_at, last_seen), in one
    transaction. The audit log and API tokens are kept. Returns rows deleted (or that
    would be, with ``dry_run``) per table.

    Raises ValueError when ``older_than_days`` is not positive; StorageUnavailable when
    the database is unreachable (not retried).
    """
    if not older_than_days > 0:
        raise ValueError("retention must be a positive number of days")
    cutoff = _now() - timedelta(days=older_than_days)
    targets: list[tuple[str, Any, Any]] = [
        ("scores", Score, Score.scored_at < cutoff),
        ("alerts", Alert, Alert.raised_at < cutoff),
        ("dead_letters", DeadLetter, DeadLetter.received_at < cutoff),
        ("patients", Patient, Patient.last_seen < cutoff),
    ]
    out: dict[str, int] = {}
    with _classified(), engine.begin() as conn:
        for name, model, cond in targets:
            if dry_run:
                out[name] = int(
                    conn.execute(select(func.count()).select_from(model).where(cond)).scalar_one()
                )
            else:
                out[name] = int(conn.execute(delete(model).where(cond)).rowcount)
    return out
