"""The delivery lock on the real PostgreSQL: an advisory lock held by a session of its
own, released when that session ends, and noticed by its holder when it is gone."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from storage.db import make_engine
from storage.process_lock import LockLostError, ProcessLock

from .harness import isolated_run

pytestmark = [pytest.mark.postgres, pytest.mark.kafka]  # isolated_run makes topics too


def test_one_holder_then_the_standby_takes_over_when_the_session_ends() -> None:
    with isolated_run("lock") as s:
        active, standby = make_engine(s.database_url), make_engine(s.database_url)
        try:
            first, second = ProcessLock(active, "deliver"), ProcessLock(standby, "deliver")
            assert first.try_acquire()
            assert not second.try_acquire()
            first.check()
            # released by ending the session (not by returning it to the pool)
            first.release()
            assert second.try_acquire()
            assert not first.try_acquire()
            # the holder's session killed from outside: the lock is free, and the holder
            # finds out at its next check instead of sending beside the new holder
            with active.connect() as conn:
                conn.execute(
                    text(
                        "SELECT pg_terminate_backend(l.pid) FROM pg_locks l "
                        "JOIN pg_database d ON d.oid = l.database "
                        "WHERE l.locktype = 'advisory' AND d.datname = current_database() "
                        "AND l.pid <> pg_backend_pid()"
                    )
                )
            with pytest.raises(LockLostError, match="session ended"):
                second.check()
            assert not second.held
            assert first.try_acquire()
            first.release()
        finally:
            active.dispose()
            standby.dispose()
