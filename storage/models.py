"""The database schema: every score and every alert, keyed by pseudonym only.

Tables (see ``storage/migrations/versions`` for the DDL the database actually gets):

* ``scores`` — one row per (patient, scored_at, model, model_version): the model's risk
  (NULL when the model was unavailable; then ``degraded`` is true), the bedside scores
  and the features the model saw. ``event_offset`` is ``topic/partition/offset`` of the
  input that produced the score, so a row can be traced back to its Kafka record.
* ``alerts`` — one row per raised alert, ``alert_id`` deterministic (a redelivered
  score raises the same alert and it is stored once); ``status`` moves
  open → acknowledged → resolved, with by whom and when.
* ``patients`` — one row per pseudonym: first and last time scored and its current state
  (the latest score's risk, NEWS2, qSOFA, SIRS, degraded and alert flags), upserted with
  every score batch.
* ``dead_letters`` — an index of the dead-letter topic (where the record was, which stage
  refused it and why); the payload bytes stay in Kafka.
* ``audit_log`` — who (token name and role) did what to which resource and patient, when;
  for reads also which patients were returned (up to a limit), how many, and a SHA-256
  of the query. Append-only on PostgreSQL (grants and a trigger, migration 0003).
* ``cds_feedback`` — CDS Hooks card outcomes (accepted or overridden) reported by EHRs.
* ``api_tokens`` — API bearer tokens: a name, a role and the SHA-256 of the token (the
  token itself is never stored).

Views for BI tools (``v_hourly_scores``, ``v_alert_outcomes``) are created by migration
0002; they are not mapped here (see README "SQL views").

Privacy: ``patient`` is always the HMAC pseudonym made at the edge; names, addresses and
raw identifiers never reach this layer. Times are ``timestamptz`` on PostgreSQL and UTC
ISO text on SQLite; :class:`UTCDateTime` always hands back aware UTC datetimes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    Text,
    UniqueConstraint,
    false,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

SEVERITIES: tuple[str, ...] = ("info", "warning", "critical")
STATUSES: tuple[str, ...] = ("open", "acknowledged", "resolved")
ROLES: tuple[str, ...] = ("analyst", "alerting", "admin")


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware timestamp stored as UTC.

    Binding a naive datetime raises :class:`ValueError` (wrapped by SQLAlchemy in a
    ``StatementError``; :func:`storage.errors.classify` makes it permanent). Results are
    always aware UTC datetimes (SQLite keeps no zone, so UTC is attached on the way out).
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value.isoformat()}: a time zone is required")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# JSON on SQLite, JSONB on PostgreSQL (indexable, compact).
JSONType = JSON().with_variant(JSONB(), "postgresql")
# BIGINT identity on PostgreSQL; INTEGER PRIMARY KEY (the rowid) on SQLite.
IdType = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    """Declarative base with a naming convention (stable constraint names for Alembic)."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Score(Base):
    """One score of one patient at one time by one model version."""

    __tablename__ = "scores"

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    patient: Mapped[str] = mapped_column(Text, nullable=False)
    scored_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    model: Mapped[str] = mapped_column(Text, nullable=False)
    model_version: Mapped[str] = mapped_column(Text, nullable=False)
    risk: Mapped[float | None] = mapped_column(Float, nullable=True)
    degraded: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    news2: Mapped[int | None] = mapped_column(SmallInteger, nullable=True)
    news2_breakdown: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False)
    qsofa: Mapped[int | None] = mapped_column(SmallInteger, nullable=True)
    sirs: Mapped[int | None] = mapped_column(SmallInteger, nullable=True)
    alert: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    features: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    event_offset: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(
        UTCDateTime, nullable=False, server_default=func.current_timestamp()
    )

    __table_args__ = (
        UniqueConstraint("patient", "scored_at", "model", "model_version"),
        CheckConstraint("risk IS NULL OR (risk >= 0 AND risk <= 1)", name="risk_range"),
        CheckConstraint("risk IS NOT NULL OR degraded", name="risk_or_degraded"),
        CheckConstraint("news2 IS NULL OR (news2 >= 0 AND news2 <= 20)", name="news2_range"),
        CheckConstraint("qsofa IS NULL OR (qsofa >= 0 AND qsofa <= 3)", name="qsofa_range"),
        CheckConstraint("sirs IS NULL OR (sirs >= 0 AND sirs <= 4)", name="sirs_range"),
        CheckConstraint("length(patient) > 0", name="patient_not_empty"),
        Index("ix_scores_patient_scored_at", "patient", "scored_at"),
        Index("ix_scores_scored_at", "scored_at"),
    )


