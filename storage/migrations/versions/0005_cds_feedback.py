"""CDS Hooks feedback: one row per card outcome an EHR reported.

Revision ID: 0005_cds_feedback
Revises: 0004_outbox
Create Date: 2026-12-01

Written out in full (not derived from ``storage.models``).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_cds_feedback"
down_revision: str | None = "0004_outbox"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "cds_feedback",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("service_id", sa.Text(), nullable=False),
        sa.Column("card_uuid", sa.Text(), nullable=False),
        sa.Column("outcome", sa.Text(), nullable=False),
        sa.Column("accepted_suggestions", sa.Integer(), nullable=False),
        sa.Column("override_reason", sa.Text(), nullable=True),
        sa.Column("outcome_at", _TS, nullable=False),
        sa.Column("received_at", _TS, nullable=False),
        sa.Column("client", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_cds_feedback"),
        sa.CheckConstraint(
            "outcome IN ('accepted', 'overridden')", name="ck_cds_feedback_outcome_valid"
        ),
    )
    op.create_index("ix_cds_feedback_service_id", "cds_feedback", ["service_id"])


def downgrade() -> None:
    op.drop_index("ix_cds_feedback_service_id", table_name="cds_feedback")
    op.drop_table("cds_feedback")
