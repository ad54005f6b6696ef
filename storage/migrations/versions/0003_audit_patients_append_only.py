"""Audit rows name the patients a read returned; the audit log is append-only.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07

``audit_log`` gains ``patients`` (JSON list of the distinct pseudonyms a read returned,
when there are at most ``storage.access.AUDIT_MAX_PATIENTS``; NULL above that and for
rows written before this revision), ``patient_count`` (how many distinct patients, NULL
for old rows) and ``query_sha256`` (SHA-256 of the normalised query parameters, NULL for
old rows). Old rows stay valid: every new column is nullable.

On PostgreSQL a trigger refuses UPDATE, DELETE and TRUNCATE on ``audit_log`` to every
role but the table's owner (and superusers): belt and braces next to the grants of
``wardwatch db grant``, so even a role that was granted too much cannot rewrite the
trail. SQLite has no roles; there is no trigger.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

# pg_has_role(..., 'MEMBER') is true for the owner, members of an owning group role and
# superusers; everyone else gets insufficient_privilege (SQLSTATE 42501).
_APPEND_ONLY_FN = """
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT pg_has_role(
        current_user, (SELECT relowner FROM pg_class WHERE oid = TG_RELID), 'MEMBER'
    ) THEN
        RAISE EXCEPTION 'audit_log is append-only: % refused for role %', TG_OP, current_user
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF TG_OP = 'DELETE' THEN
        RETURN OLD;
    ELSIF TG_OP = 'UPDATE' THEN
        RETURN NEW;
    END IF;
    RETURN NULL;
END
$$
"""


def upgrade() -> None:
    with op.batch_alter_table("audit_log") as batch:
        batch.add_column(sa.Column("patients", _JSON, nullable=True))
        batch.add_column(sa.Column("patient_count", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("query_sha256", sa.Text(), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_APPEND_ONLY_FN)
        op.execute(
            "CREATE TRIGGER audit_log_append_only_rows BEFORE UPDATE OR DELETE ON audit_log "
            "FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()"
        )
        op.execute(
            "CREATE TRIGGER audit_log_append_only_truncate BEFORE TRUNCATE ON audit_log "
            "FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only()"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_log_append_only_truncate ON audit_log")
        op.execute("DROP TRIGGER IF EXISTS audit_log_append_only_rows ON audit_log")
        op.execute("DROP FUNCTION IF EXISTS audit_log_append_only()")
    with op.batch_alter_table("audit_log") as batch:
        batch.drop_column("query_sha256")
        batch.drop_column("patient_count")
        batch.drop_column("patients")
