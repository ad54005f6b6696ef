"""Patients, dead-letter index, audit log, API tokens, alerts.resolved_by, BI views.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28

Written out in full (not derived from ``storage.models``). The views are part of the
documented interface for BI tools (README "SQL views"): change them only in a new
revision, keeping their columns.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TS = sa.DateTime(timezone=True)

# One row per patient, hour (UTC) and model version.
_HOURLY_SQLITE = """
CREATE VIEW v_hourly_scores AS
SELECT patient,
       strftime('%Y-%m-%d %H:00:00', scored_at) AS hour,
       model,
       model_version,
       COUNT(*) AS n_scores,
       MAX(risk) AS max_risk,
       AVG(risk) AS mean_risk,
       MAX(news2) AS max_news2,
       MAX(qsofa) AS max_qsofa,
       MAX(sirs) AS max_sirs,
       SUM(CASE WHEN degraded THEN 1 ELSE 0 END) AS n_degraded,
       SUM(CASE WHEN alert THEN 1 ELSE 0 END) AS n_alert_flags
FROM scores
GROUP BY patient, strftime('%Y-%m-%d %H:00:00', scored_at), model, model_version
"""
_HOURLY_PG = """
CREATE VIEW v_hourly_scores AS
SELECT patient,
       date_trunc('hour', scored_at AT TIME ZONE 'UTC') AS hour,
       model,
       model_version,
       COUNT(*) AS n_scores,
       MAX(risk) AS max_risk,
       AVG(risk) AS mean_risk,
       MAX(news2) AS max_news2,
       MAX(qsofa) AS max_qsofa,
       MAX(sirs) AS max_sirs,
       SUM(CASE WHEN degraded THEN 1 ELSE 0 END) AS n_degraded,
       SUM(CASE WHEN alert THEN 1 ELSE 0 END) AS n_alert_flags
FROM scores
GROUP BY patient, date_trunc('hour', scored_at AT TIME ZONE 'UTC'), model, model_version
"""
_OUTCOMES = """
CREATE VIEW v_alert_outcomes AS
SELECT alert_id,
       patient,
       raised_at,
       severity,
       risk,
       news2,
       reason,
       status,
       acknowledged_by,
       acknowledged_at,
       resolved_by,
       resolved_at,
       {ack} AS seconds_to_acknowledge,
       {res} AS seconds_to_resolve
FROM alerts
"""


def _seconds(dialect: str, later: str, earlier: str) -> str:
    if dialect == "sqlite":
        return f"CAST(ROUND((julianday({later}) - julianday({earlier})) * 86400.0) AS INTEGER)"
    return f"CAST(EXTRACT(EPOCH FROM ({later} - {earlier})) AS BIGINT)"


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    with op.batch_alter_table("alerts") as batch:
        batch.add_column(sa.Column("resolved_by", sa.Text(), nullable=True))

    op.create_table(
        "patients",
        sa.Column("patient", sa.Text(), nullable=False),
        sa.Column("first_seen", _TS, nullable=False),
        sa.Column("last_seen", _TS, nullable=False),
        sa.Column("last_risk", sa.Float(), nullable=True),
        sa.Column("last_news2", sa.SmallInteger(), nullable=True),
        sa.Column("last_qsofa", sa.SmallInteger(), nullable=True),
        sa.Column("last_sirs", sa.SmallInteger(), nullable=True),
        sa.Column("last_degraded", sa.Boolean(), nullable=False),
        sa.Column("last_alert", sa.Boolean(), nullable=False),
        sa.Column("last_model_version", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("patient", name="pk_patients"),
        sa.CheckConstraint("length(patient) > 0", name="ck_patients_patient_not_empty"),
    )
    op.create_index("ix_patients_last_seen", "patients", ["last_seen"])

    op.create_table(
        "dead_letters",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("topic", sa.Text(), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column("stage", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("received_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_dead_letters"),
        sa.UniqueConstraint(
            "topic",
            "partition",
            "offset",
            "stage",
            name="uq_dead_letters_topic_partition_offset_stage",
        ),
    )
    op.create_index("ix_dead_letters_received_at", "dead_letters", ["received_at"])

    op.create_table(
        "audit_log",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("at", _TS, nullable=False),
        sa.Column("who", sa.Text(), nullable=False),
        sa.Column("role", sa.Text(), nullable=False),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("resource", sa.Text(), nullable=False),
        sa.Column("patient", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_audit_log"),
    )
    op.create_index("ix_audit_log_at", "audit_log", ["at"])
    op.create_index("ix_audit_log_patient", "audit_log", ["patient"])

    op.create_table(
        "api_tokens",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("role", sa.Text(), nullable=False),
        sa.Column("token_sha256", sa.Text(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("revoked_at", _TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_api_tokens"),
        sa.UniqueConstraint("name", name="uq_api_tokens_name"),
        sa.UniqueConstraint("token_sha256", name="uq_api_tokens_token_sha256"),
        sa.CheckConstraint(
            "role IN ('analyst', 'alerting', 'admin')", name="ck_api_tokens_role_valid"
        ),
        sa.CheckConstraint("length(name) > 0", name="ck_api_tokens_name_not_empty"),
    )

    op.execute(_HOURLY_SQLITE if dialect == "sqlite" else _HOURLY_PG)
    op.execute(
        _OUTCOMES.format(
            ack=_seconds(dialect, "acknowledged_at", "raised_at"),
            res=_seconds(dialect, "resolved_at", "raised_at"),
        )
    )


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS v_alert_outcomes")
    op.execute("DROP VIEW IF EXISTS v_hourly_scores")
    op.drop_table("api_tokens")
    op.drop_index("ix_audit_log_patient", table_name="audit_log")
    op.drop_index("ix_audit_log_at", table_name="audit_log")
    op.drop_table("audit_log")
    op.drop_index("ix_dead_letters_received_at", table_name="dead_letters")
    op.drop_table("dead_letters")
    op.drop_index("ix_patients_last_seen", table_name="patients")
    op.drop_table("patients")
    with op.batch_alter_table("alerts") as batch:
        batch.drop_column("resolved_by")
