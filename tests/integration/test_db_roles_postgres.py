"""Database roles and the append-only audit log against the local PostgreSQL (port 5433).

A database of its own and two roles of their own (random names; the superuser creates
the roles over the server's Unix socket, as ``compose/services.sh`` does) are made for
the module and dropped afterwards. The schema owner is the app role (``wardwatch``): it
migrates (``wardwatch db upgrade``) and grants (``wardwatch db grant``); the API runs
as the API role in a real uvicorn server. If PostgreSQL is down these tests FAIL, never
skip. ``WARDWATCH_TEST_POSTGRES_URL`` overrides the owner's server URL and
``WARDWATCH_TEST_POSTGRES_SOCKET`` the superuser's socket folder.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import orjson
import psycopg
import pytest
import uvicorn
from click.testing import CliRunner
from psycopg import errors as pg_errors
from sqlalchemy import text
from sqlalchemy.engine import URL, make_url

import streams.cli_context as cli_context
from storage import access, outbox
from storage.db import (
    AlertRow,
    ScoreRow,
    current_revision,
    head_revision,
    make_engine,
    migrate,
    write_alerts,
    write_scores,
)
from streams.api import create_api
from streams.cli_analyst import api_cmd
from streams.cli_db import db_cmd
from streams.settings import PROJECT_ROOT, Settings

pytestmark = pytest.mark.postgres

DEFAULT_URL = "postgresql+psycopg://wardwatch:wardwatch@127.0.0.1:5433/wardwatch"
T0 = datetime(2026, 1, 1, 8, 0, tzinfo=UTC)
PASSWORD = "roles-test-" + uuid.uuid4().hex


@dataclass(frozen=True)
class Db:
    owner: URL
    api: URL
    worker: URL
    api_role: str
    worker_role: str


def _superuser() -> psycopg.Connection[tuple[object, ...]]:
    sock = os.environ.get(
        "WARDWATCH_TEST_POSTGRES_SOCKET", str(PROJECT_ROOT / "var" / "postgres" / "socket")
    )
    port = make_url(os.environ.get("WARDWATCH_TEST_POSTGRES_URL", DEFAULT_URL)).port or 5432
    try:
        return psycopg.connect(
            host=sock, port=port, user="postgres", dbname="postgres", autocommit=True
        )
    except psycopg.Error as e:
        pytest.fail(
            f"no superuser session over {sock} ({e}); start PostgreSQL with `make up` or set "
            "WARDWATCH_TEST_POSTGRES_SOCKET",
            pytrace=False,
        )


def _as(url: URL, **kw: object) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(
        host=url.host, port=url.port, user=url.username, password=url.password,
        dbname=url.database, **kw,
    )  # fmt: skip


@pytest.fixture(scope="module")
def db() -> Iterator[Db]:
    base = make_url(os.environ.get("WARDWATCH_TEST_POSTGRES_URL", DEFAULT_URL))
    run = uuid.uuid4().hex[:10]
    name, api_role, worker_role = f"ww_roles_{run}", f"ww_api_{run}", f"ww_worker_{run}"
    su = _superuser()
    for role in (api_role, worker_role):
        su.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}'")
    owner_admin = make_engine(base).execution_options(isolation_level="AUTOCOMMIT")
    with owner_admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    owner = base.set(database=name)
    try:
        yield Db(
            owner=owner,
            api=owner.set(username=api_role, password=PASSWORD),
            worker=owner.set(username=worker_role, password=PASSWORD),
            api_role=api_role,
            worker_role=worker_role,
        )
    finally:
        with owner_admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        owner_admin.dispose()
        for role in (api_role, worker_role):
            su.execute(f"DROP ROLE IF EXISTS {role}")
        su.close()


def _settings(monkeypatch: pytest.MonkeyPatch, **kw: object) -> None:
    # dev_mode: the test roles' passwords are not production-grade (PostgreSQL is not
    # migrated in development mode either: only SQLite is).
    monkeypatch.setattr(cli_context, "_SETTINGS", Settings(dev_mode=True, **kw))  # type: ignore[arg-type]


def _seed(owner: URL) -> None:
    eng = make_engine(owner)
    write_scores(
        eng,
        [
            ScoreRow(
                patient=f"p{i % 3}", scored_at=T0 + timedelta(hours=i), model="m",
                model_version="1", risk=i / 10, news2=i,
            )
            for i in range(9)
        ],
    )  # fmt: skip
    write_alerts(
        eng,
        [
            AlertRow(alert_id="a1", patient="p0", raised_at=T0, severity="critical", reason="r1"),
            AlertRow(alert_id="a2", patient="p1", raised_at=T0, severity="warning", reason="r2"),
        ],
    )
    eng.dispose()


@pytest.fixture(scope="module")
def migrated(db: Db) -> Db:
    """Schema at 0002 and grants: the API refuses to start; then upgraded, re-granted."""
    mp = pytest.MonkeyPatch()
    try:
        migrate(db.owner, "0002")
        _settings(mp, database_url=db.owner.render_as_string(hide_password=False))
        r = CliRunner().invoke(
            db_cmd, ["grant", "--api-role", db.api_role, "--worker-role", db.worker_role]
        )
        assert r.exit_code == 0, r.output
        # The API, as its own role, on a schema behind head: refuses, changes nothing.
        _settings(mp, database_url=db.api.render_as_string(hide_password=False))
        r = CliRunner().invoke(api_cmd, ["--port", "1"])
        assert r.exit_code == 1 and "run `wardwatch db upgrade`" in r.output, r.output
        eng = make_engine(db.owner)
        assert current_revision(eng) == "0002"
        # db upgrade with the owner's URL in WARDWATCH_MIGRATION_DATABASE_URL
        _settings(
            mp,
            database_url=db.api.render_as_string(hide_password=False),
            migration_database_url=db.owner.render_as_string(hide_password=False),
        )
        r = CliRunner().invoke(db_cmd, ["upgrade"])
        upgraded = f"schema at revision {head_revision()} (was 0002)"
        assert r.exit_code == 0 and upgraded in r.output, r.output
        r = CliRunner().invoke(
            db_cmd, ["grant", "--api-role", db.api_role, "--worker-role", db.worker_role]
        )
        assert r.exit_code == 0, r.output
        assert current_revision(eng) == head_revision()
        eng.dispose()
    finally:
        mp.undo()
    _seed(db.owner)
    return db


@pytest.fixture(scope="module")
def server(migrated: Db) -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    api_engine = make_engine(migrated.api)
    app = create_api(api_engine, stream_poll_s=0.05, stream_recheck_s=0)
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("the API server did not start", pytrace=False)
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)
    api_engine.dispose()


def _token(db: Db, role: str, name: str) -> dict[str, str]:
    eng = make_engine(db.owner)  # tokens are managed with the owner's URL
    try:
        return {"Authorization": f"Bearer {access.create_token(eng, name, role)}"}
    finally:
        eng.dispose()


def _audit(db: Db) -> list[dict[str, object]]:
    eng = make_engine(db.owner)
    try:
        return access.fetch_audit(eng)[::-1]
    finally:
        eng.dispose()


def test_reads_as_the_api_role_are_audited_with_their_patients(migrated: Db, server: str) -> None:
    h = _token(migrated, "admin", "reader")
    with httpx.Client(base_url=server, headers=h, timeout=10) as c:
        assert [
            s["patient"] for s in c.get("/scores", params={"patient": "p1"}).json()["scores"]
        ] == ["p1"] * 3
        assert len(c.get("/alerts").json()["alerts"]) == 2
        assert c.get("/patients/p2/timeline").status_code == 200
        assert c.post("/alerts/a1/acknowledge").json()["acknowledged_by"] == "reader"
    log = [e for e in _audit(migrated) if e["who"] == "reader"]
    assert [(e["action"], e["patients"], e["patient_count"]) for e in log] == [
        ("read", ["p1"], 1),
        ("read", ["p0", "p1"], 2),
        ("read", ["p2"], 1),
        ("acknowledge", ["p0"], 1),
    ]
    assert all(isinstance(e["query_sha256"], str) for e in log[:3])


def test_the_api_role_cannot_rewrite_the_audit_log_or_change_the_schema(migrated: Db) -> None:
    _token(migrated, "analyst", "someone")
    eng = make_engine(migrated.owner)
    access.audit(eng, access.Principal("someone", "analyst"), "read", "x", patients=["p0"])
    eng.dispose()
    refused = (
        "UPDATE audit_log SET who = 'nobody'",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
        "CREATE TABLE sneaky (x int)",
        "UPDATE scores SET risk = 0",
        "UPDATE alerts SET reason = 'x'",
        "DELETE FROM alerts",
        "UPDATE api_tokens SET revoked_at = NULL",
    )
    for sql in refused:
        with _as(migrated.api) as conn, pytest.raises(pg_errors.InsufficientPrivilege):
            conn.execute(sql)
    with _as(migrated.api) as conn:  # what it may do
        conn.execute(
            "INSERT INTO audit_log (at, who, role, action, resource) "
            "VALUES (now(), 'someone', 'analyst', 'read', 'y')"
        )
        conn.execute("UPDATE alerts SET status = status WHERE alert_id = 'a2'")
        assert conn.execute("SELECT count(*) FROM audit_log").fetchone()[0] >= 2  # type: ignore[index]


def test_the_trigger_refuses_even_a_role_granted_update_and_delete(migrated: Db) -> None:
    with _as(migrated.owner, autocommit=True) as conn:
        conn.execute(f"GRANT UPDATE, DELETE, TRUNCATE ON audit_log TO {migrated.worker_role}")
    try:
        for sql in (
            "UPDATE audit_log SET who = 'x'",
            "DELETE FROM audit_log",
            "TRUNCATE audit_log",
        ):
            with (
                _as(migrated.worker) as conn,
                pytest.raises(pg_errors.InsufficientPrivilege, match="append-only"),
            ):
                conn.execute(sql)
    finally:
        with _as(migrated.owner, autocommit=True) as conn:
            conn.execute(
                f"REVOKE UPDATE, DELETE, TRUNCATE ON audit_log FROM {migrated.worker_role}"
            )
    with _as(migrated.owner) as conn:  # the owner passes the trigger (rolled back here)
        conn.execute("DELETE FROM audit_log WHERE false")
        conn.rollback()


def test_the_worker_role_writes_scores_and_cannot_create_tables(migrated: Db) -> None:
    migrate(migrated.worker)  # at head: a no-op that needs no DDL rights
    eng = make_engine(migrated.worker)
    n = write_scores(
        eng,
        [ScoreRow(patient="pw", scored_at=T0, model="m", model_version="1", risk=0.2)],
    )
    eng.dispose()
    assert n == 1
    with _as(migrated.worker) as conn, pytest.raises(pg_errors.InsufficientPrivilege):
        conn.execute("CREATE TABLE sneaky (x int)")
    with _as(migrated.worker) as conn, pytest.raises(pg_errors.InsufficientPrivilege):
        conn.execute("SELECT * FROM audit_log")


def test_the_alert_stream_ends_when_its_token_is_revoked(migrated: Db, server: str) -> None:
    h = _token(migrated, "alerting", "pager")
    seen: list[str] = []
    with (
        httpx.Client(base_url=server, headers=h, timeout=10) as c,
        c.stream("GET", "/alerts/stream", params={"after": 0}) as r,
    ):
        assert r.status_code == 200
        lines = r.iter_lines()
        for line in lines:
            if line.startswith("data: "):
                seen.append(orjson.loads(line[6:])["alert_id"])
            if len(seen) == 2:
                break
        eng = make_engine(migrated.owner)
        access.revoke_token(eng, "pager")
        write_alerts(
            eng,
            [AlertRow(alert_id="a9", patient="p2", raised_at=T0, severity="info", reason="r")],
        )
        eng.dispose()
        rest = "\n".join(lines)  # the server ends the stream
    assert seen == ["a1", "a2"] and "event: revoked" in rest and "a9" not in rest
    log = [e for e in _audit(migrated) if e["who"] == "pager"]
    assert [(e["action"], e["patients"]) for e in log] == [("stream", []), ("stream", ["p0", "p1"])]
    with httpx.Client(base_url=server, headers=h, timeout=10) as c:
        assert c.get("/alerts/stream").status_code == 401


def test_an_alert_resolved_through_the_api_role_is_queued_to_subscribers(
    migrated: Db, server: str
) -> None:
    owner = make_engine(migrated.owner)
    try:
        sid = outbox.create_subscriber(owner, kind="rest-hook", topic="t", endpoint="http://r",
                                       payload="full-resource", who="test").id  # fmt: skip
        h = _token(migrated, "alerting", "ward-system")
        with httpx.Client(base_url=server, headers=h, timeout=10) as c:
            r = c.post("/alerts/a2/resolve")
            assert r.status_code == 200, r.text
        events = outbox.events(owner, sid, 1)
        assert [(e.event_number, e.alert_id, e.kind) for e in events] == [(1, "a2", "resolved")]
        assert events[0].resource["status"] == "amended"
    finally:
        owner.dispose()
