"""Initial schema: scores and alerts.

Revision ID: 0001
Revises:
Create Date: 2026-01-01

Written out in full rather than derived from ``storage.models`` so that it keeps
describing this revision when the models move on.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "scores",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("patient", sa.Text(), nullable=False),
        sa.Column("scored_at", _TS, nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("model_version", sa.Text(), nullable=False),
        sa.Column("risk", sa.Float(), nullable=True),
        sa.Column("degraded", sa.Boolean(), nullable=False),
        sa.Column("news2", sa.SmallInteger(), nullable=True),
        sa.Column("news2_breakdown", _JSON, nullable=False),
        sa.Column("qsofa", sa.SmallInteger(), nullable=True),
        sa.Column("sirs", sa.SmallInteger(), nullable=True),
        sa.Column("alert", sa.Boolean(), nullable=False),
        sa.Column("features", _JSON, nullable=True),
        sa.Column("event_offset", sa.Text(), nullable=True),
        sa.Column("created_at", _TS, nullable=False, server_default=sa.func.current_timestamp()),
        sa.PrimaryKeyConstraint("id", name="pk_scores"),
        sa.UniqueConstraint(
            "patient",
            "scored_at",
            "model",
            "model_version",
            name="uq_scores_patient_scored_at_model_model_version",
        ),
        sa.CheckConstraint(
            "risk IS NULL OR (risk >= 0 AND risk <= 1)", name="ck_scores_risk_range"
        ),
        sa.CheckConstraint("risk IS NOT NULL OR degraded", name="ck_scores_risk_or_degraded"),
        sa.CheckConstraint(
            "news2 IS NULL OR (news2 >= 0 AND news2 <= 20)", name="ck_scores_news2_range"
        ),
        sa.CheckConstraint(
            "qsofa IS NULL OR (qsofa >= 0 AND qsofa <= 3)", name="ck_scores_qsofa_range"
        ),
        sa.CheckConstraint(
            "sirs IS NULL OR (sirs >= 0 AND sirs <= 4)", name="ck_scores_sirs_range"
        ),
        sa.CheckConstraint("length(patient) > 0", name="ck_scores_patient_not_empty"),
    )
    op.create_index("ix_scores_patient_scored_at", "scores", ["patient", "scored_at"])
    op.create_index("ix_scores_scored_at", "scores", ["scored_at"])

    op.create_table(
        "alerts",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("alert_id", sa.Text(), nullable=False),
        sa.Column("patient", sa.Text(), nullable=False),
        sa.Column("raised_at", _TS, nullable=False),
        sa.Column("severity", sa.Text(), nullable=False),
        sa.Column("risk", sa.Float(), nullable=True),
        sa.Column("news2", sa.SmallInteger(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("explanation", _JSON, nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("acknowledged_by", sa.Text(), nullable=True),
        sa.Column("acknowledged_at", _TS, nullable=True),
        sa.Column("resolved_at", _TS, nullable=True),
        sa.Column("created_at", _TS, nullable=False, server_default=sa.func.current_timestamp()),
        sa.PrimaryKeyConstraint("id", name="pk_alerts"),
        sa.UniqueConstraint("alert_id", name="uq_alerts_alert_id"),
        sa.CheckConstraint(
            "severity IN ('info', 'warning', 'critical')", name="ck_alerts_severity_valid"
        ),
        sa.CheckConstraint(
            "status IN ('open', 'acknowledged', 'resolved')", name="ck_alerts_status_valid"
        ),
        sa.CheckConstraint(
            "risk IS NULL OR (risk >= 0 AND risk <= 1)", name="ck_alerts_risk_range"
        ),
        sa.CheckConstraint("length(patient) > 0", name="ck_alerts_patient_not_empty"),
    )
    op.create_index("ix_alerts_patient_raised_at", "alerts", ["patient", "raised_at"])
    op.create_index("ix_alerts_raised_at", "alerts", ["raised_at"])
    op.create_index("ix_alerts_status", "alerts", ["status"])


def downgrade() -> None:
    op.drop_index("ix_alerts_status", table_name="alerts")
    op.drop_index("ix_alerts_raised_at", table_name="alerts")
    op.drop_index("ix_alerts_patient_raised_at", table_name="alerts")
    op.drop_table("alerts")
    op.drop_index("ix_scores_scored_at", table_name="scores")
    op.drop_index("ix_scores_patient_scored_at", table_name="scores")
    op.drop_table("scores")
