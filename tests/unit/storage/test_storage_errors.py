"""classify(): which database errors are dead-lettered and which are retried."""

from __future__ import annotations

import sqlite3

import psycopg
import psycopg.errors
import pytest
from sqlalchemy import exc as sa_exc

from storage.errors import StoragePermanentError, StorageUnavailable, classify


def wrap(cls: type[sa_exc.DBAPIError], orig: BaseException) -> sa_exc.DBAPIError:
    return cls("INSERT INTO scores ...", {}, orig)


@pytest.mark.parametrize(
    "exc",
    [
        wrap(sa_exc.OperationalError, sqlite3.OperationalError("database is locked")),
        wrap(sa_exc.OperationalError, sqlite3.OperationalError("no such table: scores")),
        wrap(sa_exc.OperationalError, sqlite3.OperationalError("unable to open database file")),
        wrap(sa_exc.InterfaceError, sqlite3.InterfaceError("closed")),
        wrap(sa_exc.OperationalError, psycopg.OperationalError("connection refused")),
        wrap(sa_exc.OperationalError, psycopg.errors.SerializationFailure("serialize")),
        wrap(sa_exc.OperationalError, psycopg.errors.DeadlockDetected("deadlock")),
        wrap(sa_exc.OperationalError, psycopg.errors.AdminShutdown("shutting down")),
        wrap(sa_exc.OperationalError, psycopg.errors.QueryCanceled("statement timeout")),
        wrap(sa_exc.OperationalError, psycopg.errors.LockNotAvailable("lock")),
        wrap(sa_exc.OperationalError, psycopg.errors.TooManyConnections("too many")),
        wrap(sa_exc.ProgrammingError, psycopg.errors.UndefinedTable("no scores")),
        wrap(sa_exc.InterfaceError, psycopg.InterfaceError("connection closed")),
        sa_exc.TimeoutError("QueuePool limit reached"),
        sa_exc.DisconnectionError("gone"),
        psycopg.OperationalError("connection refused"),
        sqlite3.OperationalError("database is locked"),
        ConnectionRefusedError(111, "refused"),
    ],
    ids=lambda e: f"{type(e).__name__}-{getattr(e, 'orig', e)!s}"[:60],
)
def test_transient(exc: BaseException) -> None:
    c = classify(exc)
    assert isinstance(c, StorageUnavailable)
    assert c.reason


@pytest.mark.parametrize(
    "exc",
    [
        wrap(sa_exc.IntegrityError, sqlite3.IntegrityError("CHECK constraint failed")),
        wrap(sa_exc.IntegrityError, psycopg.errors.UniqueViolation("duplicate")),
        wrap(sa_exc.IntegrityError, psycopg.errors.NotNullViolation("null")),
        wrap(sa_exc.IntegrityError, psycopg.errors.CheckViolation("check")),
        wrap(sa_exc.DataError, psycopg.errors.NumericValueOutOfRange("range")),
        wrap(sa_exc.DataError, psycopg.errors.InvalidTextRepresentation("json")),
        wrap(sa_exc.DataError, psycopg.DataError("NUL byte")),
        wrap(sa_exc.OperationalError, psycopg.errors.ProgramLimitExceeded("index row")),
        sa_exc.StatementError("bind", "INSERT", {}, ValueError("NaN is not JSON")),
        sa_exc.StatementError("bind", "INSERT", {}, TypeError("not serializable")),
        sqlite3.IntegrityError("UNIQUE constraint failed"),
    ],
    ids=lambda e: f"{type(e).__name__}-{getattr(e, 'orig', e)!s}"[:60],
)
def test_permanent(exc: BaseException) -> None:
    assert isinstance(classify(exc), StoragePermanentError)


def test_storage_errors_pass_through() -> None:
    p = StoragePermanentError("bad", row_index=3)
    u = StorageUnavailable("down")
    assert classify(p) is p
    assert classify(u) is u
    assert p.row_index == 3


def test_unknown_errors_are_returned_unchanged() -> None:
    bug = KeyError("oops")
    assert classify(bug) is bug
    syntax = wrap(sa_exc.ProgrammingError, sqlite3.ProgrammingError("syntax"))
    assert classify(syntax) is syntax
    wrapped = classify(KeyboardInterrupt())
    assert type(wrapped) is RuntimeError


def test_reason_is_one_line_and_names_the_driver_error() -> None:
    c = classify(wrap(sa_exc.OperationalError, sqlite3.OperationalError("database\nis locked")))
    assert c.args[0] == "OperationalError: database is locked"
