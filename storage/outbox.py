"""The transactional outbox of alert notifications, and the subscribers it serves.

When the writer stores new alerts, :func:`enqueue` runs in the SAME transaction
(``storage.db.write_alerts(..., then=enqueue)``): one ``outbox`` row per alert and per
subscriber that is not switched off, numbered per subscriber 1, 2, 3... without gaps
(the Backport IG's ``eventsSinceSubscriptionStart`` / ``eventNumber``). An alert
acknowledged or resolved is queued the same way, in the transition's own transaction
(:func:`enqueue_update`, from ``storage.access.transition_alert``), with the updated
RiskAssessment kept on the row as it is sent. The numbers are
taken under a row lock on the subscriber, so concurrent writers commit them in order and
a reader never sees a later number before an earlier one. So an alert is never sent that
was not stored, and never stored without being queued.

The delivery loops (``streams.deliver_rest_hook``, ``streams.deliver_hl7``) read a
subscriber's undelivered rows in event order (:func:`pending`), and record what the
receiver acknowledged (:func:`mark_delivered`) or why it failed (:func:`record_failure`).
Rows are never deleted here: a subscriber in ``error`` keeps them, and ``$events`` reads
them back (:func:`events`). Retention (``wardwatch purge``) removes them with their alert.

Every function raises :class:`~storage.errors.StorageUnavailable` (retryable) when the
database is away and :class:`~storage.errors.StoragePermanentError` for data it cannot
hold; none retries by itself.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, and_, insert, select, update

from fhir.subscriptions import NotificationEvent
from inference.scoring.alert_card import WORKFLOW_KINDS
from storage.errors import classified
from storage.models import PAYLOADS, SUBSCRIBER_KINDS, Alert, OutboxEntry, Subscriber

LIVE = ("requested", "active", "error")  # statuses that still collect events


@dataclass(frozen=True, slots=True, kw_only=True)
class SubscriberState:
    """A subscriber as stored (``resource`` is the Subscription as created, or the HL7
    destination's description)."""

    id: str
    kind: str
    topic: str
    endpoint: str
    payload: str
    headers: list[str]
    heartbeat_s: int | None
    resource: dict[str, Any]
    status: str
    events_since_start: int
    delivered_through: int
    handshake_done: bool
    failing_since: datetime | None
    last_error: str | None
    created_at: datetime
    created_by: str


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboxEvent:
    """One numbered event of one subscriber: the alert's RiskAssessment (as raised, or
    updated when ``kind`` is ``acknowledged`` or ``resolved``) and when it was queued."""

    event_number: int
    queued_at: datetime
    alert_id: str
    patient: str
    resource: dict[str, Any]
    kind: str = "raised"

    def notification(self) -> NotificationEvent:
        """This event as a Subscription notification carries it. Raises nothing."""
        return NotificationEvent(
            number=self.event_number, timestamp=self.queued_at, resource=self.resource
        )


def _now() -> datetime:
    return datetime.now(UTC)


def create_subscriber(
    engine: Engine,
    *,
    kind: str,
    topic: str,
    endpoint: str,
    payload: str,
    who: str,
    headers: list[str] | None = None,
    heartbeat_s: int | None = None,
    resource: dict[str, Any] | None = None,
) -> SubscriberState:
    """Store a new subscriber in status ``requested`` (the delivery loop's handshake makes
    it ``active``); it collects every alert stored from now on. Raises ValueError for an
    unknown kind or payload (not retried), storage errors as the module says."""
    if kind not in SUBSCRIBER_KINDS:
        raise ValueError(f"kind {kind!r} is not one of {SUBSCRIBER_KINDS}")
    if payload not in PAYLOADS:
        raise ValueError(f"payload {payload!r} is not one of {PAYLOADS}")
    sid = secrets.token_hex(8)
    values = {
        "id": sid,
        "kind": kind,
        "topic": topic,
        "endpoint": endpoint,
        "payload": payload,
        "headers": list(headers or []),
        "heartbeat_s": heartbeat_s,
        "resource": dict(resource or {}),
        "status": "requested",
        "created_at": _now(),
        "created_by": who,
    }
    with classified(), engine.begin() as conn:
        conn.execute(insert(Subscriber).values(**values))
    found = get_subscriber(engine, sid)
    assert found is not None  # just inserted
    return found


_FIELDS = [getattr(Subscriber, n) for n in SubscriberState.__dataclass_fields__]


def get_subscriber(engine: Engine, sid: str) -> SubscriberState | None:
    """The subscriber ``sid`` (any status), or None."""
    with classified(), engine.connect() as conn:
        m = conn.execute(select(*_FIELDS).where(Subscriber.id == sid)).mappings().first()
    return None if m is None else SubscriberState(**m)


def list_subscribers(engine: Engine, kind: str | None = None) -> list[SubscriberState]:
    """Every subscriber (of one kind if given), oldest first."""
    stmt = select(*_FIELDS).order_by(Subscriber.created_at, Subscriber.id)
    if kind is not None:
        stmt = stmt.where(Subscriber.kind == kind)
    with classified(), engine.connect() as conn:
        return [SubscriberState(**m) for m in conn.execute(stmt).mappings()]


def switch_off(engine: Engine, sid: str) -> bool:
    """Stop ``sid`` collecting and receiving events (status ``off``); its rows are kept.
    Returns False when there is no such subscriber."""
    with classified(), engine.begin() as conn:
        n = conn.execute(update(Subscriber).where(Subscriber.id == sid).values(status="off"))
    return bool(n.rowcount)


def enqueue(conn: Connection, alert_rows: list[int]) -> None:
    """Queue the alerts with row ids ``alert_rows`` (just inserted on ``conn``) for every
    live subscriber, in alert order (raised_at, alert_id), numbered on from each
    subscriber's last number. Runs inside the caller's transaction; raises what the
    database raises (the caller classifies it and rolls the batch back)."""
    if not alert_rows:
        return
    alerts = [
        r[0]
        for r in conn.execute(
            select(Alert.id)
            .where(Alert.id.in_(alert_rows))
            .order_by(Alert.raised_at, Alert.alert_id)
        )
    ]
    _number(conn, [{"alert_row": a} for a in alerts])


def enqueue_update(conn: Connection, alert_row: int, kind: str, resource: dict[str, Any]) -> None:
    """Queue the alert with row id ``alert_row``, just acknowledged or resolved on
    ``conn`` (``kind``), for every live subscriber, with ``resource`` the updated
    RiskAssessment to send. Runs inside the caller's transaction; raises ValueError for
    another kind, else what the database raises."""
    if kind not in WORKFLOW_KINDS:
        raise ValueError(f"not an alert update: {kind!r}")
    _number(conn, [{"alert_row": alert_row, "kind": kind, "resource": resource}])


def _number(conn: Connection, events: list[dict[str, Any]]) -> None:
    """Insert ``events`` (outbox columns but the subscriber and number) for every live
    subscriber, numbered on from its last number in the order given."""
    # Locked in id order (FOR UPDATE; SQLite locks the whole database anyway), so
    # concurrent writers queue one after the other and cannot deadlock.
    subs = conn.execute(
        select(Subscriber.id, Subscriber.events_since_start)
        .where(Subscriber.status.in_(LIVE))
        .order_by(Subscriber.id)
        .with_for_update()
    ).all()
    now = _now()
    rows: list[dict[str, Any]] = []
    for sid, last in subs:
        rows.extend(
            {"subscriber_id": sid, "event_number": last + i, "created_at": now, **event}
            for i, event in enumerate(events, start=1)
        )
        conn.execute(
            update(Subscriber)
            .where(Subscriber.id == sid)
            .values(events_since_start=last + len(events))
        )
    if rows:
        conn.execute(insert(OutboxEntry), rows)


def _events_query(sid: str) -> Any:
    return (
        select(
            OutboxEntry.event_number,
            OutboxEntry.created_at,
            Alert.alert_id,
            Alert.patient,
            Alert.explanation,
            OutboxEntry.kind,
            OutboxEntry.resource,
        )
        .join(Alert, Alert.id == OutboxEntry.alert_row)
        .where(OutboxEntry.subscriber_id == sid)
        .order_by(OutboxEntry.event_number)
    )


def _event(row: Any) -> OutboxEvent:
    explanation = row.explanation or {}
    resource = row.resource if row.resource is not None else explanation.get("risk_assessment")
    return OutboxEvent(
        event_number=int(row.event_number),
        queued_at=row.created_at,
        alert_id=row.alert_id,
        patient=row.patient,
        resource=dict(resource or {}),
        kind=row.kind,
    )


def pending(engine: Engine, sid: str, limit: int) -> list[OutboxEvent]:
    """Up to ``limit`` of ``sid``'s undelivered events, lowest event number first."""
    stmt = _events_query(sid).where(OutboxEntry.delivered_at.is_(None)).limit(limit)
    with classified(), engine.connect() as conn:
        return [_event(r) for r in conn.execute(stmt)]


def events(engine: Engine, sid: str, since: int, until: int | None = None) -> list[OutboxEvent]:
    """``sid``'s events numbered ``since``..``until`` (inclusive; delivered or not), for
    a receiver recovering a gap (``$events``)."""
    stmt = _events_query(sid).where(OutboxEntry.event_number >= since)
    if until is not None:
        stmt = stmt.where(OutboxEntry.event_number <= until)
    with classified(), engine.connect() as conn:
        return [_event(r) for r in conn.execute(stmt)]


def mark_handshake(engine: Engine, sid: str) -> None:
    """The receiver accepted the handshake: ``sid`` is ``active``."""
    with classified(), engine.begin() as conn:
        conn.execute(
            update(Subscriber)
            .where(and_(Subscriber.id == sid, Subscriber.status != "off"))
            .values(handshake_done=True, status="active", failing_since=None, last_error=None)
        )


def mark_delivered(engine: Engine, sid: str, through: int) -> None:
    """The receiver acknowledged every event of ``sid`` up to ``through``: marked
    delivered, and a subscriber in ``error`` is ``active`` again."""
    now = _now()
    with classified(), engine.begin() as conn:
        conn.execute(
            update(OutboxEntry)
            .where(
                and_(
                    OutboxEntry.subscriber_id == sid,
                    OutboxEntry.event_number <= through,
                    OutboxEntry.delivered_at.is_(None),
                )
            )
            .values(delivered_at=now, attempts=OutboxEntry.attempts + 1)
        )
        conn.execute(
            update(Subscriber)
            .where(and_(Subscriber.id == sid, Subscriber.delivered_through < through))
            .values(delivered_through=through)
        )
        conn.execute(
            update(Subscriber)
            .where(Subscriber.id == sid)
            .values(failing_since=None, last_error=None)
        )
        conn.execute(
            update(Subscriber)
            .where(and_(Subscriber.id == sid, Subscriber.status == "error"))
            .values(status="active")
        )


def record_failure(engine: Engine, sid: str, error: str, give_up_after: timedelta) -> str:
    """A send to ``sid`` failed with ``error`` (no patient data in it). Failing for
    longer than ``give_up_after`` marks the subscriber ``error`` (its rows kept). Returns
    the subscriber's status after the update."""
    now = _now()
    with classified(), engine.begin() as conn:
        row = conn.execute(
            select(Subscriber.status, Subscriber.failing_since)
            .where(Subscriber.id == sid)
            .with_for_update()
        ).first()
        if row is None:
            return "off"
        status, since = row
        since = since or now
        if status != "off" and now - since > give_up_after:
            status = "error"
        conn.execute(
            update(Subscriber)
            .where(Subscriber.id == sid)
            .values(failing_since=since, last_error=error[:500], status=status)
        )
    return str(status)
