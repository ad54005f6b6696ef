"""One holder per database of a named lock: which of several processes is the active one.

``wardwatch deliver`` sends each subscriber's events in order, one at a time; two senders
over one outbox would send every event twice and race on the delivery marks. With this
lock a second process is a standby: it waits, and takes over when the first one's lock
goes (the process stopped or its database session ended).

* PostgreSQL: a session-level advisory lock (``pg_try_advisory_lock``) on a connection of
  its own, held while the process runs. The server releases it when that session ends,
  so :meth:`ProcessLock.check` is called periodically: when the session is gone, another
  process may have taken over, and the holder must stop at once.
* SQLite (one host): an exclusive ``flock`` on ``<database file>.<name>.lock``; the
  kernel releases it when the process exits. An in-memory database needs no lock.

Raises :class:`~storage.errors.StorageUnavailable` (retryable) when the database cannot
be reached, :class:`LockLostError` when a held lock is gone. Nothing here retries.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from pathlib import Path
from typing import IO

from sqlalchemy import Connection, Engine, text

from storage.errors import StorageError, classified


class LockLostError(StorageError):
    """The lock this process held is gone (its database session ended): another process
    may be active now, so this one must stop (not retried)."""


def lock_key(name: str) -> int:
    """The signed 64-bit advisory-lock key of ``name`` (stable across processes)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


class ProcessLock:
    """The lock ``name`` on the database of ``engine``; not thread-safe."""

    def __init__(self, engine: Engine, name: str) -> None:
        self._engine, self._name = engine, name
        self._conn: Connection | None = None
        self._file: IO[bytes] | None = None
        self.held = False

    def _sqlite_path(self) -> Path | None:
        db = self._engine.url.database
        if not db or db == ":memory:" or db.startswith("file::memory:"):
            return None
        return Path(db).with_name(f"{Path(db).name}.{self._name}.lock")

    def try_acquire(self) -> bool:
        """Take the lock if no other process holds it; True when held (also when it
        already was). Raises StorageUnavailable when the database is unreachable."""
        if self.held:
            return True
        if self._engine.dialect.name == "postgresql":
            with classified():
                conn = self._engine.connect()
                try:
                    got = conn.execute(
                        text("SELECT pg_try_advisory_lock(:k)"), {"k": lock_key(self._name)}
                    ).scalar_one()
                    conn.commit()  # the lock is the session's, not the transaction's
                except BaseException:
                    conn.close()
                    raise
            if not got:
                conn.close()
                return False
            self._conn = conn
        else:
            path = self._sqlite_path()
            if path is not None:
                f = path.open("ab")
                try:
                    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    f.close()
                    return False
                self._file = f
        self.held = True
        return True

    def check(self) -> None:
        """Raise :class:`LockLostError` when the held lock's database session is gone.
        A no-op for SQLite (the kernel keeps the lock while the process lives)."""
        if not self.held or self._conn is None:
            return
        try:
            with classified():
                self._conn.execute(text("SELECT 1")).scalar_one()
                self._conn.commit()
        except StorageError as exc:
            self.release()
            raise LockLostError(
                f"the {self._name} lock's database session ended ({exc.reason}): another "
                "process may be active now"
            ) from exc

    def release(self) -> None:
        """Give the lock back (closing its session or file). Raises nothing."""
        conn, self._conn = self._conn, None
        if conn is not None:
            # Invalidated, not returned to the pool: ending the session is what releases
            # a session-level advisory lock (a pooled connection would keep it).
            with contextlib.suppress(Exception):  # the session may already be gone
                conn.invalidate()
                conn.close()
        f, self._file = self._file, None
        if f is not None:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
            finally:
                f.close()
        self.held = False

    def __repr__(self) -> str:
        return f"ProcessLock({self._name!r}, held={self.held}, pid={os.getpid()})"
