"""Alert delivery: subscribers (FHIR rest-hook Subscriptions, HL7 v2 MLLP destinations)
and the transactional outbox of their event notifications.

Revision ID: 0004_outbox
Revises: 0003
Create Date: 2026-12-10

Written out in full (not derived from ``storage.outbox``).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_outbox"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TS = sa.DateTime(timezone=True)
_JSON = sa.JSON().with_variant(sa.dialects.postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "subscribers",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("topic", sa.Text(), nullable=False),
        sa.Column("endpoint", sa.Text(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("headers", _JSON, nullable=False),
        sa.Column("heartbeat_s", sa.Integer(), nullable=True),
        sa.Column("resource", _JSON, nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("events_since_start", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("delivered_through", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("handshake_done", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("failing_since", _TS, nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("created_by", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_subscribers"),
        sa.CheckConstraint("kind IN ('rest-hook', 'hl7v2-mllp')", name="ck_subscribers_kind_valid"),
        sa.CheckConstraint(
            "status IN ('requested', 'active', 'error', 'off')", name="ck_subscribers_status_valid"
        ),
        sa.CheckConstraint(
            "payload IN ('empty', 'id-only', 'full-resource')", name="ck_subscribers_payload_valid"
        ),
    )
    op.create_table(
        "outbox",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("subscriber_id", sa.Text(), nullable=False),
        sa.Column("event_number", sa.BigInteger(), nullable=False),
        sa.Column("alert_row", _ID, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("delivered_at", _TS, nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("id", name="pk_outbox"),
        sa.ForeignKeyConstraint(
            ["subscriber_id"], ["subscribers.id"], name="fk_outbox_subscriber_id_subscribers"
        ),
        sa.ForeignKeyConstraint(
            ["alert_row"],
            ["alerts.id"],
            name="fk_outbox_alert_row_alerts",
            ondelete="CASCADE",  # purge (retention) takes the outbox rows with the alert
        ),
        sa.UniqueConstraint(
            "subscriber_id", "event_number", name="uq_outbox_subscriber_id_event_number"
        ),
    )
    # The delivery loop reads a subscriber's undelivered rows in event order.
    op.create_index(
        "ix_outbox_pending", "outbox", ["subscriber_id", "delivered_at", "event_number"]
    )


def downgrade() -> None:
    op.drop_index("ix_outbox_pending", table_name="outbox")
    op.drop_table("outbox")
    op.drop_table("subscribers")
