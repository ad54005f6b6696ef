"""Alembic environment for WardWatch's schema.

The database is, in order of preference: the connection handed over by
:func:`storage.db.migrate` (``config.attributes["connection"]``); ``-x url=...`` on the
alembic command line; ``WARDWATCH_DATABASE_URL`` (the variable the settings read; storage
does not import the stream layer's settings); ``sqlalchemy.url`` in the ini file. The
application always hands its own connection over, so this order matters only to a person
running ``alembic`` by hand.
"""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import Connection

from storage.models import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    x = context.get_x_argument(as_dictionary=True)
    if x.get("url"):
        return x["url"]
    url = os.environ.get("WARDWATCH_DATABASE_URL")
    return url or config.get_main_option("sqlalchemy.url") or ""


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    context.configure(
        url=_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    from storage.db import make_engine

    engine = make_engine(_url())
    try:
        with engine.begin() as conn:
            _run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
