"""Alert updates in the outbox: an acknowledged or resolved alert is queued to the
subscribers too, as its RiskAssessment updated.

``kind`` says what the event is (``raised``, the only kind before, or ``acknowledged`` /
``resolved``); ``resource`` holds the updated RiskAssessment as it was sent, so a resend
and ``$events`` give the same body whatever happens to the alert later. A raised event
keeps reading the alert's own RiskAssessment (``resource`` NULL).

Revision ID: 0006_outbox_updates
Revises: 0005_cds_feedback
Create Date: 2026-12-08

Written out in full (not derived from ``storage.models``).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_outbox_updates"
down_revision: str | None = "0005_cds_feedback"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(sa.dialects.postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    # batch mode: SQLite cannot add a CHECK constraint to a table in place
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("kind", sa.Text(), nullable=False, server_default="raised"))
        batch.add_column(sa.Column("resource", _JSON, nullable=True))
        batch.create_check_constraint(
            "ck_outbox_kind_valid", "kind IN ('raised', 'acknowledged', 'resolved')"
        )


def downgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.drop_constraint("ck_outbox_kind_valid", type_="check")
        batch.drop_column("resource")
        batch.drop_column("kind")