class Alert(Base):
    """One raised alert and its workflow state."""

    __tablename__ = "alerts"

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    alert_id: Mapped[str] = mapped_column(Text, nullable=False, unique=True)
    patient: Mapped[str] = mapped_column(Text, nullable=False)
    raised_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    severity: Mapped[str] = mapped_column(Text, nullable=False)
    risk: Mapped[float | None] = mapped_column(Float, nullable=True)
    news2: Mapped[int | None] = mapped_column(SmallInteger, nullable=True)
    reason: Mapped[str] = mapped_column(Text, nullable=False)
    explanation: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False)
    status: Mapped[str] = mapped_column(Text, nullable=False, default="open")
    acknowledged_by: Mapped[str | None] = mapped_column(Text, nullable=True)
    acknowledged_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    resolved_by: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(
        UTCDateTime, nullable=False, server_default=func.current_timestamp()
    )

    __table_args__ = (
        CheckConstraint("severity IN ('info', 'warning', 'critical')", name="severity_valid"),
        CheckConstraint("status IN ('open', 'acknowledged', 'resolved')", name="status_valid"),
        CheckConstraint("risk IS NULL OR (risk >= 0 AND risk <= 1)", name="risk_range"),
        CheckConstraint("length(patient) > 0", name="patient_not_empty"),
        Index("ix_alerts_patient_raised_at", "patient", "raised_at"),
        Index("ix_alerts_raised_at", "raised_at"),
        Index("ix_alerts_status", "status"),
    )


class Patient(Base):
    """One patient (pseudonym) and its current state: the latest score's values."""

    __tablename__ = "patients"

    patient: Mapped[str] = mapped_column(Text, primary_key=True)
    first_seen: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    last_risk: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_news2: Mapped[int | None] = mapped_column(SmallInteger, nullable=True)
    last_qsofa: Mapped[int | None] = mapped_column(SmallInteger, nullable=True)
    last_sirs: Mapped[int | None] = mapped_column(SmallInteger, nullable=True)
    last_degraded: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    last_alert: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    last_model_version: Mapped[str | None] = mapped_column(Text, nullable=True)

    __table_args__ = (
        CheckConstraint("length(patient) > 0", name="patient_not_empty"),
        Index("ix_patients_last_seen", "last_seen"),
    )


class DeadLetter(Base):
    """Where a dead-lettered record was, which stage refused it and why (no payload)."""

    __tablename__ = "dead_letters"

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    topic: Mapped[str] = mapped_column(Text, nullable=False)
    partition: Mapped[int] = mapped_column(Integer, nullable=False)
    offset: Mapped[int] = mapped_column(BigInteger, nullable=False)
    stage: Mapped[str] = mapped_column(Text, nullable=False)
    reason: Mapped[str] = mapped_column(Text, nullable=False)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)

    __table_args__ = (
        UniqueConstraint("topic", "partition", "offset", "stage"),
        Index("ix_dead_letters_received_at", "received_at"),
    )


