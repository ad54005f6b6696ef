"""storage.db on SQLite: migrations, idempotent batched writes, round trips, errors."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect, text
from sqlalchemy import exc as sa_exc

from storage.db import (
    AlertRow,
    ScoreRow,
    count_alerts,
    count_scores,
    downgrade,
    fetch_alerts,
    fetch_scores,
    make_engine,
    migrate,
    write_alerts,
    write_scores,
)
from storage.errors import StoragePermanentError, StorageUnavailable, classify
from storage.models import Base

REPO = Path(__file__).resolve().parents[3]
T0 = datetime(2026, 1, 1, 8, 0, tzinfo=UTC)


def score(i: int, patient: str | None = None, **kw: Any) -> ScoreRow:
    fields: dict[str, object] = {
        "patient": f"pz{i % 7:03d}" if patient is None else patient,
        "scored_at": T0 + timedelta(minutes=i),
        "model": "sepsis_transformer",
        "model_version": "1",
        "risk": (i % 100) / 100,
        "news2": i % 21,
        "news2_breakdown": {"respiratory_rate": i % 4, "spo2": None},
        "qsofa": i % 4,
        "sirs": i % 5,
        "alert": i % 10 == 0,
        "features": {"hr": [80.0, 81.5], "lactate": None},
        "event_offset": f"clinical.events/{i % 8}/{i}",
    }
    fields.update(kw)
    return ScoreRow(**fields)  # type: ignore[arg-type]


def alert(i: int, **kw: object) -> AlertRow:
    fields: dict[str, object] = {
        "alert_id": f"a{i:06d}",
        "patient": f"pz{i % 7:03d}",
        "raised_at": T0 + timedelta(minutes=i),
        "severity": "warning",
        "reason": "sepsis risk 0.81 >= 0.60",
        "risk": 0.81,
        "news2": 5,
        "explanation": {"top": [["lactate", 0.3], ["hr", 0.1]]},
    }
    fields.update(kw)
    return AlertRow(**fields)  # type: ignore[arg-type]


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'nested' / 'dir' / 'wardwatch.db'}"


@pytest.fixture
def engine(url: str) -> Iterator[Engine]:
    migrate(url)
    eng = make_engine(url)
    yield eng
    eng.dispose()


# ------------------------------------------------------------------ engine, migrations


def test_make_engine_sqlite_pragmas_and_parent_dir(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "w.db"
    eng = make_engine(f"sqlite:///{path}", busy_timeout_ms=1234)
    assert path.parent.is_dir()
    with eng.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 1234
    eng.dispose()


def test_make_engine_refuses_other_databases() -> None:
    with pytest.raises(ValueError, match="unsupported"):
        make_engine("mysql://u:p@localhost/db")


def test_make_engine_postgres_is_lazy_and_pre_pings() -> None:
    eng = make_engine("postgresql+psycopg://u:p@127.0.0.1:1/db")
    assert eng.pool._pre_ping
    eng.dispose()


def test_migrate_up_down_up(url: str) -> None:
    migrate(url)
    migrate(url)  # idempotent
    eng = make_engine(url)
    insp = inspect(eng)
    assert {"scores", "alerts", "alembic_version"} <= set(insp.get_table_names())
    assert {ix["name"] for ix in insp.get_indexes("scores")} >= {
        "ix_scores_patient_scored_at",
        "ix_scores_scored_at",
    }
    uniques = {tuple(u["column_names"]) for u in insp.get_unique_constraints("scores")}
    assert ("patient", "scored_at", "model", "model_version") in uniques
    with eng.connect() as conn:
        assert (
            conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
            == "0005_cds_feedback"
        )
    assert {"patients", "dead_letters", "audit_log", "api_tokens"} <= set(insp.get_table_names())
    assert {"v_hourly_scores", "v_alert_outcomes"} <= set(insp.get_view_names())
    write_scores(eng, [score(1)])
    downgrade(url)
    insp = inspect(eng)
    assert set(insp.get_table_names()) <= {"alembic_version"}
    assert insp.get_view_names() == []
    migrate(url)  # 0002 goes down to 0001 and back up with the scores in place
    write_scores(eng, [score(2)])
    downgrade(url, "0001")
    assert "patients" not in inspect(eng).get_table_names()
    migrate(url)
    assert count_scores(eng) == 1
    downgrade(url)
    migrate(url)
    assert count_scores(eng) == 0
    eng.dispose()


def test_migration_matches_models(engine: Engine) -> None:
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, Base.metadata)
    assert diff == []


def test_alembic_command_line(tmp_path: Path) -> None:
    db = tmp_path / "cli.db"
    cmd = [sys.executable, "-m", "alembic", "-c", "storage/alembic.ini"]
    subprocess.run([*cmd, "-x", f"url=sqlite:///{db}", "upgrade", "head"], cwd=REPO,
                   check=True, capture_output=True)  # fmt: skip
    env_db = tmp_path / "env.db"
    env = {"WARDWATCH_DATABASE_URL": f"sqlite:///{env_db}", "PATH": "/usr/bin:/bin"}
    subprocess.run([*cmd, "upgrade", "head"], cwd=REPO, check=True, env=env,
                   capture_output=True)  # fmt: skip
    for path in (db, env_db):
        tables = {r[0] for r in sqlite3.connect(path).execute("SELECT name FROM sqlite_master")}
        assert {"scores", "alerts"} <= tables


# ------------------------------------------------------------------ idempotent writes


def test_same_batch_twice_inserts_once(engine: Engine) -> None:
    batch = [score(i) for i in range(50)]
    assert write_scores(engine, batch) == 50
    assert write_scores(engine, batch) == 0
    assert count_scores(engine) == 50


def test_partial_overlap(engine: Engine) -> None:
    assert write_scores(engine, [score(i) for i in range(0, 30)]) == 30
    assert write_scores(engine, [score(i) for i in range(20, 50)]) == 20
    assert count_scores(engine) == 50


def test_duplicates_within_one_batch(engine: Engine) -> None:
    assert write_scores(engine, [score(1), score(1), score(2)]) == 2


def test_key_is_patient_time_model_version(engine: Engine) -> None:
    base = score(1)
    rows = [
        base,
        score(1, model_version="2"),
        score(1, patient="other"),
        score(1, scored_at=base.scored_at + timedelta(microseconds=1)),
        # The same instant in another zone is the same key.
        score(1, scored_at=base.scored_at.astimezone(timezone(timedelta(hours=-5)))),
    ]
    assert write_scores(engine, rows) == 4


def test_empty_batch(engine: Engine) -> None:
    assert write_scores(engine, []) == 0
    assert write_alerts(engine, []) == 0


def test_round_trip_json_time_zone_and_nulls(engine: Engine) -> None:
    plus_530 = timezone(timedelta(hours=5, minutes=30))
    row = score(
        3,
        patient="pz-json",
        scored_at=datetime(2026, 3, 29, 1, 30, 15, 123456, tzinfo=plus_530),
        features={"ünïcode": "é", "nested": {"a": [1, 2.5, None, True]}, "big": 10**12},
        news2_breakdown={"respiratory_rate": 3, "consciousness": None},
    )
    degraded = score(4, patient="pz-json", risk=None, degraded=True, features=None,
                     news2=None, qsofa=None, sirs=None, event_offset=None)  # fmt: skip
    write_scores(engine, [row, degraded])
    got = fetch_scores(engine, patient="pz-json")
    assert got == sorted([row, degraded], key=lambda r: r.scored_at)
    first = next(r for r in got if r.risk is not None)
    assert first.scored_at.tzinfo is UTC
    assert first.scored_at == row.scored_at
    assert first.scored_at.isoformat() == "2026-03-28T20:00:15.123456+00:00"
    assert first.features == row.features
    assert fetch_scores(engine, patient="nobody") == []
    assert len(fetch_scores(engine)) == 2


def test_alerts_idempotent_and_round_trip(engine: Engine) -> None:
    batch = [alert(i) for i in range(10)]
    assert write_alerts(engine, batch) == 10
    assert write_alerts(engine, [*batch, alert(10)]) == 1
    assert count_alerts(engine) == 11
    got = fetch_alerts(engine)
    assert got[:10] == batch
    assert got[0].status == "open"
    assert got[0].raised_at.tzinfo is UTC


def test_concurrent_writers_sqlite(engine: Engine) -> None:
    errors: list[BaseException] = []
    inserted: list[int] = []

    def work(start: int) -> None:
        try:
            for k in range(5):
                lo = start + k * 40
                inserted.append(write_scores(engine, [score(i) for i in range(lo, lo + 60)]))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(s,)) for s in (0, 20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert count_scores(engine) == 20 + 200 + 20  # rows 0..239
    assert sum(inserted) == 240


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"patient": ""}, "pseudonym"),
        ({"scored_at": datetime(2026, 1, 1)}, "time zone"),
        ({"risk": None}, "degraded"),
        ({"risk": 1.5}, "probability"),
        ({"risk": float("nan")}, "probability"),
        ({"news2": 21}, "news2"),
        ({"qsofa": 4}, "qsofa"),
        ({"sirs": -1}, "sirs"),
        ({"model_version": ""}, "model"),
    ],
)
def test_invalid_score_rows_are_permanent(engine: Engine, kw: dict[str, Any], match: str) -> None:
    with pytest.raises(StoragePermanentError, match=match) as info:
        write_scores(engine, [score(1), score(2, **kw)])
    assert info.value.row_index == 1
    assert count_scores(engine) == 0


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"severity": "panic"}, "severity"),
        ({"status": "closed"}, "status"),
        ({"alert_id": ""}, "alert_id"),
        ({"acknowledged_at": datetime(2026, 1, 1)}, "time zone"),
        ({"risk": -0.1}, "probability"),
    ],
)
def test_invalid_alert_rows_are_permanent(
    engine: Engine, kw: dict[str, object], match: str
) -> None:
    with pytest.raises(StoragePermanentError, match=match) as info:
        write_alerts(engine, [alert(1, **kw)])
    assert info.value.row_index == 0


def test_unserialisable_json_is_permanent_and_rolls_back_the_batch(engine: Engine) -> None:
    with pytest.raises(StoragePermanentError, match="str"):
        write_scores(engine, [score(1), score(2, features={"x": {1: "int key"}})])
    with pytest.raises(StoragePermanentError):
        write_scores(engine, [score(3, features={"x": object()})])
    assert count_scores(engine) == 0


def test_nan_and_numpy_features_are_stored_as_json(engine: Engine) -> None:
    import numpy as np

    feats = {"lactate": float("nan"), "hr": np.array([80.0, np.nan]), "t": np.float32(37.5)}
    assert write_scores(engine, [score(1, patient="pz-nan", features=feats)]) == 1
    (got,) = fetch_scores(engine, patient="pz-nan")
    assert got.features == {"lactate": None, "hr": [80.0, None], "t": 37.5}


def test_database_constraints_back_up_validation(engine: Engine) -> None:
    with pytest.raises(sa_exc.IntegrityError) as info, engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO scores (patient, scored_at, model, model_version, risk, degraded,"
            " news2_breakdown, alert) VALUES ('p', '2026-01-01 00:00:00.000000', 'm', '1',"
            " 2.0, 0, '{}', 0)"
        ))  # fmt: skip
    assert isinstance(classify(info.value), StoragePermanentError)


def test_not_migrated_is_unavailable(tmp_path: Path) -> None:
    eng = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    with pytest.raises(StorageUnavailable, match="no such table"):
        write_scores(eng, [score(1)])
    with pytest.raises(StorageUnavailable):
        count_scores(eng)
    eng.dispose()


def test_locked_database_is_unavailable(url: str) -> None:
    migrate(url)
    eng = make_engine(url, busy_timeout_ms=50)
    path = url.removeprefix("sqlite:///")
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StorageUnavailable, match="locked"):
            write_scores(eng, [score(1)])
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert write_scores(eng, [score(1)]) == 1  # and it works once the lock is gone
    eng.dispose()


def test_unopenable_database_is_unavailable(tmp_path: Path) -> None:
    eng = make_engine(f"sqlite:///{tmp_path / 'dir' / 'w.db'}")
    (tmp_path / "dir").rmdir()
    (tmp_path / "dir").write_text("now a file")
    with pytest.raises(StorageUnavailable):
        count_scores(eng)
    eng.dispose()


def test_unreachable_postgres_is_unavailable() -> None:
    eng = make_engine("postgresql+psycopg://u:p@127.0.0.1:1/db?connect_timeout=2")
    with pytest.raises(StorageUnavailable):
        write_scores(eng, [score(1)])
    with pytest.raises(StorageUnavailable):
        migrate(eng)
    eng.dispose()


def test_pseudonyms_only_schema_has_no_identifying_columns(engine: Engine) -> None:
    forbidden = {"name", "given", "family", "address", "mrn", "nhs_number", "birth_date", "dob"}
    # api_tokens.name names a member of staff (the token holder), not a patient
    for table in ("scores", "alerts", "patients", "dead_letters", "audit_log"):
        cols = {c["name"] for c in inspect(engine).get_columns(table)}
        assert not cols & forbidden
