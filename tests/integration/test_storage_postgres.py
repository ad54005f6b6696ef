"""storage.db against the local PostgreSQL (``make up``; port 5433).

Each test session works in its own freshly created schema (``search_path``), dropped at
the end, so it never touches the real tables. If PostgreSQL is down these tests FAIL:
they are selected explicitly (``-m postgres``) and a silent skip would hide a broken
stack. The URL can be overridden with ``WARDWATCH_TEST_POSTGRES_URL``.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import Engine, inspect, text
from sqlalchemy.engine import URL, make_url

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
from storage.errors import StoragePermanentError

pytestmark = pytest.mark.postgres

DEFAULT_URL = "postgresql+psycopg://wardwatch:wardwatch@127.0.0.1:5433/wardwatch"
T0 = datetime(2026, 1, 1, 8, 0, tzinfo=UTC)


def base_url() -> URL:
    return make_url(os.environ.get("WARDWATCH_TEST_POSTGRES_URL", DEFAULT_URL))


def schema_url(schema: str, tz: str = "UTC") -> URL:
    return base_url().update_query_dict({"options": f"-c search_path={schema} -c TimeZone={tz}"})


def score(i: int, **kw: object) -> ScoreRow:
    fields: dict[str, object] = {
        "patient": f"pz{i % 7:03d}",
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
        "severity": "critical",
        "reason": "NEWS2 8 >= 7",
        "risk": None,
        "news2": 8,
        "explanation": {"news2": {"respiratory_rate": 3}},
    }
    fields.update(kw)
    return AlertRow(**fields)  # type: ignore[arg-type]


def _admin() -> Engine:
    eng = make_engine(base_url())
    try:
        with eng.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as e:
        eng.dispose()
        pytest.fail(
            f"PostgreSQL at {base_url().render_as_string(hide_password=True)} is not "
            f"reachable ({type(e).__name__}: {e}); start it with `make up`",
            pytrace=False,
        )
    return eng


def _create_schema(admin: Engine) -> str:
    name = f"ww_test_{uuid.uuid4().hex[:12]}"
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{name}"'))
    return name


def _drop_schema(admin: Engine, name: str) -> None:
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))


@pytest.fixture(scope="session")
def admin() -> Iterator[Engine]:
    eng = _admin()
    yield eng
    eng.dispose()


@pytest.fixture(scope="session")
def schema(admin: Engine) -> Iterator[str]:
    name = _create_schema(admin)
    try:
        migrate(schema_url(name))
        yield name
    finally:
        _drop_schema(admin, name)


@pytest.fixture
def engine(admin: Engine, schema: str) -> Iterator[Engine]:
    with admin.begin() as conn:
        tables = (
            "scores",
            "alerts",
            "patients",
            "dead_letters",
            "audit_log",
            "api_tokens",
            "outbox",
            "subscribers",
            "cds_feedback",
        )
        conn.execute(text("TRUNCATE " + ", ".join(f'"{schema}".{t}' for t in tables)))
    eng = make_engine(schema_url(schema))
    yield eng
    eng.dispose()


def test_migrate_down_and_up(admin: Engine) -> None:
    name = _create_schema(admin)
    try:
        url = schema_url(name)
        migrate(url)
        migrate(url)  # idempotent
        eng = make_engine(url)
        insp = inspect(eng)
        assert {"scores", "alerts", "alembic_version"} <= set(insp.get_table_names(name))
        assert {"patients", "dead_letters", "audit_log", "api_tokens"} <= set(
            insp.get_table_names(name)
        )
        assert {"v_hourly_scores", "v_alert_outcomes"} <= set(insp.get_view_names(name))
        cols = {c["name"]: c for c in insp.get_columns("scores", name)}
        assert str(cols["features"]["type"]) == "JSONB"
        assert getattr(cols["scored_at"]["type"], "timezone", None) is True
        assert write_scores(eng, [score(1)]) == 1
        downgrade(url, "0001")  # 0002 down and up again, the scores kept
        assert "patients" not in inspect(eng).get_table_names(name)
        assert inspect(eng).get_view_names(name) == []
        migrate(url)
        assert count_scores(eng) == 1
        downgrade(url)
        assert set(inspect(eng).get_table_names(name)) <= {"alembic_version"}
        migrate(url)
        assert count_scores(eng) == 0
        eng.dispose()
    finally:
        _drop_schema(admin, name)


def test_concurrent_migrations_serialise(admin: Engine) -> None:
    name = _create_schema(admin)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            migrate(schema_url(name))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    try:
        threads = [threading.Thread(target=run) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        eng = make_engine(schema_url(name))
        assert write_scores(eng, [score(1)]) == 1
        eng.dispose()
    finally:
        _drop_schema(admin, name)


def test_same_batch_twice_inserts_once(engine: Engine) -> None:
    batch = [score(i) for i in range(500)]
    assert write_scores(engine, batch) == 500
    assert write_scores(engine, batch) == 0
    assert count_scores(engine) == 500


def test_partial_overlap_and_duplicates_in_batch(engine: Engine) -> None:
    assert write_scores(engine, [score(i) for i in range(0, 30)]) == 30
    assert write_scores(engine, [score(i) for i in range(20, 50)]) == 20
    assert write_scores(engine, [score(60), score(60), score(61)]) == 2
    assert count_scores(engine) == 52


def test_round_trip_json_and_time_zone(engine: Engine, schema: str) -> None:
    plus_530 = timezone(timedelta(hours=5, minutes=30))
    row = score(
        3,
        patient="pz-json",
        scored_at=datetime(2026, 3, 29, 1, 30, 15, 123456, tzinfo=plus_530),
        features={"ünïcode": "é", "nested": {"a": [1, 2.5, None, True]}, "big": 10**12},
    )
    degraded = score(4, patient="pz-json", risk=None, degraded=True, features=None)
    write_scores(engine, [row, degraded])
    # Read through a session in another time zone: the instant must not move.
    other = make_engine(schema_url(schema, tz="America/New_York"))
    got = fetch_scores(other, patient="pz-json")
    other.dispose()
    assert got == sorted([row, degraded], key=lambda r: r.scored_at)
    assert got[0].scored_at.tzinfo is UTC


def test_alerts_idempotent(engine: Engine) -> None:
    batch = [alert(i) for i in range(10)]
    assert write_alerts(engine, batch) == 10
    assert write_alerts(engine, [*batch, alert(10)]) == 1
    assert count_alerts(engine) == 11
    assert fetch_alerts(engine)[:10] == batch


def test_database_errors_are_permanent(engine: Engine) -> None:
    with pytest.raises(StoragePermanentError):
        write_scores(engine, [score(1), score(2, patient="nul\x00byte")])
    with pytest.raises(StoragePermanentError, match="str"):
        write_scores(engine, [score(3, features={"x": {1: "int key"}})])
    assert count_scores(engine) == 0
    assert write_scores(engine, [score(4, features={"x": float("inf"), "y": float("nan")})])
    assert fetch_scores(engine)[0].features == {"x": None, "y": None}


def test_concurrent_writers_overlapping_batches(engine: Engine, schema: str) -> None:
    errors: list[BaseException] = []
    inserted: list[int] = []
    barrier = threading.Barrier(2)

    def work(offset: int, reverse: bool) -> None:
        try:
            barrier.wait()
            for k in range(10):
                lo = offset + k * 100
                rows = [score(i) for i in range(lo, lo + 200)]
                inserted.append(write_scores(engine, rows[::-1] if reverse else rows))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [
        threading.Thread(target=work, args=(0, False)),
        threading.Thread(target=work, args=(50, True)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    expected = 1150  # rows 0..1099 and 50..1149
    assert count_scores(engine) == expected
    assert sum(inserted) == expected
    with engine.connect() as conn:
        dupes = conn.execute(
            text(
                f'SELECT count(*) FROM (SELECT 1 FROM "{schema}".scores GROUP BY patient,'
                " scored_at, model, model_version HAVING count(*) > 1) d"
            )
        ).scalar_one()
    assert dupes == 0


def test_patients_upsert_and_bi_views(engine: Engine) -> None:
    from storage import access

    rows = [score(i, patient="pv") for i in (0, 20, 40, 70)]
    assert write_scores(engine, rows[1:]) == 3
    assert write_scores(engine, rows[:1]) == 1  # late and older: only first_seen moves
    assert write_scores(engine, rows) == 0
    p = access.get_patient(engine, "pv")
    assert p is not None
    assert p["first_seen"] == T0 and p["last_seen"] == T0 + timedelta(minutes=70)
    assert p["last_risk"] == 0.7 and p["last_news2"] == 70 % 21
    with engine.connect() as conn:
        hourly = conn.execute(
            text("SELECT hour, n_scores, max_risk FROM v_hourly_scores ORDER BY hour")
        ).all()
    assert [(h[1], h[2]) for h in hourly] == [(3, 0.4), (1, 0.7)]
    assert hourly[0][0] == datetime(2026, 1, 1, 8, 0)
    write_alerts(engine, [alert(5, patient="pv")])
    access.transition_alert(engine, "a000005", "resolve", "doctor")
    with engine.connect() as conn:
        out = conn.execute(text("SELECT * FROM v_alert_outcomes")).mappings().one()
    assert out["status"] == "resolved" and out["resolved_by"] == "doctor"
    assert out["seconds_to_resolve"] > 0 and out["seconds_to_acknowledge"] is None