class AuditEntry(Base):
    """One access to patient data or one change made through the API or the CLI."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    who: Mapped[str] = mapped_column(Text, nullable=False)
    role: Mapped[str] = mapped_column(Text, nullable=False)
    action: Mapped[str] = mapped_column(Text, nullable=False)
    resource: Mapped[str] = mapped_column(Text, nullable=False)
    patient: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Added by 0003 (NULL in older rows): the distinct pseudonyms a read returned (up to
    # storage.access.AUDIT_MAX_PATIENTS, else NULL), how many, and the query's SHA-256.
    patients: Mapped[list[str] | None] = mapped_column(JSONType, nullable=True)
    patient_count: Mapped[int | None] = mapped_column(Integer, nullable=True)
    query_sha256: Mapped[str | None] = mapped_column(Text, nullable=True)

    __table_args__ = (
        Index("ix_audit_log_at", "at"),
        Index("ix_audit_log_patient", "patient"),
    )


class ApiToken(Base):
    """An API bearer token: only its SHA-256 hex digest is stored."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(Text, nullable=False, unique=True)
    role: Mapped[str] = mapped_column(Text, nullable=False)
    token_sha256: Mapped[str] = mapped_column(Text, nullable=False, unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (
        CheckConstraint("role IN ('analyst', 'alerting', 'admin')", name="role_valid"),
        CheckConstraint("length(name) > 0", name="name_not_empty"),
    )


# --- Alert delivery (issue 19): subscribers and the transactional outbox (migration 0004)

SUBSCRIBER_KINDS: tuple[str, ...] = ("rest-hook", "hl7v2-mllp")
SUBSCRIBER_STATUSES: tuple[str, ...] = ("requested", "active", "error", "off")
PAYLOADS: tuple[str, ...] = ("empty", "id-only", "full-resource")


class Subscriber(Base):
    """One receiver of alert notifications: a FHIR rest-hook Subscription (Backport IG)
    or an HL7 v2 MLLP destination. ``events_since_start`` is the last event number given
    out; ``delivered_through`` the last one the receiver acknowledged (all before it too)."""

    __tablename__ = "subscribers"

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    kind: Mapped[str] = mapped_column(Text, nullable=False)
    topic: Mapped[str] = mapped_column(Text, nullable=False)
    endpoint: Mapped[str] = mapped_column(Text, nullable=False)
    payload: Mapped[str] = mapped_column(Text, nullable=False)
    headers: Mapped[list[str]] = mapped_column(JSONType, nullable=False)
    heartbeat_s: Mapped[int | None] = mapped_column(Integer, nullable=True)
    resource: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False)
    status: Mapped[str] = mapped_column(Text, nullable=False)
    events_since_start: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    delivered_through: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    handshake_done: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=false())
    failing_since: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    created_by: Mapped[str] = mapped_column(Text, nullable=False)

    __table_args__ = (
        CheckConstraint("kind IN ('rest-hook', 'hl7v2-mllp')", name="kind_valid"),
        CheckConstraint("status IN ('requested', 'active', 'error', 'off')", name="status_valid"),
        CheckConstraint("payload IN ('empty', 'id-only', 'full-resource')", name="payload_valid"),
    )


class OutboxEntry(Base):
    """One alert event to deliver to one subscriber, numbered per subscriber (gapless,
    from 1): the alert raised, or later acknowledged or resolved (``resource`` then holds
    the updated RiskAssessment as sent)."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    subscriber_id: Mapped[str] = mapped_column(Text, ForeignKey("subscribers.id"), nullable=False)
    event_number: Mapped[int] = mapped_column(BigInteger, nullable=False)
    alert_row: Mapped[int] = mapped_column(
        IdType, ForeignKey("alerts.id", ondelete="CASCADE"), nullable=False
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    kind: Mapped[str] = mapped_column(Text, nullable=False, server_default="raised")
    resource: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)

    __table_args__ = (
        CheckConstraint("kind IN ('raised', 'acknowledged', 'resolved')", name="kind_valid"),
        UniqueConstraint("subscriber_id", "event_number"),
        Index("ix_outbox_pending", "subscriber_id", "delivered_at", "event_number"),
    )


class CdsFeedback(Base):
    """One CDS Hooks feedback outcome for one card (no patient: cards are counted)."""

    __tablename__ = "cds_feedback"

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    service_id: Mapped[str] = mapped_column(Text, nullable=False)
    card_uuid: Mapped[str] = mapped_column(Text, nullable=False)
    outcome: Mapped[str] = mapped_column(Text, nullable=False)
    accepted_suggestions: Mapped[int] = mapped_column(Integer, nullable=False)
    override_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    outcome_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    client: Mapped[str] = mapped_column(Text, nullable=False)

    __table_args__ = (
        CheckConstraint("outcome IN ('accepted', 'overridden')", name="outcome_valid"),
        Index("ix_cds_feedback_service_id", "service_id"),
    )
