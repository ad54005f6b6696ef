"""Errors of the storage layer: what is dead-lettered and what is retried.

* :class:`StoragePermanentError` — the rows themselves are wrong (a constraint or a data
  error, a value the schema cannot hold). Retrying cannot fix it: dead-letter the input.
  When raised by validation before touching the database, ``row_index`` says which row
  of the batch is at fault; after a database error the whole batch is rejected (it ran in
  one transaction) and the caller may write the rows one by one to isolate the bad one.
* :class:`StorageUnavailable` — the database is briefly unreachable or busy (connection
  refused or lost, timeouts, "database is locked", serialization failures, deadlocks, a
  schema that has not been migrated yet). Retry with backoff; when the budget is spent,
  stop *without* committing offsets so the input is processed again.

:func:`classify` maps SQLAlchemy and DBAPI exceptions onto this split.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from sqlalchemy import exc as sa_exc


class StorageError(Exception):
    """Base class of the storage errors."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class StoragePermanentError(StorageError):
    """The rows cannot be stored as they are; dead-letter them (never retried)."""

    def __init__(self, reason: str, row_index: int | None = None) -> None:
        super().__init__(reason)
        self.row_index = row_index


class StorageUnavailable(StorageError):  # noqa: N818 (name fixed by streams/errors.py)
    """The database is unavailable or busy; retry with backoff, then stop uncommitted."""


class SchemaOutOfDate(StorageError):  # noqa: N818 (reads as the condition it names)
    """The database schema is not at the newest revision (or not there at all) and this
    process may not migrate it: an operator runs ``wardwatch db upgrade``. Never retried:
    the process stops with this message."""


# SQLSTATE classes (first two characters) that retrying can fix.
_TRANSIENT_SQLSTATE_CLASSES = frozenset(
    {
        "08",  # connection exception
        "40",  # transaction rollback: serialization failure, deadlock
        "53",  # insufficient resources: disk full, out of memory, too many connections
        "55",  # object not in prerequisite state: lock not available
        "57",  # operator intervention: admin shutdown, cannot connect now, query canceled
        "58",  # system error (I/O)
        "HV",  # foreign data wrapper
    }
)
# SQLSTATE classes that mean the data is wrong.
_PERMANENT_SQLSTATE_CLASSES = frozenset({"22", "23", "54"})  # data, integrity, limits
# Undefined table/column: the schema has not been migrated yet; the data is fine.
_SCHEMA_MISSING_SQLSTATES = frozenset({"42P01", "42703", "3F000"})


def _sqlstate(orig: BaseException | None) -> str | None:
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return code if isinstance(code, str) and len(code) == 5 else None


def _reason(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc) or type(exc).__name__
    return f"{type(orig if orig is not None else exc).__name__}: {text}".replace("\n", " ")[:1000]


def classify(exc: BaseException) -> Exception:
    """Map a database exception onto :class:`StoragePermanentError` or
    :class:`StorageUnavailable`; use as ``raise classify(e) from e``.

    * already-classified storage errors are returned unchanged;
    * PostgreSQL errors are classified by SQLSTATE first (``08``, ``40``, ``53``, ``55``,
      ``57``, ``58`` and undefined table/column/schema → unavailable; ``22``, ``23``,
      ``54`` → permanent);
    * otherwise ``IntegrityError``/``DataError`` → permanent; ``OperationalError``,
      ``InterfaceError``, ``TimeoutError`` (pool), invalidated connections, psycopg and
      sqlite3 operational errors and OS-level connection errors → unavailable;
      (so SQLite "database is locked" and "no such table", i.e. not migrated yet);
    * a ``StatementError`` wrapping a ``ValueError``/``TypeError`` raised while binding a
      value (e.g. NaN in JSON, a naive datetime) → permanent;
    * anything else (a programming error) is returned unchanged if it is an
      :class:`Exception`, so that it propagates and stops the worker without being
      dead-lettered or retried; a bare :class:`BaseException` is wrapped in a
      :class:`RuntimeError`.

    Pure; raises nothing.
    """
    if isinstance(exc, StorageError):
        return exc
    orig = getattr(exc, "orig", None) if isinstance(exc, sa_exc.StatementError) else exc
    reason = _reason(exc)

    state = _sqlstate(orig)
    if state is not None:
        if state in _SCHEMA_MISSING_SQLSTATES:
            return StorageUnavailable(f"schema not migrated? {reason}")
        if state[:2] in _TRANSIENT_SQLSTATE_CLASSES:
            return StorageUnavailable(reason)
        if state[:2] in _PERMANENT_SQLSTATE_CLASSES:
            return StoragePermanentError(reason)

    if isinstance(exc, sa_exc.IntegrityError | sa_exc.DataError):
        return StoragePermanentError(reason)
    if isinstance(orig, sqlite3.IntegrityError | sqlite3.DataError):
        return StoragePermanentError(reason)
    if isinstance(orig, psycopg.IntegrityError | psycopg.DataError):
        return StoragePermanentError(reason)

    if isinstance(
        exc,
        sa_exc.OperationalError
        | sa_exc.InterfaceError
        | sa_exc.TimeoutError
        | sa_exc.DisconnectionError,
    ):
        return StorageUnavailable(reason)
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return StorageUnavailable(reason)
    if isinstance(orig, sqlite3.OperationalError | sqlite3.InterfaceError):
        return StorageUnavailable(reason)
    if isinstance(orig, psycopg.OperationalError | psycopg.InterfaceError):
        return StorageUnavailable(reason)
    if isinstance(orig, ConnectionError | TimeoutError):
        return StorageUnavailable(reason)

    if (
        isinstance(exc, sa_exc.StatementError)
        and not isinstance(exc, sa_exc.DBAPIError)
        and isinstance(orig, ValueError | TypeError | OverflowError)
    ):
        return StoragePermanentError(reason)

    if isinstance(exc, Exception):
        return exc
    return RuntimeError(reason)


@contextmanager
def classified() -> Iterator[None]:
    """Re-raise a SQLAlchemy error of the block as :func:`classify` maps it (unchanged
    when it maps to itself). Not retried here."""
    try:
        yield
    except sa_exc.SQLAlchemyError as e:
        c = classify(e)
        if c is e:
            raise
        raise c from e
