"""Database roles on PostgreSQL: what the API's and the worker's roles may do.

Run by the schema owner (``wardwatch db grant``, with the owner's URL), after every
``wardwatch db upgrade`` (a grant names the tables that exist when it runs). The roles
themselves are created by the database administrator (``CREATE ROLE ... LOGIN``); this
module only sets their privileges, idempotently: everything the role had on the schema's
tables and sequences is revoked first, then exactly this is granted:

* API role: SELECT on scores, alerts, patients, api_tokens, alembic_version; SELECT and
  INSERT on audit_log (no UPDATE, DELETE or TRUNCATE: the trail is append-only, and
  migration 0003's trigger refuses those to everyone but the owner anyway); UPDATE of the
  workflow columns of alerts only (acknowledge, resolve); SELECT, INSERT and UPDATE on
  subscribers (Subscription create and delete, which switches off, and the event
  numbers an acknowledged or resolved alert takes); SELECT and INSERT on outbox
  (``$events``, and those alerts queued); SELECT and INSERT on cds_feedback. No CREATE
  on the schema.
* Worker role (the writer, and ``wardwatch deliver``): SELECT and INSERT on scores,
  alerts, dead_letters; SELECT, INSERT and UPDATE on patients (the state upsert) and on
  outbox (queued with each alert, marked delivered); SELECT and UPDATE on subscribers
  (event numbers, delivery state); SELECT on alembic_version (the start-up check finds
  the schema at head and changes nothing).

SQLite has no roles: :func:`grant` refuses it.
"""

from __future__ import annotations

from sqlalchemy import Connection, Engine, text

from storage.errors import classified

API_READ_TABLES = ("scores", "alerts", "patients", "api_tokens", "alembic_version")
ALERT_WORKFLOW_COLUMNS = (
    "status",
    "acknowledged_by",
    "acknowledged_at",
    "resolved_by",
    "resolved_at",
)
WORKER_INSERT_TABLES = ("scores", "alerts", "dead_letters")


def _serial(conn: Connection, table: str) -> str:
    name = conn.execute(text("SELECT pg_get_serial_sequence(:t, 'id')"), {"t": table}).scalar()
    if name is None:
        raise ValueError(f"table {table} has no id sequence: is the schema migrated?")
    return str(name)


def _exists(conn: Connection, table: str) -> bool:
    """Whether ``table`` exists in schema public (tables of later migrations may not)."""
    return (
        conn.execute(text("SELECT to_regclass(:t)"), {"t": f"public.{table}"}).scalar() is not None
    )


def _reset(conn: Connection, role: str) -> None:
    # Revoking the table privileges also revokes the column privileges on those tables.
    conn.execute(text(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {role}"))
    conn.execute(text(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {role}"))
    conn.execute(text(f"REVOKE CREATE ON SCHEMA public FROM {role}"))
    conn.execute(text(f"GRANT USAGE ON SCHEMA public TO {role}"))
    db = conn.dialect.identifier_preparer.quote(
        str(conn.execute(text("SELECT current_database()")).scalar())
    )
    conn.execute(text(f"GRANT CONNECT ON DATABASE {db} TO {role}"))


def grant(engine: Engine, *, api_role: str | None = None, worker_role: str | None = None) -> None:
    """Set the privileges of the API's and/or the worker's role, in one transaction, as
    described in the module docstring; run as the schema owner.

    Raises ValueError for SQLite, for a role that is the connecting (owner) role, or for
    an unmigrated schema; sqlalchemy's ProgrammingError (unchanged) when a role does not
    exist or the connecting role may not grant; StorageUnavailable when the database
    cannot be reached. Not retried; nothing is granted unless everything is.
    """
    if engine.dialect.name != "postgresql":
        raise ValueError("database roles need PostgreSQL (SQLite has none)")
    q = engine.dialect.identifier_preparer.quote
    with classified(), engine.begin() as conn:
        me = conn.execute(text("SELECT current_user")).scalar()
        for role in (api_role, worker_role):
            if role is not None and role == me:
                raise ValueError(
                    f"{role!r} is the role running the grant (the owner): give the API and "
                    "the worker roles of their own"
                )
        if api_role is not None:
            r = q(api_role)
            _reset(conn, r)
            conn.execute(text(f"GRANT SELECT ON {', '.join(API_READ_TABLES)} TO {r}"))
            conn.execute(text(f"GRANT SELECT, INSERT ON audit_log TO {r}"))
            conn.execute(text(f"GRANT USAGE ON SEQUENCE {_serial(conn, 'audit_log')} TO {r}"))
            cols = ", ".join(ALERT_WORKFLOW_COLUMNS)
            conn.execute(text(f"GRANT UPDATE ({cols}) ON alerts TO {r}"))
            if _exists(conn, "subscribers"):  # migration 0004
                conn.execute(text(f"GRANT SELECT, INSERT, UPDATE ON subscribers TO {r}"))
                # an acknowledged or resolved alert is queued in its own transaction
                conn.execute(text(f"GRANT SELECT, INSERT ON outbox TO {r}"))
                seq = _serial(conn, "outbox")
                conn.execute(text(f"GRANT USAGE ON SEQUENCE {seq} TO {r}"))
            if _exists(conn, "cds_feedback"):  # migration 0005
                conn.execute(text(f"GRANT SELECT, INSERT ON cds_feedback TO {r}"))
                seq = _serial(conn, "cds_feedback")
                conn.execute(text(f"GRANT USAGE ON SEQUENCE {seq} TO {r}"))
        if worker_role is not None:
            r = q(worker_role)
            _reset(conn, r)
            conn.execute(text(f"GRANT SELECT, INSERT ON {', '.join(WORKER_INSERT_TABLES)} TO {r}"))
            conn.execute(text(f"GRANT SELECT, INSERT, UPDATE ON patients TO {r}"))
            conn.execute(text(f"GRANT SELECT ON alembic_version TO {r}"))
            inserts = list(WORKER_INSERT_TABLES)
            if _exists(conn, "subscribers"):  # migration 0004
                conn.execute(text(f"GRANT SELECT, INSERT, UPDATE ON outbox TO {r}"))
                conn.execute(text(f"GRANT SELECT, UPDATE ON subscribers TO {r}"))
                inserts.append("outbox")
            seqs = ", ".join(_serial(conn, t) for t in inserts)
            conn.execute(text(f"GRANT USAGE ON SEQUENCE {seqs} TO {r}"))
