"""One holder of a named lock per database (SQLite: an flock beside the file)."""

from __future__ import annotations

from pathlib import Path

from storage.db import make_engine
from storage.process_lock import ProcessLock, lock_key


def test_one_holder_per_sqlite_database_until_it_lets_go(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'w.db'}")
    other = make_engine(f"sqlite:///{tmp_path / 'other.db'}")
    try:
        first, second = ProcessLock(engine, "deliver"), ProcessLock(engine, "deliver")
        assert first.try_acquire() and first.try_acquire()  # held: still true
        assert not second.try_acquire()
        assert ProcessLock(engine, "another-name").try_acquire()  # names are separate
        assert ProcessLock(other, "deliver").try_acquire()  # and databases
        first.check()  # SQLite: nothing to lose while the process lives
        first.release()
        assert not first.held
        assert second.try_acquire()
        second.release()
    finally:
        engine.dispose()
        other.dispose()


def test_an_in_memory_database_needs_no_lock() -> None:
    engine = make_engine("sqlite://")
    try:
        assert ProcessLock(engine, "deliver").try_acquire()
        assert ProcessLock(engine, "deliver").try_acquire()
    finally:
        engine.dispose()


def test_lock_keys_are_stable_signed_64_bit() -> None:
    assert lock_key("wardwatch-deliver") == lock_key("wardwatch-deliver")
    assert lock_key("a") != lock_key("b")
    assert all(-(2**63) <= lock_key(n) < 2**63 for n in ("a", "b", "wardwatch-deliver"))
