"""``wardwatch db``: the schema and the database roles, run by the operator.

``db upgrade`` migrates the schema to the newest revision and ``db grant`` sets the
privileges of the API's and the worker's roles (PostgreSQL). Both connect with
``WARDWATCH_MIGRATION_DATABASE_URL`` (the schema owner, who has DDL rights), or
``WARDWATCH_DATABASE_URL`` when that is not set; ``db current`` only reads. The API
never migrates: it checks the revision at start-up and refuses a schema behind head.
A database error ends the command with a one-line error and exit status 1; nothing is
retried.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import click
from sqlalchemy import Engine
from sqlalchemy import exc as sa_exc

from storage import roles
from storage.db import current_revision, head_revision, make_engine, migrate
from storage.errors import StorageError


@contextmanager
def _owner_database() -> Iterator[Engine]:
    """The owner's engine; storage and SQL errors become a ClickException (exit 1)."""
    from .cli_context import settings

    s = settings()
    engine = make_engine(s.migration_database_url or s.database_url)
    try:
        yield engine
    except StorageError as exc:
        raise click.ClickException(f"database: {exc.reason}") from exc
    except sa_exc.SQLAlchemyError as exc:  # e.g. a role that does not exist
        raise click.ClickException(f"database: {getattr(exc, 'orig', None) or exc}") from exc
    finally:
        engine.dispose()


@click.group(name="db")
def db_cmd() -> None:
    """The database schema (upgrade, current) and roles (grant)."""


@db_cmd.command(name="upgrade")
def db_upgrade() -> None:
    """Migrate the schema to the newest revision (idempotent; one transaction).

    Connects as the schema owner: WARDWATCH_MIGRATION_DATABASE_URL, or
    WARDWATCH_DATABASE_URL. Run before starting a new version's API.
    """
    with _owner_database() as engine:
        before = current_revision(engine)
        migrate(engine)
        after = current_revision(engine)
    click.echo(f"schema at revision {after} (was {before or 'empty'})")


@db_cmd.command(name="current")
def db_current() -> None:
    """Print the schema's revision and the newest one; exit 1 if they differ."""
    with _owner_database() as engine:
        current = current_revision(engine)
    head = head_revision()
    click.echo(f"schema at revision {current or '(none)'}; newest {head}")
    if current != head:
        raise click.ClickException("the schema is behind: run `wardwatch db upgrade`")


@db_cmd.command(name="grant")
@click.option("--api-role", default=None, help="PostgreSQL role the API connects as.")
@click.option("--worker-role", default=None, help="PostgreSQL role the workers connect as.")
def db_grant(api_role: str | None, worker_role: str | None) -> None:
    """Set the privileges of the API's and the worker's roles (PostgreSQL; idempotent).

    \b
    API role:    reads scores, alerts, patients, tokens; appends to audit_log (never
                 updates or deletes it); updates only the alert workflow columns.
    Worker role: inserts scores, alerts, dead letters; upserts patients.
    Neither may create tables. The roles must exist (CREATE ROLE ... LOGIN). Run as the
    schema owner after every `wardwatch db upgrade`.
    """
    if api_role is None and worker_role is None:
        raise click.UsageError("give --api-role and/or --worker-role")
    with _owner_database() as engine:
        try:
            roles.grant(engine, api_role=api_role, worker_role=worker_role)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from exc
    for kind, role in (("API", api_role), ("worker", worker_role)):
        if role is not None:
            click.echo(f"granted the {kind} privileges to role {role!r}")


COMMANDS: tuple[click.Command, ...] = (db_cmd,)
